"""Timing, matmul-ceiling and FLOP-counting helpers shared by the benchmarks.

Conventions
-----------
* A timing is the **median** wall time of ``iters`` calls after ``warmup`` untimed calls.
  Every JAX call is followed by ``jax.block_until_ready`` on its outputs, so the time covers
  the computation, not just the asynchronous dispatch. Medians are robust to the odd slow
  call on a shared machine; the min and max are kept too so noise is visible.
* The **matmul ceiling** is the measured throughput (GFLOP/s) of an f32 ``a @ b`` on this
  machine, in both frameworks at the same shapes: jitted ``jnp`` (XLA's own CPU kernels) and
  ``torch.matmul`` (MKL / oneDNN) with as many torch threads as XLA's pool. Model FLOP
  utilisation (MFU) is ``step FLOPs / step time / ceiling``, where the ceiling is the
  **higher** of the two (the machine's real limit; the header says which framework gave it).
* The **machine** is named by its CPU model and the vector ISA it offers (``avx2``,
  ``avx512f``, ``avx512_bf16``, ``amx``: which of XLA's and MKL's kernels can run).
* **Step FLOPs** come from XLA's cost analysis of the compiled step
  (``jit(f).lower(...).compile().cost_analysis()['flops']``) -- everything XLA executes,
  including elementwise work and the optimizer update. When XLA does not report it, the
  caller's analytic count (multiply-adds of the convolutions and matmuls, x2, x3 for
  forward + backward) is used instead.
* **Two PyTorch anchors**: a side-by-side table has a ``torch (eager)`` row and, where
  inductor compiles on this machine, a ``torch.compile (inductor)`` row (``time_rows``: a
  compile that fails leaves its row out and prints why). Every row's ``compile s`` -- radjax's
  ahead-of-time XLA compile, torch.compile's first call minus its median call -- is outside
  its timed calls.
* The **summary**: each report returns one ``SummaryRow`` per table; ``rewrite_summary``
  writes them into the marked section of ``benchmarks/README.md``, one row per (machine,
  benchmark table, size), keeping the rows of other machines.
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


# The vector extensions that decide which matmul / convolution kernels XLA and MKL can run.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16")


def cpu_flags() -> frozenset[str]:
    """The ``flags`` of the first processor in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_isa(flags: frozenset[str] | None = None) -> str:
    """Which of ``ISA_FLAGS`` and AMX the CPU has, e.g. ``'avx2, avx512f, avx512_bf16, no amx'``
    (AMX as its flags present: ``amx_bf16 amx_tile ...``); ``'ISA unknown'`` without flags."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "ISA unknown"
    named = [f if f in flags else f"no {f}" for f in ISA_FLAGS]
    amx = sorted(f for f in flags if f.startswith("amx"))
    return ", ".join(named + [" ".join(amx) if amx else "no amx"])


def machine_kind() -> str:
    """The machine as the benchmark headers and the summary name it: CPU model, ISA, threads."""
    return f"{cpu_name()} ({cpu_isa()}), {cpu_threads()} threads"


def synchronous(out: Any) -> Any:
    """The ``sync`` of synchronous code (eager PyTorch on the CPU): nothing to wait for."""
    return out


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


def is_torch(name: str) -> bool:
    """Whether a table row's key names a PyTorch row ('torch', 'torch.compile', ...)."""
    return name.startswith("torch")


@dataclasses.dataclass
class Timed:
    """What ``time_rows`` measured: each row's timed calls, its untimed first call (seconds and
    output), and a note for each optional row left out."""

    timings: dict[str, Timing]
    first_s: dict[str, float]
    outputs: dict[str, Any]
    notes: list[str]

    def compile_s(self, name: str) -> float:
        """First call minus the median call: the compile time of a lazily compiled row
        (``torch.compile`` compiles on its first call)."""
        return max(self.first_s[name] - self.timings[name].median_s, 0.0)

    def compile_times(self, ahead: dict[str, float]) -> dict[str, float | None]:
        """Compile seconds of every timed row: ``ahead`` for rows compiled ahead of time
        (radjax), ``compile_s`` for 'torch.compile', None for eager rows."""
        return {
            k: ahead[k] if k in ahead else (self.compile_s(k) if k == "torch.compile" else None)
            for k in self.timings
        }


def time_rows(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    iters: int = 3,
    optional: Sequence[str] = ("torch.compile",),
    sync: dict[str, Callable[[Any], Any]] | None = None,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> Timed:
    """Times a table's rows: one untimed first call of each, then ``warmup - 1`` more untimed
    rounds and ``iters`` timed ones, interleaved (``time_interleaved``).

    The first call is where ``torch.compile`` compiles; a row named in ``optional`` whose first
    call raises is left out, the reason in ``notes``. ``check``, given the first calls'
    outputs by row, runs before anything is timed: it raises if the rows disagree and may
    return a note. ``sync[name]`` defaults to ``synchronous`` for torch rows (``is_torch``)
    and ``jax.block_until_ready`` for the rest.
    """
    sync = {
        name: (sync or {}).get(name, synchronous if is_torch(name) else jax.block_until_ready)
        for name in fns
    }
    fns, first_s, outputs, notes = dict(fns), {}, {}, []
    for name in list(fns):
        t0 = time.perf_counter()
        try:
            outputs[name] = sync[name](fns[name]())
        except Exception as e:  # noqa: BLE001 -- torch.compile fails in many ways
            if name not in optional:
                raise
            del fns[name]
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            notes.append(f"{name} row left out: {type(e).__name__}: {reason}")
            continue
        first_s[name] = time.perf_counter() - t0
    note = check(outputs) if check is not None else None
    notes += [note] if note else []
    timings = time_interleaved(fns, warmup=max(warmup - 1, 0), iters=iters, sync=sync)
    return Timed(timings, first_s, outputs, notes)


# ---------------------------------------------------------------------------------------------
# Matmul ceiling
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """Measured f32 matmul throughput for one (m, k, n) shape in one ``framework``
    (``'jnp'``: jitted ``a @ b`` on JAX's default device; ``'torch'``: ``torch.matmul``)."""

    m: int
    k: int
    n: int
    timing: Timing
    framework: str = "jnp"

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n

    @property
    def gflops(self) -> float:
        return self.flops / self.timing.median_s / 1e9

    @property
    def label(self) -> str:
        return f"({self.m}x{self.k}) @ ({self.k}x{self.n})"


def _matmul_operands(m: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same f32 (m, k) and (k, n) standard-normal operands for both frameworks."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((m, k), dtype=np.float32),
        rng.standard_normal((k, n), dtype=np.float32),
    )


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
    a, b = (jnp.asarray(x) for x in _matmul_operands(m, k, n, seed))
    mm = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    return Ceiling(m, k, n, time_calls(lambda: mm(a, b), warmup=warmup, iters=iters))


def torch_matmul_ceiling(
    m: int = 2048,
    k: int | None = None,
    n: int | None = None,
    *,
    warmup: int = 2,
    iters: int = 10,
    seed: int = 0,
    threads: int | None = None,
) -> Ceiling:
    """Measures ``torch.matmul`` of the same f32 operands on the CPU, with
    ``torch.set_num_threads(threads)`` (default: the threads of XLA's CPU pool) first."""
    import torch

    k = m if k is None else k
    n = m if n is None else n
    set_torch_threads(threads or cpu_threads())
    a, b = (torch.from_numpy(x) for x in _matmul_operands(m, k, n, seed))
    timing = time_calls(lambda: torch.matmul(a, b), warmup=warmup, iters=iters, sync=synchronous)
    return Ceiling(m, k, n, timing, "torch")


def measure_ceilings(m: int, k: int, n: int, *, iters: int = 10) -> list[Ceiling]:
    """The jnp ceiling at (m, k, n) and, when JAX computes on the CPU, torch's at the same
    shape (torch on the CPU against JAX on an accelerator would compare two machines)."""
    found = [matmul_ceiling(m, k, n, iters=iters)]
    if jax.default_backend() == "cpu":
        found.append(torch_matmul_ceiling(m, k, n, iters=iters))
    return found


class Limit(float):
    """A ceiling in GFLOP/s -- a float, what MFU divides by -- that remembers where it was
    measured: ``framework`` (``'jnp'``, ``'torch'``, or ``'given'`` for a bare number a caller
    passed in) and ``shape`` (a ``Ceiling.label``)."""

    framework: str
    shape: str

    def __new__(cls, gflops: float, framework: str = "given", shape: str = ""):
        limit = super().__new__(cls, gflops)
        limit.framework, limit.shape = framework, shape
        return limit

    @classmethod
    def of(cls, ceiling: Ceiling) -> Limit:
        return cls(ceiling.gflops, ceiling.framework, ceiling.label)

    @property
    def source(self) -> str:
        """E.g. ``'torch.matmul at (2048x2048) @ (2048x2048)'``."""
        name = {"jnp": "jitted jnp a @ b", "torch": "torch.matmul"}.get(self.framework)
        return f"{name} at {self.shape}" if name else "given by the caller"


def higher(*ceilings: float) -> Limit:
    """The highest of ``ceilings`` as a ``Limit`` (a plain float becomes a 'given' one)."""
    best = max(ceilings)
    return best if isinstance(best, Limit) else Limit(best)


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


def ordered(results: dict[str, Any]) -> list[str]:
    """Row keys of a table, the torch rows first (each group in its given order)."""
    return [k for k in results if is_torch(k)] + [k for k in results if not is_torch(k)]


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """torch row -> its median time / ``results['radjax']``'s: > 1 means radjax is faster."""
    radjax_s = results["radjax"].timing.median_s
    return {k: results[k].timing.median_s / radjax_s for k in ordered(results) if is_torch(k)}


def step_table(
    results: dict[str, Any],
    flops: float,
    ceiling_gflops: float,
    *,
    unit: str = "step",
    value: str = "loss",
    cell: Callable[[Any], Any] = lambda r: r.final_loss,
) -> tuple[list[str], list[list]]:
    """Headers and rows of a side-by-side table, one row per result (``StepResult`` or any
    object with ``name``, ``timing``, ``params`` and ``compile_s``): the torch rows ('torch',
    'torch.compile', ...) first, then radjax's ('radjax', ...). ``torch/radjax`` on a torch row
    is its median time over ``results['radjax']``'s; the last column, headed ``value``, holds
    ``cell(result)`` (default: the final loss). The same ``flops`` divide every row."""
    headers = ["implementation", f"ms/{unit}", "min", "max", "torch/radjax", "GFLOP/s", "MFU",
               "params", "compile s", value]  # fmt: skip
    speed = ratios(results)
    rows = []
    for key in ordered(results):
        r = results[key]
        ms = r.timing.median_ms
        rows.append(
            [
                r.name,
                ms,
                r.timing.min_ms,
                r.timing.max_ms,
                speed.get(key, ""),
                flops / (ms / 1e3) / 1e9,
                f"{100 * mfu(flops, ms / 1e3, ceiling_gflops):.1f}%",
                f"{r.params:,}",
                "" if r.compile_s is None else r.compile_s,
                cell(r),
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
class SummaryRow:
    """One table's line in the benchmark summary (``benchmarks/README.md``): radjax against
    each PyTorch anchor as a speed ratio (> 1: radjax faster; None where that anchor did not
    run) and radjax's MFU (None where it has none, e.g. memory-bound generation)."""

    table: str
    vs_eager: float | None = None
    vs_compiled: float | None = None
    mfu: float | None = None


@dataclasses.dataclass(frozen=True)
class Reported:
    """What a report returns: its printed ``tables`` by name, its measurements (``result``),
    the ceiling (GFLOP/s, a ``Limit`` where measured here) it used for MFU, which the runner
    hands to the next report, and one ``summary`` line per table for the summary table."""

    tables: dict[str, str]
    result: Any
    ceiling: float
    summary: tuple[SummaryRow, ...] = ()


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark module's declaration (its module-level ``BENCHMARK``), found by
    ``benchmarks.run``: ``--only name ...``; reports print in ``order``.

    ``report(size_name, *, warmup, iters, ceiling, out, **options) -> Reported`` prints the
    benchmark's lines and tables to ``out`` after the runner's shared header; ``ceiling`` is
    the best matmul GFLOP/s measured so far (the header's 2048^2 of both frameworks, then
    earlier reports')."""

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


def ceiling_line(found: Sequence[Ceiling]) -> str:
    """One shape's ceilings, e.g. ``matmul ceiling f32 (8x8) @ (8x8): jnp 1.0 GFLOP/s (median
    0.01 ms of 10), torch 2.0 GFLOP/s (...)`` (every entry of ``found`` has the same shape)."""
    parts = [
        f"{c.framework} {c.gflops:.1f} GFLOP/s (median {c.timing.median_ms:.2f} ms of "
        f"{len(c.timing.times)})"
        for c in found
    ]
    return f"matmul ceiling f32 {found[0].label}: " + ", ".join(parts)


def print_ceilings(p, shapes: Sequence[tuple[int, int, int]], ceiling: float, iters: int) -> Limit:
    """Prints the machine (``machine_kind``) and the matmul ceilings of both frameworks at each
    of ``shapes`` (``measure_ceilings``); returns the highest of them and ``ceiling`` -- the
    one MFU divides by, printed with the framework and shape that gave it."""
    p(f"machine: {machine_kind()}")
    best = higher(ceiling)
    for m, k, n in shapes:
        found = measure_ceilings(m, k, n, iters=iters)
        p(ceiling_line(found))
        best = higher(best, *(Limit.of(c) for c in found))
    p(f"ceiling used for MFU: {best:.1f} GFLOP/s ({best.source}; the higher framework)")
    return best


def step_comparison(
    p, results: dict[str, Any], flops: float, ceiling: float, label: str, **table: Any
) -> str:
    """Prints a side-by-side table (``step_table(..., **table)``) and one speed-ratio line per
    torch row; returns the table."""
    text = format_table(*step_table(results, flops, ceiling, **table))
    p("")
    p(text)
    p("")
    for key, ratio in ratios(results).items():
        p(f"{label} {key}/radjax = {ratio:.2f} ({'radjax' if ratio > 1 else 'torch'} faster)")
    return text


def summary_row(table: str, results: dict[str, Any], flops: float, ceiling: float) -> SummaryRow:
    """The summary line of a side-by-side table: ratios against 'torch' and 'torch.compile'
    (None where that row is absent) and the 'radjax' row's MFU."""
    speed = ratios(results)
    seconds = results["radjax"].timing.median_s
    return SummaryRow(
        table, speed.get("torch"), speed.get("torch.compile"), mfu(flops, seconds, ceiling)
    )


def print_notes(p, notes: Sequence[str]) -> None:
    """Prints each note (e.g. why a torch.compile row was left out) on its own line."""
    for note in notes:
        p(note)


def footer(p, name: str, t_start: float, load_before: float | None, threads: int) -> None:
    """The closing lines of a report: wall time and the machine-load note."""
    p(f"total {name} benchmark wall time {time.perf_counter() - t_start:.0f} s")
    note = load_note(load_before, load_average(), threads)
    if note:
        p(note)


# ---------------------------------------------------------------------------------------------
# The summary table of benchmarks/README.md
# ---------------------------------------------------------------------------------------------

SUMMARY_BEGIN = (
    "<!-- benchmark summary: begin (rewritten by python -m benchmarks.run --summary) -->"
)
SUMMARY_END = "<!-- benchmark summary: end -->"
SUMMARY_HEADERS = (
    "machine",
    "benchmark",
    "size",
    "radjax vs torch eager",
    "radjax vs torch.compile",
    "radjax MFU",
    "MFU ceiling GFLOP/s",
    "2048² probe jnp / torch",
    "load",
    "date",
)
SUMMARY_KEY = 3  # (machine, benchmark, size): a new row replaces the old row of the same key


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What every summary line of one run shares: the machine (``machine_kind``), the size,
    the 2048^2 probe of each framework (GFLOP/s by framework) and the date (ISO)."""

    machine: str
    size: str
    probe: dict[str, float]
    date: str


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def summary_cells(
    info: RunInfo, benchmark: str, row: SummaryRow, ceiling: float, load: tuple[float, float]
) -> list[str]:
    """One markdown row (``SUMMARY_HEADERS``' columns) of ``row`` from benchmark ``benchmark``
    measured against ``ceiling``, with the 1-min load average (before, after) its report."""
    framework = getattr(ceiling, "framework", "given")
    probe = " / ".join(f"{info.probe[k]:.0f}" if k in info.probe else "–" for k in ("jnp", "torch"))
    return [
        info.machine,
        f"{benchmark}: {row.table}",
        info.size,
        _ratio(row.vs_eager),
        _ratio(row.vs_compiled),
        "–" if row.mfu is None else f"{100 * row.mfu:.1f} %",
        f"{ceiling:.0f} ({framework})",
        probe,
        f"{load[0]:.1f} → {load[1]:.1f}",
        info.date,
    ]


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _section_rows(section: str) -> list[list[str]]:
    """The rows (cell lists) of the table between the markers, without its two header lines."""
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def merge_summary_rows(old: list[list[str]], new: list[list[str]]) -> list[list[str]]:
    """``old`` with each of ``new`` in place of the old row of its key (machine, benchmark,
    size), or else after the last row of its machine (or at the end): rows of other machines
    and of benchmarks not run this time stay as they were."""
    rows = [list(r) for r in old]
    for row in new:
        keys = [tuple(r[:SUMMARY_KEY]) for r in rows]
        if tuple(row[:SUMMARY_KEY]) in keys:
            rows[keys.index(tuple(row[:SUMMARY_KEY]))] = list(row)
            continue
        same = [i for i, r in enumerate(rows) if r[0] == row[0]]
        rows.insert(same[-1] + 1 if same else len(rows), list(row))
    return rows


def rewrite_summary(text: str, new: list[list[str]]) -> str:
    """``text`` (a markdown file) with its summary section holding ``merge_summary_rows`` of
    its rows and ``new``; a text without the markers gets the section appended."""
    if SUMMARY_BEGIN in text and SUMMARY_END in text:
        head, rest = text.split(SUMMARY_BEGIN, 1)
        section, tail = rest.split(SUMMARY_END, 1)
    else:
        head, section, tail = text.rstrip("\n") + "\n\n", "", "\n"
    rows = merge_summary_rows(_section_rows(section), new)
    table = [_markdown_row(SUMMARY_HEADERS), _markdown_row(["---"] * len(SUMMARY_HEADERS))]
    body = "\n".join([SUMMARY_BEGIN] + table + [_markdown_row(r) for r in rows] + [SUMMARY_END])
    return head + body + tail
