"""Released RadDiag checkpoints -> ``radjax.papers.rp3d_diag.model.RadNet`` (``arch='released'``).

The checkpoints (HF ``QiaoyuZheng/RadDiag``) are HF-Trainer saves of the original
``modelRadNet.RadNet``: ``pytorch_model.bin`` or ``model.safetensors``. Key mapping:

  resnet2D.*                                   -> trunk/*   (``convert.resnet.from_torchvision``)
  attention1D.cls_token (1, 1, d)              -> slice_attn/cls_token (d,)
  attention1D.pos_emb (1+D, d)                 -> slice_attn/pos_embed
  <enc> = attention1D.transformer_encoder.encoder | vitFuse.transformer_encoder.encoder
  <enc>.layers.i.self_attn.linears.{0,1,2,3}   -> .../encoder/layers/i/attn/{query,key,value,out}
  <enc>.layers.i.feed_forward.w_{1,2}          -> .../encoder/layers/i/mlp/fc{1,2}
  <enc>.layers.i.sublayer.{0,1}.norm.{a,b}     -> .../encoder/layers/i/norm{1,2}/{scale,bias}
  <enc>.norm.{a,b}                             -> .../encoder/norm/{scale,bias}
  vitFuse.mod_embed, vitFuse.cls_token         -> scan_fuse/mod_embed, scan_fuse/cls_token
  fc.0, fc.2                                   -> head/fc/fc1, head/fc/fc2
  fcke (knowledge enhancement)                 -> head/fcke

Skipped: ``resnet2D.fc`` (unused classifier); the templates the original
``TransformerEncoder`` keeps besides its layer copies (``multi_headed_attention``,
``feed_forward``, ``encoder_layer``), which never run; ``bioLORD.*`` (the frozen text
encoder: label embeddings come from ``radjax.papers.rp3d_diag.knowledge``). Any other key, and any
missing one, raises ``ConversionError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from radjax.convert.resnet import from_torchvision
from radjax.convert.torch_io import ConversionError, assign, linear_kernel, load_state_dict
from radjax.papers.rp3d_diag.model import build_model, class_text_embeddings

_TRUNK = "resnet2D."
_SKIPPED = re.compile(
    r"resnet2D\..*|bioLORD\..*|.*transformer_encoder\."
    r"(multi_headed_attention|feed_forward|encoder_layer)\..*"
)
_ATTENTION = ("query", "key", "value", "out")


class _Reader:
    """Reads keys of a state dict and remembers which were read."""

    def __init__(self, sd: Mapping[str, np.ndarray]):
        self.sd, self.used = sd, set()

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.sd:
            raise ConversionError(
                f"checkpoint has no key {key!r} (needed by the configured "
                f"model); it starts with {sorted(self.sd)[:5]}"
            )
        self.used.add(key)
        return np.asarray(self.sd[key])


Read = Callable[[str], np.ndarray]


def _linear(read: Read, src: str) -> dict[str, np.ndarray]:
    return {"kernel": linear_kernel(read(f"{src}.weight")), "bias": read(f"{src}.bias")}


def _std_norm(read: Read, src: str) -> dict[str, np.ndarray]:
    return {"scale": read(f"{src}.a"), "bias": read(f"{src}.b")}


def _prefixed(prefix: str, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def from_annotated_encoder(read: Read, prefix: str, layers: int) -> dict[str, np.ndarray]:
    """RP3D ``TransformerEncoder`` keys under ``prefix`` -> ``annotated_encoder`` paths.

    ``read`` maps a torch key to its array (e.g. ``sd.__getitem__``).
    """
    enc = f"{prefix}encoder"
    out = _prefixed("norm", _std_norm(read, f"{enc}.norm"))
    for i in range(layers):
        src, dst = f"{enc}.layers.{i}", f"layers/{i}"
        for j, name in enumerate(_ATTENTION):
            out |= _prefixed(f"{dst}/attn/{name}", _linear(read, f"{src}.self_attn.linears.{j}"))
        out |= _prefixed(f"{dst}/mlp/fc1", _linear(read, f"{src}.feed_forward.w_1"))
        out |= _prefixed(f"{dst}/mlp/fc2", _linear(read, f"{src}.feed_forward.w_2"))
        out |= _prefixed(f"{dst}/norm1", _std_norm(read, f"{src}.sublayer.0.norm"))
        out |= _prefixed(f"{dst}/norm2", _std_norm(read, f"{src}.sublayer.1.norm"))
    return out


def _cls(read: Read, key: str) -> np.ndarray:
    """(1, 1, d) token -> (d,)."""
    value = read(key)
    return value.reshape(value.shape[-1])


def from_released(
    sd: Mapping[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
    """Original ``RadNet`` state dict -> ``{radjax path: array}`` for ``torch_io.assign``.

    Args:
      sd: flat ``{torch key: array}`` (``torch_io.load_state_dict``).
      config: the run config; ``model.arch`` must be 'released', and ``model.fusion``,
        ``model.ke.enabled`` and the layer counts must match the checkpoint.
    """
    trunk = _prefixed("trunk", from_torchvision(sd, _TRUNK))
    return trunk | from_released_without_trunk(sd, config)


def from_released_without_trunk(
    sd: Mapping[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
    """``from_released`` less the ``resnet2D.*`` trunk (ignored when present): slice
    attention, scan fusion and head. Golden files of the original carry no trunk."""
    m = config.model
    if m.arch != "released":
        raise ConversionError(
            f"from_released converts the released RadNet; model.arch is {m.arch!r}"
        )
    read = _Reader(sd)
    out = _prefixed(
        "slice_attn",
        {
            "cls_token": _cls(read, "attention1D.cls_token"),
            "pos_embed": read("attention1D.pos_emb"),
            **_prefixed(
                "encoder",
                from_annotated_encoder(
                    read, "attention1D.transformer_encoder.", m.slice_attn.layers
                ),
            ),
        },
    )
    if m.fusion == "early":
        out |= _prefixed(
            "scan_fuse",
            {
                "mod_embed": read("vitFuse.mod_embed"),
                "cls_token": _cls(read, "vitFuse.cls_token"),
                **_prefixed(
                    "encoder",
                    from_annotated_encoder(
                        read, "vitFuse.transformer_encoder.", m.scan_fuse.layers
                    ),
                ),
            },
        )
    if m.ke.enabled:
        out |= _prefixed("head/fcke", _linear(read, "fcke"))
    else:
        out |= _prefixed("head/fc/fc1", _linear(read, "fc.0"))
        out |= _prefixed("head/fc/fc2", _linear(read, "fc.2"))
    left = sorted(k for k in sd if k not in read.used and not _SKIPPED.fullmatch(k))
    if left:
        raise ConversionError(
            f"{len(left)} checkpoint keys fit no part of the configured model "
            f"(fusion={m.fusion!r}, ke={m.ke.enabled}): {left[:20]}"
        )
    return out


def load_released(
    path: str | os.PathLike,
    config: ml_collections.ConfigDict,
    *,
    label_embeddings: np.ndarray | None = None,
) -> nnx.Module:
    """The configured model holding a released checkpoint, in eval mode.

    The model is built abstractly (no random initialisation) and every variable comes
    from the checkpoint, or from the label embeddings.

    Args:
      path: ``pytorch_model.bin``, ``model.safetensors`` or the checkpoint directory.
      config: run config matching the checkpoint (see ``from_released``).
      label_embeddings: (C, T) class-text embeddings when ``model.ke.enabled``
        (default: ``rp3d_diag.class_text_embeddings(config)``).
    """
    values = from_released(load_state_dict(path), config)
    if config.model.ke.enabled and label_embeddings is None:
        label_embeddings = class_text_embeddings(config)
    model = nnx.eval_shape(
        lambda: build_model(config, rngs=nnx.Rngs(0), label_embeddings=label_embeddings)
    )
    assign(model, values)
    if label_embeddings is not None:
        model.head.label_embeddings.set_value(jnp.asarray(label_embeddings, jnp.float32))
    unset = [
        path for path, var in _variables(model) if isinstance(var.get_value(), jax.ShapeDtypeStruct)
    ]
    if unset:
        raise ConversionError(f"variables the checkpoint does not set: {unset[:20]}")
    model.eval()
    return model


def _variables(model: nnx.Module) -> list[tuple[str, nnx.Variable]]:
    return [
        ("/".join(map(str, path)), node)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Variable)
    ]
