"""Shared config helpers: big_vision-style argument parsing, the default-off stage fields, the
tiny LLaMA of the vision-language papers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _items(arg: str | None) -> Iterator[tuple[str, bool, str]]:
    """``"tiny,fusion=early"`` -> ("tiny", False, ""), ("fusion", True, "early")."""
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        yield key.strip(), bool(sep), value.strip()


def given(arg: str | None) -> frozenset[str]:
    """The keys ``arg`` names (to let an explicit argument beat a variant's own default)."""
    return frozenset(key for key, _, _ in _items(arg))


def _cast(key: str, value: str, default):
    kind = type(default)
    if kind is bool:
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(
                f"config arg {key}={value!r}: not a boolean ({'/'.join(_TRUE + _FALSE)})"
            )
        return value.lower() in _TRUE
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"config arg {key}={value!r}: not a {kind.__name__}") from None


def parse_arg(
    arg: str | None, *, choices: Mapping[str, Sequence] | None = None, **defaults
) -> ml_collections.ConfigDict:
    """Parses ``"tiny,fusion=early"`` into a ConfigDict over ``defaults``.

    A bare word sets a boolean default to True. Values are cast to the default's type;
    ``choices`` maps a key to its allowed values (e.g. ``fusion=("late", "early")``).

    Raises:
      ValueError: an unknown key, a value that does not cast, or one outside its choices
        (the message lists the allowed values).
    """
    choices = dict(choices or {})
    out = ml_collections.ConfigDict(defaults)
    for key, has_value, value in _items(arg):
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; known: {sorted(defaults)}")
        if not has_value:
            if not isinstance(defaults[key], bool):
                raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
            out[key] = True
            continue
        out[key] = _cast(key, value, defaults[key])
    for key, allowed in choices.items():
        if out[key] not in allowed:
            raise ValueError(
                f"config arg {key}={out[key]!r} not allowed; choose one of "
                + ", ".join(map(str, allowed))
            )
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


def tiny_llama() -> ml_collections.ConfigDict:
    """The tiny LLaMA every vision-language paper's ``tiny`` trains from scratch on the phantom
    tokenizer: width 128, 2 layers, 4 heads, MLP 256; ``vocab_size`` 0 until the data format's
    ``complete_config`` sets the tokenizer's length."""
    return ml_collections.ConfigDict(
        dict(
            vocab_size=0,
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            intermediate_size=256,
            rms_norm_eps=1e-6,
            max_position_embeddings=512,
            model_type="llama",
            dtype="float32",
            remat=False,
            scan_layers=False,
            init_std=0.02,
        )
    )
