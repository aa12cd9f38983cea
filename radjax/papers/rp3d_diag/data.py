"""RP3D-DiagDS (RadDiag) case JSON: validated records and per-case examples.

On disk (the real dataset and ``radjax.papers.rp3d_diag.phantoms`` alike): a split JSON maps a
Radiopaedia case URL to ``{Modalities, Anatomy, Samples: [...], key_slice, (Dim)}``; each
sample lists ``image_data_path`` (one ``.npy`` per plane, f32 ``(H, W, D)``) and
``image_key_path`` (one ``.npy`` per plane holding the key-slice index), the case labels
under ``articles`` (disorder names) and ``icd10s`` (ICD-10 codes), and report texts. Label
dicts map a label to its class index. Paths are relative to ``data.root``; absolute paths
of the released JSON (``/mnt/petrelfs/...``) are re-rooted by stripping ``data.path_prefix``.

``load_example`` follows RP3D's ``RadNet_Dataset_late`` / ``RadNet_Dataset_early``
(NatComm code, ``src/Train/Dataset/dataset.py``); differences are listed in
``load_example``'s docstring. Outputs are channels-last (CONTRACT in WORKSPACE.md):

  images  f32 (N, D, H, W, 1)   N scans (late fusion N = 1), min-max to [0, 1] per sample
  marks   f32 (N, D)            1 = real slice, 0 = padding
  mods    i32 (N,)              modality index (MODALITY_INDEX), 0 = padding scan
  keys    i32 (N,)              key slice index into D, -1 = padding scan
  labels  f32 (C,)              multi-hot labels of the sample (late) / first sample (early)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from radjax.data import specs
from radjax.data.errors import BadRecordError
from radjax.data.phantoms import ensure_phantoms
from radjax.data.readers import (
    nonfinite_policy,
    read_json,
    read_npy,
    require_files,
    resolve_path,
)
from radjax.data.transforms import scale_intensity
from radjax.papers.rp3d_diag.phantoms import write_rp3d_phantoms
from radjax.papers.rp3d_diag.transforms import rp3d_resample, rp3d_slice_indices

log = logging.getLogger(__name__)

# NatComm code's ``Modality_dict``: plane k of a scan gets index [k]; 0 is the padding scan.
MODALITY_INDEX: dict[str, tuple[int, ...]] = {
    "CT": (1, 2, 3),
    "MRI": (4, 5, 6),
    "X-ray": (7, 8),
    "Ultrasound": (9,),
    "Annotated image": (10,),
    "Fluoroscopy": (11,),
    "Mammography": (12,),
    "DSA (angiography)": (13,),
    "Nuclear medicine": (14,),
    "Barium": (15,),
}
# Early fusion: the first planes of CT/MRI (up to 3) and X-ray (up to 2); others 1 random plane.
_MAX_PLANES = {"CT": 3, "MRI": 3, "X-ray": 2}
_LEVELS = {"articles": "articles", "icd10s": "icd10s", "icd10": "icd10s"}


# ---------------------------------------------------------------------------------------
# Config helpers.
# ---------------------------------------------------------------------------------------


def _label_field(data_cfg: ml_collections.ConfigDict) -> str:
    """The sample field holding labels: ``articles`` or ``icd10s``."""
    level = data_cfg.get("label_level", "articles")
    if level not in _LEVELS:
        raise ValueError(f"data.label_level {level!r} unknown; use 'articles' or 'icd10s'")
    return _LEVELS[level]


def _label_dict_name(data_cfg: ml_collections.ConfigDict) -> str:
    """The label dict of ``data.label_level``, relative to ``data.root``."""
    articles = _label_field(data_cfg) == "articles"
    return data_cfg.label_dict if articles else data_cfg.icd10_label_dict


def _label_dict_path(data_cfg: ml_collections.ConfigDict) -> Path:
    return Path(data_cfg.root) / _label_dict_name(data_cfg)


def read_label_dict(data_cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """The label dict of ``data.label_level``: label -> index, indices exactly 0..C-1."""
    path = _label_dict_path(data_cfg)
    labels = read_json(path)
    if not isinstance(labels, dict) or not labels:
        raise BadRecordError(path, None, "expected a non-empty JSON object {label: index}")
    indices = list(labels.values())
    if not all(type(i) is int for i in indices) or sorted(indices) != list(range(len(indices))):
        raise BadRecordError(path, None, f"indices are not 0..{len(labels) - 1}")
    return labels


def num_classes(data_cfg: ml_collections.ConfigDict) -> int:
    """C, the number of classes of ``data.label_level`` (size of its label dict)."""
    return len(read_label_dict(data_cfg))


def complete_config(config: ml_collections.ConfigDict) -> None:
    """Sets ``config.model.num_classes`` from the label dict (called after ``ensure_data``)."""
    config.model.num_classes = num_classes(config.data)


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes and dtypes of a training batch (``radjax.data.specs``), from config
    fields: the module docstring's arrays with a leading B = ``train.batch_size``, N =
    ``data.n_image`` (early fusion) or 1 (late), D = ``data.depth``, S = ``data.image_size``
    and C = ``model.num_classes`` (``complete_config`` sets it from the label dict).

    Raises:
      ValueError: ``model.num_classes`` is not positive (naming it and how to set it), or
        ``data.fusion`` is unknown.
    """
    d = config.data
    if d.fusion not in ("late", "early"):
        raise ValueError(f"data.fusion {d.fusion!r} unknown; use 'late' or 'early'")
    n = int(d.n_image) if d.fusion == "early" else 1
    depth, size = int(d.depth), int(d.image_size)
    classes = specs.required(
        config,
        "model.num_classes",
        f"the size of the label dict under data.root ({_label_dict_name(d)}); without the "
        "data set --config.model.num_classes",
    )
    return specs.rows_of(
        int(config.train.batch_size),
        dict(
            images=((n, depth, size, size, 1), np.float32),
            marks=((n, depth), np.float32),
            mods=((n,), np.int32),
            keys=((n,), np.int32),
            labels=((classes,), np.float32),
        ),
    )


def data_files(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """Files a run reads from ``data.root``: every ``data.<split>_file`` and the label dict."""
    splits = [data_cfg[k] for k in sorted(data_cfg.keys()) if k.endswith("_file") and data_cfg[k]]
    return splits + [_label_dict_name(data_cfg)]


def ensure_data(data_cfg: ml_collections.ConfigDict) -> None:
    """Checks that ``data.root`` holds ``data_files``; with ``data.phantoms.enabled`` first
    writes the phantoms into a missing or empty root (``radjax.data.phantoms.ensure_phantoms``;
    a root holding other files is never written to).

    Raises:
      FileNotFoundError: naming the root and the first missing file.
      ValueError: ``data.nonfinite`` is unknown.
    """
    nonfinite_policy(data_cfg)
    if data_cfg.get("phantoms", {}).get("enabled", False):
        ensure_phantoms(
            data_cfg,
            lambda out, p: write_rp3d_phantoms(
                out, p.num_train, p.num_test, size=p.get("size", 64), seed=p.get("seed", 0)
            ),
            "an RP3D-DiagDS copy",
        )
    require_files(data_cfg.root, data_files(data_cfg), "an RP3D-DiagDS copy")


# ---------------------------------------------------------------------------------------
# Records: one validated, picklable dict per case.
# ---------------------------------------------------------------------------------------


def _require(
    value: Any, kind: type | tuple[type, ...], json_path: Path, field: str, nonempty: bool = False
) -> Any:
    """Returns ``value`` if it has type ``kind`` (and is non-empty), else BadRecordError."""
    if value is None:
        raise BadRecordError(json_path, field, "missing")
    if not isinstance(value, kind) or (nonempty and not value):
        expected = "a non-empty " if nonempty else "a "
        expected += "list" if kind is list else getattr(kind, "__name__", str(kind))
        raise BadRecordError(json_path, field, f"expected {expected}, got {value!r:.80}")
    return value


def _data_path(data_cfg: ml_collections.ConfigDict, raw: str, json_path: Path, field: str) -> str:
    """A JSON image path -> absolute path inside ``data.root``; checks the file exists."""
    prefix = data_cfg.get("path_prefix", "").rstrip("/") + "/"
    if prefix != "/" and raw.startswith(prefix):
        raw = raw[len(prefix) :]
    try:
        path = resolve_path(data_cfg.root, raw)
    except BadRecordError as err:
        raise BadRecordError(json_path, field, err.message) from err
    if not path.is_file():
        raise BadRecordError(json_path, field, f"file not found: {path}")
    return str(path)


def _parse_sample(
    sample: Any,
    modality: Any,
    where: str,
    json_path: Path,
    labels: dict[str, int],
    data_cfg: ml_collections.ConfigDict,
) -> dict:
    """Validates one entry of ``Samples`` (and its ``Modalities`` entry) into a record part."""
    _require(sample, dict, json_path, where)
    if modality not in MODALITY_INDEX:
        raise BadRecordError(
            json_path,
            where.replace("Samples", "Modalities"),
            f"unknown modality {modality!r}; known: {sorted(MODALITY_INDEX)}",
        )
    images = _require(
        sample.get("image_data_path"), list, json_path, f"{where}.image_data_path", nonempty=True
    )
    keys = _require(sample.get("image_key_path"), list, json_path, f"{where}.image_key_path")
    if len(keys) != len(images):
        raise BadRecordError(
            json_path,
            f"{where}.image_key_path",
            f"{len(keys)} key files for {len(images)} image files",
        )
    label_field = _label_field(data_cfg)
    names = _require(sample.get(label_field), list, json_path, f"{where}.{label_field}")
    unknown = [n for n in names if not isinstance(n, str) or n not in labels]
    if unknown and data_cfg.get("unknown_labels", "error") != "ignore":
        raise BadRecordError(
            json_path, f"{where}.{label_field}", f"labels not in the label dict: {unknown}"
        )
    for field, paths in (("image_data_path", images), ("image_key_path", keys)):
        for p, raw in enumerate(paths):
            _require(raw, str, json_path, f"{where}.{field}[{p}]")
    return dict(
        modality=modality,
        where=where,
        images=[
            _data_path(data_cfg, raw, json_path, f"{where}.image_data_path[{p}]")
            for p, raw in enumerate(images)
        ],
        keys=[
            _data_path(data_cfg, raw, json_path, f"{where}.image_key_path[{p}]")
            for p, raw in enumerate(keys)
        ],
        labels=sorted({labels[n] for n in names if n not in unknown}),
        ignored_labels=len(unknown),
    )


def _parse_case(
    link: str,
    case: Any,
    json_path: Path,
    labels: dict[str, int],
    data_cfg: ml_collections.ConfigDict,
) -> dict:
    """Validates one case into a record: file, case key, Dim flag, samples, class count."""
    where = f"[{link!r}]"
    _require(case, dict, json_path, where)
    modalities = _require(case.get("Modalities"), list, json_path, f"{where}.Modalities")
    samples = _require(case.get("Samples"), list, json_path, f"{where}.Samples", nonempty=True)
    if len(modalities) != len(samples):
        raise BadRecordError(
            json_path,
            f"{where}.Modalities",
            f"{len(modalities)} modalities for {len(samples)} samples",
        )
    return dict(
        file=str(json_path),
        case=link,
        is_3d=case.get("Dim") == "3D",
        num_classes=len(labels),
        samples=[
            _parse_sample(s, m, f"{where}.Samples[{i}]", json_path, labels, data_cfg)
            for i, (s, m) in enumerate(zip(samples, modalities))
        ],
    )


def make_source(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated records of ``data.<split>_file`` (e.g. ``train_file``), in file order.

    Every case is checked up front: required fields and their types, label names known to the
    label dict (``data.unknown_labels='ignore'`` drops unknown names instead, as RP3D does,
    and logs how many), modalities known to ``MODALITY_INDEX``, and that every image and key
    file lies inside ``data.root`` and exists. A bad case raises BadRecordError naming the
    JSON file, the case key and the field; with ``data.skip_bad_records`` it is left out
    instead, logged, and listed in the returned dataset's ``skipped_records`` attribute (a
    tuple of errors).
    """
    file_name = data_cfg.get(f"{split}_file")
    if file_name is None:
        raise ValueError(f"data split {split!r} has no data.{split}_file in the config")
    json_path = Path(data_cfg.root) / file_name
    cases = read_json(json_path)
    if not isinstance(cases, dict):
        raise BadRecordError(json_path, None, "expected a JSON object {case URL: case}")
    labels = read_label_dict(data_cfg)
    records, skipped = [], []
    for link, case in cases.items():
        try:
            records.append(_parse_case(link, case, json_path, labels, data_cfg))
        except BadRecordError as err:
            if not data_cfg.get("skip_bad_records", False):
                raise
            skipped.append(err)
    if skipped:
        log.warning(
            "%s: skipped %d of %d cases as bad records; first: %s",
            json_path,
            len(skipped),
            len(cases),
            skipped[0],
        )
    ignored = sum(s["ignored_labels"] for r in records for s in r["samples"])
    if ignored:
        log.warning(
            "%s: ignored %d label names missing from the label dict (data.unknown_labels='ignore')",
            json_path,
            ignored,
        )
    source = grain.MapDataset.source(records)
    source.skipped_records = tuple(skipped)
    return source


# ---------------------------------------------------------------------------------------
# Examples.
# ---------------------------------------------------------------------------------------


def _file_field(record: dict, sample: dict, field: str, plane: int) -> str:
    return f"{Path(record['file']).name}{sample['where']}.{field}[{plane}]"


def _load_plane(
    record: dict, sample: dict, plane: int, data_cfg: ml_collections.ConfigDict
) -> tuple[np.ndarray, int]:
    """One plane: f32 (H, W, D) voxels (identical RGB channels collapsed) and its key slice;
    NaN/Inf voxels per ``data.nonfinite``."""
    try:
        volume = read_npy(
            sample["images"][plane], ndim=(2, 3), nonfinite=nonfinite_policy(data_cfg)
        )
        key = read_npy(sample["keys"][plane])
    except BadRecordError as err:
        field = "image_data_path" if err.path == sample["images"][plane] else "image_key_path"
        raise BadRecordError(
            err.path, _file_field(record, sample, field, plane), err.message
        ) from err
    if not np.issubdtype(volume.dtype, np.number) or not np.issubdtype(key.dtype, np.number):
        raise BadRecordError(
            sample["images"][plane],
            _file_field(record, sample, "image_data_path", plane),
            f"non-numeric arrays ({volume.dtype}, key {key.dtype})",
        )
    if key.size < 1 or key.reshape(-1)[0] != int(key.reshape(-1)[0]):
        raise BadRecordError(
            sample["keys"][plane],
            _file_field(record, sample, "image_key_path", plane),
            f"expected an integer key slice, got {key!r:.60}",
        )
    volume = volume.astype(np.float32).reshape(volume.shape[:2] + (-1,))
    if volume.shape[-1] == 3 and (volume[..., :1] == volume).all():
        volume = volume[..., :1]  # RGB export of a grey image
    return volume, int(key.reshape(-1)[0])


def _resampled_plane(
    volume: np.ndarray,
    key: int,
    data_cfg: ml_collections.ConfigDict,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``rp3d_resample`` of one plane, with its key slice mapped into the kept slices.

    Returns f32 (depth, size, size), f32 (depth,) marks and the key index into depth. An
    out-of-range key becomes a random slice (the middle one on the deterministic path).
    """
    num_slices = volume.shape[-1]
    if not 0 <= key < num_slices:
        key = int(rng.integers(num_slices)) if rng is not None else num_slices // 2
    resampled, marks = rp3d_resample(volume, data_cfg.image_size, data_cfg.depth)
    kept = rp3d_slice_indices(num_slices, data_cfg.depth)
    return resampled, marks, int(np.argmin(np.abs(kept - key)))


def _normalise(
    volumes: np.ndarray, marks: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """Joint min-max to [0, 1] over the real slices of (P, depth, H, W); padding stays 0."""
    real = marks > 0
    out = np.zeros_like(volumes)
    out[real] = scale_intensity(volumes[real], rng=rng)
    return out


def _multi_hot(indices: Sequence[int], count: int) -> np.ndarray:
    labels = np.zeros((count,), np.float32)
    labels[list(indices)] = 1.0
    return labels


def _late_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """RadNet_Dataset_late: one sample, one plane; 3-D cases keep only the key slice."""
    samples = record["samples"]
    sample = samples[int(rng.integers(len(samples))) if rng is not None else 0]
    plane = int(rng.integers(len(sample["images"]))) if rng is not None else 0
    volume, key = _load_plane(record, sample, plane, data_cfg)
    if record["is_3d"]:
        num_slices = volume.shape[-1]
        key = key if 0 <= key < num_slices else num_slices // 2
        volume, key = volume[..., key : key + 1], 0
    resampled, marks, key = _resampled_plane(volume, key, data_cfg, rng)
    table = MODALITY_INDEX[sample["modality"]]
    return dict(
        images=_normalise(resampled[None], marks[None], rng)[..., None],
        marks=marks[None],
        mods=np.array([table[min(plane, len(table) - 1)]], np.int32),
        keys=np.array([key], np.int32),
        labels=_multi_hot(sample["labels"], record["num_classes"]),
    )


def _early_planes(sample: dict, rng: np.random.Generator | None) -> list[int]:
    """Planes a sample contributes to early fusion, as RP3D picks them."""
    count = len(sample["images"])
    if sample["modality"] in _MAX_PLANES:
        return list(range(min(count, _MAX_PLANES[sample["modality"]])))
    return [int(rng.integers(count)) if rng is not None else 0]


def _early_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """RadNet_Dataset_early: up to n_image planes from the shuffled samples, padded."""
    n, depth, size = data_cfg.n_image, data_cfg.depth, data_cfg.image_size
    images = np.zeros((n, depth, size, size), np.float32)
    marks = np.zeros((n, depth), np.float32)
    mods = np.zeros((n,), np.int32)
    keys = np.full((n,), -1, np.int32)
    samples = record["samples"]
    order = rng.permutation(len(samples)) if rng is not None else range(len(samples))
    first, filled = None, 0
    for s in order:
        if filled >= n:
            break
        sample = samples[s]
        if first is None:
            first = sample
        planes = _early_planes(sample, rng)[: n - filled]
        parts = [
            _resampled_plane(*_load_plane(record, sample, p, data_cfg), data_cfg, rng)
            for p in planes
        ]
        block = slice(filled, filled + len(parts))
        marks[block] = [m for _, m, _ in parts]
        images[block] = _normalise(np.stack([v for v, _, _ in parts]), marks[block], rng)
        keys[block] = [k for _, _, k in parts]
        table = MODALITY_INDEX[sample["modality"]]
        mods[block] = [table[min(p, len(table) - 1)] for p in planes]
        filled += len(parts)
    return dict(
        images=images[..., None],
        marks=marks,
        mods=mods,
        keys=keys,
        labels=_multi_hot(first["labels"], record["num_classes"]),
    )


def load_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """One case as the CONTRACT's fixed-shape arrays (module docstring), per ``data.fusion``.

    Late fusion (``RadNet_Dataset_late``): a random sample and plane (``rng=None``: the first
    of each). If the case is flagged ``Dim == "3D"`` only the key slice is kept (key 0).
    Early fusion (``RadNet_Dataset_early``): samples shuffled; CT/MRI give their first planes
    (up to 3), X-ray up to 2, other modalities 1 random plane, until ``data.n_image`` scans;
    the rest is padding (mods 0, keys -1, marks 0). Labels are those of the first sample.
    Each plane goes through ``rp3d_resample`` to ``image_size`` x ``depth``.

    Deliberate differences from the original code:
      * the key slice is mapped to the nearest kept slice when ``D > depth`` (RP3D keeps the
        unmapped index); an out-of-range key becomes a random slice (tested with ``>=``; the
        late dataset tests ``>``); late fusion reports the scan's modality index, not 0;
      * early fusion resamples every plane (RP3D copies the arrays unresampled and so needs
        256 x 256 x <=32 data) and collapses identical RGB channels as the late dataset does
        (RP3D's early dataset keeps them as 3 slices);
      * min-max runs over real slices only, jointly over the planes of one sample as in RP3D,
        and padding stays 0 (RP3D's early dataset includes its zero padding in the min-max,
        and fills a constant sample's padding with noise too); a constant sample becomes
        N(0, 1) noise before the min-max, as in RP3D.
    """
    if data_cfg.fusion == "late":
        return _late_example(record, data_cfg, rng)
    if data_cfg.fusion == "early":
        return _early_example(record, data_cfg, rng)
    raise ValueError(f"data.fusion {data_cfg.fusion!r} unknown; use 'late' or 'early'")
