"""Failure paths of a workdir through the real launchers: a corrupt newest checkpoint is moved
aside and the run finishes; a config that does not fit the checkpoint is named before the
workdir changes; a locked workdir and one without a checkpoint are refused at once."""

import glob
import os
import re
import shutil
import socket

import pytest

from radjax.train import workdir as workdir_lib
from tests.e2e.launcher import metrics_rows, run_launcher

STEPS, EVERY = 24, 6  # test_resume's run: its compiled train step comes from the XLA cache


def _overrides(data_root, *extra):
    return (
        f"--config.data.root={data_root}",
        f"--config.train.steps={STEPS}",
        f"--config.checkpoint.every={EVERY}",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        *extra,
    )


def _failing(module, workdir, *overrides) -> str:
    """Runs a launcher that must fail; returns its output."""
    log = f"{workdir}.log"
    proc = run_launcher(module, workdir, *overrides, check=False, log=log)
    assert proc.wait(timeout=300) != 0, open(log).read()[-3000:]
    return open(log).read()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """A finished width-8 run (checkpoints at steps 12, 18, 24) to copy from."""
    run = tmp_path_factory.mktemp("workdir_failures") / "base"
    run_launcher("experiments.train", run, *_overrides(tiny_data("rp3d_diag")))
    return run


def _copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_finishes(
    trained, tmp_path, tiny_data
):
    run = _copy(trained, tmp_path)
    files = glob.glob(
        str(run / "checkpoints" / str(STEPS) / "state" / "ocdbt.process_0" / "d" / "*")
    )
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(1000)
    # today: resumes from 18, then orbax's StepAlreadyExistsError when saving step 24 again
    result = run_launcher("experiments.train", run, *_overrides(tiny_data("rp3d_diag")))
    assert sorted(map(int, os.listdir(run / "checkpoints"))) == [12, 18, 24]
    assert os.listdir(run / "checkpoints_unreadable") == [str(STEPS)]
    assert [r["step"] for r in metrics_rows(run)] == list(range(1, STEPS + 1))
    warnings = [line for line in result.stderr.splitlines() if "unreadable" in line]
    assert warnings and f"step {STEPS} is unreadable" in warnings[0]
    assert str(run / "checkpoints" / str(STEPS)) in warnings[0]
    assert not any("TensorStore(" in line for line in warnings)
    # Known gap: orbax's abandoned reads of the failed restore may still print asyncio
    # "Task exception was never retrieved" / "Event loop is closed" reports after the warning,
    # depending on timing (checkpoint._mute_abandoned_reads filters only the GC's reports).


@pytest.mark.slow
def test_config_that_does_not_fit_is_named_before_the_workdir_changes(trained, tmp_path, tiny_data):
    run = _copy(trained, tmp_path)
    config_json = (run / "config.json").read_bytes()
    output = _failing(
        "experiments.train",
        run,
        *_overrides(tiny_data("rp3d_diag"), "--config.model.resnet.width=16"),
    )
    assert "does not fit the state this config builds" in output and "unreadable" not in output
    error = output[output.index("does not fit") :]
    named = re.search(r"trainable/\S+: checkpoint (\(.*?\)), this config (\(.*?\))", error)
    assert named and named[1] != named[2], error
    assert "model.resnet.width: stored 8, now 16" in error
    assert (run / "config.json").read_bytes() == config_json
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "metrics.jsonl"]
    assert sorted(map(int, os.listdir(run / "checkpoints"))) == [12, 18, 24]


@pytest.mark.slow
def test_locked_workdir_and_missing_checkpoint_are_refused(trained, tmp_path, tiny_data):
    data = f"--config.data.root={tiny_data('rp3d_diag')}"
    run = _copy(trained, tmp_path)
    with workdir_lib.WorkdirLock(str(run)):
        output = _failing("experiments.train", run, *_overrides(tiny_data("rp3d_diag")))
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in output
    assert not os.path.exists(run / workdir_lib.LOCK_FILE)

    empty = tmp_path / "empty"
    output = _failing("experiments.evaluate", empty, data)
    assert "no checkpoint in" in output and "--untrained" in output
    assert not os.path.exists(empty)  # nothing written (--untrained: tests/e2e/launcher.py)
