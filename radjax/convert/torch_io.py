"""Reading PyTorch / safetensors checkpoints and writing them into NNX modules.

Every converter in ``radjax.convert`` is ``load_state_dict`` -> a per-model key and
layout mapping -> ``assign``. Nothing here executes code from a weight file:
``.bin``/``.pth`` go through ``torch.load(weights_only=True)``.

Layouts: PyTorch stores linear weights as (out, in) and conv weights as
(out, in, *kernel); radjax (channels-last) uses (in, out) and (*kernel, in, out).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import load_file as _load_safetensors_file

_TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# safetensors dtype names, for files safetensors.numpy cannot read (bf16, fp8).
_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}
_MAX_LISTED = 20


class ConversionError(Exception):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


# ----------------------------------------------------------------------------- reading


def load_state_dict(
    path: str | os.PathLike, *, strip_prefix: str | None = "module."
) -> dict[str, np.ndarray]:
    """Reads a checkpoint into a flat ``{torch key: np.ndarray}`` dict.

    Args:
      path: a ``.safetensors`` file, a ``.bin/.pth/.pt/.ckpt`` torch file, or a
        directory holding a HF checkpoint (``model.safetensors``/``pytorch_model.bin``,
        or shards listed by ``*.index.json``), whose shards are merged.
      strip_prefix: removed from the start of every key that has it (the
        ``module.`` that DataParallel/DDP adds); ``None`` keeps keys as stored.

    Torch files may wrap the tensors (``{'state_dict': ..., 'epoch': ...}``); the
    ``state_dict``/``model_state_dict``/``model``/``module`` entries are unwrapped.
    Arrays keep their stored dtype (bf16 comes back as ``ml_dtypes.bfloat16``).

    Raises:
      ConversionError: naming the file, when it is missing, unreadable, not a
        tensor dict, or a shard set is inconsistent.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        sd = _load_dir(path)
    elif not os.path.isfile(path):
        raise ConversionError(f"{path}: checkpoint file not found")
    elif path.endswith(".safetensors"):
        sd = _load_safetensors(path)
    elif path.endswith(_TORCH_SUFFIXES):
        sd = _load_torch(path)
    else:
        raise ConversionError(
            f"{path}: unknown checkpoint type; expected .safetensors, "
            f"{', '.join(_TORCH_SUFFIXES)} or a HF checkpoint directory"
        )
    if strip_prefix:
        sd = {k.removeprefix(strip_prefix): v for k, v in sd.items()}
    return sd


def _load_dir(path: str) -> dict[str, np.ndarray]:
    """Merges the shards a HF index names, or reads the directory's single weight file."""
    for index_name in _INDEX_FILES:
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            return _load_sharded(index)
    for name in _SINGLE_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return load_state_dict(os.path.join(path, name), strip_prefix=None)
    raise ConversionError(f"{path}: directory has none of {_INDEX_FILES + _SINGLE_FILES}")


def _load_sharded(index: str) -> dict[str, np.ndarray]:
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise ConversionError(f"{index}: not a HF index file with a 'weight_map': {e}") from e
    merged: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(os.path.dirname(index), shard)
        part = load_state_dict(shard_path, strip_prefix=None)
        dup = sorted(set(part) & set(merged))
        if dup:
            raise ConversionError(f"{shard_path}: keys also in another shard: {dup[:_MAX_LISTED]}")
        merged.update(part)
    absent = sorted(set(weight_map) - set(merged))
    if absent:
        raise ConversionError(
            f"{index}: {len(absent)} indexed keys are in no shard: {absent[:_MAX_LISTED]}"
        )
    return merged


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return _load_safetensors_file(path)
    except TypeError:  # a dtype numpy cannot name (bf16, fp8)
        return _load_safetensors_raw(path)
    except Exception as e:  # safetensors raises its own error types
        raise ConversionError(f"{path}: cannot read safetensors file: {e}") from e


def _load_safetensors_raw(path: str) -> dict[str, np.ndarray]:
    """Reads a safetensors file by its documented layout (u64 header size, JSON header,
    little-endian data), memory-mapped."""
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
        out = {}
        for key, info in header.items():
            start, end = info["data_offsets"]
            dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
            out[key] = data[start:end].view(dtype).reshape(info["shape"])
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: cannot read safetensors file: {e}") from e


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path}: reading a PyTorch file needs torch (pip install torch), "
            "or convert the file to .safetensors"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...
        raise ConversionError(f"{path}: cannot load with torch.load(weights_only=True): {e}") from e
    sd = _unwrap(obj, path)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:_MAX_LISTED]}")
    # dtypes numpy has no name for: reinterpret the bits as ml_dtypes
    bits = {
        torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
        torch.float8_e4m3fn: (torch.int8, ml_dtypes.float8_e4m3fn),
        torch.float8_e5m2: (torch.int8, ml_dtypes.float8_e5m2),
    }

    def to_numpy(t):
        t = t.detach().cpu()
        if t.dtype in bits:
            as_int, np_dtype = bits[t.dtype]
            return t.view(as_int).numpy().view(np_dtype)
        return t.numpy()

    return {k: to_numpy(v) for k, v in sd.items()}


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    """Descends through ``{'state_dict': {...}, ...}``-style wrappers to the tensor dict."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")


# ----------------------------------------------------------------------------- layouts


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> radjax kernel (in, out)."""
    if w.ndim != 2:
        raise ConversionError(f"linear weight must be 2-D (out, in), got shape {w.shape}")
    return np.transpose(w)


def conv_kernel(w: np.ndarray, *, depth_last: bool = False) -> np.ndarray:
    """torch Conv{1,2,3}d weight (O, I, *k) -> radjax kernel (*k, I, O).

    Args:
      w: (O, I, k1[, k2[, k3]]).
      depth_last: the torch model takes volumes as (B, C, H, W, D) (MONAI/RadFM/
        MedicalNet-in-RP3D convention), so ``w`` is (O, I, kH, kW, kD); the result is
        reordered to radjax's (kD, kH, kW, I, O).
    """
    if w.ndim not in (3, 4, 5):
        raise ConversionError(
            f"conv weight must be (O, I, *kernel) with 1-3 spatial dims, got shape {w.shape}"
        )
    if depth_last:
        if w.ndim != 5:
            raise ConversionError(f"depth_last needs a 3D conv weight, got shape {w.shape}")
        w = np.moveaxis(w, -1, 2)
    spatial = tuple(range(2, w.ndim))
    return np.transpose(w, spatial + (1, 0))


# ----------------------------------------------------------------------------- assigning


# ---- key mapping shared by the transformers converters ----

# (kind, torch leaf) -> radjax leaf, for module tables of (regex, radjax path, kind) rows.
HF_LEAVES = {
    ("embed", "weight"): "embedding",
    ("linear", "weight"): "kernel",
    ("linear", "bias"): "bias",
    ("norm", "weight"): "scale",
    ("norm", "gamma"): "scale",
    ("norm", "bias"): "bias",
    ("norm", "beta"): "bias",
}


def module_renamer(modules: Sequence[tuple[str, str, str]]) -> Callable[[str], str | None]:
    """A ``rename`` for ``map_keys`` from ``(torch module regex, radjax path, kind)`` rows;
    the path may use the regex groups, the leaf comes from ``HF_LEAVES``."""

    def rename(key: str) -> str | None:
        module, _, leaf = key.rpartition(".")
        for pattern, target, kind in modules:
            match = re.fullmatch(pattern, module)
            if match and (kind, leaf) in HF_LEAVES:
                return f"{match.expand(target)}/{HF_LEAVES[kind, leaf]}"
        return None

    return rename


def map_keys(
    sd: Mapping[str, Any],
    rename: Callable[[str], str | None],
    *,
    caller: str,
    transpose_kernels: bool = True,
) -> dict[str, np.ndarray]:
    """``{torch key: array}`` -> ``{'/'-joined radjax path: f32 array}``.

    ``rename`` gives the radjax path of a key, or None for a key that is no parameter of the
    model (all of those are listed in one ConversionError). With ``transpose_kernels``,
    ``.../kernel`` values are torch Linear weights (out, in) and become (in, out).
    """
    out, unknown = {}, []
    for key, value in sd.items():
        path = rename(key)
        if path is None:
            unknown.append(key)
            continue
        value = np.asarray(value, np.float32)
        out[path] = (
            linear_kernel(value) if transpose_kernels and path.endswith("/kernel") else value
        )
    if unknown:
        raise ConversionError(
            f"{caller}: {len(unknown)} keys are no parameter of the model: "
            f"{sorted(unknown)[:_MAX_LISTED]}"
        )
    return out


def stack_layers(
    flat: Mapping[str, np.ndarray], prefix: str, num_layers: int, *, caller: str
) -> dict[str, np.ndarray]:
    """``{prefix/<i>/rest: array}`` for i < num_layers -> ``{prefix/rest: stacked array}``
    with the layer index as a new leading axis: checkpoint values for a scanned layer
    stack (e.g. ``DecoderConfig.scan_layers``). Other paths pass through.

    Raises:
      ConversionError: a layer lacks a parameter another layer has, or an index is out of
        range.
    """
    pattern = re.compile(rf"{re.escape(prefix)}/(\d+)/(.+)")
    out, per_rest = {}, {}
    for path, value in flat.items():
        if m := pattern.fullmatch(path):
            per_rest.setdefault(m[2], {})[int(m[1])] = value
        else:
            out[path] = value
    for rest, layers in sorted(per_rest.items()):
        if sorted(layers) != list(range(num_layers)):
            missing = sorted(set(range(num_layers)) - set(layers))
            extra = sorted(set(layers) - set(range(num_layers)))
            raise ConversionError(
                f"{caller}: {prefix}/<i>/{rest}: layers {missing} missing, "
                f"{extra} beyond the {num_layers} layers"
            )
        out[f"{prefix}/{rest}"] = np.stack([layers[i] for i in range(num_layers)])
    return out


def drop_tied_copy(
    sd: dict[str, Any], head_key: str, table_keys: Sequence[str], *, caller: str
) -> None:
    """Removes ``head_key`` when it repeats the embedding table (torch state dicts store tied
    tensors twice); raises when it differs, since radjax then ties them."""
    if head_key not in sd:
        return
    table = next((sd[k] for k in table_keys if k in sd), None)
    head = sd[head_key]
    if table is None or np.shape(table) != np.shape(head) or not np.array_equal(table, head):
        raise ConversionError(
            f"{caller}: {head_key} differs from the embedding table "
            f"({' / '.join(table_keys)}) but the model ties them"
        )
    del sd[head_key]


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    return {
        "/".join(map(str, path)): node
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Variable)
    }


def assign(model: nnx.Module, values: Mapping[str, np.ndarray], *, strict: bool = True) -> None:
    """Writes arrays into ``model``'s variables in place.

    Args:
      model: the NNX module (concrete, or abstract from ``nnx.eval_shape``).
      values: ``{'/'-joined NNX path: array}``, e.g. ``'layer1/0/conv1/kernel'``,
        already in radjax layout. Values are cast to the variable's dtype and keep
        the variable's sharding when it has one.
      strict: also require every ``nnx.Param`` and ``nnx.BatchStat`` to be covered.

    Raises:
      ConversionError: listing unexpected keys, missing keys (strict) and shape
        mismatches, with shapes; nothing is written then.
    """
    variables = _variables(model)
    model_shape = {k: tuple(var.get_value().shape) for k, var in variables.items()}
    unexpected = [f"{k} {np.shape(v)}" for k, v in sorted(values.items()) if k not in variables]
    mismatched = [
        f"{k}: checkpoint {np.shape(v)} != model {model_shape[k]}"
        for k, v in sorted(values.items())
        if k in variables and np.shape(v) != model_shape[k]
    ]
    missing = [
        f"{k} {model_shape[k]}"
        for k, var in sorted(variables.items())
        if strict and k not in values and isinstance(var, (nnx.Param, nnx.BatchStat))
    ]
    if unexpected or mismatched or missing:
        raise ConversionError(
            "checkpoint does not match the model:"
            + _section("missing", missing)
            + _section("unexpected", unexpected)
            + _section("shape mismatch", mismatched)
        )
    for key, value in values.items():
        var = variables[key]
        old = var.get_value()
        new = np.asarray(value).astype(old.dtype, copy=False)
        var.set_value(
            jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else jnp.asarray(new)
        )


def _section(title: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:_MAX_LISTED]) + more
