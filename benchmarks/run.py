"""``make bench``: radjax vs PyTorch on the same network, batch and machine, in one run.

Usage::

    python -m benchmarks.run                 # benchmark size; the largest single part of the
                                             # wall time is radjax's one-off XLA compile
    python -m benchmarks.run --size tiny     # smoke size (what the test runs); its ratio measures
                                             # per-op overhead, not the network -- don't quote it
    python -m benchmarks.run --iters 5 --warmup 2
    python -m benchmarks.run --only decoder  # only the LLaMA decoder tables (rp3d|decoder|radfm|all)

How to read the output
----------------------
The header names the machine (CPU threads, versions), the **matmul ceiling** -- measured
GFLOP/s of a jitted f32 ``a @ b`` at 2048^2 and at the model's FLOP-weighted median matmul
shape; the larger is "the ceiling" -- and the exact input shapes. Then one row per
implementation of the RP3D-Diag late-fusion train step (forward, BCE, backward, AdamW):

``ms/step``       median wall time of the timed steps (after warm-up); ``min``/``max`` show
                  the spread. The two sides are timed interleaved, step by step.
``torch/radjax``  speed ratio torch_ms / radjax_ms: **> 1 means radjax is faster**.
``GFLOP/s``       step FLOPs / median time. Step FLOPs are XLA's cost analysis of the
                  compiled radjax step (source and the analytic count are printed above the
                  table); the same number divides both times.
``MFU``           model FLOP utilisation: GFLOP/s / matmul ceiling.
``params``        trainable parameters; asserted equal within 1 % before timing.
``compile s``     radjax's ahead-of-time compile (not in ms/step). Torch is eager.
``loss``          the last step's loss (a sanity check that both sides really trained).

The footer repeats the ratio, gives the compile time in wall and CPU seconds, and the 1-minute
load average before and after timing. A load above the core count means other processes
competed for the cores: every time is inflated, and eager torch (an OpenMP barrier per op)
suffers more than XLA, so the ratio then flatters radjax. Quote only runs on an idle machine.

After the RP3D table come two decoder tables (``benchmarks/decoder.py``): a small LLaMA
decoder in radjax and in transformers' ``LlamaForCausalLM`` with the same converted weights.
**Generation** (greedy, EOS disabled, tokens asserted identical before timing): ``total ms``
of one ``generate`` call, ``prefill ms`` (one forward over the prompt filling the KV cache),
``decode ms`` = total - prefill, ``tok/s`` = B x new tokens / total, ``decode tok/s`` =
B x new tokens / decode ms, ``radjax/torch`` = the tok/s ratio (**> 1 means radjax is
faster**). **Train step** (causal LM cross-entropy, AdamW): columns as in the RP3D table.

Ratios are the meaningful output; absolute times move with the machine and with anything
else running on it. Both frameworks use the same number of threads (torch is set to the
number of cores XLA's CPU thread pool uses).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import jax

from benchmarks import common, decoder, radfm, rp3d_diag


def ceilings(shapes: list[tuple[int, int, int]], *, iters: int = 10) -> list[common.Ceiling]:
    return [common.matmul_ceiling(m, k, n, iters=iters) for m, k, n in shapes]


def step_comparison(
    p, results: dict[str, common.StepResult], flops: float, ceiling: float, label: str
) -> tuple[str, float]:
    """Prints a torch-vs-radjax step table and its speed-ratio line; returns (table, ratio)."""
    table = common.format_table(*common.step_table(results, flops, ceiling))
    p("")
    p(table)
    p("")
    ratio = results["torch"].timing.median_ms / results["radjax"].timing.median_ms
    p(f"{label} torch/radjax = {ratio:.2f} ({'radjax' if ratio > 1 else 'torch'} faster)")
    return table, ratio


def run(
    size_name: str = "bench",
    *,
    warmup: int = 1,
    iters: int = 3,
    ceiling_shapes: list[tuple[int, int, int]] | None = None,
    ceiling_iters: int = 10,
    out=sys.stdout,
) -> tuple[str, rp3d_diag.Report, float]:
    """Runs the benchmark, prints the report to ``out`` and returns (table, report, ceiling)."""
    t_start = time.perf_counter()
    size = rp3d_diag.SIZES[size_name]
    threads = common.cpu_threads()
    rp3d_diag.set_torch_threads(threads)
    import torch
    import transformers

    if ceiling_shapes is None:
        ceiling_shapes = [(2048, 2048, 2048), rp3d_diag.typical_matmul(size)]
    ceils = ceilings(ceiling_shapes, iters=ceiling_iters)
    ceiling = max(c.gflops for c in ceils)

    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
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
    for c in ceils:
        p(
            f"matmul ceiling f32 {c.label}: {c.gflops:.1f} GFLOP/s "
            f"(median {c.timing.median_ms:.2f} ms of {len(c.timing.times)})"
        )
    p(f"ceiling used for MFU: {ceiling:.1f} GFLOP/s")
    p(f"RP3D-Diag: {size.describe()}")
    p("batch: " + "; ".join(rp3d_diag.input_shapes(size)))
    load_before = common.load_average()

    report = rp3d_diag.run(size, warmup=warmup, iters=iters, threads=threads)
    p(
        f"step FLOPs: {report.flops / 1e9:.2f} GFLOP ({report.flops_source}); analytic "
        f"conv+matmul count {report.analytic_flops / 1e9:.2f} GFLOP; timing: {warmup} warm-up + "
        f"{iters} timed steps each, interleaved, median"
    )
    table, _ = step_comparison(p, report.results, report.flops, ceiling, "speed ratio")
    rj = report.results["radjax"]
    p(
        f"radjax compile {rj.compile_s:.1f} s wall / {rj.compile_cpu_s:.1f} s CPU; "
        f"total benchmark wall time {time.perf_counter() - t_start:.0f} s"
    )
    note = common.load_note(load_before, common.load_average(), threads)
    if note:
        p(note)
    return table, report, ceiling


def run_decoder(
    size_name: str = "bench",
    *,
    warmup: int = 1,
    iters: int = 3,
    gen_iters: int = 1,
    ceiling: float | None = None,
    ceiling_shapes: list[tuple[int, int, int]] | None = None,
    ceiling_iters: int = 10,
    out=sys.stdout,
) -> tuple[str, str, decoder.Report, float]:
    """The decoder benchmark: prints the generation and train-step tables to ``out`` and
    returns (generation table, train table, report, ceiling). ``ceiling`` (GFLOP/s, e.g. the
    RP3D run's) is combined with the measurement at the decoder's typical matmul shape."""
    t_start = time.perf_counter()
    size = decoder.SIZES[size_name]
    threads = common.cpu_threads()
    rp3d_diag.set_torch_threads(threads)
    import torch
    import transformers

    if ceiling_shapes is None:
        ceiling_shapes = ([] if ceiling else [(2048, 2048, 2048)]) + [decoder.typical_matmul(size)]
    ceils = ceilings(ceiling_shapes, iters=ceiling_iters)
    ceiling = max([c.gflops for c in ceils] + ([ceiling] if ceiling else []))

    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    p(
        f"radjax decoder benchmark ({size_name}) on {common.cpu_name()}, {threads} CPU threads "
        f"(torch.set_num_threads({threads}), torch reports {torch.get_num_threads()}); "
        f"jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}"
    )
    for c in ceils:
        p(
            f"matmul ceiling f32 {c.label}: {c.gflops:.1f} GFLOP/s "
            f"(median {c.timing.median_ms:.2f} ms of {len(c.timing.times)})"
        )
    p(f"ceiling used for MFU: {ceiling:.1f} GFLOP/s")
    p(
        f"decoder: {size.describe()}; same weights on both sides (torch.manual_seed -> "
        f"LlamaForCausalLM -> from_hf_llama)"
    )
    for line in decoder.input_shapes(size):
        p(line)
    load_before = common.load_average()
    report = decoder.run(size, warmup=warmup, iters=iters, gen_iters=gen_iters, threads=threads)
    p(
        f"greedy tokens identical: {report.tokens_equal}; generation timing: 1 warm-up + "
        f"{gen_iters} timed call(s) each, interleaved, median"
    )
    gen_table = common.format_table(*decoder.generation_rows(report))
    p("")
    p(gen_table)
    p("")
    rj, th = report.generation["radjax"], report.generation["torch"]
    p(
        f"generation tokens/s ratio radjax/torch = {rj.tok_s / th.tok_s:.2f} (decode only "
        f"{rj.decode_tok_s / th.decode_tok_s:.2f}, prefill "
        f"{th.prefill.median_ms / rj.prefill.median_ms:.2f}x)"
    )
    weights_gb = decoder.decode_weight_bytes(size) / 1e9
    per_step = lambda r: (r.total.median_s - r.prefill.median_s) / size.new_tokens  # noqa: E731
    p(
        f"decode is memory-bound: each step reads {weights_gb * 1e3:.0f} MB of weights, i.e. "
        f"radjax {weights_gb / per_step(rj):.1f} GB/s, torch {weights_gb / per_step(th):.1f} "
        f"GB/s; streaming-read ceiling {common.read_bandwidth():.1f} GB/s (jitted sum over "
        f"256 MB)"
    )
    p(
        f"train step FLOPs: {report.flops / 1e9:.2f} GFLOP ({report.flops_source}); analytic "
        f"matmul count {report.analytic_flops / 1e9:.2f} GFLOP; timing: {warmup} warm-up + "
        f"{iters} timed steps each, interleaved, median"
    )
    train_table, _ = step_comparison(p, report.train, report.flops, ceiling, "train speed ratio")
    p(f"total decoder benchmark wall time {time.perf_counter() - t_start:.0f} s")
    note = common.load_note(load_before, common.load_average(), threads)
    if note:
        p(note)
    return gen_table, train_table, report, ceiling


def run_radfm(
    size_name: str = "bench",
    *,
    warmup: int = 1,
    iters: int = 3,
    ceiling: float | None = None,
    ceiling_iters: int = 10,
    out=sys.stdout,
) -> tuple[str, str]:
    """The RadFM benchmark: the vision train step radjax vs torch, then the whole model's
    train-step throughput in radjax. Returns the two tables."""
    t_start = time.perf_counter()
    size = radfm.SIZES[size_name]
    threads = common.cpu_threads()
    rp3d_diag.set_torch_threads(threads)
    if ceiling is None:
        ceiling = max(c.gflops for c in ceilings([(2048, 2048, 2048)], iters=ceiling_iters))
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    p(
        f"radjax RadFM benchmark ({size_name}) on {common.cpu_name()}, {threads} CPU threads; "
        f"matmul ceiling {ceiling:.1f} GFLOP/s"
    )
    p(f"RadFM: {size.describe()}")
    load_before = common.load_average()
    vision, flops, source = radfm.run_vision(size, warmup=warmup, iters=iters)
    p(
        f"vision train step (ViT + Perceiver + fc, mean-square loss, AdamW; same weights via "
        f"convert.radfm): {flops / 1e9:.2f} GFLOP ({source}), {warmup} warm-up + {iters} timed, "
        f"interleaved, median"
    )
    vision_table, _ = step_comparison(p, vision, flops, ceiling, "vision speed ratio")
    result = radfm.run_model(size, warmup=warmup, iters=iters)
    p(
        f"RadFM train step (entity-weighted fused LM loss, AdamW), radjax only: "
        f"{result.flops / 1e9:.2f} GFLOP ({result.flops_source})"
    )
    model_table = common.format_table(*radfm.model_rows(size, result, ceiling))
    p("")
    p(model_table)
    p("")
    p(f"total RadFM benchmark wall time {time.perf_counter() - t_start:.0f} s")
    note = common.load_note(load_before, common.load_average(), threads)
    if note:
        p(note)
    return vision_table, model_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(rp3d_diag.SIZES), default="bench")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument(
        "--gen_iters", type=int, default=1, help="timed generate calls per side (decoder benchmark)"
    )
    ap.add_argument("--only", choices=("rp3d", "decoder", "radfm", "all"), default="all")
    args = ap.parse_args(argv)
    ceiling = None
    if args.only in ("rp3d", "all"):
        _, _, ceiling = run(args.size, warmup=args.warmup, iters=args.iters)
    if args.only in ("decoder", "all"):
        if ceiling is not None:
            print(flush=True)
        _, _, _, ceiling = run_decoder(
            args.size,
            warmup=args.warmup,
            iters=args.iters,
            gen_iters=args.gen_iters,
            ceiling=ceiling,
        )
    if args.only in ("radfm", "all"):
        if ceiling is not None:
            print(flush=True)
        run_radfm(args.size, warmup=args.warmup, iters=args.iters, ceiling=ceiling)


if __name__ == "__main__":
    main()
