"""What ``experiments.demo`` trains for Uni-Med: the tiny config on the phantoms of all five
tasks, held-out metrics per task against the most-frequent-answer baselines (REC: a fixed
centre box), the soft router's mean weight per expert per task (``routing_e<k>`` bars: one
panel per expert, one bar group per task), and sample panels of VQA, REC and reports."""

from __future__ import annotations

import ml_collections
import numpy as np

SECTIONS = (
    dict(
        name="uni_med",
        minutes=3.3,  # one core, a full demo run, 2026-12-02 (matmul probe 182 GFLOP/s)
        arg="tiny",
        metrics=(
            "closed_acc",
            "open_f1",
            "all_bleu1",
            "acc",
            "miou",
            "bleu4",
            "rougeL",
            "f1",
            "accuracy",
            "routing_e0",
            "routing_e1",
            "routing_e2",
            "routing_e3",
            "routing_e4",
        ),
        splits=("vqa", "refer", "identify", "caption", "cls"),
        baseline=True,
        samples=("vqa", "refer", "caption"),
    ),
)


def sample_images(
    config: ml_collections.ConfigDict, split: str, task: str, rows: list[int]
) -> list[np.ndarray]:
    """The images of the ``task`` rows at positions ``rows`` (a sample's ``row``) of the
    evaluated ``split``, with the geometry the model sees (bicubic squash to
    ``data.image_size``), f32 (1, H, W) in [0, 1].

    A sample's ``row`` is its position among the task's rows in evaluation order, the
    format's (``data.batches``, train=False): datasets in sorted name order, each in record
    order. ``config`` must be prepared (``radjax.train.experiment.prepare_config``)."""
    from PIL import Image

    from radjax.papers.uni_med import data as fmt

    task_rows = sorted(
        (r for r in fmt.make_source(config.data, split) if r["task"] == task),
        key=lambda r: (r["dataset"], r["index"]),
    )
    size = int(config.data.image_size)
    out = []
    for i in rows:
        image = fmt.load_image(task_rows[i]).convert("L")
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        out.append((np.asarray(image, np.float32) / 255.0)[None])
    return out
