"""Smoke run of the RadFM benchmark (``benchmarks/radfm.py``) at the tiny size: the three
vision rows (torch eager, torch.compile -- the identity here, inductor's cold compile takes
15-80 s on 2 cores -- and radjax), finite positive times and losses, equal parameter counts,
the throughput row and a summary line per table."""

import io
import math

import pytest

from benchmarks import radfm


@pytest.fixture
def identity_compile(torch, monkeypatch):
    """``torch.compile`` as the identity: the compiled row runs the eager code."""
    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: fn)


def test_tiny_radfm_benchmark_runs_every_row(identity_compile):
    out = io.StringIO()
    reported = radfm.BENCHMARK.report("tiny", warmup=0, iters=1, ceiling=100.0, out=out)
    vision_table, model_table = reported.tables["vision"], reported.tables["model"]
    names = [line.split("  ")[0] for line in vision_table.splitlines()[2:]]
    assert names == ["torch (eager)", "torch.compile (inductor)", "radjax (jax.jit, XLA CPU)"]
    assert "tokens/s" in model_table.splitlines()[0] and "images/s" in model_table
    text = out.getvalue()
    assert "vision speed ratio torch/radjax" in text
    assert "vision speed ratio torch.compile/radjax" in text
    assert "ceiling used for MFU: 100.0 GFLOP/s (given by the caller" in text
    vision_row, model_row = reported.summary
    assert vision_row.vs_eager > 0 and vision_row.vs_compiled > 0 and vision_row.mfu > 0
    assert model_row.vs_eager is None and model_row.vs_compiled is None and model_row.mfu > 0

    size = radfm.SIZES["tiny"]
    results, flops, _, notes = radfm.run_vision(size, warmup=0, iters=1)
    assert set(results) == {"radjax", "torch", "torch.compile"} and notes == []
    assert results["radjax"].params == results["torch"].params > 0
    assert results["torch.compile"].params == results["torch"].params
    assert flops > 0
    for r in results.values():
        assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert math.isfinite(r.final_loss), r
    assert math.isclose(results["torch"].final_loss, results["torch.compile"].final_loss)
    model = radfm.run_model(size, warmup=0, iters=1)
    assert model.params > results["radjax"].params and math.isfinite(model.loss)
    assert model.flops > 0 and all(t > 0 for t in model.timing.times)
