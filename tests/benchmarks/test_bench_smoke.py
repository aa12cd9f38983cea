"""Smoke run of the RP3D-Diag benchmark (``benchmarks/rp3d_diag.py``) at the tiny size: every
row builds, trains and reports; the runner finds every benchmark and rewrites the summary
table of a markdown file; the shared helpers (ISA, ceilings of both frameworks, optional
torch.compile rows, several torch rows in one table) do what they say.

No timing assertions (times depend on the machine); only that the table has its rows, the
times are finite and positive, and the networks have the same parameter count.
``torch.compile`` is replaced by the identity in the benchmark runs (inductor's cold compile
takes 15-80 s on 2 cores): the compiled rows' plumbing is tested, not inductor.
"""

import io
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common, rp3d_diag
from benchmarks import run as bench_run


@pytest.fixture
def identity_compile(torch, monkeypatch):
    """``torch.compile`` as the identity: the compiled row runs the eager code."""
    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: fn)


def test_runner_discovers_every_benchmark_in_order():
    found = bench_run.discover()
    assert [b.name for b in found] == ["rp3d", "decoder", "radfm", "auxol"]
    assert all("tiny" in b.sizes and "bench" in b.sizes for b in found)
    assert [o.name for b in found for o in b.options] == [
        "gen_iters",
        "gen_compile",
        "auxol_iters",
        "auxol_bare",
    ]


def test_tiny_benchmark_runs_every_row(identity_compile):
    out = io.StringIO()
    reported = rp3d_diag.BENCHMARK.report(
        "tiny", warmup=0, iters=1, ceiling=1.0, out=out, ceiling_iters=2
    )
    table, report, ceiling = reported.tables["step"], reported.result, reported.ceiling
    lines = table.splitlines()
    assert [line.split("  ")[0] for line in lines[2:]] == [
        "torch (eager)",
        "torch.compile (inductor)",
        "radjax (jax.jit, XLA CPU)",
    ], table
    assert "torch/radjax" in lines[0] and "MFU" in lines[0]
    text = out.getvalue()
    assert "speed ratio torch/radjax" in text and "speed ratio torch.compile/radjax" in text
    assert f"machine: {common.machine_kind()}" in text
    ceilings = next(line for line in text.splitlines() if line.startswith("matmul ceiling"))
    assert ": jnp " in ceilings and ", torch " in ceilings, ceilings

    assert set(report.results) == {"radjax", "torch", "torch.compile"}
    for r in report.results.values():
        assert len(r.timing.times) == 1
        assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert math.isfinite(r.final_loss), r
    rj, th, tc = (report.results[k] for k in ("radjax", "torch", "torch.compile"))
    assert rj.params == th.params == tc.params > 0
    # same seed, same batch, same steps: the compiled (here: identity) copy trains like eager
    assert math.isclose(th.final_loss, tc.final_loss, rel_tol=1e-5)
    assert rj.compile_s is not None and rj.compile_s > 0 and tc.compile_s >= 0
    assert th.compile_s is None
    assert math.isfinite(ceiling) and ceiling > 0
    # the tiny model's measured ceiling beats the 1.0 handed in: MFU names a framework
    assert ceiling.framework in ("jnp", "torch") and ceiling.source in text
    assert report.flops > 0 and report.analytic_flops > 0
    (row,) = reported.summary
    assert row.table == "train step" and row.mfu > 0
    assert math.isclose(row.vs_eager, th.timing.median_s / rj.timing.median_s)
    assert math.isclose(row.vs_compiled, tc.timing.median_s / rj.timing.median_s)


def test_cpu_isa_names_the_vector_extensions():
    assert common.cpu_isa(frozenset({"avx2", "avx512f", "fma"})) == (
        "avx2, avx512f, no avx512_bf16, no amx"
    )
    flags = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    assert common.cpu_isa(flags) == "avx2, avx512f, avx512_bf16, amx_bf16 amx_tile"
    assert common.cpu_isa(frozenset()) == "ISA unknown"
    assert common.cpu_name() in common.machine_kind()


def test_ceilings_of_both_frameworks_and_the_higher_one(torch):
    found = common.measure_ceilings(64, 32, 48, iters=2)
    assert [c.framework for c in found] == ["jnp", "torch"]
    assert all(c.label == "(64x32) @ (32x48)" and c.gflops > 0 for c in found)
    assert found[1].timing.times and torch.get_num_threads() == common.cpu_threads()
    best = common.higher(common.Limit(5.0, "jnp", "a"), common.Limit(7.0, "torch", "b"), 6.0)
    assert best == 7.0 and best.framework == "torch" and best.source == "torch.matmul at b"
    assert common.higher(3.0).source == "given by the caller"
    lines = []
    got = common.print_ceilings(lines.append, [(64, 32, 48)], 1e9, 2)
    assert got == 1e9 and got.framework == "given"  # a higher given ceiling is kept
    assert lines[0].startswith("machine: ") and "jnp" in lines[1] and "torch" in lines[1]
    got = common.print_ceilings(lines.append, [(64, 32, 48)], 0.0, 2)
    assert got.framework in ("jnp", "torch") and got.shape == "(64x32) @ (32x48)"
    assert lines[-1].startswith(f"ceiling used for MFU: {got:.1f} GFLOP/s ({got.source}")


def _row(name, seconds):
    return common.StepResult(name, common.Timing((seconds,)), 10, final_loss=0.5)


def test_step_table_puts_every_torch_row_first_with_its_ratio():
    results = {"radjax": _row("rj", 0.5), "torch": _row("eager", 0.75)}
    results["torch.compile"] = _row("compiled", 0.25)
    headers, rows = common.step_table(results, 1e9, 10.0)
    assert [r[0] for r in rows] == ["eager", "compiled", "rj"]
    col = headers.index("torch/radjax")
    assert [r[col] for r in rows] == [1.5, 0.5, ""]
    assert common.ratios(results) == {"torch": 1.5, "torch.compile": 0.5}
    lines = []
    common.step_comparison(lines.append, results, 1e9, 10.0, "step")
    assert "step torch/radjax = 1.50 (radjax faster)" in lines
    assert "step torch.compile/radjax = 0.50 (torch faster)" in lines
    row = common.summary_row("t", results, 1e9, 10.0)
    assert (row.vs_eager, row.vs_compiled) == (1.5, 0.5) and math.isclose(row.mfu, 0.2)
    del results["torch.compile"]
    assert common.summary_row("t", results, 1e9, 10.0).vs_compiled is None


def test_time_rows_leaves_a_failing_optional_row_out():
    def broken():
        raise RuntimeError("inductor failed\nsecond line")

    fns = {"torch": lambda: 1, "torch.compile": broken, "radjax": lambda: np.float32(2)}
    timed = common.time_rows(fns, warmup=2, iters=3, check=lambda out: f"saw {sorted(out)}")
    assert set(timed.timings) == {"torch", "radjax"} and len(timed.timings["torch"].times) == 3
    assert timed.notes == [
        "torch.compile row left out: RuntimeError: inductor failed",
        "saw ['radjax', 'torch']",
    ]
    assert timed.outputs["torch"] == 1 and timed.first_s["radjax"] >= 0
    assert timed.compile_times({"radjax": 4.0}) == {"torch": None, "radjax": 4.0}
    with pytest.raises(RuntimeError, match="inductor failed"):
        common.time_rows({"torch": broken}, iters=1)  # a required row's failure propagates

    def disagree(outputs):
        raise AssertionError("rows disagree")

    with pytest.raises(AssertionError, match="rows disagree"):
        common.time_rows({"torch": lambda: 1}, iters=1, check=disagree)


def _cells(machine, benchmark, value):
    return [machine, benchmark, "bench", value] + ["x"] * (len(common.SUMMARY_HEADERS) - 4)


def test_summary_section_keeps_other_machines_rows():
    text = "# Title\n\nintro\n"
    first = common.rewrite_summary(text, [_cells("AMD", "a: t", "1"), _cells("AMD", "b: t", "2")])
    assert first.startswith(text) and first.count(common.SUMMARY_BEGIN) == 1
    second = common.rewrite_summary(first + "\nafter\n", [_cells("Intel", "a: t", "3")])
    third = common.rewrite_summary(second, [_cells("AMD", "a: t", "4"), _cells("AMD", "c: t", "5")])
    rows = common._section_rows(third.split(common.SUMMARY_BEGIN)[1])
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("AMD", "a: t", "4"),  # replaced in place
        ("AMD", "b: t", "2"),  # not run again: kept
        ("AMD", "c: t", "5"),  # new: after its machine's rows
        ("Intel", "a: t", "3"),  # another machine: kept
    ]
    assert third.startswith(text) and third.rstrip().endswith("after")
    header = third.split(common.SUMMARY_BEGIN)[1].splitlines()[1]
    assert header == "| " + " | ".join(common.SUMMARY_HEADERS) + " |"


@pytest.mark.parametrize("isolate", ["0", "1"])
def test_runner_runs_the_named_benchmarks_and_writes_their_rows(
    tmp_path, monkeypatch, capsys, isolate
):
    """In this process (--isolate 0), or each benchmark through its --child process, here
    stood in for by main() on the child's arguments (the fakes exist only in this process)."""
    ran = []
    children = []

    def child_process(argv, check):
        assert argv[:3] == [sys.executable, "-m", "benchmarks.run"]
        children.append(argv[argv.index("--child") + 1])
        bench_run.main(argv[3:])
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(bench_run.subprocess, "run", child_process)

    def fake(order, name):
        def report(size_name, *, warmup, iters, ceiling, out):
            ran.append(name)
            rows = (common.SummaryRow("train step", 1.25, None, 0.5),)
            return common.Reported({}, None, common.Limit(200.0, "torch", "s"), rows)

        return common.Benchmark(name, order, ("bench", "tiny"), report)

    benches = [fake(i, n) for i, n in enumerate(("one", "two", "three"))]
    monkeypatch.setattr(bench_run, "discover", lambda: benches)
    probe = (common.Limit(150.0, "torch", "p"), {"jnp": 120.0, "torch": 150.0})
    monkeypatch.setattr(bench_run, "header", lambda size_name: probe)
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    argv = ["--size", "tiny", "--only", "one", "three", "--summary", str(readme)]
    bench_run.main([*argv, "--isolate", isolate])
    assert ran == ["one", "three"] and "2 rows" in capsys.readouterr().out
    assert children == (["one", "three"] if isolate == "1" else [])
    rows = common._section_rows(readme.read_text().split(common.SUMMARY_BEGIN)[1])
    assert [r[1:4] for r in rows] == [["one: train step", "tiny", "1.25"],
                                      ["three: train step", "tiny", "1.25"]]  # fmt: skip
    assert rows[0][0] == common.machine_kind()
    assert rows[0][4:8] == ["–", "50.0 %", "200 (torch)", "120 / 150"]


def test_analytic_shapes_and_helpers():
    size = rp3d_diag.SIZES["bench"]
    shapes = rp3d_diag.matmul_shapes(size)
    # ResNet-50: 1 stem + 16 blocks x 3 convs + 4 projections; 1 encoder layer (8); head (2).
    assert len(shapes) == 1 + 16 * 3 + 4 + 8 + 2
    assert shapes[-1] == (size.batch, 2048, size.num_classes)
    assert rp3d_diag.typical_matmul(size) in shapes
    assert common.weighted_median_shape([(1, 1, 1), (10, 10, 10)]) == (10, 10, 10)
    t = common.time_calls(lambda: np.float32(1.0), warmup=0, iters=3, sync=lambda x: x)
    assert len(t.times) == 3 and t.min_ms <= t.median_ms <= t.max_ms
    assert common.format_table(["a", "b"], [["x", 1.5]]).splitlines()[2].startswith("x")


def test_steal_fraction_reads_proc_stat(tmp_path, monkeypatch):
    """Steal = the 8th field of /proc/stat's cpu line, over the sum of the first eight."""
    stat = tmp_path / "stat"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(stat if path == "/proc/stat" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    stat.write_text("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1 2 3\n")
    before = common.cpu_counters()
    stat.write_text("cpu  160 0 70 900 0 0 0 70 0 0\ncpu0 1 2 3\n")
    after = common.cpu_counters()
    assert before == (1000, 50) and after == (1200, 70)
    assert math.isclose(common.steal_fraction(before, after), 20 / 200)
    assert (
        common.steal_fraction(None, after) is None and common.steal_fraction(after, after) is None
    )
