"""bench/gpu_payload: parts of at most the part size that reassemble to the stream they came from,
checked by sha256 on the way in; bench/gpu_models: the gate reference reads back as the gate's cases;
bench/gpu-requirements.txt: the serving set's pins agree with pyproject's."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from rnnserve.bench import gpu_payload
from rnnserve.bench.gpu_payload import PartWriter, install, link_cuda_libraries, pack, receive

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("writes", [[1000], [7] * 300, [333, 1, 999, 0, 64]])
def test_parts_are_at_most_the_part_size_and_join_back_to_the_stream(tmp_path, writes):
    rng = np.random.default_rng(0)
    data = [rng.bytes(n) for n in writes]
    writer = PartWriter(tmp_path, part_size=64)
    for chunk in data:
        writer.write(chunk)
    writer.close()
    stream = b"".join(data)
    parts = [(tmp_path / p["name"]).read_bytes() for p in writer.parts]
    assert all(len(p) == 64 for p in parts[:-1]) and 0 < len(parts[-1]) <= 64
    assert b"".join(parts) == stream
    assert [p["sha256"] for p in writer.parts] == [hashlib.sha256(p).hexdigest() for p in parts]
    assert writer.total.hexdigest() == hashlib.sha256(stream).hexdigest()


def _stage(root: Path) -> Path:
    rng = np.random.default_rng(1)
    (root / "site" / "pkg").mkdir(parents=True)
    (root / "site" / "pkg" / "__init__.py").write_text("X = 1\n")
    (root / "site" / "pkg" / "blob.bin").write_bytes(rng.bytes(300_000))  # incompressible: several parts
    (root / "models" / "store" / "bentos").mkdir(parents=True)  # an empty folder travels too
    (root / "models" / "models.json").write_text(json.dumps({"models": []}))
    return root


def test_pack_receive_install_round_trip(tmp_path):
    stage = _stage(tmp_path / "stage")
    manifest = pack(stage, tmp_path / "out", part_size=100_000)
    assert len(manifest["parts"]) >= 3 and all(p["size"] <= 100_000 for p in manifest["parts"])
    into = tmp_path / "there"
    for part in manifest["parts"]:
        receive(tmp_path / "out" / part["name"], tmp_path / "out" / gpu_payload.MANIFEST, into)
    install(into)
    for path in stage.rglob("*"):
        twin = into / path.relative_to(stage)
        assert twin.is_dir() if path.is_dir() else twin.read_bytes() == path.read_bytes()


def test_a_damaged_part_is_refused_and_a_missing_one_stops_the_install(tmp_path):
    manifest = pack(_stage(tmp_path / "stage"), tmp_path / "out", part_size=100_000)
    first, second = (tmp_path / "out" / p["name"] for p in manifest["parts"][:2])
    into = tmp_path / "there"
    receive(first, tmp_path / "out" / gpu_payload.MANIFEST, into)
    damaged = bytearray(second.read_bytes())
    damaged[10] ^= 0xFF
    second.write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="damaged"):
        receive(second, tmp_path / "out" / gpu_payload.MANIFEST, into)
    with pytest.raises(SystemExit, match="missing"):
        install(into)


def test_cuda_libraries_are_linked_beside_onnxruntime_only_where_it_is(tmp_path):
    site, other = tmp_path / "site", tmp_path / "venv-site"
    (other / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    site.mkdir()
    assert link_cuda_libraries(site, [str(other)]) is None  # no onnxruntime in site: nothing to do
    (site / "onnxruntime").mkdir()
    assert link_cuda_libraries(site, [str(site), str(other)]) == str((other / "nvidia").resolve())
    assert (site / "nvidia" / "cu13" / "lib").is_dir()
    assert link_cuda_libraries(site, [str(other)]) is None  # already linked


def test_the_gate_reference_reads_back_as_the_gates_cases(tmp_path):
    from rnnserve.bench.gpu_checks import gate_cases
    from rnnserve.bench.gpu_models import random_checkpoint, write_gate_reference
    from rnnserve.export.parity import ParityConfig, cases

    config = ParityConfig(max_length=20, max_batch=4)
    checkpoint = random_checkpoint(tmp_path / "c.pt", "synthetic", hidden=4, layers=1)
    from rnnserve.export.artifacts import export_onnx
    from rnnserve.models.checkpoint import load_checkpoint

    onnx_path = export_onnx(load_checkpoint(checkpoint).build(), tmp_path / "model.onnx")
    write_gate_reference(checkpoint, config, onnx_path, tmp_path / "gate.npz")
    stored = gate_cases(tmp_path / "gate.npz")
    want = cases(config, load_checkpoint(checkpoint).train_lengths[1])
    assert [c["name"] for c in stored] == [c.name for c in want]
    for got, case in zip(stored, want, strict=True):
        assert [len(s) for s in got["seqs"]] == list(case.lengths)
        assert got["truth"].shape == got["onnx_cpu"].shape == (len(case.lengths), 3)
        assert np.abs(got["onnx_cpu"] - got["truth"]).max() <= got["tolerance"]  # CPU passed this gate


def test_the_gpu_serving_set_pins_what_pyproject_pins():
    pins = dict(re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    wanted = dict(line.split("==") for line in (ROOT / "bench" / "gpu-requirements.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    shared = {name for name in wanted if name in pins}
    assert {"bentoml", "starlette", "pydantic", "onnxruntime-gpu"} <= shared
    assert {name: wanted[name] for name in shared} == {name: pins[name] for name in shared}
