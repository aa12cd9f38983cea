"""Shared config helpers: big_vision-style argument parsing, the default-off stage fields."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``"tiny,fusion=early"`` into a ConfigDict over ``defaults``.

    A bare word sets a boolean default to True. Values are cast to the default's type.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; known: {sorted(defaults)}")
        if not sep:
            if not isinstance(defaults[key], bool):
                raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
            out[key] = True
            continue
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return out


def add_stage_fields(c: ml_collections.ConfigDict) -> None:
    """Default-off ``model.lora`` and ``init_from`` (``radjax.train.stages``), so that e.g.
    ``--config.model.lora.rank=8 --config.init_from.workdir=<stage 1 workdir>`` work."""
    # LoRA on nnx.Linear module paths (rank 0 = off), e.g. targets='.*/(q_proj|v_proj)'
    c.model.lora = ml_collections.ConfigDict(
        dict(rank=0, alpha=16.0, dropout=0.0, targets="", freeze_base=True)
    )
    # A fresh run starts from an earlier stage's workdir (newest checkpoint) or step directory.
    c.init_from = ml_collections.ConfigDict(
        dict(workdir="", checkpoint="", include=".*", renames=(), strict=True)
    )
