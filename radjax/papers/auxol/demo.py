"""AuxOL's demo section: the weak tiny SAM is pre-trained on phantoms of one look
(``configs/auxol.py:tiny,stage=sam``), then the phantom stream (BUSI-like, benign then
malignant) runs through SAM + AuxOL (``experiments.online``'s ``run``). The section shows the
per-part DSC / HD of SAM alone and with AuxOL, the alpha history and overlays of SAM alone,
AuxOL and the ground truth.

The section is not a train-and-evaluate run, so it declares ``runner``: ``experiments.demo``
calls ``run_section(arg, workdir)`` and puts the report blocks it returns in the report.
"""

from __future__ import annotations

import importlib
import json
import os

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from radjax.papers.auxol import data as data_lib
from radjax.papers.auxol import online

SECTIONS = (
    dict(
        name="auxol",
        arg="tiny",
        runner="run_section",
        metrics=(),
        splits=(),
        minutes=3.0,  # one core, a full demo run, 2026-12-02 (matmul probe 182 GFLOP/s)
    ),
)
OVERLAYS = 3  # images a part drawn with SAM alone / AuxOL / ground truth


def _configs(arg: str, workdir: str):
    configs = importlib.import_module("configs.auxol")
    sam_cfg = configs.get_config(f"{arg},stage=sam")
    sam_cfg.data.root = os.path.join(workdir, "data", "auxol_sam")
    stream_cfg = configs.get_config(arg)
    stream_cfg.data.root = os.path.join(workdir, "data", "auxol")
    stream_cfg.model.sam.workdir = os.path.join(workdir, "auxol_sam")
    return sam_cfg, stream_cfg


def _alpha_figure(results: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(results["alpha_best"], ".", ms=3, alpha=0.5, label="best alpha of each crop")
    ax.plot(results["alpha_used"], "-", lw=1.5, label="alpha fused with (mean of the 5 before)")
    ax.set_xlabel("object in stream order")
    ax.set_ylabel("alpha (1 = SAM alone)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overlay_figure(stream_cfg, run_dir: str, path: str) -> None:
    """The last ``OVERLAYS`` images of each part with the masks the run wrote."""
    samples = data_lib.stream(stream_cfg.data)
    chosen = [
        s
        for part in stream_cfg.data.parts
        for s in [x for x in samples if x.part == part][-OVERLAYS:]
    ]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(7, 2.3 * len(chosen)))
    for row, sample in zip(np.atleast_2d(axes), chosen, strict=True):
        image, mask = data_lib.load_sample(sample)
        masks = {
            kind: np.asarray(Image.open(os.path.join(run_dir, folder, sample.part, sample.name)))
            for kind, folder in (("sam", online.SAM_PREDICTIONS), ("auxol", online.PREDICTIONS))
        }
        panels = (
            ("SAM alone", masks["sam"]),
            ("SAM + AuxOL", masks["auxol"]),
            ("ground truth", mask),
        )
        for ax, (title, pred) in zip(row, panels, strict=True):
            ax.imshow(image)
            ax.contour(
                pred,
                levels=[0.5],
                colors="yellow" if title != "ground truth" else "lime",
                linewidths=1,
            )
            ax.set_title(f"{sample.part}/{sample.name}: {title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_section(arg: str, workdir: str) -> list[tuple]:
    from radjax.train import loop

    sam_cfg, stream_cfg = _configs(arg, workdir)
    sam_dir, run_dir = stream_cfg.model.sam.workdir, os.path.join(workdir, "auxol")
    loop.train_and_evaluate(sam_cfg, sam_dir)
    sam_dice = _latest_dice(sam_dir)
    results = online.run(stream_cfg, run_dir)
    _alpha_figure(results, os.path.join(workdir, "auxol_alpha.png"))
    _overlay_figure(stream_cfg, run_dir, os.path.join(workdir, "auxol_overlays.png"))
    header = ("part", "images", "DSC SAM", "DSC AuxOL", "gain", "HD SAM", "HD AuxOL")
    rows = [
        (
            part,
            str(r["images"]),
            f"{r['dice_sam']:.3f}",
            f"{r['dice_auxol']:.3f}",
            f"{100 * r['dice_gain']:+.1f} pts",
            f"{r['hd_sam']:.1f}",
            f"{r['hd_auxol']:.1f}",
        )
        for part, r in results["parts"].items()
    ]
    every = stream_cfg.online.interval
    feedback = "every image" if every == 1 else f"every {every}th image"
    intro = (
        f"`configs.auxol:{arg},stage=sam` ({sam_cfg.train.steps} steps, held-out box-prompt "
        f"Dice {sam_dice:.3f}: the weak SAM) then `configs.auxol:{arg}` streamed through "
        f"`experiments.online` ({stream_cfg.online.prompt} prompts, feedback on {feedback} "
        f"of a part). The online update "
        f"compiled {results['compilations']} time(s) for the whole stream; median update "
        f"{1000 * results['update_seconds_median']:.0f} ms per object. Run dir: `{run_dir}`."
    )
    return [
        ("heading", 2, "auxol"),
        ("text", intro),
        ("text", ""),
        ("table", header, rows),
        ("figure", "auxol_alpha.png", "auxol: adaptive-fusion alpha per object"),
        ("figure", "auxol_overlays.png", "auxol: SAM alone, SAM + AuxOL, ground truth"),
    ]


def _latest_dice(run_dir: str) -> float:
    """The held-out Dice of a training run's newest evaluation (``eval/<step>.json``)."""
    evals = sorted(
        (int(n.split(".")[0]), n)
        for n in os.listdir(os.path.join(run_dir, "eval"))
        if n.endswith(".json")
    )
    with open(os.path.join(run_dir, "eval", evals[-1][1])) as f:
        return float(json.load(f)["dice"])
