import pytest

from rnnserve.service.runtime.onnx import CPU, CUDA, Runtime, confirm_provider, select_providers


def test_cuda_is_chosen_when_onnxruntime_offers_it():
    providers, reason = select_providers(["TensorrtExecutionProvider", CUDA, CPU], "auto")
    assert providers == [CUDA, CPU] and "CUDA" in reason


def test_cpu_fallback_says_why():
    providers, reason = select_providers(["AzureExecutionProvider", CPU], "auto")
    assert providers == [CPU] and "falling back to CPU" in reason


def test_cpu_can_be_forced_on_a_gpu_host():
    assert select_providers([CUDA, CPU], "cpu")[0] == [CPU]


def test_requiring_cuda_without_it_is_a_clear_error():
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        select_providers([CPU], "cuda")


def test_a_cuda_provider_that_could_not_start_is_an_error_when_required_and_said_when_not():
    """onnxruntime-gpu on a host without a usable GPU offers CUDA and starts the session on CPU."""
    with pytest.raises(RuntimeError, match="could not start its CUDA provider"):
        confirm_provider("cuda", [CUDA, CPU], CPU, "CUDAExecutionProvider available")
    assert "serving on CPU" in confirm_provider("auto", [CUDA, CPU], CPU, "CUDAExecutionProvider available")
    assert confirm_provider("cuda", [CUDA, CPU], CUDA, "ok") == "ok"
    assert confirm_provider("cpu", [CPU], CPU, "forced") == "forced"


def test_runtime_reads_io_names_from_the_manifest_logs_provider_and_calibrates(tiny_bundle, caplog):
    caplog.set_level("INFO", logger="rnnserve.runtime")
    rt = Runtime(tiny_bundle.onnx_path, tiny_bundle.input_names, tiny_bundle.output_name, "auto")
    assert rt.provider == CPU and "falling back to CPU" in caplog.text
    cost = rt.calibrate(tiny_bundle.signature.random_batch, max_rows=16, repeats=1)
    assert cost.per_step > 0 and cost.per_row_step > 0
    assert cost.cost(16, 100) > cost.cost(1, 100) > cost.cost(1, 10)
    with pytest.raises(Exception, match="nosuch"):
        Runtime(tiny_bundle.onnx_path, ("nosuch", tiny_bundle.input_names[1]), tiny_bundle.output_name).run(*_one())


def _one():
    import numpy as np

    return np.zeros((1, 2, 4), np.float32), np.array([2])


@pytest.mark.gpu
def test_cuda_provider_is_used_on_a_gpu_host(tiny_bundle):
    ort = pytest.importorskip("onnxruntime")
    if CUDA not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider (CPU-only onnxruntime or no GPU)")
    rt = Runtime(tiny_bundle.onnx_path, tiny_bundle.input_names, tiny_bundle.output_name, "cuda")
    assert rt.provider == CUDA


def test_default_threads_divide_the_process_cpus_among_the_workers(monkeypatch):
    from rnnserve.service.runtime import onnx

    monkeypatch.setattr(onnx, "usable_cpus", lambda: 8)
    assert [onnx.default_threads(0, w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert onnx.default_threads(3, 8) == 3  # asked for: as asked


def test_runtime_takes_its_share_of_the_cpus(tiny_bundle, monkeypatch):
    from rnnserve.service.runtime import onnx

    monkeypatch.setattr(onnx, "usable_cpus", lambda: 4)
    assert Runtime(tiny_bundle.onnx_path, tiny_bundle.input_names, tiny_bundle.output_name, workers=2).threads == 2


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, 8),  # v2, no limit: the CPU set
    ({"cpu.max": "250000 100000\n"}, 3),  # v2, a 2.5-CPU limit: rounded up
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),  # v1, no limit
    ({"cpu.max": "3200000 100000\n"}, 8),  # a limit above the CPU set: the CPU set
    ({}, 8),  # no cgroup files
])
def test_usable_cpus_is_the_cpu_set_capped_by_the_cgroup_quota(tmp_path, monkeypatch, files, expected):
    from rnnserve.service.runtime import onnx

    monkeypatch.setattr(onnx.os, "sched_getaffinity", lambda pid: set(range(8)))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert onnx.usable_cpus(tmp_path) == expected
