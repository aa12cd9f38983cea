"""RP3D-Diag (released architecture, late fusion) train step: radjax vs eager and compiled
PyTorch.

Both sides train the same network on the same batch, on this machine, in one process:

* **radjax**: ``configs/rp3d_diag.py`` (``get_config('tiny')`` with the benchmark's sizes
  written into ``config.model`` / ``config.data`` / ``config.train``), built with
  ``radjax.train.experiment.build(config, mesh)`` on a one-device mesh, ``exp.init()``, and
  ``exp.train_step`` compiled ahead of time (``.lower(state, batch).compile()``; the compile
  time is reported separately, not in ms/step). The step is the library's: forward, BCE,
  gradients, finite check, AdamW, donated state.
* **torch**: the same network assembled from PyTorch library modules and run eagerly:
  ``transformers.ResNetModel`` (bottleneck, ResNet-50 layout, v1.5 strides) on every slice
  (grey repeated to 3 channels) -> pooled features -> CLS + learned positions ->
  ``torch.nn.TransformerEncoder`` (``norm_first=True``, 1 layer, d_model = ResNet width x 32,
  nhead 1, dim_ff 2048, dropout 0, final LayerNorm, key padding mask from ``marks``) -> CLS ->
  Linear-GELU-Linear -> ``BCEWithLogitsLoss`` -> ``torch.optim.AdamW`` step.
* **torch.compile**: a second copy of that network (same seed, so the same initial weights),
  its forward + loss compiled by ``torch.compile`` (inductor; the backward compiled by
  AOTAutograd), AdamW eager (its multi-tensor kernels). Compiled on its first call; a compile
  that fails leaves the row out with the reason printed.

The two parameter counts are asserted equal within 1 % (they agree exactly; the layer norms
differ in formula -- RP3D's unbiased-std norm vs ``nn.LayerNorm`` -- not in size). Batch
statistics of BatchNorm (buffers / ``nnx.BatchStat``) are not parameters on either side.

Step FLOPs are XLA's count of the compiled radjax step (see ``benchmarks.common``); the
analytic count (3 x forward multiply-adds x 2 of every conv and matmul) is printed next to it
and used when XLA reports nothing. The same FLOPs divide both times, so the two MFU figures
compare like with like.

The printed table has one row per implementation (``--only rp3d``):

``ms/step``       median wall time of the timed steps (after warm-up); ``min``/``max`` show
                  the spread. The rows are timed interleaved, step by step.
``torch/radjax``  on each torch row: its ms / radjax's ms: **> 1 means radjax is faster**.
``GFLOP/s``       step FLOPs / median time (source and the analytic count printed above).
``MFU``           model FLOP utilisation: GFLOP/s / matmul ceiling (the best of jnp's and
                  torch's, at the runner's 2048^2 and this model's FLOP-weighted median
                  matmul shape).
``params``        trainable parameters; asserted equal within 1 % before timing.
``compile s``     radjax's ahead-of-time compile; torch.compile's first step minus its median
                  step (neither in ms/step). Eager torch compiles nothing.
``loss``          the last step's loss (a sanity check that both sides really trained).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common


@dataclasses.dataclass(frozen=True)
class Size:
    """Benchmark shapes. ``width`` is the ResNet stem width (64 = ResNet-50), d_model = 32 x width."""

    batch: int = 2
    depth: int = 8
    image: int = 64
    width: int = 64
    layers: tuple[int, ...] = (3, 4, 6, 3)
    num_classes: int = 5569
    mlp_dim: int = 2048
    heads: int = 1
    attn_layers: int = 1

    @property
    def dim(self) -> int:
        return self.width * 2 ** (len(self.layers) - 1) * 4

    def describe(self) -> str:
        return (
            f"late fusion, batch {self.batch}, 1 scan x {self.depth} slices x "
            f"{self.image}x{self.image} (grey -> 3 ch), ResNet bottleneck "
            f"layers {list(self.layers)} width {self.width} -> d_model {self.dim}; "
            f"slice encoder {self.attn_layers} layer, {self.heads} head, dim_ff "
            f"{self.mlp_dim}; head {self.dim}-{self.dim}-{self.num_classes}"
        )


SIZES: dict[str, Size] = {
    # ResNet-50 at full width; 2 x 8 = 16 slices of 64 x 64; the paper's 5569 classes.
    "bench": Size(),
    # smoke-test size: one bottleneck stage (d_model 32) so that the radjax step compiles in
    # seconds; the four-stage layout at width 8 already takes ~25 s of CPU to init + compile.
    "tiny": Size(batch=2, depth=4, image=32, width=8, layers=(1,), num_classes=16, mlp_dim=64),
}


def make_config(size: Size) -> ml_collections.ConfigDict:
    """``configs/rp3d_diag.py:tiny`` with the benchmark's sizes (released arch, late fusion)."""
    from configs import rp3d_diag as rp3d_config

    c = rp3d_config.get_config("tiny")
    m = c.model
    m.arch, m.fusion = "released", "late"
    m.depth = c.data.depth = size.depth
    c.data.image_size = size.image
    m.num_classes = size.num_classes
    m.resnet = ml_collections.ConfigDict(
        dict(block="bottleneck", layers=tuple(size.layers), width=size.width)
    )
    m.slice_attn = ml_collections.ConfigDict(
        dict(heads=size.heads, layers=size.attn_layers, mlp_dim=size.mlp_dim)
    )
    m.ke.enabled = False
    m.remat = False
    c.train.batch_size = size.batch
    c.train.grad_accum = 1
    c.train.steps = 1000
    c.optim.name = "adamw"
    c.optim.lr = 1e-5
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1))
    return c


def make_batch(size: Size, seed: int = 0) -> dict[str, np.ndarray]:
    """A random late-fusion batch in the RP3D contract layout (WORKSPACE.md).

    The second case has its last quarter of slices padded (``marks`` 0, images 0), so the
    key-padding mask does real work.
    """
    rng = np.random.default_rng(seed)
    b, d, s = size.batch, size.depth, size.image
    images = rng.uniform(0.0, 1.0, (b, 1, d, s, s, 1)).astype(np.float32)
    marks = np.ones((b, 1, d), np.float32)
    if b > 1:
        pad = max(1, d // 4)
        marks[1, 0, d - pad :] = 0.0
        images[1, 0, d - pad :] = 0.0
    labels = (rng.uniform(size=(b, size.num_classes)) < 0.01).astype(np.float32)
    labels[:, 0] = 1.0  # at least one positive per case
    return dict(
        images=images,
        marks=marks,
        mods=np.ones((b, 1), np.int32),
        keys=np.full((b, 1), d // 2, np.int32),
        labels=labels,
    )


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs and matmul shapes
# ---------------------------------------------------------------------------------------------


def _out(s: int, k: int, stride: int, pad: int) -> int:
    return (s + 2 * pad - k) // stride + 1


def matmul_shapes(size: Size) -> list[tuple[int, int, int]]:
    """Every conv (as im2col) and matmul of one forward pass as (m, k, n)."""
    n_img = size.batch * size.depth
    shapes = []
    s = _out(size.image, 7, 2, 3)
    shapes.append((n_img * s * s, 7 * 7 * 3, size.width))  # stem
    s = _out(s, 3, 2, 1)  # max-pool
    cin = size.width
    for i, blocks in enumerate(size.layers):
        planes, cout = size.width * 2**i, size.width * 2**i * 4
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            s_out = _out(s, 3, stride, 1)
            shapes.append((n_img * s * s, cin, planes))  # 1x1 reduce
            shapes.append((n_img * s_out * s_out, 9 * planes, planes))  # 3x3
            shapes.append((n_img * s_out * s_out, planes, cout))  # 1x1 expand
            if j == 0:
                shapes.append((n_img * s_out * s_out, cin, cout))  # projection shortcut
            cin, s = cout, s_out
    d, t = size.dim, size.depth + 1
    rows = size.batch * t
    for _ in range(size.attn_layers):
        shapes += [(rows, d, d)] * 4  # q, k, v, out
        shapes += [(rows, d, t), (rows, t, d)]  # scores, weighted sum
        shapes += [(rows, d, size.mlp_dim), (rows, size.mlp_dim, d)]
    shapes += [(size.batch, d, d), (size.batch, d, size.num_classes)]  # head
    return shapes


def analytic_train_flops(size: Size) -> float:
    """3 x the forward FLOPs (2 per multiply-add) of the convs and matmuls."""
    return 3.0 * sum(2.0 * m * k * n for m, k, n in matmul_shapes(size))


def typical_matmul(size: Size) -> tuple[int, int, int]:
    """The model's FLOP-weighted median matmul shape (for a second ceiling measurement)."""
    return common.weighted_median_shape(matmul_shapes(size))


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    size: Size
    threads: int
    flops: float
    flops_source: str
    analytic_flops: float
    results: dict[str, common.StepResult]
    notes: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# radjax
# ---------------------------------------------------------------------------------------------


class RadjaxStep:
    """The radjax side: experiment.build on a one-device mesh, compiled ahead of time."""

    def __init__(self, config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]):
        from radjax import sharding
        from radjax.train import experiment

        device = jax.devices()[0]
        mesh = sharding.make_mesh(dict(config.mesh), devices=[device])
        self.exp = experiment.build(config, mesh)
        self.state = self.exp.init()
        self.params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state["trainable"]))
        self.batch = {k: jax.device_put(jnp.asarray(v), device) for k, v in batch.items()}
        t0, c0 = time.perf_counter(), time.process_time()
        self.compiled = self.exp.train_step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.compile_cpu_s = time.process_time() - c0
        self.metrics = None

    def __call__(self):
        self.state, self.metrics = self.compiled(self.state, self.batch)
        return self.state, self.metrics

    def loss(self) -> float:
        return float(self.metrics["loss"]) if self.metrics is not None else float("nan")


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


def build_torch_model(size: Size):
    """The same network from PyTorch library modules (see the module docstring)."""
    import torch
    from torch import nn
    from transformers import ResNetConfig, ResNetModel

    class TorchRadNet(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = ResNetConfig(
                num_channels=3,
                embedding_size=size.width,
                hidden_sizes=[size.width * 2**i * 4 for i in range(len(size.layers))],
                depths=list(size.layers),
                layer_type="bottleneck",
                hidden_act="relu",
                downsample_in_first_stage=False,
                downsample_in_bottleneck=False,
            )
            self.trunk = ResNetModel(cfg)
            d = size.dim
            self.cls_token = nn.Parameter(torch.randn(1, 1, d))
            self.pos_embed = nn.Parameter(torch.randn(1, 1 + size.depth, d))
            layer = nn.TransformerEncoderLayer(
                d,
                size.heads,
                size.mlp_dim,
                dropout=0.0,
                activation="relu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, size.attn_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
            )
            self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, size.num_classes))

        def forward(self, images, marks):
            """images (B, D, 1, H, W), marks (B, D) -> logits (B, C)."""
            b, d = images.shape[:2]
            slices = images.reshape(b * d, *images.shape[2:]).expand(-1, 3, -1, -1)
            feats = self.trunk(slices).pooler_output.reshape(b, d, -1)
            x = torch.cat([self.cls_token.expand(b, -1, -1), feats], dim=1) + self.pos_embed
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), marks == 0], dim=1)
            return self.head(self.encoder(x, src_key_padding_mask=pad)[:, 0])

    return TorchRadNet()


class TorchStep:
    """The PyTorch side: forward, BCEWithLogits, backward, AdamW step; with ``compiled`` the
    forward + loss go through ``torch.compile`` (compiled on the first call)."""

    def __init__(
        self,
        size: Size,
        batch: dict[str, np.ndarray],
        config: ml_collections.ConfigDict,
        seed: int = 0,
        *,
        compiled: bool = False,
    ):
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.model = build_torch_model(size)
        self.model.train()
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        o = config.optim
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=o.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=o.weight_decay,
        )
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        # (B, 1, D, H, W, 1) channels-last volumes -> (B, D, 1, H, W) NCHW slices.
        self.images = torch.from_numpy(
            np.ascontiguousarray(batch["images"][:, 0].transpose(0, 1, 4, 2, 3))
        )
        self.marks = torch.from_numpy(batch["marks"][:, 0].copy())
        self.labels = torch.from_numpy(batch["labels"].copy())

        def forward_loss(images, marks, labels):
            return self.loss_fn(self.model(images, marks), labels)

        self.forward_loss = torch.compile(forward_loss) if compiled else forward_loss
        self.last = None

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss(self.images, self.marks, self.labels)
        loss.backward()
        self.opt.step()
        self.last = loss.detach()
        return self.last

    def loss(self) -> float:
        return float(self.last) if self.last is not None else float("nan")


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def run(
    size: Size, *, warmup: int = 1, iters: int = 3, seed: int = 0, threads: int | None = None
) -> Report:
    """Builds the three rows (radjax, torch eager, torch.compile) and times their train steps,
    interleaved round by round (``common.time_rows``).

    Interleaving (radjax step, torch step, compiled torch step, radjax step, ...) exposes all
    to the same background load, which matters on a shared machine; each row's time is the
    median of its ``iters`` steps after its untimed first call and ``warmup - 1`` more.
    """
    threads = threads or common.cpu_threads()
    common.set_torch_threads(threads)
    config = make_config(size)
    batch = make_batch(size, seed)

    rj = RadjaxStep(config, batch)
    flops, source = common.step_flops(rj.compiled, analytic_train_flops(size))
    steps = {
        "radjax": rj,
        "torch": TorchStep(size, batch, config, seed),
        "torch.compile": TorchStep(size, batch, config, seed, compiled=True),
    }
    for key, th in steps.items():
        if abs(rj.params - th.params) > 0.01 * rj.params:
            raise AssertionError(
                f"parameter counts differ by more than 1%: radjax {rj.params:,} vs {key} "
                f"{th.params:,}"
            )

    timed = common.time_rows(steps, warmup=warmup, iters=iters)
    t = timed.timings
    results = {
        "radjax": common.StepResult(
            "radjax (jax.jit, XLA CPU)",
            t["radjax"],
            rj.params,
            rj.compile_s,
            rj.compile_cpu_s,
            rj.loss(),
        ),
        "torch": common.StepResult(
            "torch (eager)", t["torch"], steps["torch"].params, final_loss=steps["torch"].loss()
        ),
    }
    if "torch.compile" in t:
        th = steps["torch.compile"]
        results["torch.compile"] = common.StepResult(
            "torch.compile (inductor)",
            t["torch.compile"],
            th.params,
            timed.compile_s("torch.compile"),
            final_loss=th.loss(),
        )
    return Report(size, threads, flops, source, analytic_train_flops(size), results, timed.notes)


def input_shapes(size: Size) -> Sequence[str]:
    b = make_batch(size)
    return [f"{k}: {v.dtype} {tuple(v.shape)}" for k, v in b.items()]


def report(
    size_name: str, *, warmup: int, iters: int, ceiling: float, out, ceiling_iters: int = 10
) -> common.Reported:
    """Prints the shapes, FLOPs, the step table and its footer; ``result`` is the Report."""
    t_start = time.perf_counter()
    size = SIZES[size_name]
    threads = common.cpu_threads()
    p = common.printer(out)
    p(f"RP3D-Diag: {size.describe()}")
    ceiling = common.print_ceilings(p, [typical_matmul(size)], ceiling, ceiling_iters)
    p("batch: " + "; ".join(input_shapes(size)))
    load_before = common.load_average()
    result = run(size, warmup=warmup, iters=iters, threads=threads)
    p(
        f"step FLOPs: {result.flops / 1e9:.2f} GFLOP ({result.flops_source}); analytic "
        f"conv+matmul count {result.analytic_flops / 1e9:.2f} GFLOP; timing: first step "
        f"untimed + {max(warmup - 1, 0)} warm-up + {iters} timed steps each, interleaved, median"
    )
    common.print_notes(p, result.notes)
    table = common.step_comparison(p, result.results, result.flops, ceiling, "speed ratio")
    rj = result.results["radjax"]
    p(f"radjax compile {rj.compile_s:.1f} s wall / {rj.compile_cpu_s:.1f} s CPU")
    common.footer(p, "RP3D-Diag", t_start, load_before, threads)
    summary = common.summary_row("train step", result.results, result.flops, ceiling)
    return common.Reported({"step": table}, result, ceiling, (summary,))


BENCHMARK = common.Benchmark(name="rp3d", order=0, sizes=tuple(SIZES), report=report)
