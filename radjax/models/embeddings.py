"""Growing a language model's vocabulary after special tokens were added to its tokenizer.

New rows of the input embedding table and new columns of an untied output head are the mean
of the existing ones (what LLaVA-Med, M3D and RadFM do for their image / [SEG] tokens), so
the new tokens start as an "average word" rather than noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

# (attribute path of a vocab-indexed Param, its vocab axis), per model family.
VOCAB_TABLES: dict[str, tuple[tuple[str, int], ...]] = {
    "Decoder": (("embed_tokens", 0), ("lm_head/kernel", 1)),  # radjax.models.llama
    "GPT2": (("wte/embedding", 0),),  # radjax.models.gpt2
}


def _lookup(model: nnx.Module, path: str) -> tuple[nnx.Module, nnx.Variable] | None:
    """(owning module, Variable) at a '/'-joined attribute path, or None if absent."""
    parent, node = None, model
    for name in path.split("/"):
        parent, node = node, getattr(node, name, None)
        if node is None:
            return None
    return parent, node


def _grow(table: jnp.ndarray, axis: int, new_size: int) -> jnp.ndarray:
    old = table.shape[axis]
    mean = jnp.mean(table, axis=axis, keepdims=True)
    reps = [1] * table.ndim
    reps[axis] = new_size - old
    return jnp.concatenate([table, jnp.tile(mean, reps)], axis=axis)


def resize_vocab(
    model: nnx.Module, new_size: int, tables: Sequence[tuple[str, int]] | None = None
) -> int:
    """Grows ``model``'s vocab-indexed tables to ``new_size`` in place; returns the old size.

    ``tables`` defaults to ``VOCAB_TABLES[type(model).__name__]``; paths missing on the model
    (e.g. ``lm_head`` of a tied decoder) are skipped. ``model.cfg.vocab_size`` follows.
    Shrinking is refused: it would silently drop trained rows.
    """
    kind = type(model).__name__
    tables = VOCAB_TABLES.get(kind) if tables is None else tables
    if tables is None:
        raise ValueError(f"resize_vocab: no vocab tables known for {kind}; pass `tables`")
    found = [(hit, axis) for hit, axis in ((_lookup(model, p), a) for p, a in tables) if hit]
    if not found:
        raise ValueError(f"resize_vocab: none of {[p for p, _ in tables]} exists on {kind}")
    (_, first), axis0 = found[0]
    old = first[...].shape[axis0]
    if new_size < old:
        raise ValueError(f"resize_vocab: {kind} has {old} tokens; refusing to shrink to {new_size}")
    for (owner, variable), axis in found:
        variable.set_value(_grow(variable[...], axis, new_size))
        for size_attr in ("num_embeddings", "out_features"):  # nnx.Embed / nnx.Linear
            if getattr(owner, size_attr, None) == old:
                setattr(owner, size_attr, new_size)
    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg) and hasattr(cfg, "vocab_size"):
        model.cfg = dataclasses.replace(cfg, vocab_size=new_size)
    return old
