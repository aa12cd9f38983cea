"""transformers GPT-2 checkpoints -> ``radjax.models.gpt2.GPT2``.

Keys follow transformers (``wte``, ``wpe``, ``h.{i}.ln_1``, ``h.{i}.attn.c_attn``,
``h.{i}.attn.c_proj``, ``h.{i}.ln_2``, ``h.{i}.mlp.c_fc``, ``h.{i}.mlp.c_proj``, ``ln_f``),
under ``transformer.`` in ``GPT2LMHeadModel`` checkpoints and bare in ``GPT2Model`` ones
(the original OpenAI uploads). GPT-2's ``Conv1D`` stores its weight (in, out) already,
so kernels are not transposed. ``lm_head.weight`` is tied to ``wte``: it is dropped
when equal to it and refused otherwise. Old checkpoints' causal-mask buffers
(``attn.bias``, ``attn.masked_bias``) are dropped.
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
    drop_tied_copy,
    load_state_dict,
    map_keys,
    module_renamer,
)
from radjax.models.gpt2 import GPT2, GPT2Config

_PREFIX = "transformer."
_HEAD = "lm_head.weight"
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# transformers module regex -> radjax module path; leaves by kind (torch_io.HF_LEAVES).
_MODULES = (
    (r"wte", "wte", "embed"),
    (r"wpe", "wpe", "embed"),
    (r"h\.(\d+)\.(ln_1|ln_2)", r"h/\1/\2", "norm"),
    (r"h\.(\d+)\.(attn|mlp)\.(c_attn|c_proj|c_fc)", r"h/\1/\2/\3", "linear"),
    (r"ln_f", "ln_f", "norm"),
)


def from_hf_gpt2(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a transformers GPT-2 state dict onto radjax paths ('/'-joined), f32.

    Args:
      sd: ``GPT2LMHeadModel`` (``transformer.*`` + tied ``lm_head.weight``) or
        ``GPT2Model`` (bare) state dict.

    Raises:
      ConversionError: a key that is no GPT-2 parameter, or an untied LM head.
    """
    sd = dict(sd)
    drop_tied_copy(sd, _HEAD, (_PREFIX + "wte.weight", "wte.weight"), caller="from_hf_gpt2")
    if any(k.startswith(_PREFIX) for k in sd):
        stray = sorted(k for k in sd if not k.startswith(_PREFIX))
        if stray:
            raise ConversionError(f"from_hf_gpt2: keys outside {_PREFIX!r}: {stray[:20]}")
        sd = {k[len(_PREFIX) :]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not _BUFFER.fullmatch(k)}
    # Conv1D weights are stored (in, out) already: no transpose.
    return map_keys(sd, module_renamer(_MODULES), caller="from_hf_gpt2", transpose_kernels=False)


def load_gpt2(model_dir: str | os.PathLike, **overrides) -> GPT2:
    """Loads a local transformers GPT-2 directory (``config.json`` + weights) in eval mode.

    ``overrides`` go to ``GPT2Config.from_hf_config`` (``dtype``, ``position_table``).
    The tokenizer is transformers' own: ``AutoTokenizer.from_pretrained(model_dir)``.

    Raises:
      FileNotFoundError: no such directory or no ``config.json``.
      ConversionError: naming the directory, when the weights do not fit the config.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"GPT-2 directory {model_dir}: no such directory")
    cfg = GPT2Config.from_hf_config(model_dir, **overrides)
    model = GPT2(cfg, rngs=nnx.Rngs(0))
    try:
        assign(model, from_hf_gpt2(load_state_dict(model_dir)), strict=True)
    except ConversionError as e:
        raise ConversionError(f"GPT-2 directory {model_dir}: {e}") from None
    model.eval()
    return model
