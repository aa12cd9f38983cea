"""``benchmarks.xla_flags``: the XLA CPU options sweep (worker rows, the fastest round, the
table, a flag XLA does not know). No timing assertions."""

import math

from benchmarks import xla_flags


def test_the_worker_times_every_model_at_tiny_size():
    rows = xla_flags.worker("tiny", iters=1)
    assert set(rows) == set(xla_flags.MODELS)
    for name, row in rows.items():
        assert row["ms"] > 0 and row["compile_s"] > 0, name
        assert math.isfinite(row["value"]), name


def test_an_unknown_flag_is_a_failed_row_not_a_crash(monkeypatch):
    monkeypatch.setitem(xla_flags.CANDIDATES, "bogus", "--xla_cpu_no_such_option=true")
    res = xla_flags._run_worker("bogus", "tiny", iters=1, timeout=300)
    assert isinstance(res, str) and res.startswith("failed (exit"), res


def _row(ms: float) -> dict:
    return {"ms": ms, "compile_s": 1.0, "value": 0.5}


def test_each_model_keeps_its_fastest_round_and_the_table_divides_by_default():
    rounds = [
        {"rp3d train": _row(30.0), "decoder train": _row(10.0)},
        "timed out after 5 s",
        {"rp3d train": _row(20.0), "decoder train": _row(12.0)},
    ]
    best = xla_flags.best_of(rounds)
    assert best == {"rp3d train": _row(20.0), "decoder train": _row(10.0)}
    assert xla_flags.best_of(["failed (exit 1): x", "timed out"]) == "failed (exit 1): x"

    models = {m: _row(40.0) for m in xla_flags.MODELS}
    fast = {m: _row(10.0) for m in xla_flags.MODELS}
    lines = xla_flags.table({"default": models, "fast": fast, "broken": "failed (exit 1): y"})
    fast_rows = [line.split() for line in lines if " fast " in f" {line} "]
    assert len(fast_rows) == len(xla_flags.MODELS)
    assert all("4.00" in row for row in fast_rows)
    assert sum("failed (exit 1): y" in line for line in lines) == len(xla_flags.MODELS)
