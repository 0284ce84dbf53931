"""The README's examples work as printed: its curl commands and Python clients run against a real
server serving the default `vowels` model (trained and exported here), only the ports changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnserve.harness.launch import ROOT, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
README = (ROOT / "README.md").read_text()
OWN_MODEL = "## Serve your own model"  # its examples export and serve their own models (their own test)
OWN_SECTION = README.split(OWN_MODEL, 1)[1].split("\n## ", 1)[0]
GENERATE = "## Generate text"  # its examples need the charlm model (their own test)
GENERATE_SECTION = README.split(GENERATE, 1)[1].split("\n## ", 1)[0]


def blocks(language: str, text: str = README.replace(OWN_SECTION, "").replace(GENERATE_SECTION, "")) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def vowels(bentoml_home, tmp_path_factory):
    from rnnserve.export.package import export_bundle
    from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
    from rnnserve.models.train import TrainConfig

    work = tmp_path_factory.mktemp("vowels")
    train_to_dir("JapaneseVowels", work, TrainConfig(epochs=8, min_refit_epochs=8), baseline=False)
    export_bundle(work / CHECKPOINT, "vowels")
    with ServerProcess("vowels") as srv:
        yield srv


def localise(text: str, srv: ServerProcess) -> str:
    return text.replace("127.0.0.1:3000", f"127.0.0.1:{srv.http_port}").replace(
        "127.0.0.1:8001", f"127.0.0.1:{srv.grpc_port}")


def curl_commands(text: str | None = None) -> list[str]:
    """Each curl command of the bash blocks, its continuation lines and quoted multi-line JSON included."""
    out = []
    for block in blocks("bash") if text is None else blocks("bash", text):
        current = None
        for line in block.splitlines():
            if current is None and line.startswith("curl "):
                current = line
            elif current is not None:
                current += "\n" + line
            if current is not None and current.count("'") % 2 == 0 and not current.rstrip().endswith("\\"):
                out.append(current.split("  #")[0])
                current = None
    return out


def test_the_curl_examples(vowels):
    commands = curl_commands()
    assert len(commands) >= 3
    for command in commands:
        out = subprocess.run(["bash", "-c", "curl -f -S " + localise(command, vowels).removeprefix("curl ")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (command, out.stderr)
        assert out.stdout.strip(), command


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_the_python_clients(vowels, index, tmp_path):
    if "ssl=True" in blocks("python")[index]:
        pytest.skip("the TLS client needs a server with TLS: tests/e2e/service/test_security.py runs it")
    code = localise(blocks("python")[index], vowels)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
    if "sequence_id" in code:  # the streaming example: one line per chunk, ending on the whole utterance
        lines = out.stdout.strip().splitlines()
        assert len(lines) >= 2 and all(line.startswith("after ") for line in lines)


def test_the_train_on_your_own_files_example_works_as_printed(tmp_path, bentoml_home):
    """The section's bash block, line by line in an empty directory (`.venv/bin/` is this venv's), and
    the lines its output excerpt shows before the `...`: the data, task and split lines verbatim."""
    section = README.split("## Train on your own files", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0].splitlines()
    excerpt = re.findall(r"```text\n(.*?)```", section, flags=re.S)[0].split("...")[0].strip().splitlines()
    outputs = []
    for line in commands:
        command = line.split("  #")[0].strip().replace(".venv/bin/", f"{Path(sys.executable).parent}/")
        out = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, (line, out.stderr[-3000:])
        outputs.append(out)
    assert outputs[1].stdout.splitlines()[0] == "id,time,dim_0,target"
    train_lines = outputs[2].stderr.splitlines()
    assert all(line in train_lines for line in excerpt), (excerpt, train_lines[:5])
    assert train_lines[-1].startswith("[rnnserve] verdict: test RMSE ")
    history = json.loads((tmp_path / "artifacts" / "covid" / "history.json").read_text())
    assert history["task"] == "regression" and history["test_rmse"] > 0
    assert "stored covid:" in outputs[3].stderr


def test_the_serve_your_own_model_example_works_as_printed(bentoml_home, tmp_path):
    """The section's my_models.py exports both models through the gate; a server of both answers its
    tritonclient example (only the ports changed)."""
    export_code, client_code = blocks("python", OWN_SECTION)
    (tmp_path / "my_models.py").write_text(export_code)
    out = subprocess.run([sys.executable, "my_models.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line.split(":")[0] for line in out.stdout.split()] == ["sentiment", "forecast"]
    assert "RNNSERVE_MODELS=sentiment,forecast .venv/bin/rnnserve serve" in blocks("bash", OWN_SECTION)[0]
    with ServerProcess("sentiment", {"RNNSERVE_MODELS": "sentiment,forecast"}) as srv:
        done = subprocess.run([sys.executable, "-c", localise(client_code, srv)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(1, 24, 1)" in done.stdout and ("negative" in done.stdout or "positive" in done.stdout)
    assert [line.split(":")[0] for line in done.stdout.splitlines()[-3:]] == ["steps 0..9", "steps 10..19",
                                                                            "steps 20..29"]


def test_the_generate_text_example_works_as_printed(bentoml_home):
    """The section's commands against a `charlm` trained for seconds (same code as `make charlm`, a
    smaller budget), served as the section serves it: both curl commands and the gRPC client."""
    from rnnserve.models import charlm

    make, serve = blocks("bash", GENERATE_SECTION)[0].splitlines()
    assert make.startswith("make charlm ") and "charlm:" in (ROOT / "Makefile").read_text()
    settings = dict(w.split("=", 1) for w in serve.split("  #")[0].split() if "=" in w)
    assert serve.split("  #")[0].split()[len(settings):] == [".venv/bin/rnnserve", "serve", "--model", "charlm"]
    model, vocab, held_out = charlm.train(minutes=0.05, hidden=32, batch=16, steps=32, log=lambda line: None)
    charlm.export(model, vocab, held_out, max_length=40)
    with ServerProcess("charlm", settings) as srv:
        commands = curl_commands(GENERATE_SECTION)
        assert len(commands) == 2
        for command in commands:
            out = subprocess.run(["bash", "-c", "curl -f -S " + localise(command, srv).removeprefix("curl ")],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, (command, out.stderr)
            lines = [line for line in out.stdout.splitlines() if line]
            if "generate_stream" in command:
                events = [json.loads(line.removeprefix("data: ")) for line in lines]
                assert events[-1]["finish_reason"] in ("length", "stop")
            else:
                answer = json.loads(out.stdout)
                assert answer["model_name"] == "charlm" and len(answer["text_output"]) == 60
        (code,) = blocks("python", GENERATE_SECTION)
        done = subprocess.run([sys.executable, "-c", localise(code, srv)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.rstrip("\n")) >= 30  # 60 characters, some of them whitespace
