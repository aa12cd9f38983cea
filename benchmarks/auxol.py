"""AuxOL: the online update (the auxiliary U-Net's step on the full queue) and SAM ViT-B's image
encoder at 1024 px, radjax vs PyTorch, same weights, two tables in one run.

* **Online update** (both sides, same weights): AuxOL's U-Net (4 input channels, widths
  64 -> 512, InstanceNorm without affine, convs without bias, bilinear ``align_corners``
  upsampling) on the full FIFO queue, 32 crops of 4 x 128 x 128: forward + structure loss
  (the released PraNet loss: mean BCE + per-crop weighted IoU) + backward + AdamW (lr 5e-4,
  weight decay 5e-4). The PyTorch reference is ``tests/references/auxol_unet_torch.UNet``
  (the original's modules in plain ``torch.nn``, verified against the golden outputs of the
  original code) with its ``structure_loss`` and ``torch.optim.AdamW``; its state dict is
  converted with ``radjax.papers.auxol.convert``.

  - ``radjax online step``: ``radjax.papers.auxol.learner.make_step``, the one compiled
    program the online stream runs per object, on a full queue (every entry valid), called
    without feedback so that every step trains on the same 32 crops as the torch rows. That
    program always does a little more than the bare update: the (selected-away) push of the
    current crop into the queue, and the updated net's forward of that one crop (1/32 of a
    forward, about 1 % of the step's FLOPs).
  - ``radjax bare step`` (``--auxol_bare 1``): the bare forward + loss + backward + AdamW,
    jitted, for the size of that extra work; off by default (two more ~50 s steps).
  - ``torch (eager)``, and ``torch.compile (inductor)``: the forward and loss compiled into
    one graph (its backward compiled by AOTAutograd), AdamW eager (its multi-tensor kernels).
    A compile that fails here is left out and the reason printed.

  Step FLOPs are XLA's count of the compiled online step (analytic fallback: 3 x the
  convolutions' forward FLOPs); the same number divides every row. ``loss`` is each row's
  loss at its last step, before that step's update: every row starts from the same weights
  and takes the same number of steps on the same batch, so the column agrees across rows up
  to f32 rounding. Before timing, the first step's losses are asserted equal (rel. < 1e-4).

* **SAM image encoder** (forward, batch 1, 1024 x 1024 at the bench size): radjax
  ``radjax.models.sam.SamImageEncoder`` (``vision_config('vit_b')``) jitted, against
  transformers' ``SamVisionModel`` built from a ``SamVisionConfig`` of the same sizes with
  random weights (no download; redrawn so that the weights, not transformers' 1e-10 init,
  shape the output), eager (SDPA attention) and ``torch.compile``. Its state dict is converted
  with ``radjax.convert.sam_image_encoder``. ``rel err`` is max |torch - radjax| /
  max |radjax| of the embeddings, asserted < 1e-3 before anything is timed. FLOPs: XLA's count
  of the compiled forward (analytic fallback: 2 x the matmuls' multiply-adds).

How to read the tables: one row per implementation; ``torch/radjax`` on a torch row is its
time over the radjax row's (the online step for the first table), **> 1 means radjax is
faster**. ``compile s``: radjax's ahead-of-time XLA compile; torch.compile's first call minus
its median call. Both are outside the timed calls. MFU divides by the higher of the jnp and
torch.matmul ceilings (``benchmarks.common``). The table is ``common.step_table``'s, timed by
``common.time_rows``.

Timing: every row's first call is an untimed warm-up (it compiles torch.compile and gives the
checked loss / embeddings); then ``--warmup`` - 1 more untimed and the timed calls,
interleaved (one call of each row per round), median. A full-size U-Net step takes 30-50 s
and a ViT-B forward 10-20 s on 2 cores (the bench run is ~8 minutes), so each row makes
``--auxol_iters`` timed calls (default 1; 0 = the runner's ``--iters``). Before timing, the
matmul ceiling is measured at each model's FLOP-weighted median matmul shape (a convolution as
its im2col matmul: B H W x 9 C_in x C_out).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common

SAM_TOL = 1e-3  # rel err of the embeddings, torch vs radjax
LOSS_TOL = 1e-4  # rel difference of the first step's losses


@dataclasses.dataclass(frozen=True)
class Size:
    """The online batch (queue x crop x crop x 4, U-Net width ``base``) and the SAM encoder
    (radjax ``SamVisionConfig`` fields)."""

    queue: int = 32
    crop: int = 128
    base: int = 64
    sam: dict = dataclasses.field(
        default_factory=lambda: dict(
            image_size=1024,
            patch_size=16,
            width=768,
            depth=12,
            num_heads=12,
            out_channels=256,
            window_size=14,
            global_attn_indexes=(2, 5, 8, 11),
        )
    )

    def describe(self) -> str:
        s = self.sam
        return (
            f"U-Net base {self.base} on {self.queue} x 4 x {self.crop} x {self.crop}; SAM encoder "
            f"width {s['width']} depth {s['depth']} heads {s['num_heads']} window "
            f"{s['window_size']} on 1 x 3 x {s['image_size']} x {s['image_size']}"
        )


SIZES = {
    "bench": Size(),
    "tiny": Size(
        queue=4,
        crop=32,
        base=4,
        sam=dict(
            image_size=64,
            patch_size=8,
            width=32,
            depth=2,
            num_heads=2,
            out_channels=16,
            window_size=3,  # the 8 x 8 map pads to 9 x 9
            global_attn_indexes=(1,),
        ),
    ),
}


@dataclasses.dataclass
class Row:
    """One implementation's timed calls (a table row). ``value``: the loss of the last step
    (online update) or the rel err of the embeddings vs radjax (SAM)."""

    name: str
    timing: common.Timing
    params: int
    compile_s: float | None = None
    value: float = float("nan")


@dataclasses.dataclass
class Comparison:
    """A table's rows (keys 'torch', 'torch.compile', 'radjax', 'radjax bare'; the optional
    ones may be absent), the FLOPs per call that divide every row, and printed notes."""

    rows: dict[str, Row]
    flops: float
    flops_source: str
    notes: list[str]


@dataclasses.dataclass
class Result:
    update: Comparison
    sam: Comparison


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _torch_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_params(what: str, radjax: int, torch: int) -> None:
    if radjax != torch:
        raise AssertionError(
            f"{what}: parameter counts differ: radjax {radjax:,} vs torch {torch:,}"
        )


# ---------------------------------------------------------------------------- FLOPs, shapes


def unet_conv_shapes(size: Size) -> list[tuple[int, int, int]]:
    """Every convolution of the bilinear U-Net as its im2col matmul (B H W, k k C_in, C_out),
    in forward order (the 1x1 OutConv last)."""
    c, s, b = size.base, size.crop, size.queue
    # (spatial size, cin, mid, cout) of each DoubleConv, as UNet builds them (factor 2)
    doubles = [(s, 4, c, c)]
    doubles += [(s >> i, c << (i - 1), c << i, c << i) for i in (1, 2, 3)]
    doubles += [(s >> 4, 8 * c, 8 * c, 8 * c)]
    doubles += [(s >> (4 - i), 16 * c >> (i - 1), 8 * c >> (i - 1), 4 * c >> (i - 1))
                for i in (1, 2, 3)]  # fmt: skip
    doubles += [(s, 2 * c, c, c)]
    shapes = []
    for side, cin, mid, cout in doubles:
        shapes += [(b * side * side, 9 * cin, mid), (b * side * side, 9 * mid, cout)]
    return shapes + [(b * s * s, c, 1)]


def sam_matmul_shapes(size: Size) -> list[tuple[int, int, int]]:
    """(m, k, n) of the encoder's matmuls and convolutions at batch 1: patch embedding, each
    block's qkv / proj / MLP and its attention's two products (per window and head; windowed
    blocks on the map padded to whole windows), the neck's two convs. The rel-pos terms and
    the norms are left out."""
    s = size.sam
    grid, width, heads = s["image_size"] // s["patch_size"], s["width"], s["num_heads"]
    tokens, head_dim, window = grid * grid, width // heads, s["window_size"]
    shapes = [(tokens, 3 * s["patch_size"] ** 2, width)]
    for i in range(s["depth"]):
        shapes += [(tokens, width, 3 * width), (tokens, width, width)]
        shapes += [(tokens, width, 4 * width), (tokens, 4 * width, width)]
        if i in s["global_attn_indexes"]:
            shapes += [(tokens, head_dim, tokens), (tokens, tokens, head_dim)] * heads
        else:
            windows, n = (-(-grid // window)) ** 2, window * window
            shapes += [(n, head_dim, n), (n, n, head_dim)] * (heads * windows)
    return shapes + [
        (tokens, width, s["out_channels"]),
        (tokens, 9 * s["out_channels"], s["out_channels"]),
    ]


def _matmul_flops(shapes) -> float:
    return sum(2.0 * m * k * n for m, k, n in shapes)


# ---------------------------------------------------------------------------- online update


def _online_batch(size: Size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (Q, S, S, 4) in [0, 1], masks (Q, S, S, 1) in {0, 1}): a disc a crop, the
    image darker inside it plus noise, the 4th channel the disc (SAM's mask)."""
    rng = np.random.default_rng(seed)
    q, s = size.queue, size.crop
    yy, xx = np.mgrid[:s, :s] / s
    centres = rng.uniform(0.3, 0.7, (q, 2))
    radii = rng.uniform(0.15, 0.3, q)
    r2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    masks = (r2 < radii[:, None, None] ** 2)[..., None].astype(np.float32)
    rgb = rng.random((q, s, s, 3), dtype=np.float32) * 0.4 + 0.5 * (1 - masks)
    return np.concatenate([rgb, masks], -1), masks


def unet_pair(size: Size, seed: int = 0):
    """(torch reference U-Net, a numpy copy of its state dict): torch's default init after
    ``torch.manual_seed(seed)``. Copied: radjax's parameters converted from views of the tensors
    followed torch's in-place AdamW updates (XLA's CPU client may alias numpy buffers)."""
    import torch

    from tests.references.auxol_unet_torch import UNet

    torch.manual_seed(seed)
    reference = UNet(n_channels=4, n_classes=1, bilinear=True, base=size.base)
    return reference, {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}


class RadjaxOnline:
    """``learner.make_step`` on a full queue, compiled ahead of time; each call one object
    without feedback (an AdamW step on the queue as it is, then the one-crop forward)."""

    def __init__(self, size: Size, sd, images, masks, seed: int = 0):
        from flax import nnx

        from radjax.papers.auxol import convert, learner
        from radjax.papers.auxol.unet import UNetConfig

        cfg = learner.LearnerConfig(queue_size=size.queue, crop_size=size.crop)
        graphdef, state = learner.init_learner(UNetConfig(base=size.base), cfg, seed)
        model = nnx.merge(graphdef, state.params)
        convert.load_auxol_unet(model, sd)
        params = nnx.state(model, nnx.Param)
        queue = learner.Queue(
            jnp.asarray(images),
            jnp.asarray(masks),
            jnp.ones((size.queue,), bool),
            jnp.full((size.queue,), jnp.inf, jnp.float32),
        )
        self.state = state._replace(
            params=params, opt_state=learner.optimizer(cfg).init(params), queue=queue
        )
        self.params_count = _count(params)
        self.args = (jnp.asarray(images[-1]), jnp.asarray(masks[-1]), jnp.asarray(False))
        t0 = time.perf_counter()
        self.compiled = learner.make_step(graphdef, cfg).lower(self.state, *self.args).compile()
        self.compile_s = time.perf_counter() - t0
        self.graphdef, self.cfg, self.losses = graphdef, cfg, []

    def __call__(self):
        self.state, logits, loss = self.compiled(self.state, *self.args)
        self.losses.append(loss)
        return logits, loss


class RadjaxBare:
    """The bare U-Net step (forward + structure loss + backward + AdamW) on the same params."""

    def __init__(self, online: RadjaxOnline, images, masks):
        from flax import nnx

        from radjax.papers.auxol import learner
        from radjax.papers.auxol.losses import structure_loss

        graphdef, tx = online.graphdef, learner.optimizer(online.cfg)

        def step(params, opt_state, images, masks):
            def loss(p):
                return structure_loss(nnx.merge(graphdef, p, copy=True)(images), masks)

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        params = jax.tree.map(jnp.array, online.state.params)
        self.state = (params, tx.init(params))
        self.batch = (jnp.asarray(images), jnp.asarray(masks))
        self.params_count = _count(params)
        t0 = time.perf_counter()
        self.compiled = jax.jit(step).lower(*self.state, *self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.losses = []

    def __call__(self):
        *self.state, loss = self.compiled(*self.state, *self.batch)
        self.losses.append(loss)
        return loss


class TorchOnline:
    """The reference U-Net's step: (compiled) forward + loss, backward, ``torch.optim.AdamW``
    (lr 5e-4, weight decay 5e-4, torch's defaults otherwise)."""

    def __init__(self, module, images, masks, *, compiled: bool):
        import torch

        from tests.references.auxol_unet_torch import structure_loss

        self.model = module.train()
        self.params_count = _torch_count(module)
        self.opt = torch.optim.AdamW(module.parameters(), lr=5e-4, weight_decay=5e-4)
        self.images = torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))
        self.masks = torch.from_numpy(np.ascontiguousarray(np.transpose(masks, (0, 3, 1, 2))))

        def forward_loss(x, y):
            return structure_loss(self.model(x), y)

        self.forward_loss = torch.compile(forward_loss) if compiled else forward_loss
        self.losses = []

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss(self.images, self.masks)
        loss.backward()
        self.opt.step()
        self.losses.append(loss.detach())
        return loss


def run_update(size: Size, *, warmup: int, iters: int, bare: bool = False, seed: int = 0):
    """Timed online-update steps -> Comparison (rows 'torch', 'torch.compile', 'radjax' and,
    with ``bare``, 'radjax bare')."""
    reference, sd = unet_pair(size, seed)
    images, masks = _online_batch(size, seed)
    online = RadjaxOnline(size, sd, images, masks, seed)
    steps = {
        "torch": TorchOnline(copy.deepcopy(reference), images, masks, compiled=False),
        "torch.compile": TorchOnline(reference, images, masks, compiled=True),
        "radjax": online,
    }
    if bare:
        steps["radjax bare"] = RadjaxBare(online, images, masks)
    for key, s in steps.items():
        _check_params(f"U-Net ({key})", online.params_count, s.params_count)
    flops, source = common.step_flops(online.compiled, 3 * _matmul_flops(unet_conv_shapes(size)))

    def check_losses(outputs) -> str:
        first_losses = {k: float(steps[k].losses[0]) for k in outputs}
        spread = max(abs(v / first_losses["radjax"] - 1) for v in first_losses.values())
        if not spread < LOSS_TOL:
            raise AssertionError(f"first-step losses differ (rel {spread:.2e}): {first_losses}")
        return (
            "first-step loss (same weights, same batch): "
            + ", ".join(f"{k} {v:.6f}" for k, v in first_losses.items())
            + f" (max rel difference {spread:.1e})"
        )

    timed = common.time_rows(steps, warmup=warmup, iters=iters, check=check_losses)
    names = {
        "torch": "torch (eager)",
        "torch.compile": "torch.compile (inductor)",
        "radjax": "radjax online step (learner.make_step, jax.jit)",
        "radjax bare": "radjax bare U-Net step (jax.jit)",
    }
    ahead = {k: s.compile_s for k, s in steps.items() if k.startswith("radjax")}
    compile_s = timed.compile_times(ahead)
    rows = {
        key: Row(
            names[key], t, steps[key].params_count, compile_s[key], float(steps[key].losses[-1])
        )
        for key, t in timed.timings.items()
    }
    return Comparison(rows, flops, source, timed.notes)


# ---------------------------------------------------------------------------- SAM encoder


def _hf_vision_config(size: Size):
    """transformers ``SamVisionConfig`` of the radjax encoder's sizes (MLP ratio 4, eps 1e-6,
    rel pos, qkv bias: both libraries' defaults)."""
    import transformers

    s = size.sam
    return transformers.SamVisionConfig(
        hidden_size=s["width"],
        output_channels=s["out_channels"],
        num_hidden_layers=s["depth"],
        num_attention_heads=s["num_heads"],
        image_size=s["image_size"],
        patch_size=s["patch_size"],
        window_size=s["window_size"],
        global_attn_indexes=list(s["global_attn_indexes"]),
    )


def _redraw(module, seed: int) -> None:
    """Random weights that shape the output: matrices N(0, 1 / fan_in), position tables
    N(0, 0.1^2), 1-D parameters (norms, biases) their init + N(0, 0.1^2)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("pos_embed") or "rel_pos" in name:
                p.copy_(0.1 * noise)
            elif p.ndim == 1:
                p.add_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def sam_pair(size: Size, seed: int = 0):
    """(transformers ``SamVisionModel`` with redrawn weights, radjax ``SamImageEncoder``
    holding the same weights)."""
    import torch
    import transformers

    from radjax.convert.sam_image_encoder import load_image_encoder
    from radjax.models.sam.image_encoder import SamVisionConfig

    torch.manual_seed(seed)
    reference = transformers.SamVisionModel(_hf_vision_config(size)).eval()
    _redraw(reference, seed)
    sd = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    return reference, load_image_encoder(sd, SamVisionConfig(**size.sam))


class RadjaxEncoder:
    """The encoder's forward, jitted and compiled ahead of time: pixels (1, S, S, 3) ->
    embeddings (1, S/p, S/p, out_channels)."""

    def __init__(self, model, pixels: np.ndarray):
        from flax import nnx

        graphdef, self.state = nnx.split(model)
        self.params_count = _count(nnx.state(model, nnx.Param))
        self.pixels = jnp.asarray(pixels)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        t0 = time.perf_counter()
        self.compiled = forward.lower(self.state, self.pixels).compile()
        self.compile_s = time.perf_counter() - t0

    def __call__(self):
        return self.compiled(self.state, self.pixels)


class TorchEncoder:
    """transformers' vision model under ``torch.no_grad``: pixels (1, 3, S, S) -> embeddings,
    returned channels-last (1, S/p, S/p, C) to compare with radjax's."""

    def __init__(self, module, pixels: np.ndarray, *, compiled: bool):
        import torch

        self.params_count = _torch_count(module)
        self.module = torch.compile(module) if compiled else module
        self.pixels = torch.from_numpy(np.ascontiguousarray(np.transpose(pixels, (0, 3, 1, 2))))

    def __call__(self):
        import torch

        with torch.no_grad():
            return self.module(pixel_values=self.pixels).last_hidden_state.permute(0, 2, 3, 1)


def _embedding_errors(outputs: dict[str, Any]) -> dict[str, float]:
    """Row -> rel err (max |diff| / max |radjax|) of its embeddings against radjax's."""
    from tests.parity import rel_err

    want = np.asarray(outputs["radjax"])
    return {k: rel_err(v, want) for k, v in outputs.items() if k != "radjax"} | {"radjax": 0.0}


def _check_embeddings(outputs: dict[str, Any]) -> str:
    """Raises unless every row's embeddings are within ``SAM_TOL`` of radjax's; the note."""
    errors = _embedding_errors(outputs)
    bad = {k: e for k, e in errors.items() if not e < SAM_TOL}
    if bad:
        raise AssertionError(f"SAM embeddings differ from radjax's (rel err >= {SAM_TOL}): {bad}")
    return (
        "embeddings vs radjax (rel err, max |diff| / max |radjax|): "
        + ", ".join(f"{k} {e:.1e}" for k, e in errors.items() if k != "radjax")
        + f"; embedding std {np.asarray(outputs['radjax']).std():.2f}"
    )


def run_sam(size: Size, *, warmup: int, iters: int, seed: int = 0) -> Comparison:
    """Timed encoder forwards -> Comparison (rows 'torch', 'torch.compile', 'radjax'; ``value``
    = rel err of the embeddings vs radjax's, asserted < 1e-3)."""
    reference, model = sam_pair(size, seed)
    s = size.sam["image_size"]
    pixels = np.random.default_rng(seed).standard_normal((1, s, s, 3), dtype=np.float32)
    rj = RadjaxEncoder(model, pixels)
    calls = {
        "torch": TorchEncoder(reference, pixels, compiled=False),
        "torch.compile": TorchEncoder(reference, pixels, compiled=True),
        "radjax": rj,
    }
    for key, c in calls.items():
        _check_params(f"SAM encoder ({key})", rj.params_count, c.params_count)
    flops, source = common.step_flops(rj.compiled, _matmul_flops(sam_matmul_shapes(size)))
    timed = common.time_rows(calls, warmup=warmup, iters=iters, check=_check_embeddings)
    errors = _embedding_errors(timed.outputs)
    attention = getattr(reference.config, "_attn_implementation", "?")
    names = {
        "torch": f"torch (eager, transformers SamVisionModel, {attention})",
        "torch.compile": "torch.compile (inductor)",
        "radjax": "radjax SamImageEncoder (jax.jit)",
    }
    compile_s = timed.compile_times({"radjax": rj.compile_s})
    rows = {
        key: Row(names[key], t, calls[key].params_count, compile_s[key], errors[key])
        for key, t in timed.timings.items()
    }
    return Comparison(rows, flops, source, timed.notes)


# ---------------------------------------------------------------------------- report


def _cell(value: str) -> Callable[[Row], str]:
    """The last column's text: a rel err in e-notation, a loss to five decimals."""
    if value == "rel err":
        return lambda r: f"{r.value:.2e}"
    return lambda r: f"{r.value:.5f}"


def table(comparison: Comparison, ceiling: float, *, unit: str, value: str) -> str:
    """The side-by-side table (``common.step_table``): torch rows first; ``torch/radjax`` =
    row / 'radjax' time."""
    headers, rows = common.step_table(
        comparison.rows, comparison.flops, ceiling, unit=unit, value=value, cell=_cell(value)
    )
    return common.format_table(headers, rows)


def _print_comparison(
    p, comparison: Comparison, ceiling: float, label: str, *, unit: str, value: str
) -> str:
    """Prints the notes, the table and a ratio line per torch row; returns the table."""
    common.print_notes(p, comparison.notes)
    return common.step_comparison(
        p,
        comparison.rows,
        comparison.flops,
        ceiling,
        label,
        unit=unit,
        value=value,
        cell=_cell(value),
    )


def report(
    size_name: str,
    *,
    warmup: int,
    iters: int,
    ceiling: float,
    out,
    auxol_iters: int = 1,
    auxol_bare: int = 0,
    ceiling_iters: int = 3,
) -> common.Reported:
    """Prints the online-update table (``tables['update']``) and the SAM encoder table
    (``tables['sam']``); ``result`` is a Result."""
    t_start = time.perf_counter()
    size = SIZES[size_name]
    iters = auxol_iters or iters
    threads = common.cpu_threads()
    common.set_torch_threads(threads)
    p = common.printer(out)
    p(f"AuxOL: {size.describe()}")
    shapes = [common.weighted_median_shape(unet_conv_shapes(size)),
              common.weighted_median_shape(sam_matmul_shapes(size))]  # fmt: skip
    ceiling = common.print_ceilings(p, shapes, ceiling, ceiling_iters)
    load_before = common.load_average()
    timing = (
        f"first call untimed + {max(warmup - 1, 0)} warm-up + {iters} timed, interleaved, median"
    )
    update = run_update(size, warmup=warmup, iters=iters, bare=bool(auxol_bare))
    p(
        f"online update (U-Net forward + structure loss + backward + AdamW on the full queue; "
        f"same weights via convert.auxol): {update.flops / 1e9:.1f} GFLOP ({update.flops_source}); "
        f"{timing}"
    )
    update_table = _print_comparison(p, update, ceiling, "online update", unit="step", value="loss")
    sam = run_sam(size, warmup=warmup, iters=iters)
    p(
        f"SAM image encoder forward (batch 1; same weights via convert.sam_image_encoder): "
        f"{sam.flops / 1e9:.1f} GFLOP ({sam.flops_source}); {timing}"
    )
    sam_table = _print_comparison(p, sam, ceiling, "SAM encoder", unit="forward", value="rel err")
    common.footer(p, "AuxOL", t_start, load_before, threads)
    summary = (
        common.summary_row("online update", update.rows, update.flops, ceiling),
        common.summary_row("SAM encoder forward", sam.rows, sam.flops, ceiling),
    )
    return common.Reported(
        {"update": update_table, "sam": sam_table}, Result(update, sam), ceiling, summary
    )


BENCHMARK = common.Benchmark(
    name="auxol",
    order=3,
    sizes=tuple(SIZES),
    report=report,
    options=(
        common.Option("auxol_iters", 1, "timed calls per row, replacing --iters (0: --iters)"),
        common.Option("auxol_bare", 0, "1: also time radjax's bare U-Net step"),
    ),
)
