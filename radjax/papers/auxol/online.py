"""AuxOL's online run over a stream (``experiments.online``): every part of ``data.parts`` in
order with ONE auxiliary net, optimiser, queue and alpha history, as the released run.sh does
for the five polyp parts.

Workdir: ``config.json``, ``metrics.jsonl`` (one row per image, ``step`` = images done: part,
name, DSC / HD of SAM alone and with AuxOL, feedback, alphas, losses, update latency),
``predictions/<part>/<name>`` and ``predictions_sam/<part>/<name>`` (the masks of AuxOL and
of SAM alone, 0 / 255, as main.py writes them), ``checkpoints/<images done>`` (the net,
AdamW moments and queue as arrays; the alpha history and the noise generator's state as
JSON; the rows before it are metrics.jsonl's) and, at the end,
``results.json`` (per part: images, mean DSC / HD of both, images without a prompt; the alpha
history; the update latency). Re-running resumes mid-stream from the newest checkpoint and
ends where an uninterrupted run ends; rows written after that checkpoint are replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import ml_collections
import numpy as np
from PIL import Image

from radjax.checkpoint import Checkpointer
from radjax.papers.auxol import data as data_lib
from radjax.papers.auxol import learner, segmenter, stream
from radjax.papers.auxol.unet import UNetConfig
from radjax.train import workdir as workdir_lib
from radjax.train.loop import MetricsLog

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
PREDICTIONS = "predictions"  # <part>/<name>: AuxOL's mask, 0 / 255 (main.py's predict_path)
SAM_PREDICTIONS = "predictions_sam"  # SAM alone's


def _fields_of(cls, section: ml_collections.ConfigDict):
    """``cls`` (a dataclass) from the config section's fields of the same names."""
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


def learner_config(config: ml_collections.ConfigDict) -> learner.LearnerConfig:
    return _fields_of(learner.LearnerConfig, config.online)


def stream_config(config: ml_collections.ConfigDict) -> stream.StreamConfig:
    return _fields_of(stream.StreamConfig, config.online)


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
    u = config.model.unet
    channels = 4 if config.online.four_channel else 3
    return UNetConfig(in_channels=channels, base=u.base, bilinear=u.bilinear)


def summarise(rows: list[dict], parts) -> dict:
    """Per part: images, mean DSC and HD of SAM alone and with AuxOL, the DSC gain, images
    without a prompt and images with feedback."""
    out = {}
    for part in parts:
        mine = [r for r in rows if r["part"] == part]
        if not mine:
            continue
        mean = lambda key, mine=mine: float(np.mean([r[key] for r in mine]))
        out[part] = dict(
            images=len(mine),
            dice_sam=mean("dice_sam"),
            dice_auxol=mean("dice_auxol"),
            dice_gain=mean("dice_auxol") - mean("dice_sam"),
            hd_sam=mean("hd_sam"),
            hd_auxol=mean("hd_auxol"),
            images_without_prompt=sum(r["objects"] == 0 for r in mine),
            feedback_images=sum(r["feedback"] for r in mine),
        )
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Streams ``config.data`` through SAM + AuxOL; returns (and writes) ``results.json``."""
    os.makedirs(workdir, exist_ok=True)
    with workdir_lib.locked(workdir):
        return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    data_lib.ensure_data(config.data)
    samples = data_lib.stream(config.data)
    sam = segmenter.build(config)
    l_cfg, s_cfg = learner_config(config), stream_config(config)
    graphdef, state = learner.init_learner(unet_config(config), l_cfg, int(config.online.seed))
    step_fn = learner.make_step(graphdef, l_cfg)
    history = stream.History()
    rng = np.random.default_rng(int(config.online.seed))
    rows: list[dict] = []
    start = 0
    with Checkpointer(
        os.path.join(os.path.abspath(workdir), "checkpoints"), keep=int(config.checkpoint.keep)
    ) as ckpt:
        restored = ckpt.restore_latest(state)
        workdir_lib.write_config(config, workdir)
        metrics = MetricsLog(workdir)
        if restored is None:
            metrics.truncate_after(-1)
        else:
            start, state, meta = restored
            history = stream.History(list(meta["alpha_best"]), list(meta["alpha_used"]))
            rng.bit_generator.state = meta["rng"]
            metrics.truncate_after(start)
            rows = metrics.rows()
            log.info("resumed the stream after image %d of %d", start, len(samples))
        every = int(config.checkpoint.every)
        part_start = {}
        for i, s in enumerate(samples):
            part_start.setdefault(s.part, i)
        for position in range(start, len(samples)):
            sample = samples[position]
            image, mask = data_lib.load_sample(sample)
            index_in_part = position - part_start[sample.part]
            state, row, sam_alone, auxol = stream.process_image(
                sam,
                step_fn,
                state,
                history,
                image,
                mask,
                index_in_part,
                s_cfg,
                l_cfg.crop_size,
                rng,
            )
            for folder, prediction in ((SAM_PREDICTIONS, sam_alone), (PREDICTIONS, auxol)):
                _write_mask(os.path.join(workdir, folder, sample.part, sample.name), prediction)
            row = dict(part=sample.part, name=sample.name, **row)
            rows.append(row)
            metrics.write(position + 1, row)
            done = position + 1
            if done % every == 0 or done == len(samples):
                meta = dict(
                    alpha_best=history.best,
                    alpha_used=history.used,
                    rng=rng.bit_generator.state,
                )
                ckpt.save(done, jax.device_get(state), meta=meta)
            if done % 10 == 0 or done == len(samples):
                log.info("image %d/%d (%s): %s", done, len(samples), sample.part, _last(rows))
    results = dict(
        parts=summarise(rows, config.data.parts),
        alpha_best=history.best,
        alpha_used=history.used,
        # the stream's first update also compiles the step
        update_seconds_median=float(np.median(_latencies(rows)[1:] or [0.0])),
        compilations=_compilations(step_fn),
    )
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _write_mask(path: str, mask: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _last(rows: list[dict]) -> str:
    r = rows[-1]
    return f"DSC SAM {r['dice_sam']:.3f} -> AuxOL {r['dice_auxol']:.3f}"


def _latencies(rows: list[dict]) -> list[float]:
    return [s for r in rows for s in r["update_seconds"]]


def _compilations(step_fn) -> int:
    """How many programs the online step compiled (1 for a whole stream)."""
    return int(step_fn._cache_size())
