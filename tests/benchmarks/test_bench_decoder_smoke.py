"""Smoke run of the decoder benchmark (``benchmarks/decoder.py``) at the tiny size.

No timing assertions: only that both tables have both rows, every time is finite and
positive, the greedy tokens of radjax and transformers are identical, and both sides train
the same number of parameters.
"""

import io
import math

from benchmarks import decoder


def test_tiny_decoder_benchmark_runs_both_sides():
    out = io.StringIO()
    reported = decoder.BENCHMARK.report(
        "tiny", warmup=0, iters=1, ceiling=1.0, out=out, ceiling_iters=2
    )
    gen_table, train_table = reported.tables["generation"], reported.tables["train"]
    report, ceiling = reported.result, reported.ceiling
    size = decoder.SIZES["tiny"]
    assert (size.layers, size.hidden, size.vocab, size.new_tokens) == (2, 64, 256, 8)
    for table in (gen_table, train_table):
        lines = table.splitlines()
        assert sum(line.startswith("torch") for line in lines) == 1, table
        assert sum(line.startswith("radjax") for line in lines) == 1, table
    assert "radjax/torch" in gen_table.splitlines()[0]
    assert "decode tok/s" in gen_table.splitlines()[0]
    assert "MFU" in train_table.splitlines()[0]
    assert "greedy tokens identical: True" in out.getvalue()

    assert report.tokens_equal
    assert set(report.generation) == set(report.train) == {"radjax", "torch"}
    for g in report.generation.values():
        assert g.tokens == size.batch * size.new_tokens
        for t in g.total.times + g.prefill.times:
            assert math.isfinite(t) and t > 0, g
        assert math.isfinite(g.tok_s) and g.tok_s > 0
    for r in report.train.values():
        assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert math.isfinite(r.final_loss), r
    rj, th = report.train["radjax"], report.train["torch"]
    assert rj.params == th.params > 0
    assert rj.compile_s > 0 and report.generation["radjax"].compile_s >= 0
    assert report.flops > 0 and math.isfinite(ceiling) and ceiling > 0
