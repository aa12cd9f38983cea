"""Checkpoint save/restore, retention, fallback past a corrupt latest step (moved aside) and
a state that does not fit (named, nothing moved)."""

import glob
import os

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.checkpoint import Checkpointer, CheckpointMismatchError


def _state(v):
    return {"w": jnp.full((4, 3), v, jnp.float32), "step": jnp.asarray(v, jnp.int32)}


def _big_state(v):
    """Incompressible arrays large enough to live in the OCDBT data files."""
    w = np.random.default_rng(v).normal(size=(64, 64)).astype(np.float32)
    return {"w": jnp.asarray(w), "step": jnp.asarray(v, jnp.int32)}


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
    assert ckpt.steps() == [5] and not os.path.exists(f"{tmp_path / 'a'}_unreadable")
    ckpt.close()


def _truncate_largest_array_file(step_dir):
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(100)


def test_unreadable_newest_step_is_moved_aside_and_can_be_saved_again(tmp_path, caplog):
    directory = str(tmp_path / "ckpt")
    ckpt = Checkpointer(directory, keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, _big_state(step))
    _truncate_largest_array_file(os.path.join(directory, "3"))
    step, state, _ = ckpt.restore_latest(_big_state(0))
    assert step == 2
    np.testing.assert_array_equal(state["w"], _big_state(2)["w"])
    assert ckpt.steps() == [1, 2]
    assert os.listdir(f"{directory}_unreadable") == ["3"]
    assert os.path.isdir(os.path.join(f"{directory}_unreadable", "3", "state"))
    ckpt.save(3, _big_state(3))  # the step can be written again
    assert ckpt.steps() == [1, 2, 3]
    ckpt.close()
    warning = next(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert "step 3" in warning and os.path.join(directory, "3") in warning
    assert "\n" not in warning and "TensorStore(" not in warning and "pybind" not in warning


def _params_and_opt(cols, **extra):
    w = jnp.zeros((4, cols))
    return {"trainable": {"w": w}, "opt": {"w": w}, **extra}


def test_state_that_does_not_fit_names_path_and_shapes_and_moves_nothing(tmp_path):
    directory = str(tmp_path / "ckpt")
    ckpt = Checkpointer(directory)
    for step in (1, 2):
        ckpt.save(step, _params_and_opt(3))
    with pytest.raises(CheckpointMismatchError) as err:
        ckpt.restore_latest(_params_and_opt(5))
    # the parameter is named first, the optimizer state's copy only counted
    assert "trainable/w: checkpoint (4, 3), this config (4, 5) (and 1 more arrays)" in str(
        err.value
    )
    assert "unreadable" not in str(err.value)
    with pytest.raises(CheckpointMismatchError, match=r"b: checkpoint absent, this config \(\)"):
        ckpt.restore_latest(_params_and_opt(3, b=jnp.zeros(())))
    assert ckpt.steps() == [1, 2] and not os.path.exists(f"{directory}_unreadable")
    ckpt.close()


def test_state_with_prng_keys_fits_its_own_checkpoint(tmp_path):
    """Typed PRNG keys (NNX RNG streams, e.g. RadFM's dropout) are stored as key data (2,):
    the fit check compares them as such, so a run holding them resumes."""
    import jax

    state = dict(params=jnp.ones((3,)), rng=dict(key=jax.random.key(0), count=jnp.zeros(())))
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(1, state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    step, restored, _ = ckpt.restore_latest(abstract)
    assert step == 1
    assert jax.random.key_data(restored["rng"]["key"]).tolist() == (
        jax.random.key_data(jax.random.key(0)).tolist()
    )
    ckpt.close()
