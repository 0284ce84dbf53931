"""What travels to the GPU machine, and how it is put back together there.

Standard library only: on the GPU machine it runs as ``python3 bench/gpu_payload.py ...`` from the
checkout, before anything is installed (the ``rnnserve`` namespace does not import from a bare
checkout).

Here, ``pack STAGE OUT`` (``make gpu-payload`` calls it): every file under STAGE — ``site/``, the
wheels installed for the machine's Python 3.12 with ``pip install --target``, and ``models/``, the
bundles of ``bench/gpu_models.py`` — goes into one xz-compressed tar stream cut into parts of at
most ``--part-size`` MiB (60: a command carries at most 64 MiB, the checkout included), and
``OUT/payload.json`` lists each part's size and sha256 and the whole stream's. xz, not the wheels
as they are: measured, the onnxruntime-gpu 1.31.1 wheel is 255.6 MB (5 parts of 60 MiB) while its
installed files in tar.xz are 204 MB (4 parts with room for the rest). The LZMA2 dictionary is
64 MiB so the weights that a bundle holds three times (model.onnx, streaming.onnx, model.ts) are
stored about once.

There, one command per part: ``receive OUT/part-NN`` checks the part against ``payload.json`` and
keeps it under ``--into`` (outside the checkout); the last command then runs ``install``, which
checks that every part is there, streams them through xz and tar into ``--into`` (``site/``,
``models/``), checks the whole stream's sha256, and links the machine's own CUDA libraries (the
``nvidia`` packages of its Python) beside onnxruntime so that ``onnxruntime.preload_dlls()`` finds
them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import sys
import tarfile
from pathlib import Path

MiB = 1 << 20
PART_SIZE = 60 * MiB
MANIFEST = "payload.json"
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 64 * MiB}]
DEFAULT_INTO = Path("/tmp/rnnserve-gpu")


class PartWriter(io.RawIOBase):
    """A write-only stream cut into files ``part-01``, ``part-02``, ... of at most ``part_size``
    bytes in ``out``; ``parts`` lists each one's name, size and sha256, ``sha256`` the whole."""

    def __init__(self, out: Path, part_size: int) -> None:
        if part_size < 1:
            raise ValueError("part size must be at least 1 byte")
        self.out, self.part_size = out, part_size
        self.parts: list[dict] = []
        self.total = hashlib.sha256()
        self._file = None
        self._digest = None
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while len(view):
            if self._file is None or self._size == self.part_size:
                self._next_part()
            n = min(len(view), self.part_size - self._size)
            self._file.write(view[:n])
            self._digest.update(view[:n])
            self.total.update(view[:n])
            self._size += n
            view = view[n:]
        return len(data)

    def _next_part(self) -> None:
        self._end_part()
        name = f"part-{len(self.parts) + 1:02d}"
        self._file, self._digest, self._size = (self.out / name).open("wb"), hashlib.sha256(), 0
        self.parts.append({"name": name})

    def _end_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1].update(size=self._size, sha256=self._digest.hexdigest())
            self._file = None

    def close(self) -> None:
        self._end_part()
        super().close()


class ChainReader(io.RawIOBase):
    """The parts read back as one stream, hashing what passes (``sha256``)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._file = None
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = self._paths.pop(0).open("rb")
            n = self._file.readinto(buffer)
            if n:
                self.sha256.update(memoryview(buffer)[:n])
                return n
            self._file.close()
            self._file = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pack(stage: Path, out: Path, part_size: int = PART_SIZE) -> dict:
    """Every file under ``stage`` into ``out/part-NN`` (tar.xz cut to ``part_size``) + ``out/payload.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    entries = sorted(stage.rglob("*"))  # folders too: an empty one (BentoML's store has some) is kept
    files = [p for p in entries if p.is_file()]
    writer = PartWriter(out, part_size)
    with lzma.LZMAFile(writer, "wb", format=lzma.FORMAT_XZ, filters=FILTERS) as xz:
        with tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in entries:
                tar.add(path, arcname=str(path.relative_to(stage)), recursive=False)
    writer.close()
    manifest = {"parts": writer.parts, "sha256": writer.total.hexdigest(),
                "size": sum(p["size"] for p in writer.parts), "files": len(files),
                "unpacked": sum(p.stat().st_size for p in files), "part_size": part_size}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def receive(part: Path, manifest_path: Path, into: Path) -> dict:
    """Check one part against the manifest and keep it (and the manifest) under ``into/parts``."""
    manifest = json.loads(manifest_path.read_text())
    entry = next((p for p in manifest["parts"] if p["name"] == part.name), None)
    if entry is None:
        raise SystemExit(f"{part.name} is not a part of this payload ({manifest_path})")
    size, digest = part.stat().st_size, sha256_of(part)
    if size != entry["size"] or digest != entry["sha256"]:
        raise SystemExit(f"{part.name} is damaged: {size} bytes, sha256 {digest[:12]}..., expected "
                         f"{entry['size']} bytes, {entry['sha256'][:12]}...: send it again")
    parts = into / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(part, parts / part.name)
    shutil.copyfile(manifest_path, parts / MANIFEST)
    have = sorted(p["name"] for p in manifest["parts"] if (parts / p["name"]).is_file())
    print(f"[gpu-payload] {part.name} ok ({size / MiB:.1f} MiB); {len(have)} of {len(manifest['parts'])} parts here",
          flush=True)
    return {"have": have, "of": len(manifest["parts"])}


def install(into: Path) -> dict:
    """Unpack every received part into ``into`` (checking the whole stream) and link the CUDA libraries."""
    parts = into / "parts"
    manifest = json.loads((parts / MANIFEST).read_text())
    missing = [p["name"] for p in manifest["parts"]
               if not (parts / p["name"]).is_file() or (parts / p["name"]).stat().st_size != p["size"]]
    if missing:
        raise SystemExit(f"parts missing or incomplete: {', '.join(missing)}: send them first (receive)")
    reader = ChainReader([parts / p["name"] for p in manifest["parts"]])
    with lzma.LZMAFile(io.BufferedReader(reader, 4 * MiB), "rb") as xz:
        with tarfile.open(fileobj=xz, mode="r|") as tar:
            tar.extractall(into, **_data_filter())
    if reader.sha256.hexdigest() != manifest["sha256"]:
        raise SystemExit("the reassembled payload does not match its sha256: send the parts again")
    linked = link_cuda_libraries(into / "site")
    print(f"[gpu-payload] installed {manifest['files']} files ({manifest['unpacked'] / MiB:.0f} MiB) into {into}"
          + (f"; CUDA libraries linked from {linked}" if linked else ""), flush=True)
    return {"into": str(into), "cuda_libraries": linked}


def _data_filter() -> dict:
    """tarfile's ``data`` filter where this Python has it (3.12, and 3.11.4 on)."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def link_cuda_libraries(site: Path, search: list[str] | None = None) -> str | None:
    """``site/nvidia`` -> the first other ``nvidia`` package folder on ``search`` (sys.path): where
    onnxruntime's ``preload_dlls()`` looks for CUDA and cuDNN (beside its own package). None if
    ``site`` has no onnxruntime, already has ``nvidia``, or none is found."""
    if not (site / "onnxruntime").is_dir() or (site / "nvidia").exists():
        return None
    for entry in sys.path if search is None else search:
        candidate = Path(entry or ".") / "nvidia"
        if candidate.is_dir() and candidate.resolve() != (site / "nvidia").resolve():
            os.symlink(candidate.resolve(), site / "nvidia")
            return str(candidate.resolve())
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 bench/gpu_payload.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("pack", help="here: STAGE -> OUT/part-NN + OUT/payload.json")
    sp.add_argument("stage", type=Path)
    sp.add_argument("out", type=Path)
    sp.add_argument("--part-size", type=float, default=PART_SIZE / MiB, help="MiB per part (default 60)")
    sp = sub.add_parser("receive", help="there: check one part and keep it under --into")
    sp.add_argument("part", type=Path)
    sp.add_argument("--manifest", type=Path, help=f"default: {MANIFEST} beside the part")
    sp.add_argument("--into", type=Path, default=DEFAULT_INTO)
    sp = sub.add_parser("install", help="there: unpack every received part into --into")
    sp.add_argument("--into", type=Path, default=DEFAULT_INTO)
    args = p.parse_args(argv)
    if args.command == "pack":
        m = pack(args.stage, args.out, int(args.part_size * MiB))
        print(f"[gpu-payload] {m['files']} files, {m['unpacked'] / MiB:.1f} MiB -> {len(m['parts'])} part(s), "
              f"{m['size'] / MiB:.1f} MiB: " + ", ".join(f"{x['name']} {x['size'] / MiB:.1f} MiB" for x in m["parts"]))
    elif args.command == "receive":
        receive(args.part, args.manifest or args.part.parent / MANIFEST, args.into)
    else:
        install(args.into)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
