"""JAX runtime settings the launchers apply, in one place."""

from __future__ import annotations

import jax


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory``: programs that took over a second
    to compile are stored there and loaded, not compiled, when the same program (same shapes,
    shardings and JAX version) is compiled again, in this process or a later one."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
