"""What BentoML's traffic middleware costs per HTTP request, in process, without sockets or a model.

    .venv/bin/python -m rnnserve.bench.middleware --requests 200000 --rounds 3

A do-nothing ASGI app (one yield to the loop, then a two-message answer) is called the way uvicorn
calls an app, each request in its own task, ``--concurrency`` at a time; once bare, once under
BentoML's ``MaxConcurrencyMiddleware`` (what rnnserve's inference routes pass through in any case)
and once under ``TimeoutMiddleware`` on top of it (``traffic.timeout``, 30 s as
``server.request_timeout_s``). Per request: a task, a future and a timer it never cancels, so the
loop's timer heap grows with requests/s × timeout. Microseconds per request, per round; the
difference between the last two rows is the timeout's own cost. Pin it to one CPU (``taskset -c 1``)
so the figure is one core's."""

from __future__ import annotations

import argparse
import asyncio
import time

from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware

ANSWER = ({"type": "http.response.start", "status": 200, "headers": []},
          {"type": "http.response.body", "body": b"x"})


async def app(scope, receive, send) -> None:
    await asyncio.sleep(0)
    for message in ANSWER:
        await send(message)


STACKS = {
    "bare": lambda timeout: app,
    "max_concurrency": lambda timeout: MaxConcurrencyMiddleware(app, 1024),
    "max_concurrency+timeout": lambda timeout: TimeoutMiddleware(MaxConcurrencyMiddleware(app, 1024), timeout),
}


async def per_request_us(asgi, requests: int, concurrency: int) -> float:
    scope = {"type": "http", "path": "/v2/models/m/infer"}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message) -> None:
        pass

    loop = asyncio.get_running_loop()
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await loop.create_task(asgi(scope, receive, send))  # as uvicorn: one task per request

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return (time.perf_counter() - started) / requests * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rnnserve.bench.middleware", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    runs: dict[str, list[float]] = {name: [] for name in STACKS}

    async def measure() -> None:  # one loop for all rounds, as a worker's: BentoML's timers pile up in it
        for _ in range(args.rounds):
            for name, build in STACKS.items():
                runs[name].append(await per_request_us(build(args.timeout), args.requests, args.concurrency))

    asyncio.run(measure())
    print("| stack | µs per request (rounds) |\n|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
