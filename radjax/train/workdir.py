"""Guards of a run directory: an exclusive lock and the stored resolved config.

``<workdir>/.lock`` holds ``{"host", "pid", "since", "command"}`` of the run using the workdir,
under an exclusive ``flock`` kept for the run's lifetime (the kernel drops it when the process
dies). A second run is refused at once, naming the holder. A lock file whose flock is free is
left by a run that is gone (killed): it is taken over with a warning, unless it names a live
process on this host (a filesystem that ignores flock). Multi-process runs: process 0 holds it.

``<workdir>/config.json`` is the resolved config of the last run that passed the checkpoint
check; ``config_changes`` lists the fields a new config changes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        holder = {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        f" (since {holder.get('since', '?')}: {holder.get('command', '?')})"
    )


class WorkdirLock:
    """The exclusive lock of one workdir; ``acquire`` raises WorkdirLockedError when held."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._open_locked()
        holder = _read_holder(fd)
        host = socket.gethostname()
        if holder:
            pid = int(holder.get("pid", -1))
            if holder.get("host") == host and pid != os.getpid() and _pid_alive(pid):
                os.close(fd)
                raise self._busy(holder)
            log.warning(
                "taking over the lock %s left by %s (that run is gone)",
                self.path,
                _describe(holder),
            )
        me = dict(
            host=host,
            pid=os.getpid(),
            since=datetime.datetime.now().isoformat(timespec="seconds"),
            command=" ".join(sys.argv),
        )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd

    def _open_locked(self) -> int:
        """Opens the lock file holding its flock (retrying if a releasing run unlinked it)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._busy(holder) from None
            if os.fstat(fd).st_ino == _inode(self.path):
                return fd
            os.close(fd)

    def _busy(self, holder: dict) -> WorkdirLockedError:
        return WorkdirLockedError(
            f"workdir {os.path.dirname(self.path)} is in use by {_describe(holder)}; wait for "
            f"that run to end or choose another --workdir (lock file {self.path})"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        if _inode(self.path) == os.fstat(self._fd).st_ino:
            os.unlink(self.path)
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds ``workdir``'s lock (process 0) for the block; every process raises
    WorkdirLockedError when process 0 could not take it."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except WorkdirLockedError as e:
            lock, error = None, e
    if jax.process_count() > 1:
        got = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(got) and error is None:
            error = WorkdirLockedError(f"process 0 could not lock workdir {workdir}")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to ``<workdir>/config.json`` (process 0)."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(config: ml_collections.ConfigDict, workdir: str) -> list[str] | None:
    """``"<dotted field>: stored <old>, now <new>"`` for each field of ``config`` that differs
    from ``<workdir>/config.json`` (None when there is no stored config)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = _flatten(json.load(f))
    now = _flatten(json.loads(config.to_json_best_effort(sort_keys=True)))

    def show(tree: dict, key: str) -> str:
        return json.dumps(tree[key]) if key in tree else "absent"

    return [
        f"{k}: stored {show(stored, k)}, now {show(now, k)}"
        for k in sorted(stored.keys() | now.keys())
        if show(stored, k) != show(now, k)
    ]
