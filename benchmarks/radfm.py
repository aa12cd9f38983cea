"""RadFM: the vision path (3D ViT + Perceiver + fc) radjax vs PyTorch, and the whole model's
train-step throughput in radjax.

* **Vision train step** (both sides, same weights): a ``RadFMVision`` and the PyTorch
  reference ``tests/references/radfm_torch.VisionEmbedding`` (the original's module tree
  in plain ``torch.nn``, verified against the golden outputs of the original RadFM code;
  its weights are
  converted with ``radjax.papers.radfm.convert.vision_from_radfm``), trained on the mean square of
  their (B, S, latents, llm_dim) output with AdamW. radjax: one jitted, donated step; torch:
  eager, and ``torch.compile`` (inductor) of the forward + loss on a copy of the same weights
  (AdamW eager; compiled on its first call, ``compile s`` = first step - median step; a
  compile that fails leaves its row out with the reason printed). ``torch/radjax`` on a torch
  row: its ms / radjax's ms, **> 1 means radjax is faster**.
* **RadFM train step** (radjax): ``radjax.papers.radfm.model.loss_fn`` (entity-weighted fused head
  loss) + AdamW over ViT, Perceiver and a LLaMA decoder, on B samples of L tokens with S 3D
  images each. Reported as tokens/s (B x L / step), images/s (B x S / step) and MFU (XLA's
  FLOP count of the compiled step / the matmul ceiling). There is no PyTorch RadFM to time
  against: the original's one-hot embedding multiplies a (B, L, V + 2 + 32 S) matrix.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks import common

LR = 1e-4


@dataclasses.dataclass(frozen=True)
class Size:
    image: int = 128
    depth: int = 16
    images_per_sample: int = 2
    batch: int = 2
    length: int = 256
    vision: dict = dataclasses.field(
        default_factory=lambda: dict(
            image_size=128,
            frames=32,
            patch_size=32,
            frame_patch_size=4,
            dim=384,
            depth=4,
            heads=8,
            dim_head=48,
            mlp_dim=1536,
            dropout=0.0,
            emb_dropout=0.0,
            num_latents=32,
            perceiver_depth=2,
            perceiver_heads=8,
            perceiver_dim_head=48,
            llm_dim=512,
        )
    )
    llm: dict = dataclasses.field(
        default_factory=lambda: dict(
            vocab_size=32000, hidden_size=512, num_layers=4, num_heads=8, intermediate_size=1376
        )
    )

    def describe(self) -> str:
        v, m = self.vision, self.llm
        return (
            f"ViT {v['depth']} layers dim {v['dim']} patches {v['patch_size']}x"
            f"{v['patch_size']}x{v['frame_patch_size']}, Perceiver {v['perceiver_depth']} x "
            f"{v['num_latents']} latents, LLaMA {m['num_layers']} layers hidden "
            f"{m['hidden_size']} vocab {m['vocab_size']}; batch {self.batch} x "
            f"{self.images_per_sample} images of {self.image}x{self.image}x{self.depth}, "
            f"{self.length} tokens"
        )


SIZES = {
    "bench": Size(),
    "tiny": Size(
        image=32,
        depth=4,
        images_per_sample=1,
        batch=2,
        length=32,
        vision=dict(
            image_size=32,
            frames=8,
            patch_size=16,
            frame_patch_size=4,
            dim=48,
            depth=1,
            heads=2,
            dim_head=16,
            mlp_dim=64,
            dropout=0.0,
            emb_dropout=0.0,
            num_latents=4,
            perceiver_depth=1,
            perceiver_heads=2,
            perceiver_dim_head=16,
            llm_dim=64,
        ),
        llm=dict(vocab_size=128, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=96),
    ),
}


def _images(size: Size, seed: int) -> np.ndarray:
    """(B, S, D, H, W, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return rng.random(
        (size.batch, size.images_per_sample, size.depth, size.image, size.image, 3),
        dtype=np.float32,
    )


def _params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------- vision step


class RadjaxVision:
    def __init__(self, model, images: np.ndarray):
        from flax import nnx

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params_count = _params(params)
        tx = optax.adamw(LR, weight_decay=0.0)

        def step(state, images):
            params, opt = state

            def loss(p):
                return jnp.mean(jnp.square(nnx.merge(graphdef, p, rest, copy=True)(images)))

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), value

        params = jax.tree.map(jnp.array, params)
        self.state, self.images = (params, tx.init(params)), jnp.asarray(images)
        t0 = time.perf_counter()
        self.compiled = jax.jit(step, donate_argnums=0).lower(self.state, self.images).compile()
        self.compile_s = time.perf_counter() - t0
        self.last = None

    def __call__(self):
        self.state, self.last = self.compiled(self.state, self.images)
        return self.last


class TorchVision:
    """The reference trained on the mean square of its output: eager, or with ``compiled`` its
    forward + loss through ``torch.compile``; AdamW eager either way."""

    def __init__(self, module, images: np.ndarray, *, compiled: bool = False):
        import torch

        self.model = module.train()
        self.params_count = sum(p.numel() for p in module.parameters() if p.requires_grad)
        self.opt = torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=0.0)
        # the original's layout: (B, S, C, H, W, D)
        self.images = torch.from_numpy(images).permute(0, 1, 5, 3, 4, 2).contiguous()

        def forward_loss(images):
            return self.model(images).square().mean()

        self.forward_loss = torch.compile(forward_loss) if compiled else forward_loss
        self.last = None

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss(self.images)
        loss.backward()
        self.opt.step()
        self.last = loss.detach()
        return self.last


def vision_pair(size: Size, seed: int = 0):
    """(torch VisionEmbedding, radjax RadFMVision) with the same weights."""
    import torch
    from flax import nnx

    from radjax.convert.torch_io import assign
    from radjax.papers.radfm.convert import vision_from_radfm
    from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig
    from tests.references.radfm_torch import VisionEmbedding

    cfg = RadFMVisionConfig(**size.vision)
    torch.manual_seed(seed)
    reference = VisionEmbedding(cfg)
    sd = {f"embedding_layer.{k}": v.detach().numpy() for k, v in reference.state_dict().items()}
    model = RadFMVision(cfg, rngs=nnx.Rngs(seed))
    assign(model, vision_from_radfm(sd), strict=True)
    return reference, model


VISION_ROWS = {
    "radjax": "radjax (jax.jit, XLA CPU)",
    "torch": "torch (eager)",
    "torch.compile": "torch.compile (inductor)",
}


def run_vision(size: Size, *, warmup: int = 1, iters: int = 3, seed: int = 0):
    """Timed vision train steps: ({'torch', 'torch.compile' unless its compile failed,
    'radjax'} -> StepResult, step FLOPs, source, notes)."""
    import copy

    reference, model = vision_pair(size, seed)
    images = _images(size, seed)
    rj = RadjaxVision(model, images)
    steps = {
        "radjax": rj,
        "torch": TorchVision(copy.deepcopy(reference), images),
        "torch.compile": TorchVision(reference, images, compiled=True),
    }
    for key, th in steps.items():
        # the torch side also holds figure_token_weight (2, llm_dim), unused here
        extra = 0 if key == "radjax" else size.vision["llm_dim"] * 2
        if rj.params_count != th.params_count - extra:
            raise AssertionError(
                f"parameter counts differ: radjax {rj.params_count:,} vs {key} {th.params_count:,}"
            )
    flops, source = common.step_flops(rj.compiled, float("nan"))
    timed = common.time_rows(steps, warmup=warmup, iters=iters)
    compile_s = timed.compile_times({"radjax": rj.compile_s})
    results = {
        key: common.StepResult(
            VISION_ROWS[key], t, rj.params_count, compile_s[key], final_loss=float(steps[key].last)
        )
        for key, t in timed.timings.items()
    }
    return results, flops, source, timed.notes


# ---------------------------------------------------------------------------- RadFM step


def _batch(size: Size, seed: int) -> dict[str, np.ndarray]:
    """B samples: BOS, each image's block, then text tokens; the second half are answer
    labels (every fourth an entity token, weighted 3)."""
    rng = np.random.default_rng(seed)
    v, t = size.llm["vocab_size"], size.vision["num_latents"]
    ids = rng.integers(3, v, (size.batch, size.length)).astype(np.int32)
    pos = 1
    for n in range(size.images_per_sample):
        ids[:, pos : pos + t + 2] = [v] + [v + 2 + n * t + j for j in range(t)] + [v + 1]
        pos += t + 2
    labels = np.where(np.arange(size.length) >= size.length // 2, ids, -100).astype(np.int32)
    entities = (labels >= 0) & (np.arange(size.length) % 4 == 0)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "labels": labels,
        "entity_mask": entities,
        "images": _images(size, seed),
    }


@dataclasses.dataclass
class ModelResult:
    timing: common.Timing
    params: int
    flops: float
    flops_source: str
    compile_s: float
    loss: float


def run_model(size: Size, *, warmup: int = 1, iters: int = 3, seed: int = 0) -> ModelResult:
    """Timed radjax RadFM train steps on one synthetic batch."""
    from flax import nnx

    from radjax.models.llama import DecoderConfig
    from radjax.papers.radfm import model as radfm
    from radjax.papers.radfm.vision import RadFMVisionConfig

    model = radfm.RadFM(
        RadFMVisionConfig(**size.vision), DecoderConfig(**size.llm), rngs=nnx.Rngs(seed)
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(LR, weight_decay=0.0)
    config = ml_collections.ConfigDict({"model": {}, "loss": {"entity_weight": 3.0}})

    def step(state, batch):
        params, opt = state

        def loss(p):
            return radfm.loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch, config)[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    state = (params, tx.init(params))
    batch = {k: jnp.asarray(v) for k, v in _batch(size, seed).items()}
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops, source = common.step_flops(compiled, float("nan"))
    holder = {"state": state, "loss": None}

    def call():
        holder["state"], holder["loss"] = compiled(holder["state"], batch)
        return holder["loss"]

    timing = common.time_interleaved({"radjax": call}, warmup=warmup, iters=iters)["radjax"]
    return ModelResult(timing, _params(params), flops, source, compile_s, float(holder["loss"]))


def model_rows(size: Size, result: ModelResult, ceiling: float) -> tuple[list[str], list[list]]:
    s = result.timing.median_s
    headers = [
        "implementation",
        "ms/step",
        "tokens/s",
        "images/s",
        "GFLOP/s",
        "MFU",
        "params",
        "compile s",
        "loss",
    ]
    return headers, [
        [
            "radjax RadFM (jax.jit, XLA CPU)",
            result.timing.median_ms,
            size.batch * size.length / s,
            size.batch * size.images_per_sample / s,
            result.flops / s / 1e9,
            f"{100 * common.mfu(result.flops, s, ceiling):.1f}%",
            f"{result.params:,}",
            result.compile_s,
            result.loss,
        ]
    ]


def report(size_name: str, *, warmup: int, iters: int, ceiling: float, out) -> common.Reported:
    """Prints the vision step table (``tables['vision']``) and the whole model's throughput
    (``tables['model']``); ``result`` is the ModelResult."""
    t_start = time.perf_counter()
    size = SIZES[size_name]
    threads = common.cpu_threads()
    common.set_torch_threads(threads)
    p = common.printer(out)
    p(f"RadFM: {size.describe()}")
    ceiling = common.print_ceilings(p, [], ceiling, 0)
    load_before = common.load_average()
    vision, flops, source, notes = run_vision(size, warmup=warmup, iters=iters)
    p(
        f"vision train step (ViT + Perceiver + fc, mean-square loss, AdamW; same weights via "
        f"convert.radfm): {flops / 1e9:.2f} GFLOP ({source}), first step untimed + "
        f"{max(warmup - 1, 0)} warm-up + {iters} timed, interleaved, median"
    )
    common.print_notes(p, notes)
    vision_table = common.step_comparison(p, vision, flops, ceiling, "vision speed ratio")
    result = run_model(size, warmup=warmup, iters=iters)
    p(
        f"RadFM train step (entity-weighted fused LM loss, AdamW), radjax only: "
        f"{result.flops / 1e9:.2f} GFLOP ({result.flops_source})"
    )
    model_table = common.format_table(*model_rows(size, result, ceiling))
    p("")
    p(model_table)
    p("")
    common.footer(p, "RadFM", t_start, load_before, threads)
    summary = (
        common.summary_row("vision train step", vision, flops, ceiling),
        common.SummaryRow(
            "whole-model train step (radjax only)",
            mfu=common.mfu(result.flops, result.timing.median_s, ceiling),
        ),
    )
    return common.Reported({"vision": vision_table, "model": model_table}, result, ceiling, summary)


BENCHMARK = common.Benchmark(name="radfm", order=2, sizes=tuple(SIZES), report=report)
