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


CONFIGS = "configs"  # the top-level package of paper configs (shipped in the wheel)


def config_file(paper: str) -> str:
    """Path of ``configs/<paper>.py``, where radjax is installed or checked out.

    Raises:
      ValueError: no paper of that name has a config (naming those that do).
    """
    if paper not in config_names():
        raise ValueError(
            f"no config {CONFIGS}/{paper}.py; configs exist for {list(config_names())}"
        )
    return importlib.util.find_spec(f"{CONFIGS}.{paper}").origin


def config_names() -> tuple[str, ...]:
    """Every paper with a config module ``configs/<paper>.py``, sorted."""
    spec = importlib.util.find_spec(CONFIGS)
    if spec is None:
        raise ValueError(
            f"the {CONFIGS!r} package is not importable: install a radjax wheel (it ships "
            f"{CONFIGS}/) or run from a checkout"
        )
    found = {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}
    return tuple(sorted(found & set(names())))


def get_config(name: str, arg: str | None = None):
    """A paper's config by name: ``get_config("radfm", "tiny")`` or ``get_config("radfm:tiny")``
    (the same as ``--config configs/radfm.py:tiny``); an ``ml_collections.ConfigDict``."""
    paper, _, inline = name.partition(":")
    if inline and arg is not None:
        raise ValueError(f"config {name!r}: give the argument once (in the name or as arg)")
    config_file(paper)  # a clear error for an unknown name
    module = importlib.import_module(f"{CONFIGS}.{paper}")
    return module.get_config(arg if arg is not None else inline or None)
