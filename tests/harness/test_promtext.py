"""bench/promtext: the /metrics reader used by benchmarks and tests."""

from rnnserve.harness.promtext import samples, total

PAGE = """# HELP rnnserve_timesteps Timesteps
# TYPE rnnserve_timesteps counter
rnnserve_timesteps_total{kind="real",model="tiny"} 10.0
rnnserve_timesteps_total{kind="computed",model="tiny"} 12.0
# HELP nv_inference_exec_count Triton-style counter without the _total suffix
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="tiny",version="1"} 7
nv_inference_exec_count{model="other",version="1"} 5
# HELP rnnserve_batch_sequences Sequences per batch
# TYPE rnnserve_batch_sequences histogram
rnnserve_batch_sequences_bucket{le="1.0",model="tiny"} 3.0
rnnserve_batch_sequences_bucket{le="+Inf",model="tiny"} 4.0
rnnserve_batch_sequences_count{model="tiny"} 4.0
rnnserve_batch_sequences_sum{model="tiny"} 9.0
"""


def test_counters_are_summed_over_label_sets_and_filtered_by_labels():
    assert total(PAGE, "rnnserve_timesteps_total") == 22.0
    assert total(PAGE, "rnnserve_timesteps_total", kind="computed") == 12.0
    assert total(PAGE, "nv_inference_exec_count") == 12.0
    assert total(PAGE, "nv_inference_exec_count", model="tiny") == 7.0


def test_histogram_samples_keep_their_labels_and_missing_names_sum_to_zero():
    assert samples(PAGE, "rnnserve_batch_sequences_bucket", le="1.0") == [({"le": "1.0", "model": "tiny"}, 3.0)]
    assert total(PAGE, "rnnserve_batch_sequences_count") == 4.0
    assert total(PAGE, "rnnserve_no_such_metric") == 0.0 and samples(PAGE, "rnnserve_timesteps") == []
