"""Finds papers by name: ``radjax.papers.<paper>.<part>``, imported only when asked for.

Shared code (the trainer, launchers, demo, benchmarks, end-to-end tests) reaches a paper only
through here, so it never imports one statically. See ``radjax/papers/__init__.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from types import ModuleType

PACKAGE = "radjax.papers"


def names() -> tuple[str, ...]:
    """Every paper package, sorted."""
    spec = importlib.util.find_spec(PACKAGE)
    return tuple(
        sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations) if m.ispkg)
    )


def module(paper: str, part: str) -> ModuleType:
    """``radjax.papers.<paper>.<part>``; a clear error for an unknown paper or a part the
    paper does not have (yet: a package may hold only its evaluation protocol)."""
    if paper not in names():
        raise ValueError(
            f"unknown paper {paper!r} (config field 'paper'); radjax.papers has {list(names())}"
        )
    name = f"{PACKAGE}.{paper}.{part}"
    if importlib.util.find_spec(name) is None:
        raise ValueError(f"paper {paper!r} has no module {part!r} ({name})")
    return importlib.import_module(name)


def optional_module(paper: str, part: str) -> ModuleType | None:
    """``module(paper, part)``, or None when the paper has no such module."""
    if paper not in names() or importlib.util.find_spec(f"{PACKAGE}.{paper}.{part}") is None:
        return None
    return importlib.import_module(f"{PACKAGE}.{paper}.{part}")
