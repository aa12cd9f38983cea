"""What ``experiments.demo`` trains for RadFM: per-task metrics against the most-frequent-answer
baseline (``disorder_named``: captions naming the study's disorder; ``distinct``: the fraction
of distinct generations), and panels of input images beside generated and reference answers.
Trained in three stages: the 2D open diagnosis, open + closed diagnosis, then every task."""

from __future__ import annotations

import ml_collections
import numpy as np

SECTIONS = (
    dict(
        name="radfm",
        minutes=10.0,  # one core, a full demo run, 2026-12-02 (matmul probe 182 GFLOP/s)
        arg="tiny",
        # The tiny recipe (configs/radfm.py, stage=): lesion reading first, then every task.
        stages=(
            ("radfm_lesions", "tiny,stage=lesions"),
            ("radfm_diagnosis", "tiny,stage=diagnosis"),
        ),
        metrics=(
            "accuracy",
            "macro_f1",
            "bleu1",
            "bleu4",
            "rougeL_f",
            "entity_precision",
            "entity_recall",
            "bertscore_f1",
            "disorder_named",
            "distinct",
        ),
        splits=("modality", "diagnosis_closed", "diagnosis_open", "vqa", "caption", "rationale"),
        baseline=True,
        samples=("caption", "vqa", "rationale"),
    ),
)


def sample_images(
    config: ml_collections.ConfigDict, split: str, task: str, rows: list[int]
) -> list[np.ndarray]:
    """The first image of the ``task`` rows at positions ``rows`` (a sample's ``row``) of the
    evaluated ``split``, as the model reads it: f32 (D, H, W) (D = 1 for 2D images), first
    channel.

    A sample's ``row`` is its position among the task's rows in evaluation order, which is the
    format's (``data.radfm_batches``, train=False): 2D records, then 3D records, each in record
    order. ``config`` must be prepared (``radjax.train.experiment.prepare_config``)."""
    from radjax.papers.radfm import data as fmt

    records = list(fmt.make_source(config.data, split))
    order = [r for r in records if not r["is_3d"]] + [r for r in records if r["is_3d"]]
    task_rows = [r for r in order if r["task"] == task]
    return [fmt.load_example(task_rows[i], config.data, None)["images"][0, ..., 0] for i in rows]
