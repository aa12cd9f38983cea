"""Smoke run of the RP3D-Diag benchmark (``benchmarks/rp3d_diag.py``) at the tiny size: both
sides build, train and report; and the runner finds every benchmark.

No timing assertions (times depend on the machine); only that the table has both rows,
the times are finite and positive, and the two networks have the same parameter count.
"""

import io
import math

import numpy as np

from benchmarks import common, rp3d_diag
from benchmarks import run as bench_run


def test_runner_discovers_every_benchmark_in_order():
    found = bench_run.discover()
    assert [b.name for b in found] == ["rp3d", "decoder", "radfm", "auxol"]
    assert all("tiny" in b.sizes and "bench" in b.sizes for b in found)
    assert [o.name for b in found for o in b.options] == ["gen_iters", "auxol_iters", "auxol_bare"]


def test_tiny_benchmark_runs_both_sides():
    out = io.StringIO()
    reported = rp3d_diag.BENCHMARK.report(
        "tiny", warmup=0, iters=1, ceiling=1.0, out=out, ceiling_iters=2
    )
    table, report, ceiling = reported.tables["step"], reported.result, reported.ceiling
    lines = table.splitlines()
    assert sum(line.startswith("torch (eager)") for line in lines) == 1, table
    assert sum(line.startswith("radjax") for line in lines) == 1, table
    assert "torch/radjax" in lines[0] and "MFU" in lines[0]
    assert "speed ratio torch/radjax" in out.getvalue()

    assert set(report.results) == {"radjax", "torch"}
    for r in report.results.values():
        assert len(r.timing.times) == 1
        assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert math.isfinite(r.final_loss), r
    rj, th = report.results["radjax"], report.results["torch"]
    assert rj.params == th.params > 0
    assert rj.compile_s is not None and rj.compile_s > 0
    assert math.isfinite(ceiling) and ceiling > 0
    assert report.flops > 0 and report.analytic_flops > 0


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
