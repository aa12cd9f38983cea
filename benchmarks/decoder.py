"""LLaMA-style decoder: generation and train step, radjax vs transformers (PyTorch), same weights.

Both sides run the same network with the same parameters on this machine, in one process:

* The reference is ``transformers.LlamaForCausalLM`` built from a small ``LlamaConfig`` after
  ``torch.manual_seed(seed)`` (default SDPA attention). Its state dict is converted with
  ``radjax.convert.llama.from_hf_llama`` and assigned into a ``radjax.models.llama.Decoder``
  (``DecoderConfig.from_hf_config``), so both sides hold identical f32 weights.

Generation (greedy, EOS disabled so every row produces all ``new_tokens``):

* **radjax**: ``radjax.train.generation.generate`` (one ``jax.jit``: prefill into a
  preallocated ``KVCache``, then a ``lax.while_loop`` of one-token steps). Its first call
  compiles; ``compile s`` = first call - median call, not part of the timed calls.
* **torch**: ``LlamaForCausalLM.generate(do_sample=False)`` under ``torch.no_grad`` (eager,
  dynamic KV cache).
* **torch.compile** (``--gen_compile 1``; off by default): transformers' own compiled path on
  a copy of the weights, ``generate(cache_implementation='static', compile_config=...)``: a
  static KV cache and the decode step's forward compiled by inductor (the prefill runs
  eagerly). Its cold compile took 40-100 s on 2 cores, more than the rest of the benchmark,
  which is why it is opt-in; ``compile s`` = first call - median call.

The generated tokens of every row are asserted identical before anything is timed.
``prefill`` is one forward over the prompt that fills the cache and returns the last
position's logits, as ``generate`` does (radjax: jitted ``Decoder(ids, cache=..., last_only=True)``; torch:
``model(input_ids, use_cache=True, logits_to_keep=1)``); ``decode tok/s`` = B x new_tokens /
(total - prefill); ``tok/s`` = B x new_tokens / total.

Train step (causal LM cross-entropy over shifted labels, AdamW, no weight decay):

* **radjax**: a pure ``jax.value_and_grad`` + ``optax.adamw`` step, jitted with donated state
  and compiled ahead of time (compile time reported separately). The loss is
  ``radjax.train.lm_loss.fused_head_cross_entropy`` on ``Decoder.hidden_states``: the same
  value as cross-entropy on the logits, with the head's gradients formed in the forward pass.
* **torch**: eager ``model(input_ids, labels=input_ids).loss`` + ``backward`` +
  ``torch.optim.AdamW``.
* **torch.compile**: the same on a second copy of the weights, the forward + loss compiled by
  ``torch.compile`` (inductor; backward by AOTAutograd), AdamW eager. Compiled on its first
  call (``compile s`` = first step - median step); a compile that fails leaves the row out
  with the reason printed.

Step FLOPs are XLA's cost analysis of the compiled radjax step (analytic fallback: 3 x the
forward matmul FLOPs); the same number divides every row's time for GFLOP/s and MFU.

Printed (``--only decoder``): the **generation** table -- ``total ms`` of one ``generate``
call, ``prefill ms``, ``decode ms`` = total - prefill, ``tok/s``, ``decode tok/s`` and
``radjax/torch`` on each torch row = radjax's tok/s over that row's (**> 1 means radjax is
faster**) -- then the **train step** table (torch eager, torch.compile, radjax) with the columns
of the RP3D-Diag table (``benchmarks/rp3d_diag.py``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


@dataclasses.dataclass(frozen=True)
class Size:
    layers: int = 4
    hidden: int = 512
    intermediate: int = 1376
    heads: int = 8
    vocab: int = 32000
    batch: int = 4  # generation batch
    prompt: int = 32
    new_tokens: int = 128
    train_batch: int = 4
    train_len: int = 256

    def describe(self) -> str:
        return (
            f"LLaMA decoder, {self.layers} layers, hidden {self.hidden}, intermediate "
            f"{self.intermediate}, {self.heads} heads, vocab {self.vocab}"
        )


SIZES: dict[str, Size] = {
    "bench": Size(),
    "tiny": Size(
        layers=2,
        hidden=64,
        intermediate=172,
        heads=4,
        vocab=256,
        batch=2,
        prompt=8,
        new_tokens=8,
        train_batch=2,
        train_len=16,
    ),
}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def build_pair(size: Size, seed: int = 0):
    """(torch LlamaForCausalLM in eval mode, radjax Decoder) holding the same weights."""
    import torch
    import transformers
    from flax import nnx

    from radjax.convert.llama import from_hf_llama
    from radjax.convert.torch_io import assign
    from radjax.models.llama import Decoder, DecoderConfig

    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    reference = transformers.LlamaForCausalLM(hf_cfg).eval()
    cfg = DecoderConfig.from_hf_config(reference.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    assign(model, from_hf_llama(sd, cfg), strict=True)
    return reference, model


def _params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def matmul_shapes(size: Size, rows: int) -> list[tuple[int, int, int]]:
    """Forward matmuls of one pass over ``rows`` = batch x length tokens (no attention)."""
    h, f = size.hidden, size.intermediate
    per_layer = [(rows, h, h)] * 4 + [(rows, h, f)] * 2 + [(rows, f, h)]
    return per_layer * size.layers + [(rows, h, size.vocab)]


def decode_weight_bytes(size: Size) -> int:
    """f32 bytes of weights one decode step reads: every parameter except the embedding
    table, of which it gathers B rows (untied head, as ``build_pair``)."""
    h, f = size.hidden, size.intermediate
    per_layer = 4 * h * h + 3 * h * f + 2 * h
    return 4 * (size.layers * per_layer + h + h * size.vocab)


def analytic_train_flops(size: Size) -> float:
    b, t, h = size.train_batch, size.train_len, size.hidden
    attn = size.layers * 2 * (2.0 * b * t * t * h)  # scores + weighted sum
    return 3.0 * (sum(2.0 * m * k * n for m, k, n in matmul_shapes(size, b * t)) + attn)


def typical_matmul(size: Size) -> tuple[int, int, int]:
    return common.weighted_median_shape(matmul_shapes(size, size.train_batch * size.train_len))


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GenResult:
    name: str
    total: common.Timing  # whole generate call
    prefill: common.Timing | None  # one forward over the prompt, filling a cache (None: untimed)
    tokens: int  # B x new_tokens
    compile_s: float | None = None

    @property
    def tok_s(self) -> float:
        return self.tokens / self.total.median_s

    @property
    def decode_ms(self) -> float:
        return self.total.median_ms - self.prefill.median_ms if self.prefill else float("nan")

    @property
    def decode_tok_s(self) -> float:
        return self.tokens / max(self.decode_ms / 1e3, 1e-12) if self.prefill else float("nan")


@dataclasses.dataclass
class Report:
    size: Size
    threads: int
    params: int
    generation: dict[str, GenResult]
    train: dict[str, common.StepResult]
    flops: float
    flops_source: str
    analytic_flops: float
    tokens_equal: bool
    notes: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _prompt(size: Size, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(3, size.vocab, (size.batch, size.prompt)).astype(np.int32)


def _torch_generate(reference, ids, mask, size: Size, **options):
    """``reference.generate`` greedy, under ``torch.no_grad``, every row all ``new_tokens``
    (EOS disabled) -> the new ids (B, new_tokens); ``options`` go to ``generate``."""
    import torch

    with torch.no_grad():
        out = reference.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=size.new_tokens,
            min_new_tokens=size.new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            **options,
        )
    return out[:, size.prompt :]


def compiled_generate_options() -> dict:
    """``generate`` options of transformers' compiled path: a static cache, and the decode
    step's forward compiled by ``torch.compile`` (inductor, mode 'default': the default
    'reduce-overhead' is CUDA graphs). transformers compiles only on accelerators unless its
    ``CompileConfig._compile_all_devices`` flag (meant for testing) is set, as here."""
    import transformers

    config = transformers.CompileConfig(mode="default")
    config._compile_all_devices = True
    return dict(cache_implementation="static", compile_config=config)


def _check_tokens(outputs: dict) -> None:
    """Raises unless every row generated radjax's greedy tokens."""
    want = np.asarray(outputs["radjax"])
    for key, got in outputs.items():
        got = np.asarray(got)
        if got.shape != want.shape or not np.array_equal(got, want):
            diff = np.argwhere(got != want) if got.shape == want.shape else []
            raise AssertionError(
                f"greedy tokens differ (radjax {want.shape} vs {key} {got.shape}); first "
                f"differences at (row, step) {[tuple(d) for d in diff[:5]]}"
            )


GEN_ROWS = {
    "radjax": "radjax generate (jax.jit)",
    "torch": "torch generate (eager)",
    "torch.compile": "torch generate (static cache, torch.compile)",
}


def radjax_generate(size: Size, model, seed: int = 0):
    """radjax's greedy generation of ``size.new_tokens`` for every row of the benchmark prompt,
    as a call with no arguments (the eos id is one argmax never returns: no row stops early)."""
    from flax import nnx

    from radjax.train import generation

    graphdef, state = nnx.split(model)
    ids = jnp.asarray(_prompt(size, seed))

    def call():
        return generation.generate(
            graphdef,
            state,
            input_ids=ids,
            attention_mask=jnp.ones_like(ids),
            max_new_tokens=size.new_tokens,
            eos_token_id=size.vocab,
            pad_token_id=0,
        )

    return call


def run_generation(
    size: Size,
    reference,
    model,
    *,
    warmup: int = 1,
    iters: int = 1,
    seed: int = 0,
    compiled: bool = False,
) -> tuple[dict[str, GenResult], list[str]]:
    """Timed greedy generation -> ({'radjax', 'torch' and, with ``compiled``, 'torch.compile'
    unless its compile failed} -> GenResult, notes). The tokens of every row are asserted
    identical to radjax's before timing; prefill is timed for radjax and eager torch
    (transformers' compiled path runs its prefill eagerly too)."""
    import copy

    import torch
    from flax import nnx

    ids = _prompt(size, seed)
    mask = np.ones_like(ids)
    graphdef, state = nnx.split(model)
    j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
    rj_generate = radjax_generate(size, model, seed)

    @jax.jit
    def rj_prefill(state, ids, mask):
        m = nnx.merge(graphdef, state, copy=True)
        cache = m.init_cache(ids.shape[0], ids.shape[1] + size.new_tokens)
        logits, cache = m(ids, attention_mask=mask, cache=cache, last_only=True)
        return logits[:, -1], cache

    rj_prefill_c = rj_prefill.lower(state, j_ids, j_mask).compile()

    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    reference.generation_config.eos_token_id = None
    calls = {
        "radjax": rj_generate,
        "torch": lambda: _torch_generate(reference, t_ids, t_mask, size),
    }
    if compiled:  # a copy: the compiled forward it keeps must not reach the train step's copies
        twin, options = copy.deepcopy(reference), compiled_generate_options()
        calls["torch.compile"] = lambda: _torch_generate(twin, t_ids, t_mask, size, **options)

    def th_prefill():
        with torch.no_grad():
            return reference(
                input_ids=t_ids, attention_mask=t_mask, use_cache=True, logits_to_keep=1
            ).logits

    # the first calls (radjax's compiles, torch.compile's too) are untimed
    timed = common.time_rows(calls, warmup=warmup, iters=iters, check=_check_tokens)
    prefills = common.time_interleaved(
        {"radjax": lambda: rj_prefill_c(state, j_ids, j_mask), "torch": th_prefill},
        warmup=warmup,
        iters=max(iters, 3),
        sync={"torch": common.synchronous},
    )
    tokens = size.batch * size.new_tokens
    compile_s = {k: timed.compile_s(k) for k in timed.timings if k != "torch"}
    return {
        key: GenResult(GEN_ROWS[key], t, prefills.get(key), tokens, compile_s.get(key))
        for key, t in timed.timings.items()
    }, timed.notes


# ---------------------------------------------------------------------------------------------
# Train step
# ---------------------------------------------------------------------------------------------

LR = 1e-4


def _train_batch(size: Size, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, size.vocab, (size.train_batch, size.train_len)).astype(np.int32)


class RadjaxTrain:
    def __init__(self, model, ids: np.ndarray):
        import optax
        from flax import nnx

        from radjax.train import lm_loss

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params_count = _params(params)
        tx = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)

        def loss_fn(params, ids):
            m = nnx.merge(graphdef, params, rest, copy=True)
            hidden = m.hidden_states(ids)
            targets, weights = lm_loss.next_token_targets(ids, jnp.ones(ids.shape))
            return lm_loss.fused_head_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]),
                m.head_kernel(),
                targets.reshape(-1),
                weights.reshape(-1),
            )

        def step(state, ids):
            params, opt_state = state
            loss, grads = jax.value_and_grad(loss_fn)(params, ids)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        # copy: the donated state must not alias the model's arrays (the generation side
        # keeps using them)
        params = jax.tree.map(jnp.array, params)
        self.state = (params, tx.init(params))
        self.ids = jnp.asarray(ids)
        t0 = time.perf_counter()
        self.compiled = jax.jit(step, donate_argnums=0).lower(self.state, self.ids).compile()
        self.compile_s = time.perf_counter() - t0
        self.last = None

    def __call__(self):
        self.state, self.last = self.compiled(self.state, self.ids)
        return self.last

    def loss(self) -> float:
        return float(self.last) if self.last is not None else float("nan")


class TorchTrain:
    """A copy of the reference trained eagerly, or with ``compiled`` its forward + loss
    through ``torch.compile`` (compiled on the first call); AdamW eager either way."""

    def __init__(self, reference, ids: np.ndarray, *, compiled: bool = False):
        import copy

        import torch

        self.model = copy.deepcopy(reference).train()
        self.params_count = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        self.ids = torch.from_numpy(ids).long()

        def forward_loss(ids):
            return self.model(input_ids=ids, labels=ids).loss

        self.forward_loss = torch.compile(forward_loss) if compiled else forward_loss
        self.last = None

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss(self.ids)
        loss.backward()
        self.opt.step()
        self.last = loss.detach()
        return self.last

    def loss(self) -> float:
        return float(self.last) if self.last is not None else float("nan")


TRAIN_ROWS = {
    "radjax": "radjax (jax.jit, XLA CPU)",
    "torch": "torch (eager)",
    "torch.compile": "torch.compile (inductor)",
}


def run_train(size: Size, reference, model, *, warmup: int = 1, iters: int = 3, seed: int = 0):
    """Timed train steps -> ({'radjax', 'torch', 'torch.compile' unless its compile failed}
    -> StepResult, step FLOPs, their source, notes)."""
    ids = _train_batch(size, seed)
    rj = RadjaxTrain(model, ids)
    steps = {
        "radjax": rj,
        "torch": TorchTrain(reference, ids),
        "torch.compile": TorchTrain(reference, ids, compiled=True),
    }
    for key, th in steps.items():
        if rj.params_count != th.params_count:
            raise AssertionError(
                f"parameter counts differ: radjax {rj.params_count:,} vs {key} {th.params_count:,}"
            )
    flops, source = common.step_flops(rj.compiled, analytic_train_flops(size))
    timed = common.time_rows(steps, warmup=warmup, iters=iters)
    compile_s = timed.compile_times({"radjax": rj.compile_s})
    results = {
        key: common.StepResult(
            TRAIN_ROWS[key],
            t,
            steps[key].params_count,
            compile_s[key],
            final_loss=steps[key].loss(),
        )
        for key, t in timed.timings.items()
    }
    return results, flops, source, timed.notes


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def run(
    size: Size,
    *,
    warmup: int = 1,
    iters: int = 3,
    gen_iters: int = 1,
    gen_compile: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> Report:
    """Both tables' measurements; ``tokens_equal`` is True (``run_generation`` raises
    otherwise) and ``notes`` hold both tables' (a torch.compile row left out and why)."""
    import torch

    threads = threads or common.cpu_threads()
    torch.set_num_threads(threads)
    reference, model = build_pair(size, seed)
    gen, gen_notes = run_generation(
        size, reference, model, warmup=1, iters=gen_iters, seed=seed, compiled=gen_compile
    )
    train, flops, source, notes = run_train(
        size, reference, model, warmup=warmup, iters=iters, seed=seed
    )
    return Report(
        size,
        threads,
        train["radjax"].params,
        gen,
        train,
        flops,
        source,
        analytic_train_flops(size),
        True,
        gen_notes + notes,
    )


def generation_rows(report: Report) -> tuple[list[str], list[list]]:
    headers = [
        "implementation",
        "total ms",
        "prefill ms",
        "decode ms",
        "tok/s",
        "decode tok/s",
        "radjax/torch",
        "compile s",
    ]
    rj = report.generation["radjax"]
    rows = []
    for key in common.ordered(report.generation):
        r = report.generation[key]
        rows.append(
            [
                r.name,
                r.total.median_ms,
                r.prefill.median_ms if r.prefill else "",
                r.decode_ms if r.prefill else "",
                r.tok_s,
                r.decode_tok_s if r.prefill else "",
                rj.tok_s / r.tok_s if common.is_torch(key) else "",
                "" if r.compile_s is None else r.compile_s,
            ]
        )
    return headers, rows


def input_shapes(size: Size) -> Sequence[str]:
    return [
        f"generation: prompt int32 ({size.batch}, {size.prompt}), all real tokens, greedy, "
        f"{size.new_tokens} new tokens per row (EOS disabled)",
        f"train: input_ids int32 ({size.train_batch}, {size.train_len}), labels = "
        f"input_ids shifted by one",
    ]


GEN_COMPILE_OFF = (
    "generation torch.compile row: off by default (--gen_compile 1 adds transformers' "
    "static-cache generate with its decode step compiled by inductor; that compile took "
    "40-100 s on 2 cores, more than the rest of this benchmark)"
)


def report(
    size_name: str,
    *,
    warmup: int,
    iters: int,
    ceiling: float,
    out,
    gen_iters: int = 1,
    gen_compile: int = 0,
    ceiling_iters: int = 10,
) -> common.Reported:
    """Prints the generation and train-step tables (``tables['generation']``,
    ``tables['train']``); ``result`` is the Report. ``ceiling`` is combined with the
    measurement at the decoder's typical matmul shape."""
    t_start = time.perf_counter()
    size = SIZES[size_name]
    threads = common.cpu_threads()
    p = common.printer(out)
    p(
        f"decoder: {size.describe()}; same weights on both sides (torch.manual_seed -> "
        f"LlamaForCausalLM -> from_hf_llama)"
    )
    ceiling = common.print_ceilings(p, [typical_matmul(size)], ceiling, ceiling_iters)
    for line in input_shapes(size):
        p(line)
    load_before = common.load_average()
    result = run(
        size,
        warmup=warmup,
        iters=iters,
        gen_iters=gen_iters,
        gen_compile=bool(gen_compile),
        threads=threads,
    )
    p(
        f"greedy tokens identical: {result.tokens_equal}; generation timing: 1 warm-up + "
        f"{gen_iters} timed call(s) each, interleaved, median"
    )
    if not gen_compile:
        p(GEN_COMPILE_OFF)
    common.print_notes(p, result.notes)
    gen_table = common.format_table(*generation_rows(result))
    p("")
    p(gen_table)
    p("")
    rj, th = result.generation["radjax"], result.generation["torch"]
    tc = result.generation.get("torch.compile")
    p(
        f"generation tokens/s ratio radjax/torch = {rj.tok_s / th.tok_s:.2f} (decode only "
        f"{rj.decode_tok_s / th.decode_tok_s:.2f}, prefill "
        f"{th.prefill.median_ms / rj.prefill.median_ms:.2f}x)"
        + (f"; radjax/torch.compile = {rj.tok_s / tc.tok_s:.2f}" if tc else "")
    )
    weights_gb = decode_weight_bytes(size) / 1e9
    per_step = lambda r: (r.total.median_s - r.prefill.median_s) / size.new_tokens  # noqa: E731
    p(
        f"decode is memory-bound: each step reads {weights_gb * 1e3:.0f} MB of weights, i.e. "
        f"radjax {weights_gb / per_step(rj):.1f} GB/s, torch {weights_gb / per_step(th):.1f} "
        f"GB/s; streaming-read ceiling {common.read_bandwidth():.1f} GB/s (jitted sum over "
        f"256 MB)"
    )
    p(
        f"train step FLOPs: {result.flops / 1e9:.2f} GFLOP ({result.flops_source}); analytic "
        f"matmul count {result.analytic_flops / 1e9:.2f} GFLOP; timing: first step untimed + "
        f"{max(warmup - 1, 0)} warm-up + {iters} timed steps each, interleaved, median"
    )
    train_table = common.step_comparison(
        p, result.train, result.flops, ceiling, "train speed ratio"
    )
    common.footer(p, "decoder", t_start, load_before, threads)
    summary = (
        common.SummaryRow(
            "generation tok/s", rj.tok_s / th.tok_s, rj.tok_s / tc.tok_s if tc else None
        ),
        common.summary_row("train step", result.train, result.flops, ceiling),
    )
    return common.Reported(
        {"generation": gen_table, "train": train_table}, result, ceiling, summary
    )


BENCHMARK = common.Benchmark(
    name="decoder",
    order=1,
    sizes=tuple(SIZES),
    report=report,
    options=(
        common.Option("gen_iters", 1, "timed generate calls per side"),
        common.Option("gen_compile", 0, "1: also time transformers' compiled generate"),
    ),
)
