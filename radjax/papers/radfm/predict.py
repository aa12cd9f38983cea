"""RadFM on a researcher's own scan: the paper's ``predict`` hook of ``experiments.predict``.

The hook contract (``load_input``, ``result``) is in ``experiments/predict.py``.

RadFM: the scan becomes one VQA record of RadFM's task files (the image first, then the
prompt, as the released demo and the format's deterministic path place it), loaded by
``data.load_example`` and batched by ``data.collate``, so intensity (one min-max over a
volume file, pixel / dtype max for a PNG), voxel order (a NIfTI's file order, no
reorientation and no resampling to a spacing) and the depth / size buckets are the format's.
A DICOM series goes through a NIfTI file of the reader's volume and affine, i.e. as the
series converted to NIfTI would. One change: a depth bucket beyond the ViT's depth table
(``model.vision.frames``, 16 in ``tiny``) is resized to it (``info.depth_capped``).
Default prompt: the first of the format's caption (report) prompts. The answer is the
model's greedy generation (``model.predict_fn``, up to ``eval.max_new_tokens`` tokens).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ml_collections
import nibabel as nib
import numpy as np

from radjax.data.errors import BadRecordError
from radjax.data.prompt_answer import generated_texts
from radjax.papers.radfm import data


def default_prompt(config: ml_collections.ConfigDict) -> str:
    """The first prompt of the format's caption pool (a request for the report)."""
    return data.prompts(config.data, "caption_prompt")[0]


def _example(scan: dict, image: str, prompt: str, config) -> dict[str, np.ndarray]:
    """``data.load_example`` of a VQA record asking ``prompt`` about the file ``image``."""
    record = dict(
        task="vqa",
        dataset="input",
        file=scan["path"],
        where="input",
        image=image,
        is_3d=scan["volume"] is not None,
        index=0,
        question=prompt,
        answer="",
        choices=None,
        pool=None,
    )
    return data.load_example(record, config.data, None)


def load_input(
    scan: dict,
    config: ml_collections.ConfigDict,
    *,
    prompt: str | None = None,
    modality: str | None = None,
) -> dict[str, Any]:
    """One scan -> ``{batch, view, info}`` (contract: experiments/predict.py) through the RadFM format."""
    if modality is not None:
        raise BadRecordError(
            scan["path"], "modality", "RadFM reads no modality; ask about it in --prompt"
        )
    prompt = default_prompt(config) if prompt is None else prompt
    if not prompt.strip():
        raise BadRecordError(scan["path"], "prompt", "empty prompt")
    volume = scan["volume"]
    if volume is None or scan["reader"] == "nifti":  # the format reads these files itself
        example = _example(scan, scan["path"], prompt, config)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            nifti = str(Path(tmp) / "series.nii.gz")
            nib.save(nib.Nifti1Image(volume.array, volume.affine), nifti)
            example = _example(scan, nifti, prompt, config)
    is_3d = volume is not None
    count, depth, size = data.batch_geometry([example["images"].shape[:2]], is_3d, config.data)
    frames = int(config.model.vision.frames)
    capped = depth > frames
    batch = data.collate([example], config.data, (count, min(depth, frames), size))
    info = dict(
        file=scan["path"],
        reader=scan["reader"],
        shape=list(volume.array.shape if is_3d else scan["image"].shape),
        spacing=None if volume is None else list(volume.spacing),
        orientation=None if volume is None else "".join(volume.orientation),
        prompt=prompt,
        model_input=list(batch["images"].shape[1:]),
        depth_bucket=depth if is_3d else None,
        depth_capped=capped,
    )
    return dict(batch=batch, view=batch["images"][0, 0, ..., 0], info=info)


def result(
    outputs: dict[str, np.ndarray], inputs: dict[str, Any], config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """``answer``: the generated text (cut at EOS) for ``prompt``."""
    tokenizer, _ = data.text_tools(config.data)
    tokens = np.asarray(outputs["generated"])[None]
    answer = generated_texts(tokens, tokenizer, int(config.model.eos_token_id))[0]
    ends = np.flatnonzero(tokens[0] == int(config.model.eos_token_id))
    prompt = inputs["info"]["prompt"]
    return dict(
        prompt=prompt,
        answer=answer,
        generated_tokens=int(ends[0] if len(ends) else tokens.shape[-1]),
        summary=[f"Prompt: {prompt}", "", f"Answer: {answer}"],
    )
