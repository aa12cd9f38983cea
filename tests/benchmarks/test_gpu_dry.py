"""``benchmarks/gpu.sh --cpu``: the GPU benchmark's dry run, end to end, in subprocesses.

* The whole dry run (tiny shapes, f32, every model and implementation) writes its report to
  ``--out`` and prints it: every row is ``ok`` with finite positive numbers that agree with
  each other (throughput = items / step time, TFLOP/s = the analytic FLOPs / step time, MFU =
  TFLOP/s / peak), except RadFM's torch rows (``n/a``: no PyTorch RadFM).
  ``--batch-for sam=2`` doubles SAM's batch (its throughput counts 2 images a step).
* A model given a time limit it cannot meet is killed and reported as ``timeout``; the model
  after it still gets its row (from a fresh worker) and the exit code says a row failed.

Without torch / transformers / einops the torch rows read ``skipped`` / ``missing`` and only the
radjax rows are checked. No timing assertions.
"""

import dataclasses
import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks import gpu

REPO = pathlib.Path(__file__).parents[2]
HAS_TORCH = all(importlib.util.find_spec(p) for p in ("torch", "transformers", "einops"))
NUMBERS = ("ms/step", "min", "max", "throughput", "TFLOP/s", "MFU peak", "MFU meas")


def _run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "gpu_bench.txt"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--cpu", "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return proc, out.read_text()


def _impl(name: str) -> str:
    if name.startswith("radjax"):
        return "radjax"
    return "torch.compile" if name.startswith("torch.compile") else "torch"


def _rows(report: str) -> dict[tuple[str, str], dict[str, str]]:
    """The table's rows by (model, implementation key), each {column header: cell}."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    headers = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        row = dict(zip(headers, re.split(r"\s{2,}", line.strip()), strict=True))
        rows[(row["model"], _impl(row["implementation"]))] = row
    return rows


def _value(cell: str) -> float:
    return float(cell.split()[0].rstrip("%"))


def _check_ok(model: str, row: dict[str, str], size=None) -> None:
    assert row["status"] == "ok", row
    values = {k: _value(row[k]) for k in NUMBERS}
    assert all(math.isfinite(v) and v > 0 for v in values.values()), row
    assert values["min"] <= values["ms/step"] <= values["max"], row
    size, spec = size or gpu.SIZES["cpu"][model], gpu.SPECS[model]
    step_s = values["ms/step"] / 1e3
    assert row["throughput"].endswith(f" {spec.unit}/s"), row
    assert math.isclose(values["throughput"], spec.items(size) / step_s, rel_tol=2e-3), row
    tflops = spec.flops(size) / step_s / 1e12
    assert math.isclose(values["TFLOP/s"], tflops, rel_tol=2e-3), row
    assert math.isclose(values["MFU peak"], 100 * tflops / gpu.PEAK_TFLOPS, rel_tol=1e-2), row
    if row["implementation"].startswith("torch"):
        assert _value(row["time/radjax"]) > 0, row
    if row["implementation"] != "torch eager":
        assert _value(row["compile s"]) >= 0, row


def test_gpu_module_is_not_a_cpu_benchmark():
    assert not hasattr(gpu, "BENCHMARK")


@pytest.mark.slow  # ~50 s on 2 idle cores with a warm XLA cache
def test_dry_run_reports_every_row(tmp_path):
    proc, report = _run(tmp_path, "--batch-for", "sam=2")
    rows = _rows(report)
    sizes = dict(gpu.SIZES["cpu"])
    sizes["sam"] = dataclasses.replace(sizes["sam"], batch=2)
    assert set(rows) == {(m, i) for m in gpu.MODELS for i in gpu.IMPLS}, report
    assert "MFU peak: against 989 TFLOP/s" in report, report
    assert re.search(r"measured ceiling jnp float32 \(1024x1024\) @ \(1024x1024\): [0-9.]+", report)
    for model in gpu.MODELS:
        _check_ok(model, rows[(model, "radjax")], sizes[model])
        for impl in ("torch", "torch.compile"):
            row = rows[(model, impl)]
            if model == "radfm":
                assert row["status"] == "n/a", row
            elif HAS_TORCH:
                _check_ok(model, row, sizes[model])
    assert "wall time" in report and "(finished)" in report, report
    if HAS_TORCH or importlib.util.find_spec("torch") is None:  # else torch rows are 'missing'
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows[("vit3d", "radjax")]["ms/step"] in proc.stdout  # the table is printed too


def test_model_over_its_limit_is_killed_and_the_next_still_runs(tmp_path):
    # radjax's worker only: the driver kills and restarts every implementation's worker alike
    proc, report = _run(
        tmp_path, "--models", "llama7b,unet", "--impls", "radjax", "--timeout-for", "llama7b=0.01"
    )
    rows = _rows(report)
    assert set(rows) == {("llama7b", "radjax"), ("unet", "radjax")}, report
    assert rows[("llama7b", "radjax")]["status"] == "timeout", report
    assert rows[("llama7b", "radjax")]["ms/step"] == "-", report
    assert "llama7b / radjax: timeout: killed after 0.01 s" in report, report
    _check_ok("unet", rows[("unet", "radjax")])
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_the_driver_s_own_copies_of_the_sizes_match_the_cpu_benchmarks():
    """gpu.py spells out two size dicts (its driver must not import optax / ml_collections):
    they stay equal to the CPU benchmarks' ViT-B SAM and tiny RadFM vision sizes."""
    from benchmarks import auxol, gpu, radfm

    assert gpu._SAM_VIT_B == auxol.Size().sam
    assert gpu._TINY_RADFM_VISION == radfm.SIZES["tiny"].vision
