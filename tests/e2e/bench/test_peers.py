"""bench/peers: client shape policies, the docs writer, and each peer served for real."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from rnnserve.bench.peers import run as peers
from rnnserve.bench.serving import closed_loop, infer_requests, padded_length

F = 4


def seqs(lengths):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((t, F)).astype(np.float32) for t in lengths]


def test_shape_policies_pad_up_and_refuse_what_does_not_fit():
    assert [padded_length(t, "raw") for t in (1, 33)] == [1, 33]
    assert [padded_length(t, "bucket:32") for t in (1, 32, 33, 500)] == [32, 32, 64, 512]
    assert padded_length(7, "max:500") == 500
    with pytest.raises(ValueError, match="longer than max:500"):
        padded_length(501, "max:500")
    with pytest.raises(ValueError, match="unknown shape policy"):
        padded_length(3, "pad")


def test_padded_requests_carry_zero_padding_and_the_true_length():
    (s,) = seqs([5])
    (raw,) = infer_requests("m", [s], "raw")
    assert [i.name for i in raw.inputs] == ["input"] and list(raw.inputs[0].shape) == [1, 5, F]
    (req,) = infer_requests("m", [s], "bucket:32")
    assert [i.name for i in req.inputs] == ["input", "lengths"] and list(req.inputs[0].shape) == [1, 32, F]
    x = np.frombuffer(req.raw_input_contents[0], np.float32).reshape(1, 32, F)
    np.testing.assert_array_equal(x[0, :5], s)
    assert not x[0, 5:].any()
    assert np.frombuffer(req.raw_input_contents[1], np.int64).tolist() == [5]


def test_docs_section_is_replaced_between_its_markers(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# B\n\nintro\n")
    peers.write_doc(doc, "first table")
    peers.write_doc(doc, "second table")
    text = doc.read_text()
    assert text.startswith("# B\n\nintro\n") and "second table" in text and "first table" not in text
    assert text.count("<!-- peers:begin -->") == 1
    peers.write_doc(doc, "heavy table", "vowels-lstm128x2")  # another model: a section of its own
    text = doc.read_text()
    assert "second table" in text and "<!-- peers:vowels-lstm128x2:begin -->\nheavy table\n" in text


def test_only_the_benchmarks_own_models_are_built_when_absent(monkeypatch):
    from rnnserve.bundle.manifest import BundleError

    def missing(tag):
        raise BundleError(f"model {tag!r} is not in the BentoML model store")

    built = []
    monkeypatch.setattr("rnnserve.bundle.manifest.load", missing)
    monkeypatch.setattr(peers.subprocess, "run", lambda cmd, check: built.append(cmd))
    with pytest.raises(BundleError, match="not in the BentoML model store"):
        peers.ensure_model("someone-elses")
    assert built == []
    peers.ensure_model("vowels-lstm128x2")
    (cmd,) = built
    assert cmd[1:5] == ["-m", "rnnserve.cli", "prepare", "--name"] and cmd[5] == "vowels-lstm128x2"
    assert cmd[cmd.index("--hidden-size") + 1] == "128" and cmd[cmd.index("--num-layers") + 1] == "2"


@pytest.mark.e2e
def test_every_shape_policy_gets_the_same_answers_from_rnnserve(server, reference):
    sample = seqs([1, 17, 40, 99, 250])
    for shapes in ("raw", "raw+lengths", "bucket:32", "max:300"):
        assert peers.verify(server.grpc_url, infer_requests("tiny", sample, shapes), sample, reference) <= 1e-5
    result = asyncio.run(closed_loop(server.grpc_url, infer_requests("tiny", sample), 4, 1.0, 0.2))
    assert result["requests"] > 0 and result["errors"] == 0
    streamed = asyncio.run(closed_loop(server.grpc_url, infer_requests("tiny", sample), 4, 1.0, 0.2, stream=True))
    assert streamed["requests"] > 0 and streamed["errors"] == 0


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("config", ["triton_bucket32", "triton_ragged", "mlserver_no_batching", "mlserver_pad_max"])
def test_peer_serves_the_same_onnx_with_the_same_answers(config, tiny_bundle, reference):
    server, options, shapes = peers.CONFIGS[config]
    peers.setup(server)  # its own venv from bench/peers/requirements-<peer>.txt, once
    classes = tiny_bundle.manifest["outputs"][0]["shape"][1]
    sample = seqs([3, 30, 64, 120])
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))  # pinned as the benchmark pins it
    with peers.PeerProcess(server, "tiny", tiny_bundle.onnx_path, F, classes, options, cpus) as srv:
        requests = infer_requests("tiny", sample, shapes.replace("max:500", "max:128"))
        assert peers.verify(srv.grpc_url, requests, sample, reference) <= 1e-5
        before = peers.batch_counts(srv)
        result = asyncio.run(closed_loop(srv.grpc_url, requests, 8, 1.0, 0.2))
        assert result["requests"] > 0 and result["errors"] == 0
        if server == "triton":  # Triton's own metrics count the requests and model executions
            after = peers.batch_counts(srv)
            assert after[0] - before[0] >= result["requests"] and after[1] > before[1]
        if "--ragged" in options:  # requests of different lengths share an execution, answers unchanged
            assert after[1] - before[1] < after[0] - before[0]
            assert peers.verify(srv.grpc_url, requests * 4, sample * 4, reference, at_once=True) <= 1e-5
    assert srv.proc.poll() is not None  # stopped: the whole process group it started


def test_ratios_name_each_peer_configuration_that_rnnserve_is_not_ahead_of():
    def run(seq_s, p99):
        return {"64": {"throughput_seq_s": seq_s, "p99_ms": p99}}

    results = {"rnnserve": run(10, 5), "rnnserve_batch32": run(9, 3), "triton_a": run(8, 4), "triton_b": run(6, 9),
               "mlserver_a": run(7, 9)}
    lines = peers.ratios(results, 64).splitlines()
    assert "- at concurrency 64: rnnserve / best triton config (triton_a) throughput = **1.25x**; p99 5 ms vs 4 ms" \
        in lines
    assert lines[2].endswith("**no** (not against triton_a)")  # more throughput, but a higher p99
    assert lines[5].endswith("lower p99: **yes**")
    assert peers.ratios(results, 32) == ""


def test_rounds_rotate_the_order_so_no_configuration_always_runs_first():
    configs = ["rnnserve", "rnnserve_batch32", "triton_ragged", "triton_pad_max", "mlserver_pad_max"]
    rounds = peers.orders(configs, 3)
    assert rounds[0] == configs and all(sorted(r) == sorted(configs) for r in rounds)
    assert len({r[0] for r in rounds}) == 3  # a different first configuration in each round
    assert [r.index("rnnserve") for r in rounds] == [0, 4, 2]  # first, last, in the middle
    assert peers.orders(configs, 1) == [configs]


def test_the_table_shows_the_median_round_and_every_round():
    from rnnserve.bench.serving import median_run

    rounds = [{"throughput_seq_s": x, "p50_ms": 10.0, "p99_ms": p99, "errors": 0, "server_cpu_us_per_seq": 500.0,
               "client_padding_efficiency": 1.0} for x, p99 in ((900.0, 30.0), (1200.0, 20.0), (1000.0, 25.0))]
    picked = median_run(rounds)
    assert picked["throughput_seq_s"] == 1000.0 and picked["p99_ms"] == 25.0  # one whole run, not mixed
    results = {"rnnserve": {"32": {**picked, "rounds_seq_s": [r["throughput_seq_s"] for r in rounds]}}}
    row = peers.table(results, [32]).splitlines()[2]
    assert row.startswith("| rnnserve | 32 | 1,000 | 10 | 25 | 0 |") and row.endswith("| 900, 1,200, 1,000 |")


@pytest.mark.e2e
def test_a_run_of_rounds_reports_each_configurations_median_round(tiny_bundle, tmp_path):
    import json

    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))  # the test process stays as it was placed
    out = tmp_path / "peers.json"
    assert peers.main(["--model", "tiny", "--configs", "rnnserve,rnnserve_batch32", "--rounds", "3",
                       "--concurrency", "2,4", "--duration", "0.5", "--warmup", "0.2", "--requests", "64",
                       "--server-cpus", cpus, "--client-cpus", cpus, "--doc", "", "--out", str(out),
                       "--plot", str(tmp_path / "peers.png")]) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["rnnserve", "rnnserve_batch32"]  # the table keeps the configurations' order
    for by_c in results.values():
        assert list(by_c) == ["2", "4"]
        for r in by_c.values():
            rounds = r["rounds_seq_s"]
            assert len(rounds) == 3 and r["errors"] == 0 and r["max_abs_error"] <= 1e-5
            assert r["throughput_seq_s"] == sorted(rounds)[1]  # the median round's own figures
    assert (tmp_path / "peers.png").stat().st_size > 0
