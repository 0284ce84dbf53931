"""ONNX + TorchScript export, numerical parity gates, and model-bundle packaging.

The public API (DESIGN.md, "Python export API"): ``export_model(model, name, example, *, labels=None,
**options) -> "name:version"`` for any PyTorch module with an RNN inside, and ``ExportError`` (with
its kinds ``ModuleError`` and ``ParityError``), raised with the reason when export is refused."""

from .errors import ExportError, ModuleError, ParityError
from .module import export_model

__all__ = ["ExportError", "ModuleError", "ParityError", "export_model"]
