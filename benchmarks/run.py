"""``make bench``: radjax vs PyTorch on the same network, batch and machine, in one run.

Usage::

    python -m benchmarks.run                 # benchmark size; the largest single part of the
                                             # wall time is radjax's one-off XLA compile
    python -m benchmarks.run --size tiny     # smoke size (what the tests run); its ratios
                                             # measure per-op overhead, not the network
    python -m benchmarks.run --iters 5 --warmup 2
    python -m benchmarks.run --only NAME ... # some benchmarks (``--help`` lists the names)
    python -m benchmarks.run --summary benchmarks/README.md
                                             # also rewrite that file's summary table

Every module of the ``benchmarks`` package that declares a ``BENCHMARK``
(``benchmarks.common.Benchmark``) is one benchmark: adding one is adding a file. Its module
docstring says what it times and how to read its tables.

How to read the output
----------------------
The header names the machine (CPU model, its ISA -- avx2 / avx512f / avx512_bf16 / amx --,
threads, versions) and the **matmul ceiling** of both frameworks: measured GFLOP/s of a jitted
f32 ``jnp`` ``a @ b`` and of ``torch.matmul`` at 2048^2. Each benchmark then measures both at
its model's FLOP-weighted median matmul shape; the highest so far, of either framework, is
"the ceiling" that MFU divides by (the line "ceiling used for MFU" names the framework).
Side-by-side tables have one row per implementation: torch eager, torch.compile (inductor)
where it compiles here, radjax; ``torch/radjax`` (or ``radjax/torch`` for throughputs)
**> 1 means radjax is faster**.

Each report ends with its wall time and the 1-minute load average before and after timing. A
load above the core count means other processes competed for the cores: every time is
inflated, and eager torch (an OpenMP barrier per op) suffers more than XLA, so the ratio then
flatters radjax. Quote only runs on an idle machine.

Ratios are the meaningful output; absolute times move with the machine and with anything
else running on it. Both frameworks use the same number of threads (torch is set to the
number of cores XLA's CPU thread pool uses).

Each benchmark runs in its own Python process (``--isolate 0``: all in this one). In one
process, a benchmark run after others measured its radjax step up to 30 % slower than alone
(Intel Xeon: the decoder train step 1313 ms after RP3D's torch / torch.compile rows, 1018 ms
alone), so isolation is what a user running one model sees. The ceiling (the highest so far)
and the machine's probe pass from one process to the next.

``--summary FILE`` rewrites the marked summary section of ``FILE`` (``benchmarks/README.md``)
with one row per table of this run, replacing this machine's earlier rows of the same tables
and size and keeping every other row (other machines, benchmarks not run this time).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import pathlib
import pkgutil
import platform
import subprocess
import sys
import tempfile

import jax

import benchmarks
from benchmarks import common


def discover() -> list[common.Benchmark]:
    """Every ``BENCHMARK`` declared by a module of the ``benchmarks`` package, in order."""
    found = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name != "run":
            declared = getattr(
                importlib.import_module(f"benchmarks.{info.name}"), "BENCHMARK", None
            )
            if declared is not None:
                found.append(declared)
    return sorted(found, key=lambda b: (b.order, b.name))


def header(
    size_name: str, *, ceiling_iters: int = 10, out=sys.stdout
) -> tuple[common.Limit, dict[str, float]]:
    """Prints the run, the machine, the versions and the 2048^2 matmul ceilings of both
    frameworks; returns (the higher ceiling, {framework: 2048^2 GFLOP/s} -- the probe)."""
    threads = common.cpu_threads()
    common.set_torch_threads(threads)
    import torch
    import transformers

    p = common.printer(out)
    p(
        f"radjax benchmark ({size_name}): {threads} CPU threads, XLA CPU uses {threads}, "
        f"torch.set_num_threads({threads}) (torch reports {torch.get_num_threads()})"
    )
    p(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, 1 device used), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}"
    )
    probe = common.measure_ceilings(2048, 2048, 2048, iters=ceiling_iters)
    p(f"machine: {common.machine_kind()}")
    p(common.ceiling_line(probe))
    best = common.higher(*(common.Limit.of(c) for c in probe))
    p(f"ceiling used for MFU: {best:.1f} GFLOP/s ({best.source}; the higher framework)")
    return best, {c.framework: c.gflops for c in probe}


def write_summary(path: pathlib.Path, rows: list[list[str]]) -> None:
    """Rewrites the summary section of ``path`` (created if missing) with ``rows``."""
    text = path.read_text() if path.exists() else ""
    path.write_text(common.rewrite_summary(text, rows))


def run_here(b: common.Benchmark, args, info: common.RunInfo, ceiling: common.Limit):
    """Runs benchmark ``b`` in this process -> (its summary rows as cells, the ceiling after)."""
    options = {o.name: getattr(args, o.name) for o in b.options}
    load_before = common.load_average() or 0.0
    reported = b.report(
        args.size, warmup=args.warmup, iters=args.iters, ceiling=ceiling, out=sys.stdout, **options
    )
    load = (load_before, common.load_average() or 0.0)
    rows = [common.summary_cells(info, b.name, r, reported.ceiling, load) for r in reported.summary]
    return rows, reported.ceiling


def _limit_json(limit: common.Limit) -> list:
    return [float(limit), getattr(limit, "framework", "given"), getattr(limit, "shape", "")]


def run_in_child(b: common.Benchmark, args, info: common.RunInfo, ceiling: common.Limit):
    """``run_here`` in a fresh Python process (``--child``): one benchmark's compiled programs,
    allocator and thread pools (torch.compile's too) cannot slow the next one's."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        spec = {"ceiling": _limit_json(ceiling), "probe": info.probe, "date": info.date}
        argv = [sys.executable, "-m", "benchmarks.run", "--child", b.name, "--child_out", str(out)]
        argv += ["--child_spec", json.dumps(spec), "--size", args.size]
        argv += ["--warmup", str(args.warmup), "--iters", str(args.iters)]
        argv += [f"--{o.name}={getattr(args, o.name)}" for o in b.options]
        sys.stdout.flush()
        done = subprocess.run(argv, check=False)
        if done.returncode != 0:
            raise SystemExit(
                f"benchmarks.run: {b.name} failed in its process (exit {done.returncode})"
            )
        result = json.loads(out.read_text())
    return result["rows"], common.Limit(*result["ceiling"])


def main(argv: list[str] | None = None) -> None:
    found = discover()
    sizes = sorted(set.intersection(*(set(b.sizes) for b in found)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sizes, default="bench")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=[b.name for b in found] + ["all"], default=["all"])
    ap.add_argument("--summary", type=pathlib.Path, help="markdown file whose summary to rewrite")
    ap.add_argument(
        "--isolate", type=int, default=1, help="1: each benchmark in its own process; 0: all here"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # run_in_child's side
    ap.add_argument("--child_out", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--child_spec", help=argparse.SUPPRESS)
    for b in found:
        for o in b.options:
            ap.add_argument(f"--{o.name}", type=int, default=o.default, help=f"{o.help} ({b.name})")
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child_spec)
        info = common.RunInfo(common.machine_kind(), args.size, spec["probe"], spec["date"])
        (b,) = [b for b in found if b.name == args.child]
        common.set_torch_threads(common.cpu_threads())
        rows, ceiling = run_here(b, args, info, common.Limit(*spec["ceiling"]))
        args.child_out.write_text(json.dumps({"rows": rows, "ceiling": _limit_json(ceiling)}))
        return
    ceiling, probe = header(args.size)
    info = common.RunInfo(
        common.machine_kind(), args.size, probe, datetime.date.today().isoformat()
    )
    run = run_in_child if args.isolate else run_here
    rows = []
    for b in found:
        if b.name in args.only or "all" in args.only:
            print(flush=True)
            new_rows, ceiling = run(b, args, info, ceiling)
            rows += new_rows
    if args.summary is not None:
        write_summary(args.summary, rows)
        print(f"\nsummary: {len(rows)} rows of {info.machine} written to {args.summary}")


if __name__ == "__main__":
    main()
