"""Workdir guards: the exclusive lock (refusal naming the holder, takeover of a killed run's
lock, release), the stored-config comparison and one metrics.jsonl row per step."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import ml_collections
import pytest

from radjax.train import workdir
from radjax.train.loop import MetricsLog

_HOLD = """
import sys, time
from radjax.train.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_holder_is_refused_naming_host_and_pid_then_lock_is_released(tmp_path):
    lock = workdir.WorkdirLock(str(tmp_path))
    lock.acquire()
    with pytest.raises(workdir.WorkdirLockedError) as err:
        workdir.WorkdirLock(str(tmp_path)).acquire()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(err.value)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(workdir.WorkdirLockedError):  # the context manager refuses too
        with workdir.locked(str(tmp_path)):
            pass
    lock.release()
    assert not os.path.exists(tmp_path / workdir.LOCK_FILE)
    with workdir.locked(str(tmp_path)):
        assert os.path.exists(tmp_path / workdir.LOCK_FILE)
    assert not os.path.exists(tmp_path / workdir.LOCK_FILE)


def test_lock_of_a_killed_process_is_refused_while_alive_then_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir.WorkdirLockedError, match=f"pid {holder.pid} on host"):
            workdir.WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(tmp_path / workdir.LOCK_FILE)  # left behind by the killed run
    lock = workdir.WorkdirLock(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert f"pid {holder.pid} on host {socket.gethostname()}" in caplog.text
    assert "taking over" in caplog.text
    assert json.loads((tmp_path / workdir.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_file_naming_a_live_process_here_is_refused_without_its_flock(tmp_path):
    """A filesystem that ignores flock: the holder's pid, alive on this host, still counts."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = dict(host=socket.gethostname(), pid=live.pid, since="-", command="train")
        (tmp_path / workdir.LOCK_FILE).write_text(json.dumps(holder))
        with pytest.raises(workdir.WorkdirLockedError, match=f"pid {live.pid} on host"):
            workdir.WorkdirLock(str(tmp_path)).acquire()
    finally:
        live.kill()
        live.wait()


def test_config_changes_name_the_fields_that_differ_from_config_json(tmp_path):
    config = ml_collections.ConfigDict(dict(model=dict(width=8, layers=(1, 2)), seed=1))
    assert workdir.config_changes(config, str(tmp_path)) is None
    workdir.write_config(config, str(tmp_path))
    assert workdir.config_changes(config, str(tmp_path)) == []
    config.model.width = 16
    config.model.extra = "x"
    assert workdir.config_changes(config, str(tmp_path)) == [
        'model.extra: stored absent, now "x"',
        "model.width: stored 8, now 16",
    ]


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_metrics_log_keeps_one_row_per_step(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.write(1, {"train/loss": 1.0})
    log.write(2, {"train/loss": 2.0})
    log.write(2, {"eval/auc": 0.5})  # the same step's evaluation joins its row
    log.write(1, {"train/loss": 1.5})  # an older step is replaced in place
    path = tmp_path / "metrics.jsonl"
    assert _rows(path) == [
        {"step": 1, "train/loss": 1.5},
        {"step": 2, "train/loss": 2.0, "eval/auc": 0.5},
    ]
    # a file with duplicated rows (two runs appending) is merged into one row per step
    with open(path, "a") as f:
        f.write(json.dumps({"step": 2, "train/loss": 2.5}) + "\n")
        f.write(json.dumps({"step": 3, "train/loss": 3.0}) + "\n")
        f.write('{"step": 4, "train/lo')  # torn by a kill
    log = MetricsLog(str(tmp_path))
    assert [r["step"] for r in _rows(path)] == [1, 2, 3]
    assert _rows(path)[1] == {"step": 2, "train/loss": 2.5, "eval/auc": 0.5}
    log.truncate_after(1)
    log.write(2, {"train/loss": 9.0})
    assert _rows(path) == [{"step": 1, "train/loss": 1.5}, {"step": 2, "train/loss": 9.0}]


_LOCK_IN_PROCESS_GROUP = """
import sys
import jax
jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[3]))
from radjax.train import workdir
try:
    with workdir.locked(sys.argv[1]):
        print("entered", flush=True)
except workdir.WorkdirLockedError as e:
    print("refused:", e, flush=True)
"""


def _process_group(directory) -> list[str]:
    """Runs ``workdir.locked(directory)`` in two jax.distributed processes; their outputs."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", XLA_FLAGS="")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LOCK_IN_PROCESS_GROUP, str(directory), str(port), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in (0, 1)
    ]
    return [p.communicate(timeout=120)[0] for p in procs]


@pytest.mark.slow
def test_process_group_locks_through_process_0_and_all_refuse_together(tmp_path):
    outputs = _process_group(tmp_path)
    assert all("entered" in out for out in outputs), outputs
    with workdir.WorkdirLock(str(tmp_path)):
        outputs = _process_group(tmp_path)
    assert f"in use by pid {os.getpid()}" in outputs[0], outputs
    assert "process 0 could not lock" in outputs[1], outputs
