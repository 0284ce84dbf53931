"""The middleware cost tool runs every stack and reports a positive figure for each round."""

from __future__ import annotations

from rnnserve.bench import middleware


def test_every_stack_is_measured_each_round(capsys):
    assert middleware.main(["--requests", "500", "--concurrency", "8", "--rounds", "2", "--timeout", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(middleware.STACKS)
    for row in rows:
        values = [float(v) for v in row.split(" | ")[1].rstrip(" |").split(", ")]
        assert len(values) == 2 and all(v > 0 for v in values)
