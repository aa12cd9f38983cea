"""A run killed with SIGKILL and restarted with the same command ends exactly where an
uninterrupted run ends: same final loss and bit-identical parameters."""

import json
import os
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.e2e.launcher import run_launcher

STEPS = 24


def _overrides(data_root):
    return (
        f"--config.data.root={data_root}",
        f"--config.train.steps={STEPS}",
        "--config.checkpoint.every=6",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
    )


def _final(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    state = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(STEPS), "state")
    )
    return losses, state


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_data):
    rp3d_data = tiny_data("rp3d_diag")
    straight = tmp_path / "straight"
    run_launcher("experiments.train", straight, *_overrides(rp3d_data))

    killed = tmp_path / "killed"
    proc = run_launcher("experiments.train", killed, *_overrides(rp3d_data), check=False)
    deadline = time.time() + 300
    while not os.path.isdir(killed / "checkpoints" / "12") and time.time() < deadline:
        assert proc.poll() is None, open(f"{killed}.log").read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = [r["step"] for r in map(json.loads, open(killed / "metrics.jsonl"))]
    assert max(steps_done) < STEPS, "the run finished before it could be killed"

    run_launcher("experiments.train", killed, *_overrides(rp3d_data))
    losses_a, state_a = _final(straight)
    losses_b, state_b = _final(killed)
    assert losses_a == losses_b
    flat_a = dict(zip(*_flatten(state_a)))
    flat_b = dict(zip(*_flatten(state_b)))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _flatten(tree):
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p) for p, _ in leaves], [np.asarray(v) for _, v in leaves]
