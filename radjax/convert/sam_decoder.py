"""SAM prompt encoder + mask decoder checkpoints -> ``radjax.models.sam`` paths.

Two key layouts, both read from a whole SAM state dict (keys outside the prompt encoder and
mask decoder, e.g. ``image_encoder.*`` / ``vision_encoder.*``, are left to the image
encoder's converter):

* ``from_original``: segment-anything's ``Sam`` (also MedSAM, AuxOL's vendored copy and
  SegVol's volumetric copy)::

    prompt_encoder.pe_layer.positional_encoding_gaussian_matrix -> prompt_encoder/pe_layer/gaussian_matrix
    prompt_encoder.point_embeddings.<i>.weight (1, C)           -> prompt_encoder/point_embeddings (rows i)
    prompt_encoder.{not_a_point_embed,no_mask_embed}.weight     -> prompt_encoder/{...} (C,)
    prompt_encoder.mask_downscaling.{0,1,3,4,6}                 -> prompt_encoder/mask_downscaling/{conv1,norm1,conv2,norm2,conv3}
    mask_decoder.{iou_token,mask_tokens}.weight                 -> mask_decoder/{iou_token (C,), mask_tokens}
    mask_decoder.transformer.layers.<i>.<attn>.{q,k,v,out}_proj -> mask_decoder/transformer/layers/<i>/<attn>/{query,key,value,out}
    mask_decoder.transformer.layers.<i>.norm<n>, .mlp.lin{1,2} -> .../norm<n>, .../mlp/fc{1,2}
    mask_decoder.transformer.final_attn_token_to_image, norm_final_attn -> mask_decoder/transformer/{...}
    mask_decoder.output_upscaling.{0,1,3}                       -> mask_decoder/output_upscaling/{conv1,norm,conv2}
    mask_decoder.{output_hypernetworks_mlps.<i>,iou_prediction_head}.layers.<j> -> .../layers/<j>
    mask_decoder.txt_align_upscaled_embedding (SegVol)          -> mask_decoder/text_align

* ``from_transformers``: transformers' ``SamModel``: ``prompt_encoder.shared_embedding.
  positional_embedding`` (the Gaussian matrix; tied to ``shared_image_embedding.
  positional_embedding``, which must equal it when both are stored), ``point_embed.<i>``,
  ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}``, ``layer_norm<n>`` /
  ``layer_norm_final_attn``, ``upscale_conv{1,2}`` / ``upscale_layer_norm``, and the MLP heads
  as ``proj_in``, ``layers.<j>``, ``proj_out`` (= radjax layers 0, j + 1, last).

Layouts: Linear (out, in) -> (in, out); Conv (O, I, *k) -> (*k, I, O); ConvTranspose
(in, out, *k) -> (*k, out, in) (``nnx.ConvTranspose(transpose_kernel=True)``'s layout:
torch's weight with its axes moved, not flipped; checked by parity); embeddings (1, C) ->
(C,); SegVol's joint ``nn.LayerNorm`` (C, *grid) -> (*grid, C). The grid axes stay in the
checkpoint's tensor order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from radjax.convert.torch_io import ConversionError, assign, conv_kernel, linear_kernel

PARTS = ("prompt_encoder", "mask_decoder")
GAUSSIAN = "prompt_encoder/pe_layer/gaussian_matrix"
_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image)"
_PROJ = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
_LAYER = r"mask_decoder\.transformer\.layers\.(\d+)\."
_TO_LAYER = r"mask_decoder/transformer/layers/\1/"

# (torch module regex, radjax module path, kind); the leaf comes from the kind.
_COMMON = (
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)", r"prompt_encoder/\1", "row"),
    (r"mask_decoder\.iou_token", "mask_decoder/iou_token", "row"),
    (r"mask_decoder\.mask_tokens", "mask_decoder/mask_tokens", "table"),
    *((_LAYER + _ATTN + rf"\.{p}", _TO_LAYER + rf"\2/{q}", "linear") for p, q in _PROJ.items()),
    *((rf"mask_decoder\.transformer\.{_ATTN}\.{p}", rf"mask_decoder/transformer/\1/{q}", "linear")
      for p, q in _PROJ.items()),
    (_LAYER + r"mlp\.lin([12])", _TO_LAYER + r"mlp/fc\2", "linear"),
)  # fmt: skip
_ORIGINAL = _COMMON + (
    (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix", GAUSSIAN, "buffer"),
    (r"prompt_encoder\.point_embeddings\.(\d+)", r"prompt_encoder/point_embeddings/\1", "point"),
    (r"prompt_encoder\.mask_downscaling\.0", "prompt_encoder/mask_downscaling/conv1", "conv"),
    (r"prompt_encoder\.mask_downscaling\.1", "prompt_encoder/mask_downscaling/norm1", "norm"),
    (r"prompt_encoder\.mask_downscaling\.3", "prompt_encoder/mask_downscaling/conv2", "conv"),
    (r"prompt_encoder\.mask_downscaling\.4", "prompt_encoder/mask_downscaling/norm2", "norm"),
    (r"prompt_encoder\.mask_downscaling\.6", "prompt_encoder/mask_downscaling/conv3", "conv"),
    (_LAYER + r"norm([1-4])", _TO_LAYER + r"norm\2", "norm"),
    (r"mask_decoder\.transformer\.norm_final_attn", "mask_decoder/transformer/norm_final_attn", "norm"),
    (r"mask_decoder\.output_upscaling\.0", "mask_decoder/output_upscaling/conv1", "conv_t"),
    (r"mask_decoder\.output_upscaling\.1", "mask_decoder/output_upscaling/norm", "norm"),
    (r"mask_decoder\.output_upscaling\.3", "mask_decoder/output_upscaling/conv2", "conv_t"),
    (r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)",
     r"mask_decoder/output_hypernetworks_mlps/\1/layers/\2", "linear"),
    (r"mask_decoder\.iou_prediction_head\.layers\.(\d+)",
     r"mask_decoder/iou_prediction_head/layers/\1", "linear"),
    (r"mask_decoder\.txt_align_upscaled_embedding", "mask_decoder/text_align", "linear"),
)  # fmt: skip
_TRANSFORMERS = _COMMON + (
    (r"prompt_encoder\.shared_embedding\.positional_embedding", GAUSSIAN, "buffer"),
    (r"prompt_encoder\.point_embed\.(\d+)", r"prompt_encoder/point_embeddings/\1", "point"),
    (r"prompt_encoder\.mask_embed\.(conv[123])", r"prompt_encoder/mask_downscaling/\1", "conv"),
    (r"prompt_encoder\.mask_embed\.layer_norm([12])", r"prompt_encoder/mask_downscaling/norm\1", "norm"),
    (_LAYER + r"layer_norm([1-4])", _TO_LAYER + r"norm\2", "norm"),
    (r"mask_decoder\.transformer\.layer_norm_final_attn", "mask_decoder/transformer/norm_final_attn", "norm"),
    (r"mask_decoder\.upscale_conv([12])", r"mask_decoder/output_upscaling/conv\1", "conv_t"),
    (r"mask_decoder\.upscale_layer_norm", "mask_decoder/output_upscaling/norm", "norm"),
    (r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.(proj_in|proj_out|layers\.\d+)",
     r"mask_decoder/output_hypernetworks_mlps/\1/hf/\2", "linear"),
    (r"mask_decoder\.iou_prediction_head\.(proj_in|proj_out|layers\.\d+)",
     r"mask_decoder/iou_prediction_head/hf/\1", "linear"),
)  # fmt: skip
_KERNEL = {"weight": "kernel", "bias": "bias"}
_LEAVES = {
    "linear": _KERNEL,
    "conv": _KERNEL,
    "conv_t": _KERNEL,
    "norm": {"weight": "scale", "bias": "bias"},
}


_EMBEDDINGS = ("row", "table", "point")


def _lookup(key: str, table) -> tuple[str, str, str] | None:
    """(radjax path, kind, torch leaf) of ``key``, or None."""
    module, _, leaf = key.rpartition(".")
    for pattern, target, kind in table:
        if kind == "buffer":
            if match := re.fullmatch(pattern, key):
                return match.expand(target), kind, ""
            continue
        if (match := re.fullmatch(pattern, module)) is None:
            continue
        if kind in _EMBEDDINGS:
            return (match.expand(target), kind, leaf) if leaf == "weight" else None
        name = _LEAVES[kind].get(leaf)
        return (f"{match.expand(target)}/{name}", kind, leaf) if name else None
    return None


def _value(kind: str, leaf: str, value: np.ndarray, key: str) -> np.ndarray:
    if kind in ("row", "point"):
        if value.ndim != 2 or value.shape[0] != 1:
            raise ConversionError(f"{key}: expected a (1, C) embedding, got shape {value.shape}")
        return value[0]
    if leaf != "weight":
        return value
    if kind == "linear":
        return linear_kernel(value)
    if kind in ("conv", "conv_t"):  # ConvTranspose (in, out, *k) -> (*k, out, in)
        return conv_kernel(value)
    if kind == "norm" and value.ndim > 1:  # SegVol's joint LayerNorm (C, *grid)
        return np.moveaxis(value, 0, -1)
    return value


def _stack_points(flat: dict[str, np.ndarray], caller: str) -> None:
    """prompt_encoder/point_embeddings/<i> rows -> one (n, C) table."""
    prefix = "prompt_encoder/point_embeddings"
    rows = {int(p.rpartition("/")[2]): p for p in flat if p.startswith(prefix + "/")}
    if not rows:
        return
    if sorted(rows) != list(range(len(rows))):
        raise ConversionError(f"{caller}: point embeddings {sorted(rows)} are not 0..n-1")
    flat[prefix] = np.stack([flat.pop(rows[i]) for i in range(len(rows))])


def _number_hf_heads(flat: dict[str, np.ndarray]) -> None:
    """transformers' proj_in / layers.<j> / proj_out -> layers/0, j + 1, last."""
    heads: dict[str, dict[str, str]] = {}
    for path in list(flat):
        if m := re.fullmatch(r"(.+)/hf/(proj_in|proj_out|layers\.\d+)/(\w+)", path):
            heads.setdefault(m[1], {})[f"{m[2]}/{m[3]}"] = path
    for head, paths in heads.items():
        middle = {int(p.split("/")[0].split(".")[1]) for p in paths if p.startswith("layers.")}
        last = len(middle) + 1
        for rel, path in paths.items():
            name, leaf = rel.split("/")
            index = {"proj_in": 0, "proj_out": last}.get(name)
            index = int(name.split(".")[1]) + 1 if index is None else index
            flat[f"{head}/layers/{index}/{leaf}"] = flat.pop(path)


def _convert(sd: Mapping[str, np.ndarray], table, caller: str) -> dict[str, np.ndarray]:
    out, unknown = {}, []
    for key, value in sd.items():
        if not key.startswith(tuple(f"{p}." for p in PARTS)):
            continue
        found = _lookup(key, table)
        if found is None:
            unknown.append(key)
            continue
        path, kind, leaf = found
        out[path] = _value(kind, leaf, np.asarray(value, np.float32), key)
    if unknown:
        raise ConversionError(
            f"{caller}: {len(unknown)} keys are no parameter of the prompt encoder or mask "
            f"decoder: {sorted(unknown)[:20]}"
        )
    _stack_points(out, caller)
    return out


def from_original(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """segment-anything (MedSAM, SegVol) state dict -> ``{radjax path: array}`` with
    ``prompt_encoder/`` and ``mask_decoder/`` prefixes (see the module docstring)."""
    return _convert(sd, _ORIGINAL, "sam_decoder.from_original")


def from_transformers(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers ``SamModel`` state dict -> ``{radjax path: array}`` (as ``from_original``)."""
    caller = "sam_decoder.from_transformers"
    tied, own = (
        "shared_image_embedding.positional_embedding",
        ("prompt_encoder.shared_embedding.positional_embedding"),
    )
    sd = dict(sd)
    if tied in sd and own not in sd:
        sd[own] = sd[tied]
    elif tied in sd and not np.array_equal(np.asarray(sd[tied]), np.asarray(sd[own])):
        raise ConversionError(f"{caller}: {tied} differs from {own}, but the model ties them")
    out = _convert(sd, _TRANSFORMERS, caller)
    _number_hf_heads(out)
    return out


def load_decoder(
    prompt_encoder: nnx.Module, mask_decoder: nnx.Module, flat: Mapping[str, np.ndarray]
) -> None:
    """Writes ``from_original`` / ``from_transformers`` output into the two modules (strict:
    every parameter and the Gaussian matrix covered, shapes equal).

    Raises:
      ConversionError: naming the radjax paths that are missing, unexpected or mismatched.
    """
    if GAUSSIAN not in flat:
        raise ConversionError(f"sam_decoder: the checkpoint has no Gaussian matrix ({GAUSSIAN})")
    parts = {part: {} for part in PARTS}
    for path, value in flat.items():
        part, _, rest = path.partition("/")
        if part not in parts:
            raise ConversionError(f"sam_decoder: {path} is in neither {PARTS}")
        parts[part][rest] = value
    for part, module in zip(PARTS, (prompt_encoder, mask_decoder)):
        try:
            assign(module, parts[part])
        except ConversionError as e:
            raise ConversionError(f"sam_decoder: {part}: {e}") from e
