"""Smoke run of the decoder benchmark (``benchmarks/decoder.py``) at the tiny size.

No timing assertions: only that the generation table has its two rows and the train table its
three (torch eager, torch.compile, radjax), every time is finite and positive, the greedy
tokens of radjax and transformers are identical, every side trains the same number of
parameters, and the summary has a line per table. ``torch.compile`` is the identity here
(inductor's cold compile takes 15-80 s on 2 cores): the compiled row's plumbing is tested.
"""

import io
import math

import pytest

from benchmarks import decoder


@pytest.fixture
def identity_compile(torch, monkeypatch):
    """``torch.compile`` as the identity: the compiled row runs the eager code."""
    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: fn)


def _names(table: str) -> list[str]:
    return [line.split("  ")[0] for line in table.splitlines()[2:]]


def test_tiny_decoder_benchmark_runs_every_row(identity_compile):
    out = io.StringIO()
    reported = decoder.BENCHMARK.report(
        "tiny", warmup=0, iters=1, ceiling=1.0, out=out, ceiling_iters=2
    )
    gen_table, train_table = reported.tables["generation"], reported.tables["train"]
    report, ceiling = reported.result, reported.ceiling
    size = decoder.SIZES["tiny"]
    assert (size.layers, size.hidden, size.vocab, size.new_tokens) == (2, 64, 256, 8)
    assert _names(gen_table) == ["torch generate (eager)", "radjax generate (jax.jit)"]
    assert _names(train_table) == [
        "torch (eager)",
        "torch.compile (inductor)",
        "radjax (jax.jit, XLA CPU)",
    ]
    assert "radjax/torch" in gen_table.splitlines()[0]
    assert "decode tok/s" in gen_table.splitlines()[0]
    assert "MFU" in train_table.splitlines()[0]
    text = out.getvalue()
    assert "greedy tokens identical: True" in text
    assert "train speed ratio torch.compile/radjax" in text and "machine: " in text
    assert decoder.GEN_COMPILE_OFF in text  # --gen_compile 0: the generation row is opt-in

    assert report.tokens_equal
    assert set(report.generation) == {"radjax", "torch"}
    assert set(report.train) == {"radjax", "torch", "torch.compile"}
    for g in report.generation.values():
        assert g.tokens == size.batch * size.new_tokens
        for t in g.total.times + g.prefill.times:
            assert math.isfinite(t) and t > 0, g
        assert math.isfinite(g.tok_s) and g.tok_s > 0
    for r in report.train.values():
        assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert math.isfinite(r.final_loss), r
    rj, th, tc = (report.train[k] for k in ("radjax", "torch", "torch.compile"))
    assert rj.params == th.params == tc.params > 0
    assert math.isclose(th.final_loss, tc.final_loss, rel_tol=1e-5)  # same weights, same steps
    assert rj.compile_s > 0 and report.generation["radjax"].compile_s >= 0
    assert report.flops > 0 and math.isfinite(ceiling) and ceiling > 0

    gen_row, train_row = reported.summary
    rg, tg = report.generation["radjax"], report.generation["torch"]
    assert gen_row.table == "generation tok/s" and gen_row.mfu is None
    assert math.isclose(gen_row.vs_eager, rg.tok_s / tg.tok_s)
    assert train_row.table == "train step" and train_row.vs_compiled is not None


def test_compiled_generate_row_goes_through_torch_compile(torch, monkeypatch):
    """``--gen_compile 1``: transformers' static-cache generate calls ``torch.compile`` on
    the CPU (counted here, the identity in its place) and gives radjax's tokens."""
    compiled = []

    def count(fn, *args, **kwargs):
        compiled.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", count)
    size = decoder.SIZES["tiny"]
    reference, model = decoder.build_pair(size)
    gen, notes = decoder.run_generation(size, reference, model, iters=1, compiled=True)
    assert notes == [] and compiled and compiled[0].get("mode") == "default"
    assert list(gen) == ["radjax", "torch", "torch.compile"]  # tokens asserted identical
    tc = gen["torch.compile"]
    assert tc.prefill is None and tc.compile_s >= 0 and tc.tok_s > 0
    report = decoder.Report(size, 1, 1, gen, {}, 1.0, "xla", 1.0, True)
    names = [row[0] for row in decoder.generation_rows(report)[1]]
    assert names == [decoder.GEN_ROWS[k] for k in ("torch", "torch.compile", "radjax")]
