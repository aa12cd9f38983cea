"""Smoke run of the RadFM benchmark (``benchmarks/radfm.py``) at the tiny size: both vision
rows, finite positive times and losses, equal parameter counts, and the throughput row."""

import io
import math

from benchmarks import radfm


def test_tiny_radfm_benchmark_runs_both_sides():
    out = io.StringIO()
    reported = radfm.BENCHMARK.report("tiny", warmup=0, iters=1, ceiling=100.0, out=out)
    vision_table, model_table = reported.tables["vision"], reported.tables["model"]
    lines = vision_table.splitlines()
    assert sum(line.startswith("torch") for line in lines) == 1, vision_table
    assert sum(line.startswith("radjax") for line in lines) == 1, vision_table
    assert "tokens/s" in model_table.splitlines()[0] and "images/s" in model_table
    assert "vision speed ratio torch/radjax" in out.getvalue()

    size = radfm.SIZES["tiny"]
    results, flops, _ = radfm.run_vision(size, warmup=0, iters=1)
    assert results["radjax"].params == results["torch"].params > 0
    assert flops > 0
    for r in results.values():
        assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert math.isfinite(r.final_loss), r
    model = radfm.run_model(size, warmup=0, iters=1)
    assert model.params > results["radjax"].params and math.isfinite(model.loss)
    assert model.flops > 0 and all(t > 0 for t in model.timing.times)
