"""SAM image-encoder checkpoints -> ``radjax.models.sam.image_encoder.SamImageEncoder``.

Two key layouts are read:

* the ORIGINAL segment-anything ``Sam`` state dict (``sam_vit_{b,l,h}_*.pth``, MedSAM's
  ``medsam_vit_b.pth``): the encoder's keys under ``image_encoder.``;
* transformers' ``SamModel`` / ``SamVisionModel``: under ``vision_encoder.``.

Keys of the other SAM parts (prompt encoder, mask decoder, ``shared_image_embedding``) are
left alone; a dict with neither prefix is a bare encoder state dict in either naming. The
transformers names are first renamed to the original's::

  patch_embed.projection            -> patch_embed.proj         -> patch_embed/proj (conv)
  pos_embed (1, H/p, W/p, width)    -> pos_embed                -> pos_embed (unchanged)
  layers.<i>.layer_norm1 / 2        -> blocks.<i>.norm1 / 2     -> blocks/<i>/norm1 / 2
  layers.<i>.attn.{qkv, proj}       -> blocks.<i>.attn.*        -> blocks/<i>/attn/* (linear)
  layers.<i>.attn.rel_pos_{h, w}    -> blocks.<i>.attn.rel_pos_* (unchanged)
  layers.<i>.mlp.lin1 / lin2        -> blocks.<i>.mlp.lin1 / 2  -> blocks/<i>/mlp/lin1 / 2
  neck.conv1 / layer_norm1 / conv2 / layer_norm2
                                    -> neck.0 / 1 / 2 / 3       -> neck/conv1 / norm1 / conv2 / norm2

Layouts: conv weights (O, I, kh, kw) -> (kh, kw, I, O); linear (out, in) -> (in, out); norm
``weight`` -> ``scale``. ``infer_vision_config`` reads the encoder's size from the shapes,
``check_vision_config`` names every key whose shape does not fit a config (a ViT-L file for a
ViT-B config), ``load_image_encoder`` does both and returns the loaded model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from radjax.convert.torch_io import (
    ConversionError,
    assign,
    conv_kernel,
    linear_kernel,
    load_state_dict,
)
from radjax.models.sam.image_encoder import (
    VISION_CONFIGS,
    SamImageEncoder,
    SamVisionConfig,
    vision_config,
)

PREFIXES = ("image_encoder.", "vision_encoder.")  # original, transformers
_HF_TO_ORIGINAL = (
    (r"patch_embed\.projection\.", "patch_embed.proj."),
    (r"layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"layers\.(\d+)\.", r"blocks.\1."),
    (r"neck\.conv1\.", "neck.0."),
    (r"neck\.layer_norm1\.", "neck.1."),
    (r"neck\.conv2\.", "neck.2."),
    (r"neck\.layer_norm2\.", "neck.3."),
)
_B = r"blocks\.(\d+)\."
# original key -> (radjax path, layout)
_KEYS = (
    (r"patch_embed\.proj\.weight", "patch_embed/proj/kernel", "conv"),
    (r"patch_embed\.proj\.bias", "patch_embed/proj/bias", "same"),
    (r"pos_embed", "pos_embed", "same"),
    (_B + r"(norm[12])\.weight", r"blocks/\1/\2/scale", "same"),
    (_B + r"(norm[12])\.bias", r"blocks/\1/\2/bias", "same"),
    (_B + r"attn\.(qkv|proj)\.weight", r"blocks/\1/attn/\2/kernel", "linear"),
    (_B + r"attn\.(qkv|proj)\.bias", r"blocks/\1/attn/\2/bias", "same"),
    (_B + r"attn\.(rel_pos_[hw])", r"blocks/\1/attn/\2", "same"),
    (_B + r"mlp\.(lin[12])\.weight", r"blocks/\1/mlp/\2/kernel", "linear"),
    (_B + r"mlp\.(lin[12])\.bias", r"blocks/\1/mlp/\2/bias", "same"),
    (r"neck\.0\.weight", "neck/conv1/kernel", "conv"),
    (r"neck\.1\.weight", "neck/norm1/scale", "same"),
    (r"neck\.1\.bias", "neck/norm1/bias", "same"),
    (r"neck\.2\.weight", "neck/conv2/kernel", "conv"),
    (r"neck\.3\.weight", "neck/norm2/scale", "same"),
    (r"neck\.3\.bias", "neck/norm2/bias", "same"),
)
_TO_RADJAX = {"conv": conv_kernel, "linear": linear_kernel, "same": lambda w: w}
# a radjax shape back in the checkpoint's layout, for error messages
_TO_TORCH_SHAPE = {
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "linear": lambda s: tuple(reversed(s)),
    "same": tuple,
}
_MAX_LISTED = 20


def _entries(sd: Mapping[str, np.ndarray]) -> list[tuple[str, str, str, str, np.ndarray]]:
    """The encoder's keys as (checkpoint key, original key, radjax path, layout, value).

    Raises:
      ConversionError: naming the encoder keys that are no parameter of the model, or when
        the dict holds no image encoder.
    """
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in sd)), "")
    keys = [k for k in sd if k.startswith(prefix)]
    hf = prefix == "vision_encoder." or (not prefix and "patch_embed.projection.weight" in sd)
    out, unknown = [], []
    for key in keys:
        name = key.removeprefix(prefix)
        for pattern, replacement in _HF_TO_ORIGINAL if hf else ():
            name = re.sub(rf"^{pattern}", replacement, name)
        for pattern, target, layout in _KEYS:
            if match := re.fullmatch(pattern, name):
                out.append((key, name, match.expand(target), layout, sd[key]))
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"SAM image encoder: {len(unknown)} keys are no parameter of the image encoder: "
            f"{sorted(unknown)[:_MAX_LISTED]}"
        )
    if not out:
        raise ConversionError(
            "SAM image encoder: no image-encoder keys (expected keys under "
            f"{' or '.join(PREFIXES)}, or a bare encoder state dict); got e.g. {sorted(sd)[:5]}"
        )
    return out


def from_sam_image_encoder(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Original or transformers state dict (arrays) -> ``{radjax path: f32 array}`` for
    ``torch_io.assign``."""
    out = {}
    for key, _, path, layout, value in _entries(sd):
        try:
            out[path] = _TO_RADJAX[layout](np.asarray(value, np.float32))
        except ConversionError as e:
            raise ConversionError(f"SAM image encoder: {key}: {e}") from e
    return out


def infer_vision_config(sd: Mapping[str, np.ndarray], **overrides) -> SamVisionConfig:
    """The ``SamVisionConfig`` a state dict was trained with, from its shapes.

    Width, patch and image size come from ``patch_embed.proj.weight`` and ``pos_embed``; depth
    from the block indices; out channels from the neck; MLP ratio from ``lin1``; head width
    from ``rel_pos_h`` (heads = width / head_dim); a block whose tables cover the whole map is
    global, the others give ``window_size``. (A window as large as the map is one window:
    those blocks read as global, which computes the same.) Without relative positions
    ``num_heads``, ``window_size`` and ``global_attn_indexes`` cannot be read and must be
    given in ``overrides``; ``eps`` (not stored) is SAM's 1e-6. ``overrides`` win.
    """
    shapes = {name: np.shape(value) for _, name, _, _, value in _entries(sd)}

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ConversionError(f"infer_vision_config: the state dict has no {name!r}")
        return shapes[name]

    width, channels, patch, _ = shape("patch_embed.proj.weight")
    if channels != 3:
        raise ConversionError(f"infer_vision_config: patch_embed.proj.weight takes {channels} "
                              "channels; the SAM image encoder takes 3")  # fmt: skip
    grid = shape("pos_embed")[1]
    depth = 1 + max(int(name.split(".")[1]) for name in shapes if name.startswith("blocks."))
    fields = dict(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=depth,
        mlp_ratio=shape("blocks.0.mlp.lin1.weight")[0] / width,
        out_channels=shape("neck.0.weight")[0],
        qkv_bias="blocks.0.attn.qkv.bias" in shapes,
        use_rel_pos="blocks.0.attn.rel_pos_h" in shapes,
    )
    if fields["use_rel_pos"]:
        sizes = [(shape(f"blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in range(depth)]
        windows = sorted({n for n in sizes if n != grid})
        if len(windows) > 1:
            raise ConversionError(
                f"infer_vision_config: blocks' rel_pos_h cover windows {windows}; SAM has one"
            )
        fields |= dict(
            num_heads=width // shape("blocks.0.attn.rel_pos_h")[1],
            window_size=windows[0] if windows else 0,
            global_attn_indexes=tuple(i for i, n in enumerate(sizes) if n == grid)
            if windows
            else (),
        )
    else:
        needed = [k for k in ("num_heads", "window_size", "global_attn_indexes")
                  if k not in overrides]  # fmt: skip
        if needed:
            raise ConversionError(
                f"infer_vision_config: without relative positions the state dict does not "
                f"hold {needed}; pass them"
            )
    return SamVisionConfig(**(fields | overrides))


def _named(cfg: SamVisionConfig) -> str:
    name = next((n for n in VISION_CONFIGS if vision_config(n, dtype=cfg.dtype) == cfg), None)
    return name or f"width {cfg.width}, depth {cfg.depth}, image {cfg.image_size}"


def check_vision_config(sd: Mapping[str, np.ndarray], cfg: SamVisionConfig) -> None:
    """Raises ConversionError when the state dict does not fit ``cfg``, naming each
    checkpoint key whose shape differs (both shapes in the checkpoint's layout), the keys
    beyond the config and the parameters the checkpoint lacks."""
    entries = _entries(sd)
    model = nnx.eval_shape(lambda rngs: SamImageEncoder(cfg, rngs=rngs), nnx.Rngs(0))
    want = {
        "/".join(map(str, path)): tuple(var.shape)
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    mismatched, unexpected, seen = [], [], set()
    for key, _, path, layout, value in entries:
        seen.add(path)
        if path not in want:
            unexpected.append(key)
        elif tuple(np.shape(value)) != (expected := _TO_TORCH_SHAPE[layout](want[path])):
            mismatched.append(f"{key}: checkpoint {tuple(np.shape(value))} != config {expected}")
    missing = sorted(set(want) - seen)
    if not (mismatched or unexpected or missing):
        return
    try:
        found = f" (the checkpoint is {_named(infer_vision_config(sd, dtype=cfg.dtype))})"
    except (ConversionError, ValueError):
        found = ""
    sections = [
        (f"shape mismatch ({len(mismatched)})", mismatched),
        (f"keys beyond the config ({len(unexpected)})", unexpected),
        (f"missing ({len(missing)})", missing),
    ]
    text = "".join(
        f"\n  {title}:\n    " + "\n    ".join(items[:_MAX_LISTED])
        + (f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")
        for title, items in sections
        if items
    )  # fmt: skip
    raise ConversionError(
        f"SAM image encoder: checkpoint does not fit the config ({_named(cfg)}){found}:{text}"
    )


def load_image_encoder(
    checkpoint: str | os.PathLike | Mapping[str, np.ndarray],
    cfg: SamVisionConfig | None = None,
    **overrides,
) -> SamImageEncoder:
    """A ``SamImageEncoder`` holding a checkpoint's weights (a file path: ``.pth`` via
    ``torch.load(weights_only=True)``, ``.safetensors``, a HF directory; or a state dict).
    ``cfg`` None = ``infer_vision_config(sd, **overrides)``; a given ``cfg`` is checked first.
    """
    sd = checkpoint if isinstance(checkpoint, Mapping) else load_state_dict(checkpoint)
    cfg = infer_vision_config(sd, **overrides) if cfg is None else cfg
    check_vision_config(sd, cfg)
    model = nnx.eval_shape(lambda rngs: SamImageEncoder(cfg, rngs=rngs), nnx.Rngs(0))
    assign(model, from_sam_image_encoder(sd))
    return model
