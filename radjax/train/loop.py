"""The generic train / evaluate loops behind ``experiments.train`` and ``experiments.evaluate``.

Workdir layout (DESIGN.md): ``config.json`` (resolved config), ``metrics.jsonl`` (one JSON
object a line: ``step`` plus ``<split>/<name>`` keys), ``eval/<step>.json``, ``checkpoints/``.
Re-running the same command resumes from the newest readable checkpoint (state, data iterator,
RNG streams and the skipped-record count) and ends exactly where an uninterrupted run would;
newer unreadable steps are moved to ``checkpoints_unreadable/`` and their metrics rows replaced
(``metrics.jsonl`` holds one row per step). Both loops hold the workdir's lock
(``radjax.train.workdir``); a checkpoint that does not fit the config raises before
``config.json`` is written or anything is moved.

Evaluations (``radjax.train.stages.eval_specs``): by default one, every ``train.eval_every``
steps and at the last step, on ``train.eval_split``: keys ``eval/<metric>`` in metrics.jsonl and
bare metric names in ``eval/<step>.json``. With ``config.evals.<name>`` (``split``, ``every``,
``data`` / ``eval`` overrides, ``batch_size``) each named evaluation writes
``<name>/<metric>`` keys to both (``eval/<step>.json`` holds every evaluation of that step).
A fresh run starts from ``config.init_from`` when set (``radjax.train.stages``); a resumed run
ignores it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from radjax.checkpoint import Checkpointer, CheckpointMismatchError
from radjax.data import pipeline
from radjax.train import experiment as experiment_lib
from radjax.train import stages
from radjax.train import workdir as workdir_lib

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.jsonl`` with one row per step, ascending (process 0 only): a write for a
    step that has a row merges into it (new values replace old ones), never a second row."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._enabled = jax.process_index() == 0
        self._rows: dict[int, dict] = {}
        self._tail = 0  # byte offset of the last row in the file
        if self._enabled and os.path.exists(self.path):
            with open(self.path) as f:
                for n, line in enumerate(f, 1):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line torn by a killed run
                        log.warning("%s:%d is not JSON; dropped", self.path, n)
                        continue
                    self._rows.setdefault(int(row["step"]), {}).update(row)
            self._rewrite()

    def rows(self) -> list[dict]:
        """Every row, ascending by step (process 0; empty elsewhere)."""
        return [dict(r) for r in self._rows.values()]

    def truncate_after(self, step: int) -> None:
        """Drops rows newer than ``step`` (written by a run that died before checkpointing)."""
        if self._enabled and any(s > step for s in self._rows):
            self._rows = {s: r for s, r in self._rows.items() if s <= step}
            self._rewrite()

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self._enabled:
            return
        step = int(step)
        last = max(self._rows, default=None)
        row = self._rows.setdefault(step, {"step": step})
        row.update({k: _jsonable(v) for k, v in values.items()})
        if last is not None and step < last:
            self._rewrite()
            return
        with open(self.path, "r+b" if step == last else "ab") as f:
            if step == last:
                f.seek(self._tail)
                f.truncate()
            self._tail = f.tell()
            f.write(_line(row))

    def _rewrite(self) -> None:
        """Writes every row in step order (a temporary file, then rename)."""
        self._rows = dict(sorted(self._rows.items()))
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            for row in self._rows.values():
                self._tail = f.tell()
                f.write(_line(row))
        os.replace(tmp, self.path)


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


def _jsonable(v: Any) -> Any:
    v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def run_eval(
    exp: experiment_lib.Experiment,
    fmt,
    state: dict,
    split: str,
    config: ml_collections.ConfigDict | None = None,
) -> dict[str, float]:
    """Predicts a whole split and scores it with the paper's ``evaluate``; ``config``
    (default the experiment's) is what the pipeline and ``evaluate`` read (a named
    evaluation's data / eval overrides, ``radjax.train.stages.eval_specs``)."""
    config = exp.config if config is None else config
    batches, counter = pipeline.eval_batches(
        fmt, config.data, split, batch_size=int(config.eval.batch_size)
    )
    chunks: dict[str, list[np.ndarray]] = {}
    with jax.set_mesh(exp.mesh):
        for batch in batches:
            valid = batch.pop("valid")
            out = exp.predict_step(state, pipeline.to_global(batch, exp.mesh))
            out = multihost_utils.process_allgather(out, tiled=True)
            valid = multihost_utils.process_allgather(valid, tiled=True)
            for k, v in out.items():
                chunks.setdefault(k, []).append(np.asarray(v)[np.asarray(valid)])
    if not chunks:
        raise ValueError(f"evaluation split {split!r} produced no examples")
    outputs = {k: np.concatenate(v) for k, v in chunks.items()}
    metrics = exp.paper.evaluate(outputs, config)
    metrics["num_examples"] = len(next(iter(outputs.values())))
    metrics["skipped_records"] = counter.count
    metrics["repaired_records"] = counter.repaired  # data.nonfinite='zero'
    return metrics


def _save_named_evals(
    workdir: str, step: int, results: list[tuple[stages.EvalSpec, dict]], log_: MetricsLog
) -> None:
    """Writes named evaluations as ``"<name>/<metric>"`` keys (and ``"<name>/split"``) into
    ``eval/<step>.json`` and one metrics.jsonl row; the single default evaluation named
    ``eval`` keeps today's layout (``eval/<step>.json`` with bare metric names)."""
    if len(results) == 1 and results[0][0].name == "eval":
        spec, metrics = results[0]
        _save_eval(workdir, step, spec.split, metrics, log_)
        return
    flat: dict[str, Any] = {}
    for spec, metrics in results:
        flat[f"{spec.name}/split"] = spec.split
        flat.update({f"{spec.name}/{k}": v for k, v in metrics.items()})
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"{step}.json"), "w") as f:
            json.dump(
                {
                    "step": step,
                    **{k: v if isinstance(v, str) else _jsonable(v) for k, v in flat.items()},
                },
                f,
                indent=2,
            )
    log_.write(step, {k: v for k, v in flat.items() if not k.endswith("/split")})


def _save_eval(workdir: str, step: int, split: str, metrics: dict, log_: MetricsLog) -> None:
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"{step}.json"), "w") as f:
            json.dump(
                {"step": step, "split": split, **{k: _jsonable(v) for k, v in metrics.items()}},
                f,
                indent=2,
            )
    log_.write(step, {f"eval/{k}": v for k, v in metrics.items()})


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None
) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if checkpoints exist) holding the workdir's
    lock; returns the final state. ``config.json`` is written once the checkpoint fits."""
    os.makedirs(workdir, exist_ok=True)
    with workdir_lib.locked(workdir):
        return _train(config, workdir, mesh)


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None):
    fmt = experiment_lib.prepare_config(config)
    exp = experiment_lib.build(config, mesh)
    total = int(config.train.steps)
    data, skips = pipeline.train_dataset(
        fmt, config.data, global_batch=int(config.train.batch_size), seed=int(config.seed)
    )
    data_iter = iter(data)

    with _checkpointer(config, workdir) as ckpt, jax.set_mesh(exp.mesh):
        restored = _restore_latest(ckpt, exp, workdir, data_iter)
        workdir_lib.write_config(config, workdir)
        metrics_log = MetricsLog(workdir)
        if restored is None:
            start, state = 0, exp.init()
            metrics_log.truncate_after(-1)
        else:
            start, state, meta = restored
            skips.count = int(meta.get("skipped_records", 0))
            skips.repaired = int(meta.get("repaired_records", 0))
            metrics_log.truncate_after(start)
            log.info("resumed from step %d", start)

        log_every, ckpt_every = int(config.train.log_every), int(config.checkpoint.every)
        evals = stages.eval_specs(config)
        for spec in evals:
            if spec.config is not config:  # a named evaluation reading other data files
                fmt.ensure_data(spec.config.data)
        last_time, last_step = time.time(), start
        for step in range(start + 1, total + 1):
            batch = pipeline.to_global(next(data_iter), exp.mesh)
            state, metrics = exp.train_step(state, batch)
            if step % log_every == 0 or step == total:
                values = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
                values["train/skipped_records"] = skips.count
                values["train/repaired_records"] = skips.repaired
                now = time.time()
                rate = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                values["train/steps_per_sec"] = rate
                metrics_log.write(step, values)
                log.info(
                    "step %d/%d  loss %.4f  %.2f steps/s  ETA %s",
                    step,
                    total,
                    values["train/loss"],
                    rate,
                    _format_eta((total - step) / max(rate, 1e-9)),
                )
            if step % ckpt_every == 0 or step == total:
                counts = dict(skipped_records=skips.count, repaired_records=skips.repaired)
                ckpt.save(step, state, data_iter, meta=counts)
            results = []
            for spec in evals:
                if stages.due(spec, step, total):
                    result = run_eval(exp, fmt, state, spec.split, spec.config)
                    results.append((spec, result))
                    log.info(
                        "%s at step %d on %s: %s", spec.name, step, spec.split, _summary(result)
                    )
            if results:
                _save_named_evals(workdir, step, results, metrics_log)
    return state


def _checkpointer(config: ml_collections.ConfigDict, workdir: str) -> Checkpointer:
    return Checkpointer(_checkpoint_dir(workdir), keep=int(config.checkpoint.keep))


def _checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _restore_latest(
    ckpt: Checkpointer, exp: experiment_lib.Experiment, workdir: str, data_iter: Any = None
) -> tuple[int, Any, dict] | None:
    """``ckpt.restore_latest`` into the experiment's state; a checkpoint that does not fit
    raises one CheckpointMismatchError that also lists the config fields that differ from
    ``config.json``."""
    try:
        restored = ckpt.restore_latest(exp.restore_target(), data_iter)
    except CheckpointMismatchError as e:
        changes = workdir_lib.config_changes(exp.config, workdir)
        if changes is None:
            detail = f"(no config.json in {workdir} to compare with)"
        elif not changes:
            detail = f"(this config has the fields of {workdir}/config.json)"
        else:
            detail = f"fields that differ from {workdir}/config.json:\n  " + "\n  ".join(changes)
        raise CheckpointMismatchError(f"{e}\n{detail}") from None
    if restored is not None:
        changes = workdir_lib.config_changes(exp.config, workdir)
        if changes:
            log.info("resuming with config changes: %s", "; ".join(changes))
    return restored


class NoCheckpointError(FileNotFoundError):
    """A workdir to evaluate holds no checkpoint."""


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    *,
    untrained: bool = False,
) -> dict[str, float]:
    """Evaluates the newest readable checkpoint in ``workdir`` (``untrained``: the freshly
    initialised model, step 0) on ``split``, holding the workdir's lock; with ``split`` None,
    every named evaluation of ``config.evals`` (``"<name>/<metric>"`` keys), or
    ``train.eval_split`` when there are none.

    Raises:
      NoCheckpointError: ``workdir`` has no checkpoint and ``untrained`` is False.
    """
    if not untrained and not os.path.isdir(_checkpoint_dir(workdir)):
        raise NoCheckpointError(_no_checkpoint(workdir))
    os.makedirs(workdir, exist_ok=True)
    with workdir_lib.locked(workdir):
        return _evaluate(config, workdir, split, mesh, untrained)


def _no_checkpoint(workdir: str) -> str:
    return (
        f"no checkpoint in {_checkpoint_dir(workdir)}: train there first, or pass --untrained "
        "to evaluate the freshly initialised model"
    )


def _evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str | None,
    mesh: jax.sharding.Mesh | None,
    untrained: bool,
) -> dict[str, float]:
    fmt = experiment_lib.prepare_config(config)
    exp = experiment_lib.build(config, mesh)
    with jax.set_mesh(exp.mesh):
        if untrained:
            step, state = 0, exp.init()
        else:
            with _checkpointer(config, workdir) as ckpt:
                restored = _restore_latest(ckpt, exp, workdir)
            if restored is None:
                raise NoCheckpointError(_no_checkpoint(workdir))
            step, state = restored[:2]
    named = [] if split is not None else stages.eval_specs(config) if config.get("evals") else []
    if named:
        results = []
        for spec in named:
            fmt.ensure_data(spec.config.data)
            results.append((spec, run_eval(exp, fmt, state, spec.split, spec.config)))
            log.info(
                "%s at step %d on %s: %s", spec.name, step, spec.split, _summary(results[-1][1])
            )
        _save_named_evals(workdir, step, results, MetricsLog(workdir))
        return {f"{s.name}/{k}": v for s, r in results for k, v in r.items()}
    split = split or config.train.get("eval_split", "test")
    result = run_eval(exp, fmt, state, split)
    _save_eval(workdir, step, split, result, MetricsLog(workdir))
    log.info("eval at step %d on %s: %s", step, split, _summary(result))
    return result


def _summary(metrics: dict) -> str:
    keys = [k for k in metrics if "/" not in k][:8]
    return "  ".join(
        f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
        for k in keys
    )
