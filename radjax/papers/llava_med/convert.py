"""LLaVA-Med checkpoints -> radjax ``LlavaMed`` parameter paths.

Key names of the originals (read in their model code):

* v1.0 ``LlavaLlamaForCausalLM`` (llava/model/llava.py): the LLaMA keys ``model.embed_tokens.weight``,
  ``model.layers.<i>.*``, ``model.norm.weight``, ``lm_head.weight`` (untied), and the
  projector ``model.mm_projector.{weight,bias}`` (``nn.Linear(1024, hidden)``). The CLIP
  tower is kept in a Python list (an FSDP hack), so it is in no state dict: its weights come
  from the CLIP checkpoint (``mm_vision_tower``, ``openai/clip-vit-large-patch14``). The
  released v1.0 weights are deltas on LLaMA-7B (``llava/model/apply_delta.py``: every
  tensor is ``base + delta``, the 32004-row embedding / head on the base's 32000 rows,
  the projector as is). Stage 1 saves ``mm_projector.bin`` (llava_trainer.py:35-47): the
  projector and the whole ``model.embed_tokens.weight``.
* v1.5 ``LlavaMistralForCausalLM`` (llava/model/language_model/llava_mistral.py + llava_arch.py):
  the Mistral keys as above, ``model.mm_projector.{0,2}.{weight,bias}`` (``mlp2x_gelu`` =
  Sequential(Linear, GELU, Linear)), and, when a checkpoint holds it, the tower under
  ``model.vision_tower.vision_tower.`` (``CLIPVisionTower.vision_tower`` = the
  ``CLIPVisionModel``; its own keys start ``vision_model.``).

radjax paths: ``vision/...`` (``radjax.convert.clip.from_clip_vision``), ``projector/kernel`` /
``projector/bias`` (linear) or ``projector/fc{1,2}/{kernel,bias}`` (mlp2x_gelu),
``lang_model/...`` (``radjax.convert.llama.from_hf_llama``) and ``image_markers`` (2, D) =
the ``<im_start>`` / ``<im_end>`` rows of ``model.embed_tokens.weight`` (see ``model.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from radjax.convert.clip import from_clip_vision
from radjax.convert.llama import from_hf_llama
from radjax.convert.torch_io import ConversionError, linear_kernel, load_state_dict
from radjax.models.llama import DecoderConfig

TOWER_PREFIX = "model.vision_tower.vision_tower."  # v1.5 CLIPVisionTower wrapper
CLIP_PREFIX = "vision_model."
_PROJECTOR = "model.mm_projector."
# original projector key (after _PROJECTOR) -> radjax path under projector/
PROJECTOR_KEYS = {
    "linear": {"weight": "kernel", "bias": "bias"},
    "mlp2x_gelu": {
        "0.weight": "fc1/kernel",
        "0.bias": "fc1/bias",
        "2.weight": "fc2/kernel",
        "2.bias": "fc2/bias",
    },
}
_LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


def projector_params(sd: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """``model.mm_projector.*`` entries -> ``projector/...`` (Linear weights transposed).

    Raises ConversionError for a key the projector kind does not have."""
    if kind not in PROJECTOR_KEYS:
        raise ConversionError(f"unknown projector {kind!r}; known: {sorted(PROJECTOR_KEYS)}")
    out = {}
    for key, value in sd.items():
        name = key.removeprefix(_PROJECTOR)
        if name not in PROJECTOR_KEYS[kind]:
            raise ConversionError(
                f"{key}: not a key of the {kind} projector "
                f"({sorted(_PROJECTOR + k for k in PROJECTOR_KEYS[kind])})"
            )
        path = PROJECTOR_KEYS[kind][name]
        value = np.asarray(value, np.float32)
        out[f"projector/{path}"] = linear_kernel(value) if path.endswith("kernel") else value
    return out


def clip_params(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A transformers CLIP state dict -> ``vision/...``: a whole ``CLIPModel`` (the hub's
    ``openai/clip-vit-large-patch14``; only its ``vision_model.*`` keys are read, as
    ``CLIPVisionModel.from_pretrained`` does), a ``CLIPVisionModel`` of transformers 4
    (``vision_model.*``) or 5 (no prefix)."""
    if any(k.startswith(CLIP_PREFIX) for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    return {f"vision/{k}": v for k, v in from_clip_vision(sd).items()}


def from_llava_state_dict(
    sd: Mapping[str, np.ndarray],
    decoder_cfg: DecoderConfig,
    *,
    projector: str,
    start_id: int | None = None,
    end_id: int | None = None,
) -> dict[str, np.ndarray]:
    """A LLaVA-Med state dict (whole, or part of one such as stage 1's ``mm_projector.bin``)
    -> ``{radjax path: f32 array}`` for what it holds.

    Args:
      decoder_cfg: the LLM's config (scanned layers are stacked).
      projector: ``'linear'`` (v1.0) or ``'mlp2x_gelu'`` (v1.5).
      start_id, end_id: v1.0's ``<im_start>`` / ``<im_end>`` ids: their embedding rows also
        become ``image_markers``.
    Raises:
      ConversionError: keys that belong to no part (listed), or a bad projector key.
    """
    parts: dict[str, dict] = {"llm": {}, "projector": {}, "tower": {}}
    unknown = []
    for key, value in sd.items():
        if key.startswith(_PROJECTOR):
            parts["projector"][key] = value
        elif key.startswith(TOWER_PREFIX):
            parts["tower"][key.removeprefix(TOWER_PREFIX)] = value
        elif key.startswith(_LLM_PREFIXES) or key.endswith("rotary_emb.inv_freq"):
            parts["llm"][key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"from_llava_state_dict: {len(unknown)} keys belong to no part of LLaVA-Med: "
            f"{sorted(unknown)[:10]}"
        )
    out = projector_params(parts["projector"], projector)
    if parts["tower"]:
        out.update(clip_params(parts["tower"]))
    if parts["llm"]:
        llm = from_hf_llama(parts["llm"], decoder_cfg)
        out.update({f"lang_model/{k}": v for k, v in llm.items()})
    table = out.get("lang_model/embed_tokens")
    if start_id is not None and table is not None:
        out["image_markers"] = np.stack([table[start_id], table[end_id]])
    return out


def apply_delta(
    base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """v1.0's ``apply_delta``: every delta tensor plus the base's; the projector (absent from
    the base) as is; the grown embedding table and head get the base on its rows.

    Raises ConversionError where the original asserts (another missing key, another
    shape mismatch)."""
    out = {}
    for key, value in delta.items():
        value = np.asarray(value, np.float32)
        if key not in base:
            if not key.startswith(_PROJECTOR):
                raise ConversionError(f"apply_delta: {key} is not in the base model")
            out[key] = value
            continue
        b = np.asarray(base[key], np.float32)
        if b.shape == value.shape:
            out[key] = value + b
        elif key in ("model.embed_tokens.weight", "lm_head.weight") and b.ndim == 2:
            if b.shape[0] > value.shape[0] or b.shape[1] != value.shape[1]:
                raise ConversionError(f"apply_delta: {key} {value.shape} vs base {b.shape}")
            grown = value.copy()
            grown[: b.shape[0]] += b
            out[key] = grown
        else:
            raise ConversionError(
                f"apply_delta: {key} dimension mismatch {value.shape} vs {b.shape}"
            )
    return out


def grow_vocab(
    table: np.ndarray,
    size: int,
    *,
    axis: int,
    mean_init: Sequence[tuple[Sequence[int], int]] = (),
    random_init: Sequence[int] = (),
    std: float = 0.02,
    seed: int = 0,
) -> np.ndarray:
    """A vocab-indexed table grown to ``size`` along ``axis`` as v1.0's tokenizer set-up
    grows it (``conversation.V10Vocab``): rows of each ``mean_init`` group ``(rows, n)`` set to
    the mean of rows ``[:n]`` (in order: later groups see the earlier new rows, as the
    original's successive resizes), ``random_init`` rows N(0, ``std``) (HF's resize init).

    Raises ConversionError when a new row has no rule or the table is larger than ``size``."""
    table = np.moveaxis(np.asarray(table, np.float32), axis, 0)
    old = table.shape[0]
    if old > size:
        raise ConversionError(f"grow_vocab: the table has {old} rows, more than {size}")
    out = np.zeros((size, *table.shape[1:]), np.float32)
    out[:old] = table
    ruled = set()
    rng = np.random.default_rng(seed)
    pending = sorted([(min(rows), "mean", rows, n) for rows, n in mean_init])
    pending += [(row, "random", (row,), 0) for row in random_init]
    for _, kind, rows, n in sorted(pending, key=lambda p: p[0]):
        rows = [r for r in rows if r >= old]
        if not rows:
            continue
        if kind == "mean":
            out[rows] = out[:n].mean(axis=0)
        else:
            out[rows] = rng.normal(0.0, std, (len(rows), *table.shape[1:]))
        ruled.update(rows)
    missing = sorted(set(range(old, size)) - ruled)
    if missing:
        raise ConversionError(
            f"grow_vocab: rows {missing[:5]} are new but the tokenizer set-up gives no rule "
            "for them (is model.llm.vocab_size the tokenizer's length?)"
        )
    return np.moveaxis(out, 0, axis)


def _llm_from_dir(config: ml_collections.ConfigDict, decoder_cfg: DecoderConfig) -> dict:
    """``model.llm_dir`` (a HF LLaMA / Mistral) with its vocabulary grown to the model's."""
    from radjax.papers.llava_med import data as fmt

    values = from_hf_llama(load_state_dict(config.model.llm_dir), decoder_cfg)
    _, vocab = fmt.text_tools(config.data)
    rules = dict(
        mean_init=vocab.mean_init if vocab else (),
        random_init=vocab.random_init if vocab else (),
        std=decoder_cfg.init_std,
        seed=int(config.get("seed", 0)),
    )
    size = decoder_cfg.vocab_size
    for path, axis in (("embed_tokens", 0), ("lm_head/kernel", 1)):
        if path in values and values[path].shape[axis] != size:
            values[path] = grow_vocab(values[path], size, axis=axis, **rules)
    return {f"lang_model/{k}": v for k, v in values.items()}


def pretrained(
    config: ml_collections.ConfigDict,
    decoder_cfg: DecoderConfig,
    start: int | None,
    end: int | None,
) -> dict[str, np.ndarray]:
    """What ``model.pretrained_params`` returns (``decoder_cfg`` the model's decoder, ``start``
    / ``end`` the v1.0 marker ids or None): ``model.clip_dir`` -> ``vision/``;
    ``model.llm_dir`` -> ``lang_model/`` (vocabulary grown; v1.0 markers from the grown start
    / end rows); ``model.checkpoint`` (with ``checkpoint_is_delta``: added onto
    ``llm_dir``'s weights first) -> whatever it holds, replacing the above. {} if none."""
    m = config.model
    values: dict[str, np.ndarray] = {}
    if m.get("clip_dir", ""):
        values.update(clip_params(load_state_dict(m.clip_dir)))
    if m.get("checkpoint_is_delta", False) and not m.get("llm_dir", ""):
        raise ValueError("model.checkpoint_is_delta needs model.llm_dir (the delta's base)")
    if m.get("llm_dir", "") and not m.get("checkpoint_is_delta", False):
        values.update(_llm_from_dir(config, decoder_cfg))
        table = values.get("lang_model/embed_tokens")
        if start is not None and table is not None:
            values["image_markers"] = np.stack([table[start], table[end]])
    if m.get("checkpoint", ""):
        sd = load_state_dict(m.checkpoint)
        if m.get("checkpoint_is_delta", False):
            sd = apply_delta(load_state_dict(m.llm_dir), sd)
        values.update(
            from_llava_state_dict(
                sd, decoder_cfg, projector=str(m.projector), start_id=start, end_id=end
            )
        )
    return values
