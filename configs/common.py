"""Shared config helpers: big_vision-style argument parsing."""

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
