"""bench/profile: each py-spy sample is charged to the innermost part of the hot path it is in."""

from __future__ import annotations

from rnnserve.bench.profile import part_of, summarise

LOOP = "run_forever (asyncio/base_events.py:607);Handle._run (asyncio/events.py:80)"


def test_a_sample_goes_to_its_innermost_known_part():
    infer = f"{LOOP};InferenceFastPath.__call__ (service/transports/http.py:293)"
    assert part_of(infer) == "core, registry, transports"
    assert part_of(f"{infer};decode_predict (service/codecs/json.py:96)") == "wire codec + validation"
    assert part_of(f"{infer};inc (prometheus_client/values.py:40)") == "prometheus writes"
    assert part_of("_worker (concurrent/futures/thread.py:83);run (service/runtime/onnx.py:68);"
                   "run (onnxruntime/capi/onnxruntime_inference_collection.py:266)").startswith("model")
    assert part_of(LOOP).startswith("asyncio loop")
    # BentoML's own worker module is not rnnserve's service/ package
    assert part_of("main (_bentoml_impl/worker/service.py:242)") == "BentoML middleware"
    assert part_of("<module> (somewhere.py:1)") == "other"
    # the model's thread waking the loop is not the loop's time, though its innermost frame is asyncio's
    handoff = ("_worker (concurrent/futures/thread.py:83);BucketPolicy.run (service/batching/scheduler.py:153);"
               "deliver (service/batching/scheduler.py:284);BaseEventLoop.call_soon_threadsafe "
               "(asyncio/base_events.py:812);BaseSelectorEventLoop._write_to_self (asyncio/selector_events.py:139)")
    assert part_of(handoff).startswith("answers handed to the loop")


def test_shares_add_up_over_the_collapsed_stacks():
    raw = "\n".join([f"{LOOP} 3", f"{LOOP};observe (prometheus_client/metrics.py:1) 1", "garbage line", ""])
    shares = summarise(raw)
    assert shares == {"prometheus writes": 0.25, part_of(LOOP): 0.75}

