"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

One checkpoint holds the train state (parameters, optimizer state, BatchNorm statistics and
the NNX RNG streams, all inside one pytree), the grain iterator state and a small JSON
``meta`` dict. Orbax writes each step atomically (temporary directory, then rename), so a
killed save leaves no half-written step behind; a latest step that is nevertheless unreadable
(truncated or corrupted files) is skipped with a warning and the previous one restored.
"""

from __future__ import annotations

import logging
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores (state, data iterator, meta) by step under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3):
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, state: Any, data_iter: Any | None = None, meta: dict | None = None
    ) -> None:
        items = dict(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))),
        )
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(
        self, step: int, abstract_state: Any, data_iter: Any | None = None
    ) -> tuple[Any, dict]:
        """Restores one step into ``abstract_state``'s shapes/shardings (and ``data_iter``)."""
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state, dict(restored.meta)

    def restore_latest(
        self, abstract_state: Any, data_iter: Any | None = None
    ) -> tuple[int, Any, dict] | None:
        """Restores the newest readable step, falling back past unreadable ones.

        Returns ``(step, state, meta)``, or None when no step exists. Raises when steps
        exist but none can be read (the caller must not silently start from scratch).
        """
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, abstract_state, data_iter)
                return step, state, meta
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                errors.append(f"step {step}: {type(e).__name__}: {e}")
                log.warning(
                    "checkpoint step %d is unreadable (%s); trying the previous one", step, e
                )
        if steps:
            raise RuntimeError(
                f"no readable checkpoint in {self._manager.directory}:\n" + "\n".join(errors)
            )
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
