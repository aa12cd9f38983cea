"""RP3D-Diag on a researcher's own scan: the paper's ``predict`` hook of ``experiments.predict``.

The hook contract (``load_input``, ``result``) is in ``experiments/predict.py``.

RP3D-Diag: the scan becomes one case of the RP3D-DiagDS format, one sample with one plane
(``data.load_example`` on a record whose plane is an ``(H, W, D)`` ``.npy``, as the dataset
stores its scans), so resampling, intensity scaling, modality index and the key-slice rule
are the format's. Voxels keep the file's order, as the formats read them: ``H`` = the J
axis (DICOM rows), ``W`` = I (columns), ``D`` = K (slices), no reorientation and no
resampling to a spacing (the format resizes each slice to ``data.image_size``). Key slice:
the middle one (late fusion keeps only it for a 3D case, as for the dataset's 3D cases).
The result lists every class of ``data.label_level`` ranked by probability.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from radjax.data.errors import BadRecordError
from radjax.papers.rp3d_diag import data

# DICOM Modality tag -> the modality names of ``data.MODALITY_INDEX``.
DICOM_MODALITIES = {
    "CT": "CT",
    "MR": "MRI",
    "CR": "X-ray",
    "DX": "X-ray",
    "US": "Ultrasound",
    "RF": "Fluoroscopy",
    "MG": "Mammography",
    "XA": "DSA (angiography)",
    "NM": "Nuclear medicine",
    "PT": "Nuclear medicine",
}
SUMMARY_TOP = 10


def _modality(scan: dict, modality: str | None) -> str:
    """The DICOM Modality tag mapped to RP3D's names, else ``modality`` (--modality, for
    files that name none); BadRecordError if neither is one of ``data.MODALITY_INDEX``."""
    name = DICOM_MODALITIES.get(scan["modality"] or "") or modality
    if name not in data.MODALITY_INDEX:
        raise BadRecordError(
            scan["path"],
            "modality",
            f"DICOM Modality {scan['modality']!r}, --modality {modality!r}: none of "
            f"RP3D-Diag's {sorted(data.MODALITY_INDEX)}; pass --modality",
        )
    return name


def _plane(scan: dict) -> np.ndarray:
    """The scan as the format's on-disk plane: f32 (H, W, D)."""
    if scan["volume"] is not None:
        array = scan["volume"].array
        if array.ndim != 3:
            raise BadRecordError(scan["path"], None, f"expected a 3-D volume, got {array.shape}")
        return array.transpose(1, 0, 2)  # (I, J, K) -> (J, I, K) = (H, W, D)
    image = scan["image"]
    image = image[..., None] if image.ndim == 2 else image[..., : 3 if image.shape[-1] >= 3 else 1]
    return image.astype(np.float32)  # grey (H, W, 1) or RGB (H, W, 3), alpha dropped


def load_input(
    scan: dict,
    config: ml_collections.ConfigDict,
    *,
    prompt: str | None = None,
    modality: str | None = None,
) -> dict[str, Any]:
    """One scan -> ``{batch, view, info}`` (contract: experiments/predict.py) through ``data.load_example``."""
    if prompt is not None:
        raise BadRecordError(scan["path"], "prompt", "RP3D-Diag classifies; it takes no prompt")
    name = _modality(scan, modality)
    plane = _plane(scan)
    key = plane.shape[-1] // 2
    with tempfile.TemporaryDirectory() as tmp:
        image_file, key_file = Path(tmp) / "plane.npy", Path(tmp) / "key.npy"
        np.save(image_file, plane)
        np.save(key_file, np.array([key], np.int64))
        sample = dict(
            modality=name,
            where="",
            images=[str(image_file)],
            keys=[str(key_file)],
            labels=[],
            ignored_labels=0,
        )
        record = dict(
            file=scan["path"],
            case=scan["path"],
            is_3d=plane.shape[-1] > 1,
            num_classes=int(config.model.num_classes),
            samples=[sample],
        )
        example = data.load_example(record, config.data, None)
    real = example["marks"][0] > 0
    volume = scan["volume"]
    info = dict(
        file=scan["path"],
        reader=scan["reader"],
        shape=list(plane.shape if volume is None else volume.array.shape),
        spacing=None if volume is None else list(volume.spacing),
        orientation=None if volume is None else "".join(volume.orientation),
        modality=name,
        modality_index=int(example["mods"][0]),
        fusion=config.data.fusion,
        key_slice=key,
        model_input=list(example["images"].shape),
        slices_seen=int(real.sum()),
    )
    return dict(
        batch={k: v[None] for k, v in example.items()},
        view=example["images"][0, real, ..., 0],
        info=info,
    )


def result(
    outputs: dict[str, np.ndarray], inputs: dict[str, Any], config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """``disorders``: every class ``{name, probability}``, most probable first."""
    del inputs
    names = {i: n for n, i in data.read_label_dict(config.data).items()}
    scores = np.asarray(outputs["scores"], np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked = [dict(name=names[int(i)], probability=float(scores[i])) for i in order]
    return dict(
        label_level=config.data.get("label_level", "articles"),
        disorders=ranked,
        summary=["probability  disorder"]
        + [f"{d['probability']:.3f}        {d['name']}" for d in ranked[:SUMMARY_TOP]],
    )
