"""Timing, matmul-ceiling and FLOP-counting helpers shared by the benchmarks.

Conventions
-----------
* A timing is the **median** wall time of ``iters`` calls after ``warmup`` untimed calls.
  Every JAX call is followed by ``jax.block_until_ready`` on its outputs, so the time covers
  the computation, not just the asynchronous dispatch. Medians are robust to the odd slow
  call on a shared machine; the min and max are kept too so noise is visible.
* The **matmul ceiling** is the measured throughput (GFLOP/s) of a jitted f32 ``a @ b`` on
  this machine: the best a dense kernel reaches here. Model FLOP utilisation (MFU) is
  ``step FLOPs / step time / ceiling``.
* **Step FLOPs** come from XLA's cost analysis of the compiled step
  (``jit(f).lower(...).compile().cost_analysis()['flops']``) -- everything XLA executes,
  including elementwise work and the optimizer update. When XLA does not report it, the
  caller's analytic count (multiply-adds of the convolutions and matmuls, x2, x3 for
  forward + backward) is used instead.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call wall times in seconds of one benchmarked function."""

    times: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median_s

    @property
    def min_ms(self) -> float:
        return 1e3 * min(self.times)

    @property
    def max_ms(self) -> float:
        return 1e3 * max(self.times)


@dataclasses.dataclass
class StepResult:
    """One implementation's timed train step (a row of a side-by-side table)."""

    name: str
    timing: Timing
    params: int
    compile_s: float | None = None
    compile_cpu_s: float | None = None
    final_loss: float = float("nan")


def cpu_threads() -> int:
    """CPU cores this process may run on; XLA's CPU thread pool uses this many threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_counters() -> tuple[int, int] | None:
    """(all CPU time, steal time) in clock ticks since boot, from the ``cpu`` line of
    /proc/stat (Linux; None elsewhere). Steal is time the hypervisor ran other guests while
    this machine had work: the difference of two readings gives the steal fraction between."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Steal time / all CPU time between two ``cpu_counters()`` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the platform's machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int = 2,
    iters: int = 5,
    sync: Callable[[Any], Any] = jax.block_until_ready,
) -> Timing:
    """Times ``fn()`` (no arguments): ``warmup`` untimed calls, then ``iters`` timed ones.

    ``sync`` is applied to each result inside the timed region (default: block until JAX
    arrays are ready; pass ``lambda out: out`` for synchronous code such as eager PyTorch).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return Timing(tuple(times))


def time_stateful(
    step: Callable[[Any], Any],
    state: Any,
    *,
    warmup: int = 2,
    iters: int = 5,
    sync: Callable[[Any], Any] = jax.block_until_ready,
) -> tuple[Timing, Any]:
    """Times ``state = step(state)`` (e.g. a train step with donated state).

    Returns the timing and the final state. The first warm-up call also absorbs compilation
    if ``step`` was not compiled ahead of time.
    """
    box = [state]

    def call():
        box[0] = step(box[0])
        return box[0]

    timing = time_calls(call, warmup=warmup, iters=iters, sync=sync)
    return timing, box[0]


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    iters: int = 3,
    sync: dict[str, Callable[[Any], Any]] | None = None,
) -> dict[str, Timing]:
    """Times several no-argument callables round-robin: one call of each per round.

    Alternating exposes every candidate to the same background load (a shared machine's
    noise then cancels in their ratio far better than with back-to-back blocks). Stateful
    steps keep their state inside the callable. ``sync[name]`` defaults to
    ``jax.block_until_ready``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    sync = {name: (sync or {}).get(name, jax.block_until_ready) for name in fns}
    for _ in range(warmup):
        for name, fn in fns.items():
            sync[name](fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync[name](fn())
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(tuple(t)) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# Matmul ceiling
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """Measured f32 matmul throughput for one (m, k, n) shape."""

    m: int
    k: int
    n: int
    timing: Timing

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n

    @property
    def gflops(self) -> float:
        return self.flops / self.timing.median_s / 1e9

    @property
    def label(self) -> str:
        return f"({self.m}x{self.k}) @ ({self.k}x{self.n})"


def matmul_ceiling(
    m: int = 2048,
    k: int | None = None,
    n: int | None = None,
    *,
    warmup: int = 2,
    iters: int = 10,
    seed: int = 0,
) -> Ceiling:
    """Measures a jitted f32 ``(m, k) @ (k, n)`` (default square 2048) on the default device."""
    k = m if k is None else k
    n = m if n is None else n
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
    mm = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    return Ceiling(m, k, n, time_calls(lambda: mm(a, b), warmup=warmup, iters=iters))


def read_bandwidth(megabytes: int = 256, *, warmup: int = 2, iters: int = 10) -> float:
    """Streaming-read ceiling in GB/s: a jitted f32 sum over ``megabytes`` of memory, which
    reads every byte once; what a memory-bound step (e.g. batch-4 decoding) can approach."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum).lower(x).compile()
    timing = time_calls(lambda: total(x), warmup=warmup, iters=iters)
    return megabytes * 2**20 / timing.median_s / 1e9


def weighted_median_shape(shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The (m, k, n) matmul at the FLOP-weighted median of ``shapes``: half the model's
    matmul FLOPs are in matmuls at most this large (ordered by FLOPs per call)."""
    if not shapes:
        raise ValueError("no matmul shapes given")
    ordered = sorted(shapes, key=lambda s: s[0] * s[1] * s[2])
    weights = np.array([s[0] * s[1] * s[2] for s in ordered], dtype=np.float64)
    idx = int(np.searchsorted(np.cumsum(weights), weights.sum() / 2))
    return ordered[min(idx, len(ordered) - 1)]


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def xla_flops(compiled: Any) -> float | None:
    """FLOPs XLA's cost analysis reports for a compiled executable, or None if it reports none."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- backends without cost analysis raise various errors
        return None
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    if flops is None or not np.isfinite(flops) or flops <= 0:
        return None
    return float(flops)


def step_flops(compiled: Any, analytic: float) -> tuple[float, str]:
    """(FLOPs, source): XLA's count of ``compiled`` if available, else ``analytic``."""
    flops = xla_flops(compiled)
    if flops is None:
        return float(analytic), "analytic"
    return flops, "xla"


def mfu(flops: float, seconds: float, ceiling_gflops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s as a fraction of the matmul ceiling."""
    return flops / seconds / (ceiling_gflops * 1e9)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, aligned text table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not np.isfinite(v):
            return str(v)
        if v == 0 or abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def step_table(
    results: dict[str, StepResult], flops: float, ceiling_gflops: float
) -> tuple[list[str], list[list]]:
    """Headers and rows of a train-step table: ``results['torch']`` first, then 'radjax'."""
    headers = [
        "implementation",
        "ms/step",
        "min",
        "max",
        "torch/radjax",
        "GFLOP/s",
        "MFU",
        "params",
        "compile s",
        "loss",
    ]
    torch_ms = results["torch"].timing.median_ms
    rows = []
    for key in ("torch", "radjax"):
        r = results[key]
        ms = r.timing.median_ms
        rows.append(
            [
                r.name,
                ms,
                r.timing.min_ms,
                r.timing.max_ms,
                torch_ms / ms if key == "radjax" else "",
                flops / (ms / 1e3) / 1e9,
                f"{100 * mfu(flops, ms / 1e3, ceiling_gflops):.1f}%",
                f"{r.params:,}",
                "" if r.compile_s is None else r.compile_s,
                r.final_loss,
            ]
        )
    return headers, rows


def load_note(before: float | None, after: float | None, threads: int) -> str | None:
    """The footer line on machine load, flagging runs whose times are inflated."""
    if before is None or after is None:
        return None
    busy = max(before, after) > threads + 0.5
    return (
        f"1-min load average {before:.1f} before / {after:.1f} after timing on {threads} "
        "cores"
        + (
            "  <-- machine busy: times are inflated and the ratios are unreliable "
            "(eager torch's thread barriers suffer most)"
            if busy
            else ""
        )
    )


# ---------------------------------------------------------------------------------------------
# What a benchmark module declares, and the printing every report shares
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """An integer command-line option one benchmark adds (``--name``), passed to its report."""

    name: str
    default: int
    help: str


@dataclasses.dataclass(frozen=True)
class Reported:
    """What a report returns: its printed ``tables`` by name, its measurements (``result``)
    and the ceiling (GFLOP/s) it used for MFU, which the runner hands to the next report."""

    tables: dict[str, str]
    result: Any
    ceiling: float


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark module's declaration (its module-level ``BENCHMARK``), found by
    ``benchmarks.run``: ``--only name``; reports print in ``order``.

    ``report(size_name, *, warmup, iters, ceiling, out, **options) -> Reported`` prints the
    benchmark's lines and tables to ``out`` after the runner's shared header; ``ceiling`` is
    the best matmul GFLOP/s measured so far (the header's 2048^2, then earlier reports')."""

    name: str
    order: int
    sizes: tuple[str, ...]
    report: Callable[..., Reported]
    options: tuple[Option, ...] = ()


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def printer(out) -> Callable[..., None]:
    """``print`` to ``out``, flushed."""
    return lambda *a: print(*a, file=out, flush=True)


def print_ceilings(p, shapes: Sequence[tuple[int, int, int]], ceiling: float, iters: int) -> float:
    """Measures and prints the matmul ceiling at ``shapes``; returns the best of them and
    ``ceiling`` (the one used for MFU, printed too)."""
    for m, k, n in shapes:
        c = matmul_ceiling(m, k, n, iters=iters)
        p(
            f"matmul ceiling f32 {c.label}: {c.gflops:.1f} GFLOP/s "
            f"(median {c.timing.median_ms:.2f} ms of {len(c.timing.times)})"
        )
        ceiling = max(ceiling, c.gflops)
    p(f"ceiling used for MFU: {ceiling:.1f} GFLOP/s")
    return ceiling


def step_comparison(
    p, results: dict[str, StepResult], flops: float, ceiling: float, label: str
) -> str:
    """Prints a torch-vs-radjax step table and its speed-ratio line; returns the table."""
    table = format_table(*step_table(results, flops, ceiling))
    p("")
    p(table)
    p("")
    ratio = results["torch"].timing.median_ms / results["radjax"].timing.median_ms
    p(f"{label} torch/radjax = {ratio:.2f} ({'radjax' if ratio > 1 else 'torch'} faster)")
    return table


def footer(p, name: str, t_start: float, load_before: float | None, threads: int) -> None:
    """The closing lines of a report: wall time and the machine-load note."""
    p(f"total {name} benchmark wall time {time.perf_counter() - t_start:.0f} s")
    note = load_note(load_before, load_average(), threads)
    if note:
        p(note)
