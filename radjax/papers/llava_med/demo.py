"""What ``experiments.demo`` trains for LLaVA-Med: the tiny recipe on the phantoms (stage 0, the
tiny stand-in for the original's pretrained CLIP and LLM: the whole model on the alignment
captions; stage 1 alignment: projector + image markers; stage 2 instruction tuning; each from
the previous stage's workdir, the tower frozen after stage 0), then the VQA test split scored
as the paper (closed accuracy in its three published variants, open recall) and per question
kind (lesion presence, modality, ...) against the most-frequent-answer baseline, with sample
answers."""

from __future__ import annotations

import ml_collections
import numpy as np

SECTIONS = (
    dict(
        name="llava_med",
        minutes=3.8,  # one core, a full demo run, 2026-12-02 (matmul probe 182 GFLOP/s)
        arg="tiny",
        stages=(("llava_med_pretrain", "tiny,stage=0"), ("llava_med_align", "tiny,stage=1")),
        metrics=(
            "accuracy",
            "accuracy_pr35",
            "accuracy_pre_pr35",
            "recall",
            "f1",
            "bleu_1",
            "distinct",
        ),
        # the paper's two answer types, then per question kind (eval.question_kinds)
        splits=("closed", "open", "lesion", "is_modality", "modality", "region", "side", "kind"),
        baseline=True,
        samples=("closed", "open"),
    ),
)


def sample_images(
    config: ml_collections.ConfigDict, split: str, task: str, rows: list[int]
) -> list[np.ndarray]:
    """The images of the ``task`` (``closed`` / ``open``) items at positions ``rows`` (a
    sample's ``row``: its position among the split's items of that answer type, in file
    order, the single-process evaluation order), f32 (1, H, W) in [0, 1], first channel."""
    from radjax.data.readers import read_image
    from radjax.papers.llava_med import data as fmt

    want = "CLOSED" if task == "closed" else "OPEN"
    items = [r for r in fmt.make_source(config.data, split) if r["answer_type"] == want]
    out = []
    for i in rows:
        pixels = read_image(items[i]["image"]).astype(np.float32) / 255.0
        out.append((pixels if pixels.ndim == 2 else pixels[..., 0])[None])
    return out
