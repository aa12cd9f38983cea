"""XLA CPU options, measured: radjax's train steps and generation under each candidate set of
``XLA_FLAGS``, on this machine, in one run.

Usage::

    python -m benchmarks.xla_flags                      # every candidate, benchmark size
    python -m benchmarks.xla_flags --only default xnn_greedy --rounds 3
    python -m benchmarks.xla_flags --size tiny          # smoke size (the test suite's)
    python -m benchmarks.xla_flags --out xla_flags.txt  # also write the table there

XLA reads ``XLA_FLAGS`` once, when its CPU backend starts, so every candidate runs in its
own worker process (``--worker NAME``) that builds the radjax side of the ``make bench``
models (``benchmarks.rp3d_diag``, ``benchmarks.decoder``, ``benchmarks.radfm``: same sizes,
same batches), compiles them and times each: the median of ``--iters`` calls after one
untimed call. Workers run one after the other, candidate by candidate, ``--rounds`` times
(round 1: every candidate, round 2: every candidate, ...); a row's time is its fastest
round, so load that comes and goes hurts no candidate more than another. ``--rounds 1``
on a busy machine says nothing.

The table gives each model's time per candidate and ``default / candidate`` (> 1: the
candidate is faster), compile seconds, and the final loss / last token, so a flag that
changes numerics (fast math) shows. The library sets the flags ``radjax.runtime`` names
(none unless this tool showed a gain on both machine kinds); this tool is how to decide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> XLA_FLAGS. Every name is an option of XLA's CPU backend in the jaxlib radjax pins
# (an unknown flag makes XLA abort at start: the worker's row then says so).
CANDIDATES: dict[str, str] = {
    "default": "",
    "vector_512": "--xla_cpu_prefer_vector_width=512",
    "xnn_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}

MODELS = ("rp3d train", "decoder train", "radfm vision train", "decoder generate")


def _build(size_name: str) -> dict:
    """Model name -> (call, compile seconds, value after the calls): the radjax rows of the
    three train-step tables and of greedy generation, at ``size_name``."""
    import jax
    import jax.numpy as jnp

    from benchmarks import decoder, radfm, rp3d_diag

    out = {}
    size = rp3d_diag.SIZES[size_name]
    step = rp3d_diag.RadjaxStep(rp3d_diag.make_config(size), rp3d_diag.make_batch(size))
    out["rp3d train"] = (step, step.compile_s, step.loss)

    dsize = decoder.SIZES[size_name]
    _, model = decoder.build_pair(dsize)
    train = decoder.RadjaxTrain(model, decoder._train_batch(dsize, 0))
    out["decoder train"] = (train, train.compile_s, train.loss)

    generate = decoder.radjax_generate(dsize, model)

    t0 = time.perf_counter()
    tokens = jax.block_until_ready(generate())
    last = lambda: float(jnp.asarray(tokens)[0, -1])  # noqa: E731
    out["decoder generate"] = (generate, time.perf_counter() - t0, last)

    vsize = radfm.SIZES[size_name]
    _, vmodel = radfm.vision_pair(vsize)
    vision = radfm.RadjaxVision(vmodel, radfm._images(vsize, 0))
    out["radfm vision train"] = (vision, vision.compile_s, lambda: float(vision.last))
    return out


def worker(size_name: str, iters: int) -> dict:
    """Times every model in this process (its ``XLA_FLAGS`` already set): model -> dict."""
    from benchmarks import common

    rows = {}
    for name, (call, compile_s, value) in _build(size_name).items():
        timing = common.time_calls(call, warmup=1, iters=iters)
        rows[name] = {"ms": timing.median_ms, "compile_s": compile_s, "value": value()}
    return rows


def _run_worker(name: str, size_name: str, iters: int, timeout: int) -> dict | str:
    """One candidate's rows, or why there are none (abort on an unknown flag, timeout)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(filter(None, (env.get("XLA_FLAGS", ""), CANDIDATES[name])))
    cmd = [sys.executable, "-m", "benchmarks.xla_flags", "--worker", "--size", size_name]
    cmd += ["--iters", str(iters)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"failed (exit {done.returncode}): {tail[0][:160]}"
    return json.loads(lines[-1])


def best_of(rounds: list[dict | str]) -> dict | str:
    """Per model, the fastest round's row; a candidate whose every round failed keeps the
    first failure."""
    good = [r for r in rounds if isinstance(r, dict)]
    if not good:
        return rounds[0]
    return {m: min((r[m] for r in good if m in r), key=lambda row: row["ms"]) for m in good[0]}


def table(results: dict[str, dict | str]) -> list[str]:
    """One line per (model, candidate): ms, default / candidate, compile s, value."""
    from benchmarks import common

    base = results.get("default")
    rows = []
    for model in MODELS:
        for name, res in results.items():
            if isinstance(res, str):
                rows.append([model, name, res, "", "", ""])
                continue
            row = res[model]
            speedup = base[model]["ms"] / row["ms"] if isinstance(base, dict) else float("nan")
            value = f"{row['value']:.6g}"
            rows.append([model, name, row["ms"], speedup, row["compile_s"], value])
    headers = ["model", "XLA_FLAGS candidate", "ms", "default/this", "compile s", "loss/token"]
    return common.format_table(headers, rows).splitlines()


def header(names: list[str], size_name: str, rounds: int, iters: int) -> list[str]:
    import jax

    from benchmarks import common

    ceiling, load = common.matmul_ceiling(2048), common.load_average()
    load_text = "n/a" if load is None else f"{load:.2f}"
    lines = [
        f"XLA CPU options on {common.cpu_name()} ({common.cpu_isa()}), "
        f"{common.cpu_threads()} threads, jax {jax.__version__}, size {size_name}",
        f"jnp f32 2048^2 matmul {ceiling.gflops:.0f} GFLOP/s, load {load_text}; "
        f"{rounds} round(s) x {iters} timed calls, the fastest round per row",
    ]
    lines += [f"  {name}: {CANDIDATES[name] or '(no flags)'}" for name in names]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=None)
    parser.add_argument("--size", choices=("bench", "tiny"), default="bench")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per worker")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.size, args.iters)))
        return
    names = args.only or list(CANDIDATES)
    if "default" not in names:
        names = ["default", *names]
    head = header(names, args.size, args.rounds, args.iters)
    print("\n".join(head), flush=True)
    rounds: dict[str, list] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            rounds[name].append(_run_worker(name, args.size, args.iters, args.timeout))
    body = table({n: best_of(r) for n, r in rounds.items()})
    print("\n".join(body))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(head + body) + "\n")


if __name__ == "__main__":
    main()
