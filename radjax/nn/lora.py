"""LoRA (low-rank adaptation) for any radjax model by module surgery.

``apply_lora(model, rank=, alpha=, targets=, rngs=)`` replaces, in place, every ``nnx.Linear``
whose '/'-joined module path fully matches ``targets`` with a :class:`LoRALinear`:

    y = x @ W (+ b)  +  (alpha / rank) * dropout(x) @ A @ B

``A`` (in, r) starts Kaiming-uniform (peft's default ``init_lora_weights=True``: torch's
``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(in), 1/sqrt(in))), ``B`` (r, out) starts at zero,
so the model's outputs are unchanged until ``B`` trains. Dropout (peft's ``lora_dropout``)
acts on the LoRA branch's input only, in train mode only (``model.train()`` / ``model.eval()``).

The base kernel and bias keep their parameter paths (``.../q_proj/kernel``), so converted
checkpoints, sharding metadata and ``optim.groups`` regexes on them still apply; the adapter
adds ``.../q_proj/lora_a`` and ``.../q_proj/lora_b``. ``lora_only_groups()`` is an
``optim.groups`` value that trains only those (plus any extra regexes) and freezes the rest
through the trainer's freezing mechanism (frozen parameters get no gradients and no optimizer
state). ``merge_lora(model)`` folds ``(alpha / rank) * A @ B`` into the base kernels and puts
plain ``nnx.Linear`` modules back (same outputs, same parameter paths as before LoRA).

Scanned layers: a Linear whose kernel is stacked (num_layers, in, out) (``DecoderConfig(
scan_layers=True)``) gets adapters stacked on the same leading axis (``lora_a`` (L, in, r),
``lora_b`` (L, r, out), logical axis ``layers`` first), one per layer; ``lax.scan`` slices
them with the kernel, and ``merge_lora`` folds ``A[l] @ B[l]`` into ``W[l]`` layer by layer.
Copying ``lora_a[l]`` / ``lora_b[l]`` into layer ``l`` of the unscanned model gives the same
outputs. Dropout there draws from one stream per layer (see LoRALinear).

Only modules invoked through ``__call__`` see the adapter: a Linear whose kernel is read
directly (e.g. ``Decoder.lm_head``, used as ``lm_head.kernel`` in an einsum) would silently
ignore it, so do not target such modules. A Linear referenced from two places in the graph
is replaced at the first path only.

Common targets (LLaMA-family module names, ``radjax.models.llama``):
  ``LLAMA_QV``          q_proj, v_proj (the LoRA paper's and peft's LLaMA default)
  ``LLAMA_ALL_LINEAR``  every projection of attention and MLP (M3D r=16 α=32 dropout 0.05,
                        Uni-Med r=8 α=16 dropout 0.05; lm_head excluded)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LLAMA_QV = r".*/(q_proj|v_proj)"
LLAMA_ALL_LINEAR = r".*/(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LORA_PARAMS = r"(.*/)?lora_[ab]"

# nnx.Linear attributes (besides kernel / bias) that LoRALinear carries over and merge restores.
_LINEAR_ATTRS = (
    "in_features",
    "out_features",
    "use_bias",
    "dtype",
    "param_dtype",
    "precision",
    "dot_general",
    "promote_dtype",
    "preferred_element_type",
)


class LoRALinear(nnx.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))``: (..., in) -> (..., out).

    Takes over ``base``'s ``kernel`` (in, out) and ``bias`` (out,) Variables (same objects,
    same attribute names) and its computation settings; adds ``lora_a`` (in, rank) with
    logical axes (kernel's input axis, None) and ``lora_b`` (rank, out) with (None, kernel's
    output axis). The LoRA branch runs in the base's compute dtype.

    A stacked kernel (*stacked, in, out), e.g. (num_layers, in, out) of a scanned decoder
    (``DecoderConfig(scan_layers=True)``), gets stacked adapters ``lora_a`` (*stacked, in,
    rank) and ``lora_b`` (*stacked, rank, out) with the kernel's leading logical axes
    (``layers``): one independent adapter per layer, sliced by ``lax.scan`` together with
    the kernel, so ``__call__`` inside the scan body sees 2-D weights. Dropout on a stacked
    kernel gets one stream per layer (keys and counts of shape (*stacked,)), which
    ``radjax.nn.stack.scan_layers`` slices and writes back like the weights' slices.

    Args:
      base: the ``nnx.Linear`` to adapt (kernel (in, out) or stacked (*stacked, in, out)).
      rank: r > 0. alpha: scale numerator (scaling = alpha / rank). dropout: rate on the LoRA
        branch's input (0 = none; otherwise ``rngs`` needs a ``dropout`` or ``default`` stream).
      rngs: ``rngs.params()`` initialises ``lora_a``.
    """

    def __init__(
        self, base: nnx.Linear, *, rank: int, alpha: float, dropout: float = 0.0, rngs: nnx.Rngs
    ):
        if not isinstance(base, nnx.Linear) or isinstance(base, LoRALinear):
            raise TypeError(f"LoRALinear: base must be an nnx.Linear, got {type(base).__name__}")
        if rank <= 0:
            raise ValueError(f"LoRALinear: rank must be positive, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRALinear: dropout must be in [0, 1), got {dropout}")
        for name in _LINEAR_ATTRS:
            setattr(self, name, getattr(base, name))
        self.kernel = base.kernel
        self.bias = base.bias
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        *lead, din, dout = base.kernel.shape
        self.stacked = tuple(int(n) for n in lead)
        axes = base.kernel.get_metadata().get("out_sharding") or (None,) * base.kernel.ndim
        lead_axes, (in_axis, out_axis) = tuple(axes[:-2]), tuple(axes[-2:])
        bound = 1.0 / (din**0.5)
        self.lora_a = nnx.Param(
            jax.random.uniform(
                rngs.params(), (*lead, din, self.rank), self.param_dtype, -bound, bound
            ),
            out_sharding=(*lead_axes, in_axis, None),
        )
        self.lora_b = nnx.Param(
            jnp.zeros((*lead, self.rank, dout), self.param_dtype),
            out_sharding=(*lead_axes, None, out_axis),
        )
        self.lora_dropout = nnx.Dropout(dropout, rngs=rngs if dropout and not lead else None)
        if dropout and lead:
            # one stream per stacked layer: keys and counts (*stacked,), sliced by the scan
            self.lora_dropout.rngs = rngs[self.lora_dropout.rng_collection].split(self.stacked)

    def base_forward(self, x: jax.Array) -> jax.Array:
        """The wrapped nnx.Linear's output, computed as nnx.Linear computes it."""
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        kwargs = {}
        if self.preferred_element_type is not None:
            kwargs["preferred_element_type"] = self.preferred_element_type
        y = self.dot_general(
            x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision, **kwargs
        )
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y

    def delta(self) -> jax.Array:
        """The kernel update (alpha / rank) * A @ B, (*stacked, in, out) in the parameter
        dtype (one product per layer of a stacked kernel)."""
        return (self.scaling * (self.lora_a[...] @ self.lora_b[...])).astype(self.kernel.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., in) -> (..., out)."""
        y = self.base_forward(x)
        h = self.lora_dropout(x)
        h, a, b = self.promote_dtype((h, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        lora = jnp.matmul(jnp.matmul(h, a, precision=self.precision), b, precision=self.precision)
        return y + (self.scaling * lora).astype(y.dtype)

    def merged(self) -> nnx.Linear:
        """A plain nnx.Linear with kernel W + (alpha / rank) A B (this module's kernel Variable,
        updated in place) and this module's bias and settings."""
        self.kernel[...] = self.kernel[...] + self.delta()
        settings = {
            n: getattr(self, n) for n in _LINEAR_ATTRS if n not in ("in_features", "out_features")
        }
        linear = nnx.eval_shape(
            lambda: nnx.Linear(self.in_features, self.out_features, rngs=nnx.Rngs(0), **settings)
        )
        linear.kernel = self.kernel
        if self.bias is not None:
            linear.bias = self.bias
        return linear


def _path_str(path: Sequence) -> str:
    return "/".join(str(p) for p in path)


def _set_child(parent, key, child) -> None:
    if isinstance(key, str) and hasattr(parent, key):
        setattr(parent, key, child)
    else:
        parent[key] = child


def _replace(model: nnx.Module, select, make) -> list[str]:
    """Replaces each node ``select(path_str, node)`` accepts by ``make(node)``; returns paths."""
    nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}
    chosen = [
        (path, node) for path, node in nodes.items() if path and select(_path_str(path), node)
    ]
    for path, node in chosen:
        _set_child(nodes[path[:-1]], path[-1], make(node))
    return [_path_str(path) for path, _ in chosen]


def apply_lora(
    model: nnx.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: str,
    rngs: nnx.Rngs,
) -> list[str]:
    """Replaces (in place) every nnx.Linear whose '/'-joined module path (e.g.
    ``layers/0/self_attn/q_proj``) fully matches the regex ``targets`` by a LoRALinear.

    Works through nested modules and ``nnx.List`` / ``nnx.Dict`` containers. Already adapted
    modules are left alone. Returns the replaced paths in graph order.

    Raises:
      ValueError: when no nnx.Linear matches ``targets`` (listing the Linear paths there are).
    """
    pattern = re.compile(targets)

    def select(path: str, node) -> bool:
        return (
            isinstance(node, nnx.Linear)
            and not isinstance(node, LoRALinear)
            and pattern.fullmatch(path) is not None
        )

    nodes = [(_path_str(p), n) for p, n in nnx.iter_graph(model) if p]
    if not any(select(p, n) for p, n in nodes):
        linears = [
            p for p, n in nodes if isinstance(n, nnx.Linear) and not isinstance(n, LoRALinear)
        ]
        shown = ", ".join(linears[:8]) + (", ..." if len(linears) > 8 else "")
        raise ValueError(
            f"apply_lora: no nnx.Linear module path fully matches targets "
            f"{targets!r}; Linear paths are: {shown or '(none)'}"
        )
    return _replace(
        model,
        select,
        lambda base: LoRALinear(base, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs),
    )


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every LoRALinear's (alpha / rank) A B into its base kernel and puts a plain
    nnx.Linear back in its place (in place; returns ``model``). Outputs are unchanged up to
    float rounding and parameter paths are those of the model before ``apply_lora``."""
    _replace(model, lambda _, node: isinstance(node, LoRALinear), lambda node: node.merged())
    return model


def lora_only_groups(extra_trainable: Sequence[str | tuple[str, float]] = ()) -> tuple:
    """An ``optim.groups`` value training only LoRA parameters (``lora_a`` / ``lora_b``)
    plus the parameters whose paths fully match ``extra_trainable`` (regexes, or
    ``(regex, lr multiplier)`` pairs), and freezing every other parameter.

    e.g. M3D's stage 2: ``lora_only_groups((r'vision_tower/.*', r'mm_projector/.*'))``.
    """
    extra = tuple((g, 1.0) if isinstance(g, str) else (str(g[0]), g[1]) for g in extra_trainable)
    return ((LORA_PARAMS, 1.0), *extra, (r".*", None))


def lora_param_count(model: nnx.Module) -> int:
    """Number of LoRA parameters (lora_a and lora_b) in ``model``."""
    return sum(
        int(value[...].size)
        for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))
        if re.fullmatch(LORA_PARAMS, _path_str(path))
    )
