"""``make bench``: radjax vs PyTorch on the same network, batch and machine, in one run.

Usage::

    python -m benchmarks.run                 # benchmark size; the largest single part of the
                                             # wall time is radjax's one-off XLA compile
    python -m benchmarks.run --size tiny     # smoke size (what the tests run); its ratios
                                             # measure per-op overhead, not the network
    python -m benchmarks.run --iters 5 --warmup 2
    python -m benchmarks.run --only NAME     # one benchmark (``--help`` lists the names)

Every module of the ``benchmarks`` package that declares a ``BENCHMARK``
(``benchmarks.common.Benchmark``) is one benchmark: adding one is adding a file. Its module
docstring says what it times and how to read its tables.

How to read the output
----------------------
The header names the machine (CPU threads, versions) and the **matmul ceiling**: measured
GFLOP/s of a jitted f32 ``a @ b`` at 2048^2. Each benchmark then measures the ceiling at its
model's FLOP-weighted median matmul shape; the best so far is "the ceiling" that MFU divides
by. Side-by-side tables have one row per implementation; ``torch/radjax`` (or
``radjax/torch`` for throughputs) **> 1 means radjax is faster**.

Each report ends with its wall time and the 1-minute load average before and after timing. A
load above the core count means other processes competed for the cores: every time is
inflated, and eager torch (an OpenMP barrier per op) suffers more than XLA, so the ratio then
flatters radjax. Quote only runs on an idle machine.

Ratios are the meaningful output; absolute times move with the machine and with anything
else running on it. Both frameworks use the same number of threads (torch is set to the
number of cores XLA's CPU thread pool uses).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import sys

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


def header(size_name: str, *, ceiling_iters: int = 10, out=sys.stdout) -> float:
    """Prints the machine, the versions and the 2048^2 matmul ceiling; returns the ceiling."""
    threads = common.cpu_threads()
    common.set_torch_threads(threads)
    import torch
    import transformers

    p = common.printer(out)
    p(
        f"radjax benchmark ({size_name}) on {common.cpu_name()}, "
        f"{threads} CPU threads: XLA CPU uses {threads}, torch.set_num_threads({threads}) "
        f"(torch reports {torch.get_num_threads()})"
    )
    p(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, 1 device used), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}"
    )
    return common.print_ceilings(p, [(2048, 2048, 2048)], 0.0, ceiling_iters)


def main(argv: list[str] | None = None) -> None:
    found = discover()
    sizes = sorted(set.intersection(*(set(b.sizes) for b in found)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sizes, default="bench")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--only", choices=[b.name for b in found] + ["all"], default="all")
    for b in found:
        for o in b.options:
            ap.add_argument(f"--{o.name}", type=int, default=o.default, help=f"{o.help} ({b.name})")
    args = ap.parse_args(argv)
    ceiling = header(args.size)
    for b in found:
        if args.only in (b.name, "all"):
            print(flush=True)
            options = {o.name: getattr(args, o.name) for o in b.options}
            ceiling = b.report(
                args.size,
                warmup=args.warmup,
                iters=args.iters,
                ceiling=ceiling,
                out=sys.stdout,
                **options,
            ).ceiling


if __name__ == "__main__":
    main()
