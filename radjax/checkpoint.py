"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

One checkpoint holds the train state (parameters, optimizer state, BatchNorm statistics and
the NNX RNG streams, all inside one pytree), the grain iterator state and a small JSON
``meta`` dict. Orbax writes each step atomically (temporary directory, then rename), so a
killed save leaves no half-written step behind.

Restoring tells two failures apart before touching anything:
  * a state that does not fit (another config): the saved tree's shapes, read from the
    checkpoint's metadata without reading arrays, differ from the restore target's ->
    ``CheckpointMismatchError`` naming the first differing array path and both shapes;
  * a step whose files are unreadable (truncated or corrupted): once an older step restores,
    each newer unreadable step is moved to ``<directory>_unreadable/<step>`` (kept for
    inspection, no longer listed) so the run can save that step again.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# top-level parts of the train state (radjax.train.step) whose mismatches are named first
_REPORT_ORDER = ("trainable", "frozen", "rest")


class CheckpointMismatchError(ValueError):
    """The saved state's array paths or shapes differ from the restore target's."""


def array_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``'/'``-joined leaf path (dict keys, attribute names, sequence indices) -> shape,
    for any pytree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
    return {
        "/".join(_key_name(k) for k in path): _stored_shape(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(leaf, "shape")
    }


def _stored_shape(leaf: Any) -> tuple[int, ...]:
    """The shape orbax stores for ``leaf``: a typed PRNG key array (the NNX RNG streams) is
    saved as its key data, with the implementation's trailing axis (e.g. (2,) for threefry)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    return tuple(leaf.shape)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def shape_mismatches(
    stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> list[str]:
    """One line per differing path: the train state's parameters, then its other variables,
    then the rest (optimizer state), each group in path order."""

    def order(path: str) -> tuple[int, str]:
        top = path.split("/", 1)[0]
        return (_REPORT_ORDER.index(top) if top in _REPORT_ORDER else len(_REPORT_ORDER), path)

    lines = []
    for path in sorted(expected.keys() | stored.keys(), key=order):
        got, want = stored.get(path, "absent"), expected.get(path, "absent")
        if got != want:
            lines.append(f"{path}: checkpoint {got}, this config {want}")
    return lines


def error_line(error: BaseException) -> str:
    """The innermost cause's type and first line (no TensorStore spec dumps)."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    text = str(error).split(" See full TensorStore details")[0].strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _mute_abandoned_reads() -> None:
    """Installs (once) a ``sys.unraisablehook`` filter dropping the reports of the array reads
    a failed restore abandons: orbax turns their GeneratorExit into an Exception carrying a
    TensorStore spec dump, printed whenever the GC reaches them, and their completions land
    on the restore's closed event loop. Other reports pass."""
    previous = sys.unraisablehook
    if getattr(previous, "mutes_abandoned_reads", False):
        return

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        abandoned_read = getattr(code, "co_name", None) == "_read_array_index_and_device_put"
        closed_loop = (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        )
        if not (abandoned_read or closed_loop):
            previous(unraisable)

    hook.mutes_abandoned_reads = True
    sys.unraisablehook = hook


class Checkpointer:
    """Saves and restores (state, data iterator, meta) by step under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = str(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=dict(
                state=ocp.StandardCheckpointHandler(),
                meta=ocp.JsonCheckpointHandler(),
                data=grain.checkpoint.CheckpointHandler(),
            ),
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

    def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """The saved state's array shapes by path, from its metadata (no array is read)."""
        shapes = array_shapes(self._manager.item_metadata(step).state)
        if not shapes:
            raise ValueError(f"{self.directory}/{step}/state holds no array metadata")
        return shapes

    def check_fits(self, abstract_state: Any) -> None:
        """Compares the newest step with readable metadata to ``abstract_state``.

        Raises:
          CheckpointMismatchError: naming the first differing path with both shapes.
        """
        expected = array_shapes(abstract_state)
        for step in reversed(self.steps()):
            try:
                stored = self.stored_shapes(step)
            except Exception:  # unreadable metadata: a corrupt step, judged by restore_latest
                continue
            wrong = shape_mismatches(stored, expected)
            if wrong:
                more = f" (and {len(wrong) - 1} more arrays)" if len(wrong) > 1 else ""
                raise CheckpointMismatchError(
                    f"checkpoint {self.directory}/{step} does not fit the state this config "
                    f"builds: {wrong[0]}{more}"
                )
            return

    def restore_latest(
        self, abstract_state: Any, data_iter: Any | None = None
    ) -> tuple[int, Any, dict] | None:
        """Restores the newest readable step, moving newer unreadable ones aside.

        Returns ``(step, state, meta)``, or None when no step exists. Raises
        ``CheckpointMismatchError`` (nothing moved) when the saved state does not fit, and
        RuntimeError (nothing moved) when steps exist but none can be read.
        """
        self.check_fits(abstract_state)
        steps, errors = self.steps(), []
        for step in reversed(steps):
            restored, error = self._try_restore(step, abstract_state, data_iter)
            if restored is None:
                errors.append(f"step {step} is unreadable ({self.directory}/{step}): {error}")
                log.warning("checkpoint %s", errors[-1])
                continue
            for bad in steps[steps.index(step) + 1 :]:
                self._move_aside(bad)
            return step, *restored
        if steps:
            raise RuntimeError(f"no readable checkpoint in {self.directory}:\n" + "\n".join(errors))
        return None

    def _try_restore(
        self, step: int, abstract_state: Any, data_iter: Any | None
    ) -> tuple[tuple[Any, dict] | None, str]:
        """``(restore(...), "")``, or ``(None, error_line)`` when the step cannot be read."""
        try:
            return self.restore(step, abstract_state, data_iter), ""
        except Exception as e:  # orbax/tensorstore raise many types for bad files
            error = error_line(e)
        _mute_abandoned_reads()
        gc.collect()  # reports the reads the failed restore abandoned, through that filter
        return None, error

    def _move_aside(self, step: int) -> None:
        """Moves step ``step`` to ``<directory>_unreadable/<step>[-<n>]`` (process 0)."""
        if jax.process_index() == 0:
            aside = f"{self.directory}_unreadable"
            os.makedirs(aside, exist_ok=True)
            target, n = os.path.join(aside, str(step)), 0
            while os.path.exists(target):
                n += 1
                target = os.path.join(aside, f"{step}-{n}")
            os.rename(os.path.join(self.directory, str(step)), target)
            log.warning("moved unreadable checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
        self._manager.reload()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
