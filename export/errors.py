"""The export errors, one family: every refusal to export is an ``ExportError`` (exported from
``rnnserve.export``), its message naming the reason; nothing is stored when one is raised."""

from __future__ import annotations


class ExportError(RuntimeError):
    """Export refused: the module, its example, an option or an exported artifact is wrong."""


class ModuleError(ExportError):
    """The module or its example cannot be exported as it is (what it contains, takes or returns)."""


class ParityError(ExportError):
    """An artifact disagrees with eager PyTorch beyond tolerance; the bundle must not ship."""
