"""Uni-Med's Connector-MoE: vision-tower patch tokens -> LLM input tokens, routed per task.

Follows ``UniMed.encode_img`` of MSIIP/Uni-Med (commit 5c902a5, ``uni_med/models/uni_med.py``
lines 162-240) from the point after ``ln_vision`` and the CLS drop:

1. **Resampling** (``resample_method``), (B, N, C) patch tokens in raster order (row-major
   over the sqrt(N) x sqrt(N) patch grid, channels last) -> (B, T, C'):

   * ``projection`` (released): ``view(B, N / 4, 4 C)``. Token j is the feature-concatenation
     of patches 4j, 4j+1, 4j+2, 4j+3 in that order, i.e. a horizontal 1 x 4 strip of the
     grid (row j // 4, columns 4 (j % 4) ... + 3 on the 16 x 16 grid), not a 2 x 2 square.
     ``x.reshape(B, N // 4, 4 C)`` on the row-major array is exactly that view.
   * ``avgpool`` / ``maxpool``: 2 x 2 stride-2 pooling of the grid, tokens raster order,
     C' = C (the pool always halves each side, so ``resample_rate`` must be 4: ``validate``
     rejects other rates, which the original does not read for the pool and then fails on).

2. **Task tokens**: one learned vector per task tag (``tasks``; released order ``vqa, refer,
   identify, caption, cls``, which is also the hard router's task -> expert map), repeated at
   every token position. The original has one task string per batch; here each sample has
   its own task id, so a batch may mix tasks (a uniform batch is the original's case).

3. **Router** (``router_method``): an Mlp (Linear -> exact GELU -> Linear, hidden 4 x its
   input width) on ``concat(task token, image token)`` (``task_token`` = ``router_task_token``,
   the released default; the task token comes FIRST), on the image token alone (``token`` =
   ``router_token``) or on the task token alone (``task`` = ``router_task``: every position of
   a sample gets the same weights). Routing weights w (B, T, E) by ``router_type``:

   * ``soft`` (released): ``s = sigmoid(logits); w = s / sum_e s`` (a normalised sigmoid, not
     a softmax);
   * ``hard``: ``w = one_hot(task index)`` (task i -> expert i; needs E >= number of tasks);
   * ``constant``: ``w = 1 / E``;
   * ``sparse``: the top-k logits kept, the others set to -inf, softmax over E (so a softmax
     over the top k; ties go to the lower expert index, ``jax.lax.top_k``).

4. **Experts**: E copies of ``Linear(C', D) -> GELU -> Linear(D, D)`` (``moe_mlp``,
   released) or of ``Linear(C', D)`` (``moe_linear``); out = sum_e w_e * expert_e(x). As in
   the original every expert runs densely on every token (``dispatch=False``). With
   ``dispatch=True`` (sparse and hard routing) tokens are sorted by expert and only the
   selected (token, expert) pairs are computed (``jax.lax.ragged_dot`` grouped matmuls):
   the same outputs up to float summation order, k / E of the dense expert FLOPs where the
   backend has a grouped matmul (TPU and GPU lower ``ragged_dot`` to XLA's ragged dot; on
   GPU ``jax_ragged_dot_use_gpu_pallas_triton_lowering`` selects a Pallas kernel). On CPU,
   JAX expands ``ragged_dot`` into a masked dense product (E times the grouped FLOPs), so
   there the dispatch path is correct but not faster.

Beyond the original: an optional load-balancing loss (``aux_loss_weight``, default 0 = off,
as released; see ``load_balancing_loss``).

Parameters: ``task_tokens`` (num_tasks, C_task) (logical axes (None, embed));
``router/fc1`` (C_in, 4 C_in) and ``router/fc2`` (4 C_in, E) (``radjax.nn.transformer.Mlp``);
``llm_proj/fc1/{kernel (E, C', D), bias (E, D)}`` and, for ``mlp`` experts,
``llm_proj/fc2/{kernel (E, D, D), bias (E, D)}``, the expert axis first with logical name
``expert`` (sharded over the ``expert`` mesh axis). ``convert.py`` maps the original's keys
(``task_tokens.<tag>``, ``router.fc{1,2}``, ``llm_proj.<e>.{0,2}``) onto these. Only what the
forward uses is built: no router for ``hard`` / ``constant`` routing and no task tokens
when nothing reads them (the original builds both anyway; ``convert.py`` drops them).
Initialisation follows torch (kaiming-uniform kernels, U(+-1/sqrt(fan_in)) biases) and the
original's N(0, 0.02) task tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.nn.linear import torch_linear_init
from radjax.nn.transformer import Mlp, gelu_exact
from radjax.sharding import shard_act

TASKS = ("vqa", "refer", "identify", "caption", "cls")  # uni_med.py:84, in this order
RESAMPLE_METHODS = ("projection", "avgpool", "maxpool")
ROUTER_TYPES = ("soft", "hard", "constant", "sparse")
# radjax name -> the original's router_method
ROUTER_INPUTS = {"task_token": "router_task_token", "token": "router_token", "task": "router_task"}
EXPERT_TYPES = {"mlp": "moe_mlp", "linear": "moe_linear"}  # radjax -> projector_type
TEXT_ONLY_TASKS = ("qa",)  # MedQA / PubMedQA: no image, so encode_img never runs

# the expert stack's kernels
_EXPERT_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform", batch_axis=(0,))


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """Uni-Med connector sizes and switches; the defaults are the released model's
    (``train_configs/uni_med.yaml``: EVA ViT-g 1408, Llama-2-7b 4096, projection x4, 5
    ``moe_mlp`` experts, ``router_task_token``, soft, one task token of width 5632)."""

    vision_dim: int = 1408  # C: width of the tower's patch tokens
    llm_dim: int = 4096  # D: the LLM hidden size (experts' width)
    resample: str = "projection"  # resample_method
    resample_rate: int = 4  # patches per token (projection only)
    tasks: tuple[str, ...] = TASKS
    num_task_tokens: int = 1  # 0 or 1 (the original's cat fails for > 1)
    task_token_dim: int | None = None  # task_token_c; None = the resampled token width C'
    num_experts: int = 5
    expert_type: str = "mlp"  # mlp (moe_mlp) | linear (moe_linear)
    router_type: str = "soft"  # soft | hard | constant | sparse
    router_input: str = "task_token"  # task_token | token | task
    router_hidden: int | None = None  # None = 4 x router input width (the original's Mlp)
    sparse_topk: int = 2
    dispatch: bool = False  # sparse / hard: compute only the selected experts
    aux_loss_weight: float = 0.0  # load-balancing loss weight (0 = off, as released)
    dtype: Any = None  # compute dtype of the matmuls (None = the input's)

    @property
    def token_dim(self) -> int:
        """C': width of a resampled token (released: 4 x 1408 = 5632)."""
        return self.vision_dim * (self.resample_rate if self.resample == "projection" else 1)

    @property
    def task_dim(self) -> int:
        """Width of a task token (the original's ``task_token_c``)."""
        return self.token_dim if self.task_token_dim is None else self.task_token_dim

    @property
    def uses_router(self) -> bool:
        return self.router_type in ("soft", "sparse")

    @property
    def uses_task_tokens(self) -> bool:
        return self.uses_router and self.router_input != "token"

    @property
    def router_in_dim(self) -> int:
        return {
            "task_token": self.task_dim + self.token_dim,
            "token": self.token_dim,
            "task": self.task_dim,
        }[self.router_input]

    @property
    def top_k(self) -> int | None:
        """Experts per token when the routing is sparse (sparse: k, hard: 1), else None."""
        return {"sparse": self.sparse_topk, "hard": 1}.get(self.router_type)

    def num_tokens(self, num_patches: int) -> int:
        """T: tokens the connector gives for ``num_patches`` patches (released 256 -> 64)."""
        if self.resample == "projection":
            return num_patches // self.resample_rate
        return num_patches // 4

    def validate(self) -> None:
        """Raises ValueError naming the field for a configuration the connector cannot run."""

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"uni_med connector: {msg}")

        check(
            self.resample in RESAMPLE_METHODS,
            f"resample {self.resample!r} not in {RESAMPLE_METHODS}",
        )
        check(
            self.router_type in ROUTER_TYPES,
            f"router_type {self.router_type!r} not in {ROUTER_TYPES}",
        )
        check(
            self.router_input in ROUTER_INPUTS,
            f"router_input {self.router_input!r} not in {tuple(ROUTER_INPUTS)}",
        )
        check(
            self.expert_type in EXPERT_TYPES,
            f"expert_type {self.expert_type!r} not in {tuple(EXPERT_TYPES)}",
        )
        for name in ("vision_dim", "llm_dim", "resample_rate", "num_experts"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(
            self.resample == "projection" or self.resample_rate == 4,
            f"resample {self.resample!r} pools 2 x 2 (4 patches a token) and supports only "
            f"resample_rate 4, got {self.resample_rate} (the original's pools ignore the rate "
            "and its task tokens, repeated N / resample_rate times, then fail to concatenate; "
            "uni_med.py:177-188)",
        )
        check(len(self.tasks) >= 1, "tasks is empty")
        check(len(set(self.tasks)) == len(self.tasks), f"tasks has duplicates: {self.tasks}")
        check(
            self.num_task_tokens in (0, 1),
            f"num_task_tokens must be 0 or 1, got {self.num_task_tokens} (the original "
            "concatenates the repeated task tokens with the image tokens, which fails for > 1)",
        )
        check(
            self.num_task_tokens == 1 or not self.uses_task_tokens,
            f"router_input {self.router_input!r} reads the task token, but num_task_tokens = 0",
        )
        if self.router_type == "sparse":
            check(
                1 <= self.sparse_topk <= self.num_experts,
                f"sparse_topk must be in [1, num_experts={self.num_experts}], "
                f"got {self.sparse_topk}",
            )
        if self.router_type == "hard":
            check(
                self.num_experts >= len(self.tasks),
                f"router_type 'hard' sends task i to expert i, so num_experts "
                f"({self.num_experts}) must be >= the number of tasks ({len(self.tasks)})",
            )
        check(
            not self.dispatch or self.top_k is not None,
            f"dispatch needs sparse or hard routing (router_type {self.router_type!r} gives "
            "every expert a weight, so the dense evaluation is the only one)",
        )
        check(
            self.aux_loss_weight >= 0, f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}"
        )
        check(
            self.aux_loss_weight == 0 or self.uses_router,
            f"aux_loss_weight > 0 needs a learned router (soft or sparse), not "
            f"{self.router_type!r}",
        )


class ConnectorOutput(NamedTuple):
    tokens: jax.Array  # (B, T, D) LLM input embeddings (the original's inputs_llm)
    routing_weights: jax.Array  # (B, T, E) f32, each row sums to 1
    aux_loss: jax.Array  # () f32: aux_loss_weight x load_balancing_loss (0 when off)


# ----------------------------------------------------------------------------- pieces


def resample(x: jax.Array, method: str = "projection", rate: int = 4) -> jax.Array:
    """The original's resampling of (B, N, C) raster-order patch tokens -> (B, T, C').

    ``projection``: (B, N / rate, rate * C), token j = concat(patches rate*j ... rate*j +
    rate - 1) (``view``); ``avgpool`` / ``maxpool``: 2 x 2 stride-2 pooling of the square grid,
    (B, N / 4, C), tokens in raster order.
    """
    if x.ndim != 3:
        raise ValueError(f"uni_med resample: patch tokens must be (B, N, C), got shape {x.shape}")
    b, n, c = x.shape
    if method == "projection":
        if n % rate:
            raise ValueError(
                f"uni_med resample: {n} patches do not split into tokens of {rate} patches"
            )
        return x.reshape(b, n // rate, rate * c)
    if method not in ("avgpool", "maxpool"):
        raise ValueError(f"uni_med resample: method {method!r} not in {RESAMPLE_METHODS}")
    side = math.isqrt(n)
    if side * side != n or side % 2:
        raise ValueError(
            f"uni_med resample: {method} needs a square patch grid of even side, got {n} patches"
        )
    grid = x.reshape(b, side // 2, 2, side // 2, 2, c)
    pooled = grid.mean(axis=(2, 4)) if method == "avgpool" else grid.max(axis=(2, 4))
    return pooled.reshape(b, n // 4, c)


def task_ids(tags: Sequence[str], tasks: Sequence[str] = TASKS) -> np.ndarray:
    """Task tags (``'vqa'``, ``'caption'``, ... without brackets) -> (B,) int32 task ids.

    Raises ValueError naming the tag for an unknown one (``qa`` is text-only: it has no task
    token since its samples carry no image)."""
    out = []
    for i, tag in enumerate(tags):
        if tag not in tasks:
            why = " (a text-only task: its samples have no image)" if tag in TEXT_ONLY_TASKS else ""
            raise ValueError(f"uni_med task tag {i}: {tag!r}{why} is none of {tuple(tasks)}")
        out.append(tasks.index(tag))
    return np.asarray(out, np.int32)


def load_balancing_loss(
    probs: jax.Array, selected: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Switch-Transformer load-balancing loss (Fedus et al. 2021, eq. 4-6; GShard's l_aux
    with top-k slots): ``E * sum_e f_e * P_e``.

    Args:
      probs: (B, T, E) router probabilities (rows sum to 1; differentiable).
      selected: (B, T, k) int: the expert of each of a token's k routing slots.
      valid: optional (B,) bool: samples that count.

    f_e = fraction of the valid (token, slot) assignments that go to expert e (no gradient),
    P_e = mean router probability of e over valid tokens (sum_e f_e = sum_e P_e = 1). Its
    value is 1 whenever P is uniform (the balanced optimum), and at most E / k, reached when
    every token sends its k slots to the same experts and all probability to one of them
    (k = 1: E).
    """
    num_experts = probs.shape[-1]
    weight = jnp.ones(probs.shape[:2], jnp.float32)
    if valid is not None:
        weight = weight * valid.astype(jnp.float32)[:, None]
    total = jnp.maximum(weight.sum(), 1.0)
    counts = jax.nn.one_hot(selected, num_experts, dtype=jnp.float32).mean(axis=-2)  # (B,T,E)
    f = jax.lax.stop_gradient(jnp.einsum("bt,bte->e", weight, counts) / total)
    p = jnp.einsum("bt,bte->e", weight, probs.astype(jnp.float32)) / total
    return num_experts * jnp.sum(f * p)


def routing_by_task(
    weights: jax.Array, task_id: jax.Array, num_tasks: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Per-task routing statistics for logging: (sums (num_tasks, E), counts (num_tasks,)).

    ``sums[t]`` = sum over the valid samples of task t of their token-mean routing weights,
    ``counts[t]`` = how many there were; ``sums / counts`` is a task's mean weight vector.
    The original logs ``weights.mean(0).mean(0)`` of each (single-task) batch and averages
    those per task over the epoch: the same number when batches have one size."""
    per_sample = weights.astype(jnp.float32).mean(axis=1)  # (B, E)
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # (B, num_tasks)
    if valid is not None:
        onehot = onehot * valid.astype(jnp.float32)[:, None]
    return onehot.T @ per_sample, onehot.sum(axis=0)


def _uniform_bias(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """torch's default Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Experts(nnx.Module):
    """E expert projectors with stacked weights, (..., C') -> (..., D) per expert.

    ``mlp`` (``moe_mlp``): fc1 (E, C', D) + bias (E, D) -> exact GELU -> fc2 (E, D, D) + bias
    (E, D); ``linear`` (``moe_linear``): fc1 only. Logical axes: fc1 kernel (expert, None,
    mlp), bias (expert, mlp); fc2 kernel (expert, mlp, embed), bias (expert, embed); for
    ``linear`` the fc1 output carries ``embed``.
    """

    def __init__(
        self,
        num_experts: int,
        din: int,
        dout: int,
        *,
        kind: str = "mlp",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.kind = kind
        self.dtype = dtype
        out1 = "mlp" if kind == "mlp" else "embed"
        self.fc1 = _StackedLinear(num_experts, din, dout, (None, out1), rngs=rngs)
        if kind == "mlp":
            self.fc2 = _StackedLinear(num_experts, dout, dout, ("mlp", "embed"), rngs=rngs)

    def dense(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        """Every expert on every token, as the original: x (B, T, C'), weights (B, T, E) ->
        sum_e weights[..., e] * expert_e(x), (B, T, D)."""
        dtype = self.dtype or x.dtype
        h = self.fc1.shared(x.astype(dtype))  # (B, T, E, D)
        if self.kind == "mlp":
            h = shard_act(h, ("act_batch", "act_length", "act_expert", "act_mlp"))
            h = self.fc2.per_expert(gelu_exact(h))
        h = shard_act(h, ("act_batch", "act_length", "act_expert", "act_embed"))
        out = jnp.einsum("bted,bte->btd", h, weights.astype(h.dtype))
        return shard_act(out, ("act_batch", "act_length", "act_embed"))

    def dispatch(self, x: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
        """Only the selected experts: x (B, T, C'), indices (B, T, k) int, weights (B, T, k)
        -> sum_j weights[..., j] * expert_{indices[..., j]}(x), (B, T, D).

        The B*T*k (token, expert) pairs are sorted by expert (stable) and each expert's rows
        go through one grouped matmul (``jax.lax.ragged_dot``); the results are put back in
        token order and summed over the k slots."""
        dtype = self.dtype or x.dtype
        b, t, c = x.shape
        k = indices.shape[-1]
        num_experts = self.fc1.kernel.shape[0]
        flat = indices.reshape(b * t * k).astype(jnp.int32)
        order = jnp.argsort(flat, stable=True)
        expert_of_row = flat[order]
        sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
        rows = x.reshape(b * t, c).astype(dtype)[order // k]  # (B*T*k, C')
        h = self.fc1.grouped(rows, sizes, expert_of_row)
        if self.kind == "mlp":
            h = self.fc2.grouped(gelu_exact(h), sizes, expert_of_row)
        h = h * weights.reshape(b * t * k)[order][:, None].astype(h.dtype)
        back = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
        out = h[back].reshape(b, t, k, -1).sum(axis=2)
        return shard_act(out, ("act_batch", "act_length", "act_embed"))


class _StackedLinear(nnx.Module):
    """E Linear layers, kernel (E, din, dout) and bias (E, dout), torch default init."""

    def __init__(self, num_experts: int, din: int, dout: int, axes, *, rngs: nnx.Rngs):
        shape = (num_experts, din, dout)
        self.kernel = nnx.Param(
            _EXPERT_INIT(rngs.params(), shape, jnp.float32), out_sharding=("expert", *axes)
        )
        self.bias = nnx.Param(
            _uniform_bias(rngs.params(), (num_experts, dout), din),
            out_sharding=("expert", axes[1]),
        )

    def shared(self, x: jax.Array) -> jax.Array:
        """x (B, T, din) through every layer: (B, T, E, dout)."""
        kernel = self.kernel[...].astype(x.dtype)
        return jnp.einsum("btc,ecd->bted", x, kernel) + self.bias[...].astype(x.dtype)

    def per_expert(self, h: jax.Array) -> jax.Array:
        """h (B, T, E, din): expert e's layer on h[..., e, :] -> (B, T, E, dout)."""
        kernel = self.kernel[...].astype(h.dtype)
        return jnp.einsum("btec,ecd->bted", h, kernel) + self.bias[...].astype(h.dtype)

    def grouped(self, rows: jax.Array, sizes: jax.Array, expert_of_row: jax.Array) -> jax.Array:
        """rows (M, din) sorted by expert, ``sizes`` (E,) rows per expert -> (M, dout)."""
        kernel = self.kernel[...].astype(rows.dtype)
        out = jax.lax.ragged_dot(rows, kernel, sizes)
        return out + self.bias[...].astype(rows.dtype)[expert_of_row]


def _concrete(x) -> np.ndarray | None:
    """x as a numpy array when it is not traced, else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


class ConnectorMoE(nnx.Module):
    """Uni-Med's connector: (B, N, C) patch tokens + (B,) task ids -> ConnectorOutput with
    tokens (B, T, D), routing weights (B, T, E) and the weighted auxiliary loss.

    ``patch_tokens`` is the tower's output after ``ln_vision`` with the CLS token dropped,
    channels last, in raster order (``image_embeds[:, 1:, :]`` of ``encode_img``).
    """

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        if cfg.uses_task_tokens:
            tokens = 0.02 * jax.random.normal(rngs.params(), (len(cfg.tasks), cfg.task_dim))
            self.task_tokens = nnx.Param(tokens, out_sharding=(None, "embed"))
        if cfg.uses_router:
            din = cfg.router_in_dim
            hidden = cfg.router_hidden or 4 * din
            self.router = Mlp(
                din,
                hidden,
                cfg.num_experts,
                activation=gelu_exact,
                kernel_init=torch_linear_init,
                out_axis=None,
                dtype=cfg.dtype,
                rngs=rngs,
            )
            self.router.fc1.bias.set_value(_uniform_bias(rngs.params(), (hidden,), din))
            self.router.fc2.bias.set_value(_uniform_bias(rngs.params(), (cfg.num_experts,), hidden))
        self.llm_proj = Experts(
            cfg.num_experts,
            cfg.token_dim,
            cfg.llm_dim,
            kind=cfg.expert_type,
            dtype=cfg.dtype,
            rngs=rngs,
        )

    # -- inputs

    def _check(self, patch_tokens: jax.Array, task_id: jax.Array) -> None:
        cfg = self.cfg
        if patch_tokens.ndim != 3 or patch_tokens.shape[-1] != cfg.vision_dim:
            raise ValueError(
                f"uni_med connector: patch_tokens must be (B, N, vision_dim={cfg.vision_dim}) "
                f"(the tower output after ln_vision, CLS dropped), got {patch_tokens.shape}"
            )
        if task_id.shape != patch_tokens.shape[:1]:
            raise ValueError(
                f"uni_med connector: task_id must be (B,) = {patch_tokens.shape[:1]}, one task "
                f"per sample, got shape {task_id.shape}"
            )
        if not jnp.issubdtype(task_id.dtype, jnp.integer):
            raise ValueError(
                f"uni_med connector: task_id must be integers (indices into {cfg.tasks}; "
                f"see connector.task_ids), got dtype {task_id.dtype}"
            )
        ids = _concrete(task_id)
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= len(cfg.tasks)):
            raise ValueError(
                f"uni_med connector: task_id {ids.tolist()} out of range [0, {len(cfg.tasks)}) "
                f"for tasks {cfg.tasks}"
            )

    # -- routing

    def router_logits(self, x: jax.Array, task_id: jax.Array) -> jax.Array:
        """Router output (B, T, E) f32 for resampled tokens x (B, T, C')."""
        cfg = self.cfg
        dtype = cfg.dtype or x.dtype
        if cfg.router_input == "token":
            return self.router(x.astype(dtype)).astype(jnp.float32)
        task = self.task_tokens[...][task_id].astype(dtype)  # (B, C_task)
        if cfg.router_input == "task":  # the same row at every position: run it once
            logits = self.router(task)[:, None, :]
            return jnp.broadcast_to(logits, (*x.shape[:2], cfg.num_experts)).astype(jnp.float32)
        task = jnp.broadcast_to(task[:, None, :], (*x.shape[:2], task.shape[-1]))
        mix = jnp.concatenate([task, x.astype(dtype)], axis=-1)  # task token first
        return self.router(mix).astype(jnp.float32)

    def route(self, x: jax.Array, task_id: jax.Array):
        """-> (weights (B, T, E) f32, selected (B, T, k) int or None, probs (B, T, E) or None).

        ``selected``: the experts with non-zero weight (sparse: top k by logit; hard: the
        task's expert; soft: the arg-max, for the balance statistics only). ``probs``: the
        router's probability vector for the load-balancing loss (soft: the weights; sparse:
        the softmax over all E logits)."""
        cfg = self.cfg
        b, t = x.shape[:2]
        num_experts = cfg.num_experts
        if cfg.router_type == "constant":
            return jnp.full((b, t, num_experts), 1.0 / num_experts, jnp.float32), None, None
        if cfg.router_type == "hard":
            weights = jax.nn.one_hot(task_id, num_experts, dtype=jnp.float32)[:, None, :]
            selected = jnp.broadcast_to(task_id[:, None, None], (b, t, 1)).astype(jnp.int32)
            return jnp.broadcast_to(weights, (b, t, num_experts)), selected, None
        logits = self.router_logits(x, task_id)
        if cfg.router_type == "soft":
            s = jax.nn.sigmoid(logits)
            weights = s / s.sum(axis=-1, keepdims=True)
            return weights, jnp.argmax(weights, axis=-1)[..., None], weights
        _, selected = jax.lax.top_k(logits, cfg.sparse_topk)
        keep = jax.nn.one_hot(selected, num_experts, dtype=jnp.bool_).any(axis=-2)
        weights = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)
        return weights, selected, jax.nn.softmax(logits, axis=-1)

    # -- forward

    def __call__(
        self, patch_tokens: jax.Array, task_id: jax.Array, *, valid: jax.Array | None = None
    ) -> ConnectorOutput:
        """patch_tokens (B, N, C), task_id (B,) int (``task_ids`` of the tags), optional
        valid (B,) bool (rows that count in the auxiliary loss) -> ConnectorOutput.

        Traced task ids outside [0, num_tasks) give NaN tokens for that sample (concrete
        ones raise ValueError)."""
        cfg = self.cfg
        task_id = jnp.asarray(task_id)
        self._check(patch_tokens, task_id)
        x = shard_act(patch_tokens, ("act_batch", "act_length", "act_embed"))
        x = resample(x, cfg.resample, cfg.resample_rate)
        weights, selected, probs = self.route(x, task_id)
        if cfg.dispatch:
            kept = jnp.take_along_axis(weights, selected, axis=-1)
            tokens = self.llm_proj.dispatch(x, selected, kept)
        else:
            tokens = self.llm_proj.dense(x, weights)
        bad = (task_id < 0) | (task_id >= len(cfg.tasks))
        tokens = jnp.where(bad[:, None, None], jnp.nan, tokens)
        aux = jnp.zeros((), jnp.float32)
        if cfg.aux_loss_weight:
            aux = cfg.aux_loss_weight * load_balancing_loss(probs, selected, valid)
        return ConnectorOutput(tokens, weights, aux)
