"""``bash benchmarks/gpu.sh``: radjax on one NVIDIA H200, against eager and compiled PyTorch,
in one unattended run that stops by itself; ``--cpu``: the same run on tiny shapes (the dry
run the test suite makes, ``tests/benchmarks/test_gpu_dry.py``).

Not a ``benchmarks.run`` benchmark (it declares no ``BENCHMARK``): it needs its own processes.

Models (``--models``; sizes in ``SIZES``, ``gpu`` and ``cpu``)
--------------------------------------------------------------
* ``vit3d``: M3D-LaMed's 3D ViT-B (MONAI ``ViT``: one-channel 32 x 256 x 256 volumes, patches
  4 x 16 x 16, 2048 patches + CLS, width 768, 12 layers, 12 heads, MLP 3072, learned position
  table, bias-free qkv, final LayerNorm) as ``radjax.models.vit.ViT``, batch 8; train step on
  the mean square of the tokens. torch: no M3D ViT is in the references (MONAI is not on the
  GPU machine), so its rows run ``tests/references/radfm_torch.ViT`` (RadFM's ViT) at the same
  shape: the same matmuls, with RadFM's patch LayerNorms and axial position tables instead of
  the CLS token (2048 tokens, not 2049), learned table and final norm.
* ``radfm``: RadFM small: the released vision path (3D ViT 768 x 12, patches 32 x 32 x 4,
  Perceiver 6 x 32 latents) with an 8-layer, 2048-wide LLaMA (vocab 32000); 8 samples of 512
  tokens with 2 volumes 32 x 256 x 256 x 3 each (``benchmarks.radfm``'s synthetic batch);
  ``radjax.papers.radfm.model.loss_fn`` (entity-weighted fused LM loss). radjax only: there is
  no PyTorch RadFM in the references.
* ``llama7b``: a LLaMA-7B-shaped stack of 4 decoder layers (width 4096, 32 heads, SwiGLU
  11008, RoPE, causal) + the final RMSNorm on (8, 2048, 4096) input embeddings; train step on
  the mean square of the hidden states. radjax ``Decoder.hidden_states(inputs_embeds=...)``
  (vocabulary 32, unused); torch ``transformers.LlamaModel`` (its ``LlamaDecoderLayer`` x 4).
* ``sam``: SAM ViT-B's image encoder at 1024 x 1024, forward only, batch 8: radjax
  ``SamImageEncoder`` (``benchmarks.auxol.RadjaxEncoder``), torch ``transformers
  .SamVisionModel`` of the same sizes under ``no_grad``.
* ``unet``: AuxOL's online update on the full queue (32 crops of 4 x 128 x 128, U-Net base 64):
  radjax ``radjax.papers.auxol.learner.make_step`` as the stream runs it (it also forwards the
  current crop once more, ~1 % of the FLOPs); torch ``tests/references/auxol_unet_torch.UNet``
  + ``structure_loss`` + AdamW (lr 5e-4, weight decay 5e-4).

Train steps are forward + backward + AdamW (lr 1e-4, no weight decay unless stated), with the
compute in ``--dtype`` (bf16 on the GPU, f32 on ``--cpu``) and parameters and optimizer state
in f32: radjax models take ``dtype='bfloat16'``, torch runs its forward and loss under
``torch.autocast(bfloat16)``. Weights are random (the same architecture, not the same values:
these rows time the programs, ``benchmarks/*.py`` check equal outputs): torch's own init, built
on the device; radjax's drawn in NumPy into the module's abstract shapes (``_build``).
Both sides see the same inputs. The analytic FLOP counts were checked against XLA's count of
the compiled radjax programs at the GPU shapes (2026-12-02, on the CPU): vit3d 1.012, radfm
1.006, llama7b 1.003, sam 1.061 (the relative-position terms are not counted), unet 0.97 (the
bare step, without the stream's extra crop).

Rows per model: ``radjax`` (``jax.jit``, compiled ahead of time, train state donated),
``torch`` (eager) and ``torch.compile`` (the forward and loss compiled, the backward by
AOTAutograd, AdamW eager; backend ``--compile-backend``: inductor on the GPU; on ``--cpu``
``aot_eager``, since inductor's cold compile takes minutes on 2 cores: the dry run tests the
plumbing, not inductor).

Processes and time limits
-------------------------
Each implementation runs in its own worker process (``--worker``), the models one after the
other, so JAX and PyTorch never share the GPU's memory: radjax for every model, then eager torch,
then torch.compile. A worker reports each model's start and row as a line on stdout; the
driver kills the worker's process group when a model runs past its time limit
(``--model-timeout``, ``--timeout-for MODEL=S``) or the whole run past ``--budget``, records
that model's row as ``timeout`` and starts a fresh worker for the models left. The table is
rewritten to the output file after every row, so even a run killed from outside (``gpu.sh``
wraps the driver in ``timeout``) leaves the rows measured so far.

How to read the output
----------------------
The header names the devices and versions, the peak used for ``MFU peak`` (``--peak-tflops``,
default 989 TFLOP/s: the H200 SXM's dense bf16 rate) and the matmul ceilings measured first:
``jnp`` and ``torch`` square ``--ceiling-size`` products (8192^3 bf16 on the GPU; median of
10 after 3 warm-ups) on random data; ``MFU meas`` divides by the higher of the two. ``ms/step`` is the median of ``--iters``
timed calls (each synchronised) after ``--warmup`` untimed ones, the first of which compiles
torch.compile; ``min`` / ``max`` show the spread. ``throughput``: volumes, tokens, images or
crops per second. ``TFLOP/s`` and both MFUs use the model's analytic FLOPs per step (the
matmuls and attention products, x 3 for a train step; listed with XLA's own count of the
radjax program above the table), the same number for every row of a model. ``time/radjax`` > 1
means radjax is faster. ``compile s``: radjax's ahead-of-time compile; torch.compile's first
call minus its median call. A status other than ``ok`` (``timeout``, ``error``, ``missing``
(a Python package), ``skipped``, ``n/a``) has its reason under the table. The exit code is 0
when every row is ``ok``, ``skipped`` (torch without CUDA) or ``n/a``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "@@gpu_bench "  # a worker's report lines; anything else it prints passes through
MODELS = ("vit3d", "radfm", "llama7b", "sam", "unet")
IMPLS = ("radjax", "torch", "torch.compile")
PEAK_TFLOPS = 989.0
PEAK_SOURCE = "H200 SXM dense bf16, NVIDIA datasheet; 1979 with 2:4 sparsity"
LR = 1e-4
OK_STATUSES = ("ok", "skipped", "n/a")


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViT3DSize:
    """Volumes (batch, depth, image, image, 1), patches (frame_patch, patch, patch)."""

    batch: int
    depth: int = 32
    image: int = 256
    patch: int = 16
    frame_patch: int = 4
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp: int = 3072

    @property
    def patches(self) -> int:
        return (self.image // self.patch) ** 2 * (self.depth // self.frame_patch)


@dataclasses.dataclass(frozen=True)
class RadFMSize:
    """The fields of ``benchmarks.radfm.Size`` (compute dtype added when run)."""

    image: int
    depth: int
    images_per_sample: int
    batch: int
    length: int
    vision: dict
    llm: dict


@dataclasses.dataclass(frozen=True)
class LlamaSize:
    """Input embeddings (batch, length, hidden) through ``layers`` decoder layers."""

    batch: int
    length: int
    hidden: int = 4096
    layers: int = 4
    heads: int = 32
    intermediate: int = 11008
    vocab: int = 32  # the (unused) embedding table and head


@dataclasses.dataclass(frozen=True)
class SamSize:
    """``batch`` images; ``sam``: the ``SamVisionConfig`` fields (``benchmarks.auxol.Size``)."""

    batch: int
    sam: dict


@dataclasses.dataclass(frozen=True)
class UNetSize:
    """The online queue: ``queue`` crops of 4 x ``crop`` x ``crop``, U-Net width ``base``."""

    queue: int
    crop: int
    base: int


# Spelled out here, not imported: this driver process reads the sizes before any worker
# starts, and benchmarks.auxol / benchmarks.radfm import optax and ml_collections at the top,
# which the GPU machine may lack (their rows then read 'missing' instead of the run failing).
# The same values: benchmarks.auxol.Size().sam (ViT-B) and benchmarks.radfm.SIZES['tiny'].vision.
_SAM_VIT_B = dict(
    image_size=1024,
    patch_size=16,
    width=768,
    depth=12,
    num_heads=12,
    out_channels=256,
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
)
_RADFM_VISION = dict(
    image_size=512,
    frames=512,
    patch_size=32,
    frame_patch_size=4,
    dim=768,
    depth=12,
    heads=8,
    dim_head=64,
    mlp_dim=2048,
    dropout=0.0,
    emb_dropout=0.0,
    num_latents=32,
    perceiver_depth=6,
    perceiver_heads=8,
    perceiver_dim_head=64,
    llm_dim=2048,
)
_TINY_RADFM_VISION = dict(
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
)

SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "vit3d": ViT3DSize(batch=8),
        "radfm": RadFMSize(
            image=256,
            depth=32,
            images_per_sample=2,
            batch=8,
            length=512,
            vision=_RADFM_VISION,
            llm=dict(
                vocab_size=32000,
                hidden_size=2048,
                num_layers=8,
                num_heads=16,
                intermediate_size=5504,
            ),
        ),
        "llama7b": LlamaSize(batch=8, length=2048),
        "sam": SamSize(batch=8, sam=_SAM_VIT_B),
        "unet": UNetSize(queue=32, crop=128, base=64),
    },
    "cpu": {
        "vit3d": ViT3DSize(batch=2, depth=8, image=32, width=48, layers=2, heads=2, mlp=96),
        "radfm": RadFMSize(
            image=32,
            depth=4,
            images_per_sample=1,
            batch=2,
            length=32,
            vision=_TINY_RADFM_VISION,
            llm=dict(
                vocab_size=128, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=96
            ),
        ),
        "llama7b": LlamaSize(batch=2, length=16, hidden=64, layers=2, heads=4, intermediate=172),
        "sam": SamSize(
            batch=1,
            sam=dict(
                image_size=64,
                patch_size=8,
                width=32,
                depth=2,
                num_heads=2,
                out_channels=16,
                window_size=3,
                global_attn_indexes=(1,),
            ),
        ),
        "unet": UNetSize(queue=4, crop=32, base=4),
    },
}


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs (2 per multiply-add of the matmuls, convolutions and attention products)
# ---------------------------------------------------------------------------------------------


def _decoder_flops(tokens: int, length: int, hidden: int, mlp: int, layers: int) -> float:
    """Forward FLOPs of ``layers`` LLaMA layers over ``tokens`` = batch x ``length`` tokens:
    q, k, v, o and the three SwiGLU matmuls, and the full (masked) L x L attention products."""
    per_layer = 2.0 * tokens * (4 * hidden * hidden + 3 * hidden * mlp)
    return layers * (per_layer + 4.0 * tokens * length * hidden)


def _vit_layer_flops(tokens: int, width: int, inner: int, mlp: int) -> float:
    """One pre-norm ViT block over ``tokens``: qkv, out, MLP and the attention products."""
    return 2.0 * tokens * (3 * width * inner + inner * width + 2 * width * mlp) + (
        4.0 * tokens * tokens * inner
    )


def vit3d_flops(s: ViT3DSize) -> float:
    """Train step: 3 x (patch projection + blocks over the patches and the CLS token)."""
    tokens = s.patches + 1
    patch = 2.0 * s.patches * s.frame_patch * s.patch * s.patch * s.width
    forward = patch + s.layers * _vit_layer_flops(tokens, s.width, s.width, s.mlp)
    return 3.0 * s.batch * forward


def radfm_flops(s: RadFMSize) -> float:
    """Train step: 3 x (per volume: ViT, Perceiver (latents attend to [tokens; latents]), fc;
    then the LLaMA over batch x length tokens and its LM head)."""
    v, m = s.vision, s.llm
    tokens = (s.image // v["patch_size"]) ** 2 * (s.depth // v["frame_patch_size"])
    dim, inner = v["dim"], v["heads"] * v["dim_head"]
    vit = 2.0 * tokens * v["patch_size"] ** 2 * v["frame_patch_size"] * 3 * dim
    vit += v["depth"] * _vit_layer_flops(tokens, dim, inner, v["mlp_dim"])
    n, p_inner = v["num_latents"], v["perceiver_heads"] * v["perceiver_dim_head"]
    perceiver_layer = 2.0 * n * dim * p_inner + 4.0 * (tokens + n) * dim * p_inner
    perceiver_layer += 4.0 * n * (tokens + n) * p_inner + 2.0 * n * p_inner * dim
    perceiver_layer += 4.0 * n * dim * 4 * dim  # feed-forward, ff_mult 4
    vision = vit + v["perceiver_depth"] * perceiver_layer + 2.0 * n * dim * v["llm_dim"]
    rows = s.batch * s.length
    h = m["hidden_size"]
    llm = _decoder_flops(rows, s.length, h, m["intermediate_size"], m["num_layers"])
    llm += 2.0 * rows * h * m["vocab_size"]
    return 3.0 * (s.batch * s.images_per_sample * vision + llm)


def llama_flops(s: LlamaSize) -> float:
    """Train step: 3 x the decoder layers' forward (embedding and head unused)."""
    return 3.0 * _decoder_flops(s.batch * s.length, s.length, s.hidden, s.intermediate, s.layers)


def _auxol_size(s: SamSize | UNetSize):
    from benchmarks import auxol

    if isinstance(s, SamSize):
        return auxol.Size(sam=dict(s.sam))
    return auxol.Size(queue=s.queue, crop=s.crop, base=s.base)


def sam_flops(s: SamSize) -> float:
    """Forward: ``benchmarks.auxol.sam_matmul_shapes`` (batch 1) x batch."""
    from benchmarks import auxol

    return s.batch * sum(2.0 * m * k * n for m, k, n in auxol.sam_matmul_shapes(_auxol_size(s)))


def unet_flops(s: UNetSize) -> float:
    """Train step: 3 x the convolutions of ``benchmarks.auxol.unet_conv_shapes``."""
    from benchmarks import auxol

    return 3.0 * sum(2.0 * m * k * n for m, k, n in auxol.unet_conv_shapes(_auxol_size(s)))


# ---------------------------------------------------------------------------------------------
# What each model is
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """A model's description, throughput unit and FLOPs; ``torch_reason``: why it has no
    torch rows (None: it has them); ``requires``: the Python packages each implementation
    imports (checked before anything runs)."""

    title: str
    unit: str
    items: Callable[[Any], int]
    flops: Callable[[Any], float]
    shape: Callable[[Any], str]
    torch_reason: str | None = None
    requires: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


_JAX = ("jax", "flax", "optax", "numpy")
# jax, optax: benchmarks.common's timing helpers, benchmarks.auxol's FLOP shapes
_TORCH = ("torch", "numpy", "jax", "optax")

SPECS: dict[str, Spec] = {
    "vit3d": Spec(
        "ViT-3D, M3D-LaMed's shape (train step)",
        "vol",
        lambda s: s.batch,
        vit3d_flops,
        lambda s: (
            f"{s.batch} x 1 x {s.depth} x {s.image} x {s.image}, patch {s.frame_patch}x{s.patch}"
            f"x{s.patch} ({s.patches} patches + CLS), width {s.width}, {s.layers} layers, "
            f"{s.heads} heads, MLP {s.mlp}; torch rows: tests/references/radfm_torch.ViT "
            f"(RadFM's ViT) at this shape"
        ),
        requires={"radjax": _JAX, "torch": _TORCH + ("einops",)},
    ),
    "radfm": Spec(
        "RadFM small (train step)",
        "tok",
        lambda s: s.batch * s.length,
        radfm_flops,
        lambda s: (
            f"{s.batch} samples x {s.length} tokens, {s.images_per_sample} volumes "
            f"3 x {s.depth} x {s.image} x {s.image} each; ViT {s.vision['dim']} x "
            f"{s.vision['depth']}, Perceiver {s.vision['perceiver_depth']} x "
            f"{s.vision['num_latents']} latents, LLaMA {s.llm['num_layers']} x "
            f"{s.llm['hidden_size']}, vocab {s.llm['vocab_size']}"
        ),
        torch_reason="no PyTorch RadFM in the references (benchmarks/radfm.py: the original's "
        "one-hot embedding); radjax only",
        requires={"radjax": _JAX + ("ml_collections",)},
    ),
    "llama7b": Spec(
        "LLaMA-7B-shaped decoder layers (train step)",
        "tok",
        lambda s: s.batch * s.length,
        llama_flops,
        lambda s: (
            f"{s.layers} layers, width {s.hidden}, {s.heads} heads, SwiGLU {s.intermediate}, "
            f"input embeddings {s.batch} x {s.length} x {s.hidden}"
        ),
        requires={"radjax": _JAX, "torch": _TORCH + ("transformers",)},
    ),
    "sam": Spec(
        "SAM ViT-B image encoder (forward)",
        "img",
        lambda s: s.batch,
        sam_flops,
        lambda s: (
            f"{s.batch} x 3 x {s.sam['image_size']} x {s.sam['image_size']}, width "
            f"{s.sam['width']}, {s.sam['depth']} blocks, window {s.sam['window_size']}, global "
            f"blocks {list(s.sam['global_attn_indexes'])}"
        ),
        requires={"radjax": _JAX, "torch": _TORCH + ("transformers",)},
    ),
    "unet": Spec(
        "AuxOL U-Net online update (train step)",
        "crop",
        lambda s: s.queue,
        unet_flops,
        lambda s: f"queue {s.queue} x 4 x {s.crop} x {s.crop}, U-Net base {s.base}",
        requires={"radjax": _JAX, "torch": _TORCH},
    ),
}


# ---------------------------------------------------------------------------------------------
# Worker: measurements
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ctx:
    """A worker's settings (sent by the driver as JSON)."""

    mode: str  # 'gpu' | 'cpu'
    dtype: str  # compute dtype: 'bfloat16' | 'float32'
    warmup: int
    iters: int
    compile_backend: str
    ceiling_size: int
    measure_ceiling: bool
    batches: dict[str, int] = dataclasses.field(default_factory=dict)  # --batch-for

    @property
    def torch_device(self) -> str:
        return "cuda" if self.mode == "gpu" else "cpu"

    def size(self, model: str):
        """The model's size in this mode, with its ``--batch-for`` batch."""
        size = SIZES[self.mode][model]
        if model in self.batches:
            return dataclasses.replace(size, batch=self.batches[model])
        return size


@dataclasses.dataclass
class Case:
    """One row's callable (one step or forward; returns a value to check for finiteness),
    its synchronisation, parameter count, ahead-of-time compile seconds and XLA's FLOPs."""

    call: Callable[[], Any]
    sync: Callable[[Any], Any]
    params: int
    compile_s: float | None = None
    xla_flops: float | None = None


def emit(kind: str, **fields) -> None:
    """One report line to the driver."""
    print(PREFIX + json.dumps({"kind": kind, "t": time.monotonic(), **fields}), flush=True)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def _finite(value: Any) -> bool:
    """Whether every element of a JAX / NumPy array or torch tensor is finite."""
    if hasattr(value, "detach"):  # torch
        return bool(value.detach().float().isfinite().all().item())
    import numpy as np

    return bool(np.isfinite(np.asarray(value, dtype=np.float32)).all())


def measure(case: Case, ctx: Ctx, impl: str) -> dict:
    """The row of ``case``: one untimed first call (compiles torch.compile), checked finite,
    then ``warmup - 1`` untimed and ``iters`` timed calls."""
    from benchmarks import common

    t0 = time.perf_counter()
    first = case.sync(case.call())
    first_s = time.perf_counter() - t0
    if not _finite(first):
        raise FloatingPointError("the first call's loss / output is not finite")
    timing = common.time_calls(
        case.call, warmup=max(ctx.warmup - 1, 0), iters=ctx.iters, sync=case.sync
    )
    compile_s = case.compile_s
    if impl == "torch.compile":
        compile_s = max(first_s - timing.median_s, 0.0)
    return dict(
        times=list(timing.times), compile_s=compile_s, params=case.params, xla_flops=case.xla_flops
    )


def _count(tree) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _mean_square(out):
    import jax.numpy as jnp

    return jnp.mean(jnp.square(out.astype(jnp.float32)))


def _jax_train(model, loss: Callable, batch) -> Case:
    """A jitted, donated AdamW step on ``loss(model, batch)``, compiled ahead of time."""
    import jax
    import optax
    from flax import nnx

    from benchmarks import common

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(LR, weight_decay=0.0)

    def step(state, batch):
        params, opt_state = state

        def objective(p):
            return loss(nnx.merge(graphdef, p, rest, copy=True), batch)

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    state = (params, jax.jit(tx.init)(params))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def call():
        box[0], value = compiled(box[0], batch)
        return value

    return Case(call, jax.block_until_ready, _count(params), compile_s, common.xla_flops(compiled))


def _rng():
    import numpy as np

    return np.random.default_rng(0)


def _build(ctor: Callable[[], Any]):
    """The NNX module ``ctor()`` builds, its parameters drawn in NumPy instead of by its
    initialisers, whose eager calls compile one small XLA program per parameter shape (14 s
    for the tiny U-Net on 2 cores): matrices and kernels N(0, 1 / fan_in) (fan_in = all axes
    but the last), norm scales 1, other vectors N(0, 0.02^2)."""
    import jax
    import numpy as np
    from flax import nnx

    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    rng = _rng()

    def draw(path, leaf):
        if not np.issubdtype(leaf.dtype, np.floating):
            raise TypeError(f"_build: non-float state {jax.tree_util.keystr(path)} {leaf.dtype}")
        if len(leaf.shape) >= 2:
            scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
            return (scale * rng.standard_normal(leaf.shape, np.float32)).astype(leaf.dtype)
        if "scale" in jax.tree_util.keystr(path[-2:]):
            return np.ones(leaf.shape, leaf.dtype)
        return (0.02 * rng.standard_normal(leaf.shape, np.float32)).astype(leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


def _volumes(s: ViT3DSize):
    """(B, D, H, W, 1) f32 in [0, 1)."""
    import numpy as np

    return _rng().random((s.batch, s.depth, s.image, s.image, 1), dtype=np.float32)


def _crops(s: UNetSize):
    """(images (Q, S, S, 4) in [0, 1), masks (Q, S, S, 1) in {0, 1}), the 4th channel the mask."""
    import numpy as np

    rng = _rng()
    masks = (rng.random((s.queue, s.crop, s.crop, 1)) < 0.3).astype(np.float32)
    rgb = rng.random((s.queue, s.crop, s.crop, 3), dtype=np.float32)
    return np.concatenate([rgb, masks], -1), masks


def radjax_vit3d(s: ViT3DSize, ctx: Ctx) -> Case:
    import jax.numpy as jnp
    from flax import nnx

    from radjax.models.vit import ViT, ViTConfig

    cfg = ViTConfig(
        image_size=s.image,
        patch_size=s.patch,
        frames=s.depth,
        frame_patch_size=s.frame_patch,
        channels=1,
        width=s.width,
        depth=s.layers,
        num_heads=s.heads,
        mlp_dim=s.mlp,
        posemb="learned",
        cls_token=True,
        qkv_bias=False,
        final_norm=True,
        dtype=ctx.dtype,
    )
    model = _build(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
    return _jax_train(model, lambda m, x: _mean_square(m(x)), jnp.asarray(_volumes(s)))


def radjax_llama7b(s: LlamaSize, ctx: Ctx) -> Case:
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from radjax.models.llama import Decoder, DecoderConfig

    cfg = DecoderConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        num_layers=s.layers,
        num_heads=s.heads,
        intermediate_size=s.intermediate,
        dtype=ctx.dtype,
    )
    model = _build(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    x = jnp.asarray(_rng().standard_normal((s.batch, s.length, s.hidden), dtype=np.float32))
    return _jax_train(model, lambda m, x: _mean_square(m.hidden_states(inputs_embeds=x)), x)


def radjax_sam(s: SamSize, ctx: Ctx) -> Case:
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks import common
    from benchmarks.auxol import RadjaxEncoder
    from radjax.models.sam.image_encoder import SamImageEncoder, SamVisionConfig

    cfg = SamVisionConfig(**s.sam, dtype=ctx.dtype)
    model = _build(lambda: SamImageEncoder(cfg, rngs=nnx.Rngs(0)))
    size = s.sam["image_size"]
    pixels = _rng().standard_normal((s.batch, size, size, 3), dtype=np.float32)
    encoder = RadjaxEncoder(model, pixels)
    return Case(
        encoder,
        jax.block_until_ready,
        encoder.params_count,
        encoder.compile_s,
        common.xla_flops(encoder.compiled),
    )


def radjax_unet(s: UNetSize, ctx: Ctx) -> Case:
    """``learner.make_step`` on a full queue, without feedback: an AdamW step on the queue,
    then the updated U-Net's forward of the current crop (as the stream calls it)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from benchmarks import common
    from radjax.papers.auxol import learner
    from radjax.papers.auxol.unet import UNet, UNetConfig

    cfg = learner.LearnerConfig(queue_size=s.queue, crop_size=s.crop)
    unet = UNetConfig(base=s.base, dtype=ctx.dtype)
    graphdef, params = nnx.split(_build(lambda: UNet(unet, rngs=nnx.Rngs(0))), nnx.Param)
    images, masks = _crops(s)
    full = learner.Queue(
        jnp.asarray(images),
        jnp.asarray(masks),
        jnp.ones((s.queue,), bool),
        jnp.full((s.queue,), jnp.inf, jnp.float32),
    )
    opt_state = jax.jit(learner.optimizer(cfg).init)(params)
    state = learner.LearnerState(params, opt_state, full, jnp.zeros((), jnp.int32))
    args = (full.images[-1], full.masks[-1], jnp.asarray(False))
    t0 = time.perf_counter()
    compiled = learner.make_step(graphdef, cfg).lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def call():
        box[0], _, loss = compiled(box[0], *args)
        return loss

    return Case(
        call, jax.block_until_ready, _count(state.params), compile_s, common.xla_flops(compiled)
    )


def radjax_radfm(s: RadFMSize, ctx: Ctx) -> Case:
    """``radjax.papers.radfm.model.loss_fn`` (entity weight 3) on ``benchmarks.radfm``'s
    synthetic batch (each volume's image tokens, answer labels in the second half)."""
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from benchmarks import radfm as radfm_bench
    from radjax.models.llama import DecoderConfig
    from radjax.papers.radfm import model as radfm
    from radjax.papers.radfm.vision import RadFMVisionConfig

    size = radfm_bench.Size(
        **{
            f.name: getattr(s, f.name)
            for f in dataclasses.fields(s)
            if f.name not in ("vision", "llm")
        },
        vision=dict(s.vision, dtype=ctx.dtype),
        llm=dict(s.llm, dtype=ctx.dtype),
    )
    vision, llm = RadFMVisionConfig(**size.vision), DecoderConfig(**size.llm)
    model = _build(lambda: radfm.RadFM(vision, llm, rngs=nnx.Rngs(0)))
    config = ml_collections.ConfigDict({"model": {}, "loss": {"entity_weight": 3.0}})
    batch = {k: jnp.asarray(v) for k, v in radfm_bench._batch(size, 0).items()}
    return _jax_train(model, lambda m, b: radfm.loss_fn(m, b, config)[0], batch)


# torch ----------------------------------------------------------------------------------------


def _torch_sync(device: str) -> Callable[[Any], Any]:
    import torch

    def sync(out):
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return sync


def _autocast(ctx: Ctx):
    import torch

    return torch.autocast(ctx.torch_device, dtype=torch.bfloat16, enabled=ctx.dtype == "bfloat16")


def _maybe_compile(fn, ctx: Ctx, compiled: bool):
    import torch

    return torch.compile(fn, backend=ctx.compile_backend) if compiled else fn


def _torch_train(module, loss: Callable, inputs: tuple, ctx: Ctx, compiled: bool, **adamw) -> Case:
    """``loss(module, *inputs)`` (compiled or eager, under autocast), backward, AdamW."""
    import torch

    module = module.to(ctx.torch_device).train()
    inputs = tuple(x.to(ctx.torch_device) for x in inputs)
    opt = torch.optim.AdamW(module.parameters(), **({"lr": LR, "weight_decay": 0.0} | adamw))
    forward_loss = _maybe_compile(lambda *xs: loss(module, *xs), ctx, compiled)

    def call():
        opt.zero_grad(set_to_none=True)
        with _autocast(ctx):
            value = forward_loss(*inputs)
        value.backward()
        opt.step()
        return value.detach()

    params = sum(p.numel() for p in module.parameters())
    return Case(call, _torch_sync(ctx.torch_device), params)


def _torch_mean_square(out):
    return out.float().square().mean()


def torch_vit3d(s: ViT3DSize, ctx: Ctx, compiled: bool) -> Case:
    import torch

    from tests.references.radfm_torch import ViT

    torch.manual_seed(0)
    with torch.device(ctx.torch_device):  # initialised where it runs
        module = ViT(
            image_size=s.image,
            frames=s.depth,
            patch=s.patch,
            frame_patch=s.frame_patch,
            dim=s.width,
            depth=s.layers,
            heads=s.heads,
            dim_head=s.width // s.heads,
            mlp_dim=s.mlp,
            channels=1,
            dropout=0.0,
            emb_dropout=0.0,
        )
    # (B, D, H, W, C) -> the original's (B, C, H, W, D)
    volumes = torch.from_numpy(_volumes(s)).permute(0, 4, 2, 3, 1).contiguous()
    return _torch_train(module, lambda m, x: _torch_mean_square(m(x)), (volumes,), ctx, compiled)


def torch_llama7b(s: LlamaSize, ctx: Ctx, compiled: bool) -> Case:
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=s.length,
    )
    with torch.device(ctx.torch_device):
        module = transformers.LlamaModel(cfg)
    x = torch.from_numpy(_rng().standard_normal((s.batch, s.length, s.hidden), dtype=np.float32))

    def loss(m, x):
        return _torch_mean_square(m(inputs_embeds=x, use_cache=False).last_hidden_state)

    return _torch_train(module, loss, (x,), ctx, compiled)


def torch_sam(s: SamSize, ctx: Ctx, compiled: bool) -> Case:
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    c = s.sam
    cfg = transformers.SamVisionConfig(
        hidden_size=c["width"],
        output_channels=c["out_channels"],
        num_hidden_layers=c["depth"],
        num_attention_heads=c["num_heads"],
        image_size=c["image_size"],
        patch_size=c["patch_size"],
        window_size=c["window_size"],
        global_attn_indexes=list(c["global_attn_indexes"]),
    )
    with torch.device(ctx.torch_device):
        module = transformers.SamVisionModel(cfg).eval()
    size = c["image_size"]
    pixels = _rng().standard_normal((s.batch, 3, size, size), dtype=np.float32)
    pixels = torch.from_numpy(pixels).to(ctx.torch_device)
    forward = _maybe_compile(module, ctx, compiled)

    def call():
        with torch.no_grad(), _autocast(ctx):
            return forward(pixel_values=pixels).last_hidden_state

    params = sum(p.numel() for p in module.parameters())
    return Case(call, _torch_sync(ctx.torch_device), params)


def torch_unet(s: UNetSize, ctx: Ctx, compiled: bool) -> Case:
    import numpy as np
    import torch

    from tests.references.auxol_unet_torch import UNet, structure_loss

    torch.manual_seed(0)
    with torch.device(ctx.torch_device):
        module = UNet(n_channels=4, n_classes=1, bilinear=True, base=s.base)
    images, masks = (
        torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))) for a in _crops(s)
    )
    return _torch_train(
        module,
        lambda m, x, y: structure_loss(m(x), y),
        (images, masks),
        ctx,
        compiled,
        lr=5e-4,
        weight_decay=5e-4,
    )


RADJAX = {
    "vit3d": radjax_vit3d,
    "radfm": radjax_radfm,
    "llama7b": radjax_llama7b,
    "sam": radjax_sam,
    "unet": radjax_unet,
}
TORCH = {"vit3d": torch_vit3d, "llama7b": torch_llama7b, "sam": torch_sam, "unet": torch_unet}


# ---------------------------------------------------------------------------------------------
# Worker: the process
# ---------------------------------------------------------------------------------------------


def _time_ceiling(matmul: Callable[[], Any], sync, n: int, label: str, impl: str) -> None:
    from benchmarks import common

    c = common.Ceiling(n, n, n, common.time_calls(matmul, warmup=3, iters=10, sync=sync))
    emit("ceiling", impl=impl, label=f"{label} {c.label}", tflops=c.gflops / 1e3)


def _setup_jax(ctx: Ctx) -> None:
    """Checks the backend, reports versions and (``measure_ceiling``) the jnp matmul ceiling."""
    import jax
    import jax.numpy as jnp

    backend = jax.default_backend()
    if ctx.mode == "gpu" and backend != "gpu":
        emit(
            "fatal",
            status="error",
            note=f"jax {jax.__version__} has no GPU backend here (devices {jax.devices()}): "
            "radjax's rows need jax with CUDA (jax[cuda13]); or run with --cpu",
        )
        sys.exit(0)
    device = jax.devices()[0]
    emit("env", impl="radjax", text=f"jax {jax.__version__} on {device.device_kind} ({backend})")
    if ctx.measure_ceiling:
        n = ctx.ceiling_size
        ka, kb = jax.random.split(jax.random.key(0))
        a, b = (jax.random.normal(k, (n, n), ctx.dtype) for k in (ka, kb))
        mm = jax.jit(jnp.matmul).lower(a, b).compile()
        _time_ceiling(lambda: mm(a, b), jax.block_until_ready, n, f"jnp {ctx.dtype}", "jax")


def _setup_torch(ctx: Ctx, impl: str) -> None:
    """Checks torch (and CUDA on the GPU), reports versions and (``measure_ceiling``) the
    torch matmul ceiling."""
    try:
        import torch
    except ModuleNotFoundError:
        emit("fatal", status="skipped", note="torch is not installed here")
        sys.exit(0)
    if ctx.mode == "gpu" and not torch.cuda.is_available():
        emit(
            "fatal",
            status="skipped",
            note=f"torch {torch.__version__} sees no CUDA device here (built for CUDA "
            f"{torch.version.cuda})",
        )
        sys.exit(0)
    if (
        ctx.mode == "cpu"
    ):  # OpenMP threads stall on a shared 2-core machine; times are not the point
        torch.set_num_threads(1)
    where = (
        torch.cuda.get_device_name()
        if ctx.mode == "gpu"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    emit("env", impl=impl, text=f"torch {torch.__version__} on {where}")
    if ctx.measure_ceiling:
        n, dtype = ctx.ceiling_size, getattr(torch, ctx.dtype)
        gen = torch.Generator(ctx.torch_device).manual_seed(0)
        a, b = (
            torch.randn(n, n, dtype=dtype, device=ctx.torch_device, generator=gen) for _ in range(2)
        )
        sync = _torch_sync(ctx.torch_device)
        _time_ceiling(lambda: torch.matmul(a, b), sync, n, f"torch {ctx.dtype}", "torch")


def _release(impl: str) -> None:
    """Frees the last model's device memory before the next one."""
    gc.collect()
    if impl != "radjax" and "torch" in sys.modules:
        import torch

        if impl == "torch.compile":
            torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_model(impl: str, model: str, ctx: Ctx) -> dict:
    size = ctx.size(model)
    if impl == "radjax":
        return measure(RADJAX[model](size, ctx), ctx, impl)
    return measure(TORCH[model](size, ctx, impl == "torch.compile"), ctx, impl)


def worker(impl: str, models: list[str], ctx: Ctx) -> None:
    """Runs ``impl`` on each model in turn, reporting start, row and done lines."""
    if impl == "radjax":
        _setup_jax(ctx)
    else:
        _setup_torch(ctx, impl)
    for model in models:
        spec, size = SPECS[model], ctx.size(model)
        info = dict(title=spec.title, shape=spec.shape(size), unit=spec.unit)
        emit("start", model=model, info=info | dict(items=spec.items(size), flops=spec.flops(size)))
        try:
            emit("row", model=model, impl=impl, status="ok", **_run_model(impl, model, ctx))
        except ModuleNotFoundError as e:
            emit("row", model=model, impl=impl, status="missing", note=f"no module {e.name!r}")
        except Exception as e:  # noqa: BLE001 -- one model's failure must not stop the rest
            emit("row", model=model, impl=impl, status="error", note=_first_line(e))
        _release(impl)
        emit("done", model=model)


# ---------------------------------------------------------------------------------------------
# Driver: the board of rows and its report
# ---------------------------------------------------------------------------------------------


def _format_table(headers: list[str], rows: list[list[str]]) -> str:
    """An aligned text table of strings, columns two spaces apart (the first left-aligned).
    ``benchmarks.common.format_table``'s layout, without importing JAX: the driver runs and
    reports where JAX is missing or broken."""
    cells = [headers] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


@dataclasses.dataclass
class Row:
    model: str
    impl: str
    status: str = "pending"
    note: str = ""
    times: list[float] | None = None
    compile_s: float | None = None
    params: int | None = None
    xla_flops: float | None = None

    @property
    def median_s(self) -> float | None:
        if not self.times:
            return None
        ordered = sorted(self.times)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class Board:
    """Every expected row, the models' descriptions, the ceilings and the environment; the
    report text, rewritten to ``path`` after every change."""

    def __init__(self, opts, models: list[str], impls: list[str], path: str):
        self.opts, self.models, self.path = opts, models, path
        self.rows = {(m, i): Row(m, i) for m in models for i in impls}
        self.info: dict[str, dict] = {}
        self.ceilings: dict[str, dict] = {}
        self.env: dict[str, str] = {}
        self.t_start = time.monotonic()
        self.finished = False

    def pending(self, impl: str) -> list[str]:
        return [m for m in self.models if self.rows[(m, impl)].status == "pending"]

    def set(self, model: str, impl: str, **fields) -> None:
        row = self.rows[(model, impl)]
        for key, value in fields.items():
            setattr(row, key, value)
        median = row.median_s
        progress = f"{1e3 * median:.4g} ms" if median is not None else row.note
        print(
            f"[{time.monotonic() - self.t_start:5.0f} s] {model} {impl}: {row.status} {progress}",
            flush=True,
        )
        self.write()

    def ceiling_tflops(self) -> float | None:
        values = [c["tflops"] for c in self.ceilings.values()]
        return max(values) if values else None

    def failed(self) -> list[Row]:
        return [r for r in self.rows.values() if r.status not in OK_STATUSES]

    def write(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            f.write(self.report() + "\n")

    def report(self) -> str:
        return "\n".join(self._header() + ["", self._table(), ""] + self._notes())

    def _header(self) -> list[str]:
        o = self.opts
        lines = [
            f"radjax GPU benchmark (benchmarks/gpu.sh, {'--cpu dry run' if o.cpu else 'GPU'}), "
            f"{time.strftime('%Y-%m-%d %H:%M')}, python {platform.python_version()}",
        ]
        lines += [f"  {impl}: {text}" for impl, text in self.env.items()]
        lines.append(
            f"compute {o.dtype} (parameters and AdamW state f32); timing: median of {o.iters} "
            f"synchronised calls after {o.warmup} untimed; per-model limit {o.model_timeout:g} s"
            + "".join(f", {m} {t:g} s" for m, t in o.limits.items())
            + f"; total budget {o.budget:g} s"
        )
        lines.append(f"MFU peak: against {o.peak_tflops:g} TFLOP/s ({PEAK_SOURCE})")
        for impl, c in self.ceilings.items():
            lines.append(f"measured ceiling {c['label']}: {c['tflops']:.4g} TFLOP/s ({impl})")
        best = self.ceiling_tflops()
        lines.append(
            "MFU meas: against "
            + (f"{best:.4g} TFLOP/s, the higher measured ceiling" if best else "(none measured)")
        )
        if o.torch_compile_note:
            lines.append(o.torch_compile_note)
        for m in self.models:
            if m in self.info:
                i = self.info[m]
                xla = self.rows.get((m, "radjax"), Row(m, "radjax")).xla_flops
                count = f"; XLA's count of the radjax program {xla / 1e12:.4g}" if xla else ""
                lines.append(
                    f"{m}: {i['title']}: {i['shape']}; {i['flops'] / 1e12:.4g} TFLOP/step "
                    f"analytic{count}"
                )
        return lines

    def _cells(self, row: Row) -> list[str]:
        info, median = self.info.get(row.model), row.median_s
        name = {
            "radjax": "radjax (jax.jit)",
            "torch": "torch eager",
            "torch.compile": f"torch.compile ({self.opts.compile_backend})",
        }[row.impl]
        cells = [row.model, name, row.status]
        if row.status != "ok" or median is None or info is None:
            return cells + ["-"] * 10
        flops, ceiling = info["flops"], self.ceiling_tflops()
        radjax = self.rows.get((row.model, "radjax"), Row(row.model, "radjax")).median_s
        tflops = flops / median / 1e12
        return cells + [
            _num(1e3 * median),
            _num(1e3 * min(row.times)),
            _num(1e3 * max(row.times)),
            f"{_num(info['items'] / median)} {info['unit']}/s",
            _num(tflops),
            _num(100 * tflops / self.opts.peak_tflops, 3) + "%",
            _num(100 * tflops / ceiling, 3) + "%" if ceiling else "-",
            _num(median / radjax, 3) if radjax and row.impl != "radjax" else "-",
            _num(row.compile_s, 3),
            f"{row.params:,}" if row.params else "-",
        ]

    def _table(self) -> str:
        headers = [
            "model",
            "implementation",
            "status",
            "ms/step",
            "min",
            "max",
            "throughput",
            "TFLOP/s",
            "MFU peak",
            "MFU meas",
            "time/radjax",
            "compile s",
            "params",
        ]
        order = {impl: i for i, impl in enumerate(IMPLS)}
        rows = sorted(self.rows.values(), key=lambda r: (self.models.index(r.model), order[r.impl]))
        return _format_table(headers, [self._cells(r) for r in rows])

    def _notes(self) -> list[str]:
        notes = [
            f"  {r.model} / {r.impl}: {r.status}: {r.note}" for r in self.rows.values() if r.note
        ]
        lines = (["notes:"] + notes) if notes else []
        missing = sorted({r.note for r in self.rows.values() if r.status == "missing"})
        if missing:
            lines.append(
                "MISSING on this machine: " + "; ".join(missing) + " -- install them (no network "
                "on the device machine: carry wheels in .whl/, gpu.sh installs them) and rerun"
            )
        elapsed = time.monotonic() - self.t_start
        state = "finished" if self.finished else "in progress, or stopped"
        return lines + [f"wall time {elapsed:.0f} s ({state})"]


# ---------------------------------------------------------------------------------------------
# Driver: running the workers
# ---------------------------------------------------------------------------------------------


def preflight(board: Board) -> None:
    """Rows whose implementation has no torch version, or whose packages are missing, are
    settled before anything runs."""
    for (model, impl), row in board.rows.items():
        spec = SPECS[model]
        if impl != "radjax" and spec.torch_reason:
            row.status, row.note = "n/a", spec.torch_reason
            continue
        needs = spec.requires.get("radjax" if impl == "radjax" else "torch", ())
        missing = [p for p in needs if importlib.util.find_spec(p) is None]
        if impl != "radjax" and "torch" in missing:
            row.status, row.note = "skipped", "torch is not installed here"
        elif missing:
            row.status, row.note = "missing", "python packages " + ", ".join(missing)


class Worker:
    """A worker process in its own process group, its report lines on a queue (None at EOF)."""

    def __init__(self, impl: str, models: list[str], ctx: Ctx, env: dict[str, str]):
        config = json.dumps(dataclasses.asdict(ctx))
        command = [
            sys.executable,
            "-m",
            "benchmarks.gpu",
            "--worker",
            impl,
            "--worker-config",
            config,
            "--models",
            ",".join(models),
        ]
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                self.lines.put(json.loads(line[len(PREFIX) :]))
            else:
                sys.stderr.write(line)
        self.lines.put(None)

    def next(self, timeout: float) -> dict | None:
        """The next report (None: the worker exited); raises queue.Empty after ``timeout``."""
        return self.lines.get(timeout=max(timeout, 0.0))

    def kill(self) -> int:
        """Kills the worker's process group (with what it started: torch.compile's compile
        workers) unless already reaped (its pid could then be reused); returns its exit code."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.wait()


def _worker_env(impl: str, opts) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    if opts.cpu or impl != "radjax":  # torch workers import jax only for the timing helpers
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _settle(board: Board, impl: str, models: list[str], status: str, note: str) -> None:
    for m in models:
        board.set(m, impl, status=status, note=note)


def run_impl(board: Board, impl: str, opts, deadline: float) -> None:
    """Runs the workers of ``impl`` until every one of its rows is settled."""
    measured = False
    while models := board.pending(impl):
        if deadline - time.monotonic() < 1.0:
            _settle(board, impl, models, "skipped", f"total budget of {opts.budget:g} s spent")
            return
        ctx = Ctx(
            "cpu" if opts.cpu else "gpu",
            opts.dtype,
            opts.warmup,
            opts.iters,
            opts.compile_backend,
            opts.ceiling_size,
            measure_ceiling=impl != "torch.compile" and not measured,
            batches=opts.batches,
        )
        worker = Worker(impl, models, ctx, _worker_env(impl, opts))
        try:
            measured |= _follow(board, impl, worker, opts, deadline)
        finally:
            worker.kill()


def _follow(board: Board, impl: str, worker: Worker, opts, deadline: float) -> bool:
    """Reads one worker's reports until it exits or overruns; returns whether it reported
    its ceiling. A model that overruns is settled as ``timeout``; a crash settles the model
    running (or, at start-up, all of them)."""
    current, limit, measured = None, time.monotonic() + opts.startup_timeout, False
    while True:
        try:
            msg = worker.next(min(limit, deadline) - time.monotonic())
        except queue.Empty:
            worker.kill()
            over = deadline <= limit
            why = f"total budget of {opts.budget:g} s reached" if over else None
            if current is None:
                left = board.pending(impl)
                _settle(
                    board,
                    impl,
                    left,
                    "timeout",
                    why or f"worker start-up over {opts.startup_timeout:g} s",
                )
            else:
                _settle(
                    board,
                    impl,
                    [current],
                    "timeout",
                    why or f"killed after {opts.timeout_of(current):g} s",
                )
            return measured
        if msg is None:
            try:  # its stdout closed: it is exiting
                code = worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = worker.kill()
            stuck = [current] if current else board.pending(impl)
            _settle(board, impl, stuck, "error", f"worker exited with code {code} (see its stderr)")
            return measured
        kind = msg["kind"]
        if kind == "env":
            board.env[msg["impl"]] = msg["text"]
        elif kind == "ceiling":
            board.ceilings[msg["impl"]], measured = msg, True
        elif kind == "fatal":
            _settle(board, impl, board.pending(impl), msg["status"], msg["note"])
            return measured
        elif kind == "start":
            current, limit = msg["model"], msg["t"] + opts.timeout_of(msg["model"])
            board.info.setdefault(current, msg["info"])
        elif kind == "row":
            fields = {k: msg.get(k) for k in ("times", "compile_s", "params", "xla_flops")}
            board.set(msg["model"], impl, status=msg["status"], note=msg.get("note", ""), **fields)
        elif kind == "done":
            current, limit = None, time.monotonic() + opts.startup_timeout
        board.write()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="dry run: tiny shapes on the CPU, f32")
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS)
    )
    p.add_argument(
        "--impls", default=",".join(IMPLS), help="comma-separated, of " + ", ".join(IMPLS)
    )
    p.add_argument(
        "--out", default=None, help="report file (default $OUT/gpu_bench.txt, else ./gpu_bench.txt)"
    )
    p.add_argument(
        "--model-timeout",
        type=float,
        default=None,
        help="seconds a model may take in one worker (gpu 150, cpu 90)",
    )
    p.add_argument(
        "--timeout-for",
        action="append",
        default=[],
        metavar="MODEL=S",
        help="one model's limit (repeatable)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=None,
        help="a worker's imports + ceiling (gpu 180, cpu 90)",
    )
    p.add_argument(
        "--batch-for",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="one model's batch (repeatable; vit3d, radfm, llama7b, sam)",
    )
    p.add_argument("--budget", type=float, default=440.0, help="seconds for the whole run")
    p.add_argument("--iters", type=int, default=None, help="timed calls per row (gpu 10, cpu 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per row (gpu 3, cpu 1)")
    p.add_argument("--dtype", default=None, help="compute dtype (gpu bfloat16, cpu float32)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="peak for 'MFU peak'")
    p.add_argument(
        "--ceiling-size", type=int, default=None, help="square matmul side (gpu 8192, cpu 1024)"
    )
    p.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (gpu inductor, cpu aot_eager)",
    )
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    gpu = not opts.cpu
    defaults = dict(
        model_timeout=(150.0, 90.0),
        startup_timeout=(180.0, 90.0),
        iters=(10, 2),
        warmup=(3, 1),
        dtype=("bfloat16", "float32"),
        ceiling_size=(8192, 1024),
        compile_backend=("inductor", "aot_eager"),
    )
    for name, (on_gpu, on_cpu) in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, on_gpu if gpu else on_cpu)
    opts.models = _choices(opts.models, MODELS, "--models")
    opts.impls = _choices(opts.impls, IMPLS, "--impls")
    opts.limits = limits = {}
    for item in opts.timeout_for:
        name, _, seconds = item.partition("=")
        if name not in MODELS or not seconds:
            p.error(f"--timeout-for {item!r}: expected MODEL=SECONDS, MODEL one of {MODELS}")
        limits[name] = float(seconds)
    opts.timeout_of = lambda model: limits.get(model, opts.model_timeout)
    opts.batches = {}
    for item in opts.batch_for:
        name, _, batch = item.partition("=")
        if not hasattr(SIZES["gpu"].get(name), "batch") or not batch.isdigit():
            p.error(
                f"--batch-for {item!r}: expected MODEL=N, MODEL one of vit3d, radfm, llama7b, sam"
            )
        opts.batches[name] = int(batch)
    opts.torch_compile_note = (
        "torch.compile backend aot_eager on --cpu: dynamo + AOTAutograd without inductor's "
        "code generation (its cold compile takes minutes on 2 cores)"
        if opts.cpu and opts.compile_backend == "aot_eager"
        else ""
    )
    return opts


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [c for c in text.split(",") if c]
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise SystemExit(f"{flag}: {bad or 'none given'} not in {allowed}")
    return [c for c in allowed if c in chosen]


def _out_path(opts) -> str:
    if opts.out:
        return opts.out
    return os.path.join(os.environ.get("OUT") or ".", "gpu_bench.txt")


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    opts = _parse(argv)
    if opts.worker:
        worker(opts.worker, opts.models, Ctx(**json.loads(opts.worker_config)))
        return 0
    signal.signal(signal.SIGTERM, _terminate)  # gpu.sh's timeout: the finally blocks kill workers
    board = Board(opts, opts.models, opts.impls, _out_path(opts))
    preflight(board)
    for row in board.rows.values():
        if row.status != "pending":
            print(f"preflight: {row.model} {row.impl}: {row.status}: {row.note}", flush=True)
    board.write()
    deadline = time.monotonic() + opts.budget
    try:
        for impl in opts.impls:
            run_impl(board, impl, opts, deadline)
        board.finished = True
    finally:  # also when stopped from outside: the rows so far, marked "stopped"
        board.write()
        print("\n" + board.report(), flush=True)
        print(f"report written to {board.path}", flush=True)
    return 1 if board.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
