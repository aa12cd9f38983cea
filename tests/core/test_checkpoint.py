"""Checkpoint save/restore, retention and fallback past a corrupt latest step."""

import glob
import os

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.checkpoint import Checkpointer


def _state(v):
    return {"w": jnp.full((4, 3), v, jnp.float32), "step": jnp.asarray(v, jnp.int32)}


def _iterator():
    return iter(grain.MapDataset.range(100).seed(1).shuffle().to_iter_dataset())


def test_roundtrip_with_iterator_state_and_retention(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    it = _iterator()
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it, meta={"skipped_records": step})
    expected_next = next(it)
    assert ckpt.steps() == [2, 3]
    fresh = _iterator()
    step, state, meta = ckpt.restore_latest(_state(0), fresh)
    assert step == 3 and meta["skipped_records"] == 3
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 3.0))
    assert next(fresh) == expected_next
    ckpt.close()


def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path), keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(step))
    for f in glob.glob(os.path.join(tmp_path, "2", "state", "**", "*"), recursive=True):
        if os.path.isfile(f):
            with open(f, "r+b") as fh:
                fh.truncate(max(os.path.getsize(f) // 3, 0))
    step, state, _ = ckpt.restore_latest(_state(0))
    assert step == 1
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 1.0))
    assert "unreadable" in caplog.text
    ckpt.close()


def test_no_checkpoint_returns_none_and_all_unreadable_raises(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "a"))
    assert ckpt.restore_latest(_state(0)) is None
    ckpt.save(5, _state(5))
    for f in glob.glob(os.path.join(tmp_path, "a", "5", "state", "**", "*"), recursive=True):
        if os.path.isfile(f):
            os.remove(f)
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        ckpt.restore_latest(_state(0))
    ckpt.close()
