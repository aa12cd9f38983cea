"""RadFM's task files (spec mllm.md §1.7): validated records, examples and 2D/3D batches.

``data.tasks`` maps a dataset name to its task kind and one file per split (paths relative
to ``data.root``), e.g. ``{"radiovqa": {"task": "vqa", "train": "radio_vqa_train.csv"}}``:

  task               file  fields                                         images
  modality           csv   image_path, answer (+ ``modality_set`` json)   one 3D scan
  vqa                csv   image_path, question, answer                   npy: S scans; png: one
  caption            json  pre, pat, npy_path, finding, impression        S scans
  rationale          json  pre, pat, npy_path, radiographic_features,     S scans
                           articles, title (+ optional ``article_set``)
  diagnosis_open     csv   image_path, label (pool ``prompts``: cls_prompt, mammo_prompt,
                           spinexr_prompt or report_prompt for MIMIC reports)
  diagnosis_closed   csv   image_path, disease, label (0/1 -> no/yes)

A record is 2D (PNG/JPEG) or 3D (``.npy`` as the original ``(S, 3, H, W, D)`` or
``(3, H, W, D)``; NIfTI). Examples are channels-last: ``images`` f32 ``(S, D, H, W, 3)`` at the
file's size, in [0, 1] (3D: one min-max over the file, as the original; 2D: /dtype max;
grey -> 3 channels), plus the text arrays of ``radjax.papers.radfm.text.encode_sample``.
``radfm_batches`` groups them as RadFM's sampler and collator do (all-2D or all-3D batches).

Prompts: radjax's own pools (``prompts.json`` beside this module: original file stem -> that
file's content, e.g. ``{"yes_no_prompt": {"caption_prompt": [...]}}``). ``data.radfm_prompt_file``
may name another JSON of that schema, or a directory holding the original ``*_prompt.json``.
"""

from __future__ import annotations

import collections
import csv
import functools
import logging
import math
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from radjax.data import batching, specs
from radjax.data.errors import BadRecordError
from radjax.data.phantoms import ensure_phantoms
from radjax.data.pipeline import REPAIRED
from radjax.data.readers import (
    array_shape,
    nonfinite_policy,
    read_image,
    read_json,
    read_nifti,
    read_npy,
    require_files,
    resolve_path,
)
from radjax.data.tokenizers import phantom_tokenizer
from radjax.data.transforms import resize
from radjax.papers.radfm.text import (
    IGNORE,
    ImageTokenLayout,
    encode_sample,
    load_radfm_tokenizer,
    register_image_tokens,
)

log = logging.getLogger(__name__)

PROMPTS_FILE = Path(__file__).parent / "prompts.json"
_CSV_FIELDS = {
    "modality": ("image_path", "answer"),
    "vqa": ("image_path", "question", "answer"),
    "diagnosis_open": ("image_path", "label"),
    "diagnosis_closed": ("image_path", "disease", "label"),
}
_JSON_FIELDS = {
    "caption": ("pre", "pat", "npy_path", "finding", "impression"),
    "rationale": ("pre", "pat", "npy_path", "radiographic_features", "articles", "title"),
}
_POOLS = {
    "modality": "modality_prompt",
    "caption": "caption_prompt",
    "rationale": "radiology_feature_prompt",
    "diagnosis_open": "cls_prompt",
    "diagnosis_closed": "yes_no_prompt",
}
# (pool, key) prompt lists each task draws from; pool None = the task's own pool.
_PROMPTS_USED = {
    "modality": ((None, "caption_prompt"), (None, "modality_prompt")),
    "caption": ((None, "caption_prompt"),),
    "rationale": ((None, "caption_prompt"), ("yes_no_prompt", "caption_prompt")),
    "diagnosis_open": ((None, "caption_prompt"),),
    "diagnosis_closed": ((None, "caption_prompt"),),
}
# Task ids of the ``task`` batch field (evaluation reports each task separately).
TASKS = ("modality", "vqa", "caption", "rationale", "diagnosis_open", "diagnosis_closed")
_LISTS = ("radiographic_features", "articles")
_MAY_BE_EMPTY = ("pre", "pat", "finding", "impression")
_EXT_2D = (".png", ".jpg", ".jpeg")
_EXT_3D = (".npy", ".nii", ".nii.gz")
# The rationale answer joins the articles and the features with this sentence (spec §1.7).
RATIONALE_JOIN = "The Radiographic features can be summarized as follows."


# ---------------------------------------------------------------------------------------
# Config, tokenizer and prompts.
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _text_tools(tokenizer: str, max_images: int, tokens_per_image: int):
    base = phantom_tokenizer() if tokenizer == "phantom" else load_radfm_tokenizer(tokenizer)
    layout = ImageTokenLayout(len(base), max_images, tokens_per_image)
    return register_image_tokens(base, layout), layout


def text_tools(data_cfg: ml_collections.ConfigDict) -> tuple[Any, ImageTokenLayout]:
    """(tokenizer with image tokens, layout) from ``data.tokenizer`` ('phantom' or a local
    HF directory), ``data.max_images`` (10) and ``data.tokens_per_image`` (32); cached."""
    return _text_tools(
        str(data_cfg.get("tokenizer", "phantom")),
        int(data_cfg.get("max_images", 10)),
        int(data_cfg.get("tokens_per_image", 32)),
    )


@functools.lru_cache(maxsize=4)
def _prompt_pools(location: str) -> dict[str, dict[str, list[str]]]:
    path = Path(location)
    if path.is_dir():
        return {p.stem: read_json(p) for p in sorted(path.glob("*_prompt.json"))}
    return read_json(path)


def prompts(
    data_cfg: ml_collections.ConfigDict, pool: str, key: str = "caption_prompt"
) -> list[str]:
    """The non-empty prompt list ``pool`` / ``key`` (``data.radfm_prompt_file`` or shipped)."""
    location = data_cfg.get("radfm_prompt_file") or PROMPTS_FILE
    entry = _prompt_pools(str(location))
    for name in (pool, key):
        entry = entry.get(name) if isinstance(entry, dict) else None
    if not isinstance(entry, list) or not entry or not all(isinstance(s, str) for s in entry):
        raise BadRecordError(location, f"{pool}.{key}", "expected a non-empty list of strings")
    return entry


def _phantoms_enabled(data_cfg: ml_collections.ConfigDict) -> bool:
    return bool(data_cfg.get("phantoms", {}).get("enabled", False))


def _tasks(data_cfg: ml_collections.ConfigDict):
    """``data.tasks``, or the phantom task files when it is empty and phantoms are on
    (only ``data.phantom_tasks`` when that names some)."""
    if data_cfg.get("tasks") or not _phantoms_enabled(data_cfg):
        return data_cfg.get("tasks") or {}
    return phantom_tasks(tuple(data_cfg.get("phantom_tasks", ())))


def data_files(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """Files a run reads from ``data.root``: every task's split files and its modality or
    article set (the string values of ``_tasks`` but ``task`` and ``prompts``)."""
    return sorted(
        {
            value
            for spec in _tasks(data_cfg).values()
            for key, value in spec.items()
            if key not in ("task", "prompts") and isinstance(value, str) and value
        }
    )


def ensure_data(data_cfg: ml_collections.ConfigDict) -> None:
    """Checks that ``data.root`` holds ``data_files``; with ``data.phantoms.enabled`` first
    writes RadFM phantoms (``radjax.papers.radfm.phantoms``) into a missing or empty root
    (``radjax.data.phantoms.ensure_phantoms``; a root holding other files is never written to).

    Raises:
      FileNotFoundError: naming the root and the first missing file.
      ValueError: ``data.tasks`` is empty with phantoms off; ``data.nonfinite`` is unknown.
    """
    from radjax.papers.radfm.phantoms import write_radfm_phantoms

    nonfinite_policy(data_cfg)
    if _phantoms_enabled(data_cfg):
        ensure_phantoms(
            data_cfg,
            lambda out, p: write_radfm_phantoms(
                out,
                p.num_train,
                p.num_test,
                seed=p.get("seed", 0),
                image_size=p.get("image_size", 64),
                max_depth=p.get("max_depth", 16),
            ),
            "RadFM task files",
        )
    elif not data_cfg.get("tasks"):
        raise ValueError("data.tasks is empty and data.phantoms.enabled is off: name task files")
    require_files(data_cfg.root, data_files(data_cfg), "RadFM task files")


def complete_config(config: ml_collections.ConfigDict) -> None:
    """Fills what the data decides (called after ``ensure_data``): ``data.tasks`` (``_tasks``:
    the phantom files when empty and phantoms are on), ``model.llm.vocab_size`` = the
    tokenizer's text vocabulary V, ``model.eos_token_id`` / ``model.pad_token_id``.

    Raises:
      ValueError: ``data.tokens_per_image`` differs from ``model.vision.num_latents``.
    """
    d, m = config.data, config.model
    if not d.get("tasks"):
        d.tasks = _tasks(d)
    if int(d.get("tokens_per_image", 32)) != int(m.vision.num_latents):
        raise ValueError(
            f"data.tokens_per_image {d.get('tokens_per_image', 32)} must equal "
            f"model.vision.num_latents {m.vision.num_latents}"
        )
    tokenizer, layout = text_tools(d)
    m.llm.vocab_size = layout.text_vocab_size
    m.eos_token_id = int(tokenizer.eos_token_id)
    m.pad_token_id = int(tokenizer.pad_token_id)


def most_frequent_answers(data_cfg: ml_collections.ConfigDict, split: str) -> dict[str, str]:
    """Each task's most frequent answer in ``split`` (deterministic questions, as evaluation
    asks them): the constant-answer baseline of ``radjax.papers.radfm.metrics``."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record in make_source(data_cfg, split):
        counts[record["task"]][_question_answer(record, data_cfg, None)[1].replace("•", "")] += 1
    return {task: c.most_common(1)[0][0] for task, c in counts.items()}


def phantom_tasks(names: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """``data.tasks`` for the files of ``radjax.papers.radfm.phantoms`` (train and test):
    every task, or those ``names``."""
    from radjax.papers.radfm.phantoms import SPLITS, TASKS, task_file

    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise ValueError(f"data.phantom_tasks: unknown tasks {unknown}; known: {list(TASKS)}")

    extra = {
        "modality": {"modality_set": "modality_set.json"},
        "rationale": {"article_set": "articles.json"},
    }
    return {
        task: {
            "task": task,
            **{split: task_file(task, split) for split in SPLITS},
            **extra.get(task, {}),
        }
        for task in TASKS
        if not names or task in names
    }


# ---------------------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------------------


def _image_field(task: str) -> str:
    return "npy_path" if task in _JSON_FIELDS else "image_path"


def _image_file(data_cfg, raw: Any, file: Path, field: str) -> tuple[str, bool]:
    """A file's image path -> (absolute path inside data.root, is_3d); checks it exists."""
    if not isinstance(raw, str) or not raw:
        raise BadRecordError(file, field, f"expected a path, got {raw!r:.60}")
    name = raw.lower()
    if not name.endswith(_EXT_2D + _EXT_3D):
        raise BadRecordError(
            file, field, f"unknown image type {raw!r}; expected one of {_EXT_2D + _EXT_3D}"
        )
    try:
        path = resolve_path(data_cfg.root, raw)
    except BadRecordError as err:
        raise BadRecordError(file, field, err.message) from err
    if not path.is_file():
        raise BadRecordError(file, field, f"file not found: {path}")
    return str(path), name.endswith(_EXT_3D)


def _csv_rows(file: Path, columns: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(where, row) pairs of a CSV with ``columns``; where = ``row N`` (1 = first data row)."""
    if not file.is_file():
        raise BadRecordError(file, None, "file not found")
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise BadRecordError(
                file, missing[0], f"missing column(s) {missing}; found {reader.fieldnames}"
            )
        return [(f"row {i}", row) for i, row in enumerate(reader, 1)]


def _json_rows(file: Path) -> list[tuple[str, dict]]:
    """(where, item) pairs of a JSON list of objects; where = ``[i]``."""
    items = read_json(file)
    if not isinstance(items, list):
        raise BadRecordError(file, None, "expected a JSON list of records")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRecordError(file, f"[{i}]", "expected a JSON object")
    return [(f"[{i}]", item) for i, item in enumerate(items)]


def _text(value: Any, file: Path, field: str) -> Any:
    """A required string field (non-empty unless it is one of ``_MAY_BE_EMPTY``), or a list of
    strings for ``_LISTS`` fields."""
    name = field.rsplit(".", 1)[-1]
    if name in _LISTS:
        ok, kind = (
            isinstance(value, list) and all(isinstance(v, str) for v in value),
            "a list of strings",
        )
    else:
        ok = isinstance(value, str) and (name in _MAY_BE_EMPTY or value.strip() != "")
        kind = "a string" if name in _MAY_BE_EMPTY else "a non-empty string"
    if not ok:
        raise BadRecordError(file, field, f"expected {kind}, got {value!r:.60}")
    return value


def _binary(value: Any, file: Path, field: str) -> str:
    """A 0/1 label -> 'no'/'yes'."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number not in (0.0, 1.0):
        raise BadRecordError(file, field, f"expected 0 or 1, got {value!r}")
    return "yes" if number == 1.0 else "no"


def _record(data_cfg, task: str, file: Path, where: str, row: dict) -> dict:
    """One validated record: task, file, where, image path, is_3d and the text fields."""
    image_field = _image_field(task)
    image, is_3d = _image_file(data_cfg, row.get(image_field), file, f"{where}.{image_field}")
    out = dict(task=task, file=str(file), where=where, image=image, is_3d=is_3d)
    fields = _JSON_FIELDS.get(task) or _CSV_FIELDS[task]
    for name in fields:
        if name != image_field:
            out[name] = _text(row.get(name), file, f"{where}.{name}")
    if task == "diagnosis_closed":
        out["label"] = _binary(row.get("label"), file, f"{where}.label")
    return out


def _choices(data_cfg, spec, key: str, default: list[str], file: Path) -> list[str]:
    """Modality / article set of a task (``spec[key]`` JSON, else ``default``); >= 2 distinct."""
    if spec.get(key):
        path = Path(data_cfg.root) / spec[key]
        raw = read_json(path)
        values = raw.get("modality") if key == "modality_set" and isinstance(raw, dict) else raw
        if not isinstance(values, (list, dict)):
            raise BadRecordError(
                path,
                "modality" if key == "modality_set" else None,
                "expected a list (modality set) or an object (article set)",
            )
        default = [str(v) for v in values]
    values = sorted(set(default))
    if len(values) < 2:
        raise BadRecordError(file, key, f"yes/no questions need >= 2 distinct values, got {values}")
    return values


def _task_records(data_cfg, name: str, spec, split: str) -> tuple[list[dict], list[BadRecordError]]:
    """Records of one ``data.tasks`` entry for ``split`` and the errors of skipped rows."""
    task = spec.get("task")
    if task not in _POOLS and task != "vqa":
        raise ValueError(
            f"data.tasks.{name}.task {task!r} unknown; use one of {sorted([*_POOLS, 'vqa'])}"
        )
    file = Path(data_cfg.root) / spec[split]
    rows = _json_rows(file) if task in _JSON_FIELDS else _csv_rows(file, _CSV_FIELDS[task])
    records, skipped = [], []
    for where, row in rows:
        try:
            records.append(_record(data_cfg, task, file, where, row) | {"dataset": name})
        except BadRecordError as err:
            if not data_cfg.get("skip_bad_records", False):
                raise
            skipped.append(err)
    if task == "modality":
        others = _choices(data_cfg, spec, "modality_set", [r["answer"] for r in records], file)
    elif task == "rationale":
        others = _choices(data_cfg, spec, "article_set", [r["title"] for r in records], file)
    else:
        others = None
    pool = spec.get("prompts", _POOLS.get(task))
    for own, key in _PROMPTS_USED.get(task, ()):
        prompts(data_cfg, own or pool, key)  # fail now, not mid-training
    for r in records:
        r.update(choices=others, pool=pool)
    return records, skipped


def make_source(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated records of every ``data.tasks`` entry that lists ``split`` (entries in
    ConfigDict order, i.e. sorted by name; rows in file order).

    Each record: ``task, dataset, file, where, image, is_3d, index`` and its text fields.
    Missing files and columns, empty fields, unknown image types, images outside the root or
    missing raise BadRecordError naming file, row and field; under ``data.skip_bad_records``
    the row is left out and listed in ``skipped_records``.
    """
    records, skipped = [], []
    for name, spec in data_cfg.tasks.items():
        if spec.get(split):
            found, bad = _task_records(data_cfg, name, spec, split)
            records += found
            skipped += bad
    if skipped:
        log.warning("skipped %d bad RadFM records; first: %s", len(skipped), skipped[0])
    for i, r in enumerate(records):
        r["index"] = i
    source = grain.MapDataset.source(records)
    source.skipped_records = tuple(skipped)
    return source


# ---------------------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------------------


def _min_max(x: np.ndarray) -> np.ndarray:
    """One min-max to [0, 1] over the whole array (RadFM normalises a file at once); a
    constant array becomes zeros (the original produced NaN and substituted noise)."""
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _load_3d(path: str, nonfinite: str) -> np.ndarray:
    """f32 (S, D, H, W, 3) from npy ``(S, 3, H, W, D)``/``(3, H, W, D)`` or a 3-D NIfTI;
    NaN/Inf voxels per ``nonfinite`` ('error' or 'zero')."""
    if path.lower().endswith(".npy"):
        array = read_npy(path, ndim=(4, 5), nonfinite=nonfinite).astype(np.float32)
        array = array[None] if array.ndim == 4 else array
        if array.shape[1] != 3:
            raise BadRecordError(
                path, None, f"expected (S, 3, H, W, D) or (3, H, W, D), got {array.shape}"
            )
        array = array.transpose(0, 4, 2, 3, 1)
    else:  # NIfTI (i, j, k) = (W, H, D)
        array = read_nifti(path, ndim=3, nonfinite=nonfinite).array
        array = array.transpose(2, 1, 0)[None, ..., None]
        array = np.repeat(array, 3, axis=-1)
    return _min_max(array).astype(np.float32)


def _load_2d(path: str) -> np.ndarray:
    """f32 (1, 1, H, W, 3) in [0, 1]: pixel / dtype max, grey repeated, alpha dropped."""
    pixels = read_image(path)
    scale = np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else 1.0
    image = pixels.astype(np.float32) / scale
    image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, -1)
    return image[None, None]


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """torchvision ``RandomResizedCrop``'s crop of (H, W, C) (the resize happens in ``collate``):
    up to 10 draws of area fraction and log-uniform aspect ratio, else the centre crop with
    the ratio clamped."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            return image[top : top + h, left : left + w]
    aspect = width / height
    w, h = (
        (width, round(width / ratio[0]))
        if aspect < ratio[0]
        else (round(height * ratio[1]), height)
        if aspect > ratio[1]
        else (width, height)
    )
    top, left = (height - h) // 2, (width - w) // 2
    return image[top : top + h, left : left + w]


def load_images(record: dict, nonfinite: str = "error") -> np.ndarray:
    """The record's images, f32 (S, D, H, W, 3) in [0, 1]; 2D images have S = D = 1.
    ``nonfinite``: NaN/Inf voxels of 3D files are an error, or set to 0 ('zero')."""
    try:
        if record["is_3d"]:
            return _load_3d(record["image"], nonfinite)
        return _load_2d(record["image"])
    except BadRecordError as err:
        raise BadRecordError(
            record["file"],
            f"{record['where']}.{_image_field(record['task'])}",
            str(err),  # the image file, its header field (if any) and the problem
        ) from err


# ---------------------------------------------------------------------------------------
# Questions and answers.
# ---------------------------------------------------------------------------------------


def _pick(items: list[str], rng: np.random.Generator | None) -> str:
    return items[int(rng.integers(len(items)))] if rng is not None else items[0]


def _coin(rng: np.random.Generator | None) -> bool:
    """A fair coin; False on the deterministic path (rng None)."""
    return rng is not None and bool(rng.random() < 0.5)


def _other(value: str, choices: list[str], rng: np.random.Generator | None) -> str:
    others = [c for c in choices if c != value]
    return _pick(others, rng)


def _modality_qa(record, data_cfg, rng) -> tuple[str, str]:
    """Open question (50%) or yes/no "is it a {modality} scan" (25% yes, 25% no).

    The original's "no" branch asks about the TRUE modality while answering "no"; that bug is
    reproduced only with ``data.radfm_modality_no_bug=True``.
    """
    truth = record["answer"]
    if not _coin(rng):
        return _pick(prompts(data_cfg, record["pool"]), rng), truth
    template = _pick(prompts(data_cfg, record["pool"], "modality_prompt"), rng)
    if _coin(rng):
        return template.replace("modality", truth), "yes"
    other = _other(truth, record["choices"], rng)
    asked = truth if data_cfg.get("radfm_modality_no_bug", False) else other
    return template.replace("modality", asked), "no"


def _caption_qa(record, data_cfg, rng) -> tuple[str, str]:
    prompt = _pick(prompts(data_cfg, record["pool"]), rng)
    question = record["pat"] + " " + record["pre"] + " " + prompt
    return question, f"Finding: {record['finding']}Impression: {record['impression']}"


def _rationale_qa(record, data_cfg, rng) -> tuple[str, str]:
    """50%: diagnosis + features; 50%: yes/no on the title (or another article's title)."""
    if not _coin(rng):
        prompt = _pick(prompts(data_cfg, record["pool"]), rng)
        question = record["pat"] + " " + record["pre"] + " " + prompt
        features = " ".join(record["radiographic_features"])
        return question, " ".join(record["articles"]) + RATIONALE_JOIN + features
    template = _pick(prompts(data_cfg, "yes_no_prompt"), rng)
    if _coin(rng):
        return template.replace("disease", record["title"]), "yes"
    return template.replace("disease", _other(record["title"], record["choices"], rng)), "no"


def _question_answer(record: dict, data_cfg, rng) -> tuple[str, str]:
    task = record["task"]
    if task == "modality":
        return _modality_qa(record, data_cfg, rng)
    if task == "caption":
        return _caption_qa(record, data_cfg, rng)
    if task == "rationale":
        return _rationale_qa(record, data_cfg, rng)
    if task == "vqa":
        return record["question"], record["answer"]
    if task == "diagnosis_open":
        return _pick(prompts(data_cfg, record["pool"]), rng), record["label"]
    template = _pick(prompts(data_cfg, record["pool"]), rng)  # diagnosis_closed
    return template.replace("disease", record["disease"]), record["label"]


def _positions(record: dict, question: str, count: int, rng) -> list[int]:
    """Character positions of the images: diagnosis tasks put the image at the end; the
    others pick 0 or ``len(question)`` per image (0 on the deterministic path)."""
    if record["task"].startswith("diagnosis"):
        return [len(question)] * count
    return [len(question) if _coin(rng) else 0 for _ in range(count)]


def load_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """One record as arrays (rng None: first prompt, open question, images first).

    With ``rng``, 2D images get RadFM's training crop (``random_resized_crop``; off with
    ``data.random_crop_2d=False``); the original also crops at test time, radjax does not.

    Returns ``images`` f32 (S, D, H, W, 3) at the file's size, ``num_images`` i32 (),
    ``is_3d`` bool (), ``index`` i32 (), ``task`` i32 () (index into ``TASKS``) and
    ``encode_sample``'s ``input_ids``,
    ``attention_mask``, ``labels``, ``entity_mask`` (L,) and ``question_length`` ().
    More than ``data.max_images`` images or text over ``data.max_length`` (2048) raises
    BadRecordError naming file, row and field, as do NaN/Inf voxels unless
    ``data.nonfinite='zero'`` (set to 0).
    """
    tokenizer, layout = text_tools(data_cfg)
    images = load_images(record, nonfinite_policy(data_cfg))
    if rng is not None and not record["is_3d"] and data_cfg.get("random_crop_2d", True):
        images = random_resized_crop(images[0, 0], rng)[None, None]
    where = f"{record['where']}.{_image_field(record['task'])}"
    if len(images) > layout.max_images:
        raise BadRecordError(
            record["file"],
            where,
            f"{len(images)} images exceed data.max_images={layout.max_images}",
        )
    question, answer = _question_answer(record, data_cfg, rng)
    try:
        text = encode_sample(
            question,
            answer,
            _positions(record, question, len(images), rng),
            tokenizer,
            layout,
            int(data_cfg.get("max_length", 2048)),
            faithful_position_quirk=bool(data_cfg.get("faithful_position_quirk", True)),
        )
    except ValueError as err:  # BadRecordError names the file and the row
        raise BadRecordError(record["file"], record["where"], str(err)) from err
    return dict(
        images=images,
        num_images=np.asarray(len(images), np.int32),
        is_3d=np.asarray(record["is_3d"]),
        index=np.asarray(record["index"], np.int32),
        task=np.asarray(TASKS.index(record["task"]), np.int32),
        **text,
    )


# ---------------------------------------------------------------------------------------
# Batches (src/datasampler.py + the DataCollator of src/train.py).
# ---------------------------------------------------------------------------------------


def bucket_depth(max_depth: int, limit: int = 64) -> int:
    """The multiple of 4 in {4, …, limit} nearest to ``max_depth`` (ties: the smaller)."""
    target = 4
    for depth in range(4, limit + 1, 4):
        if abs(depth - max_depth) < abs(target - max_depth):
            target = depth
    return target


def _resize_all(images: np.ndarray, size: tuple[int, int, int], mode: str) -> np.ndarray:
    """(S, D, H, W, 3) -> (S, *size, 3)."""
    return np.stack([resize(image, size, mode=mode) for image in images])


def _sample_stack(images: np.ndarray, size: int) -> np.ndarray:
    """RadFM's per-sample ``stack_images`` for 3D: H, W -> size, D -> bucket (>= 4), nearest."""
    return _resize_all(images, (bucket_depth(max(images.shape[1], 4)), size, size), "nearest")


def batch_geometry(
    image_counts: list[tuple[int, int]], is_3d: bool, data_cfg: ml_collections.ConfigDict
) -> tuple[int, int, int]:
    """(S, D, size) of a batch whose samples hold ``image_counts`` = [(S_b, D_b)] images.

    3D: each sample's depth goes to ``bucket_depth(max(D_b, 4))`` (``stack_images``), the
    batch to ``bucket_depth`` of the largest (limit 32 if the batch is one sample with > 6
    images) and, if it is one sample with depth > 4 and ``data.halve_single_3d`` (True), to
    half ``data.image_size``. 2D: D = 1, ``image_size``. S = the largest S_b.
    """
    size = int(data_cfg.get("image_size", 512))
    count = max(s for s, _ in image_counts)
    if not is_3d:
        return count, 1, size
    many = len(image_counts) == 1 and count > 6
    depth = bucket_depth(max(bucket_depth(max(d, 4)) for _, d in image_counts), 32 if many else 64)
    if len(image_counts) == 1 and depth > 4 and data_cfg.get("halve_single_3d", True):
        size //= 2
    return count, depth, size


def record_image_counts(record: dict) -> tuple[int, int] | None:
    """(S, D) of the record's images from the file header, no pixels read (2D: (1, 1));
    None if the header is unreadable (loading the record then raises the error)."""
    if not record["is_3d"]:
        return 1, 1
    try:
        shape = array_shape(record["image"])
    except BadRecordError:
        return None
    if not record["image"].lower().endswith(".npy"):
        return (1, shape[2]) if len(shape) == 3 else None
    return {4: (1, shape[-1]), 5: (shape[0], shape[-1])}.get(len(shape))


_TEXT_KEYS = {
    "input_ids": np.int32,
    "attention_mask": np.int32,
    "labels": np.int32,
    "entity_mask": bool,
    "question_length": np.int32,
    "num_images": np.int32,
    "is_3d": bool,
    "index": np.int32,
    "task": np.int32,
}


def collate(
    examples: list[dict],
    data_cfg: ml_collections.ConfigDict,
    geometry: tuple[int, int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Stacks examples of one kind (all 2D or all 3D) into a batch of B = len(examples).

    Images go to ``geometry`` = (S, D, size) (default: ``batch_geometry`` of the examples):
    3D: each sample's images are stacked as ``stack_images`` does (H, W -> ``image_size``),
    then resized to (D, size, size), all nearest. 2D: H, W -> size bilinear (the original
    resizes its crop bicubic), D = 1. Images are zero-padded to S; ``image_mask`` bool
    (B, S) marks the real ones. An empty ``examples`` needs ``geometry`` and
    ``data.max_length``: it gives B = 0. ``pipeline.REPAIRED`` bool (B,) marks the examples
    whose non-finite voxels were set to 0 (False for examples not loaded by the pipeline).
    """
    kinds = {bool(e["is_3d"]) for e in examples}
    if len(kinds) > 1:
        raise ValueError("a RadFM batch must be all 2D or all 3D")
    is_3d = kinds == {True}
    count, depth, size = geometry or batch_geometry(
        [e["images"].shape[:2] for e in examples], is_3d, data_cfg
    )
    images = np.zeros((len(examples), count, depth, size, size, 3), np.float32)
    mask = np.zeros((len(examples), count), bool)
    for b, e in enumerate(examples):
        if is_3d:
            stack = _resize_all(
                _sample_stack(e["images"], int(data_cfg.get("image_size", 512))),
                (depth, size, size),
                "nearest",
            )
        else:
            stack = _resize_all(e["images"], (1, size, size), "bilinear")
        images[b, : len(stack)], mask[b, : len(stack)] = stack, True
    length = (int(data_cfg.get("max_length", 2048)),)
    text = {
        k: (
            np.stack([e[k] for e in examples])
            if examples
            else np.zeros(
                (0,)
                + (length if k in ("input_ids", "attention_mask", "labels", "entity_mask") else ()),
                dtype,
            )
        )
        for k, dtype in _TEXT_KEYS.items()
    }
    repaired = np.array([bool(e.get(REPAIRED, False)) for e in examples], bool)
    return dict(images=images, image_mask=mask, **text, **{REPAIRED: repaired})


def batch_rows(data_cfg: ml_collections.ConfigDict, is_3d: bool) -> int:
    """B of a batch: ``data.batch_size_3d`` (1) or ``data.batch_size_2d`` (4)."""
    return int(data_cfg.get("batch_size_3d", 1) if is_3d else data_cfg.get("batch_size_2d", 4))


def geometry_spec(
    data_cfg: ml_collections.ConfigDict, is_3d: bool, geometry: tuple[int, int, int]
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a training batch of one kind at ``geometry`` = (S, D, size) on one
    process: ``collate``'s fields with B = ``batch_rows`` and ``valid`` bool (B,) (the
    pipeline takes ``skipped`` and ``pipeline.REPAIRED`` out before the step)."""
    empty = collate([], data_cfg, geometry)
    del empty[REPAIRED]
    rows = {k: (v.shape[1:], v.dtype) for k, v in empty.items()}
    return specs.rows_of(batch_rows(data_cfg, is_3d), {**rows, "valid": ((), np.bool_)})


def _deepest_bucket(config: ml_collections.ConfigDict) -> int:
    """The deepest 3D bucket the model reads: a multiple of 4 up to 64 (``bucket_depth``'s
    limit) and up to ``model.vision.frames``."""
    return max(4, min(64, int(config.model.vision.frames)) // 4 * 4)


def _tokens(config: ml_collections.ConfigDict, is_3d: bool, geometry: tuple[int, int, int]) -> int:
    """B x (L + S x ViT patches of one image): the rows' LLM and ViT sequence lengths."""
    count, depth, size = geometry
    v = config.model.vision
    patches = -(-depth // int(v.frame_patch_size)) * (size // int(v.patch_size)) ** 2
    return batch_rows(config.data, is_3d) * (int(config.data.max_length) + count * patches)


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of the largest training batch the config allows, on one process
    (``radjax.data.specs``; ``geometry_spec``), from config fields.

    Batches vary (all-2D or all-3D, S images, the depth bucket, half size for one deep 3D
    row), so the candidates are the 2D batch of ``data.batch_size_2d`` rows at S =
    ``data.max_images`` and the 3D batches of ``data.batch_size_3d`` rows at the deepest
    bucket (``_deepest_bucket``) with S = ``data.max_images`` or, where a single row of more
    than 6 images is held to depth 32, S = 6; their (S, D, size) follow ``batch_geometry``.
    The largest is the one with the most tokens, B x (``data.max_length`` + S x ViT patches
    of one image): what the activations of the LLM and the ViT grow with. ``train.batch_size``
    is nominal here (the format sets the rows). The released sizes: the 2D batch, images
    (4, 10, 1, 512, 512, 3).
    """
    d = config.data
    images, depth = int(d.max_images), _deepest_bucket(config)
    candidates = [(False, batch_geometry([(images, 1)] * batch_rows(d, False), False, d))]
    for count in sorted({images, min(images, 6)}):
        rows = batch_rows(d, True)
        candidates.append((True, batch_geometry([(count, depth)] * rows, True, d)))
    is_3d, geometry = max(candidates, key=lambda c: _tokens(config, *c))
    return geometry_spec(d, is_3d, geometry)


def _collate_global(
    data_cfg: ml_collections.ConfigDict, examples: list[dict], records: list[dict], is_3d: bool
) -> dict[str, np.ndarray]:
    """``collate`` at the geometry of the whole global batch, read from its file headers."""
    counts = [c for c in map(record_image_counts, records) if c is not None]
    return collate(examples, data_cfg, batch_geometry(counts or [(1, 4)], is_3d, data_cfg))


def bucketing(data_cfg: ml_collections.ConfigDict) -> batching.Bucketing:
    """RadFM's choices (``batch_generation`` of src/datasampler.py): 2D and 3D records in
    separate batches of ``batch_rows`` rows; padded rows have labels -100 and index -1."""
    return batching.Bucketing(
        key=lambda record: bool(record["is_3d"]),
        rows=functools.partial(batch_rows, data_cfg),
        load_example=load_example,
        collate=functools.partial(_collate_global, data_cfg),
        fill={"labels": IGNORE, "index": -1},
    )


def radfm_batches(
    source: grain.MapDataset,
    data_cfg: ml_collections.ConfigDict,
    *,
    seed: int = 0,
    train: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """This process's RadFM batches of ``source`` (``make_source``):
    ``radjax.data.batching.bucketed_batches`` with RadFM's ``bucketing``.

    train: an endless stream of epochs; epoch e shuffles with ``(seed, e)`` and examples
    draw prompts, branches and image positions from per-row seeded rngs.
    eval (train=False): one pass, 2D batches then 3D batches in record order, deterministic
    examples; every record appears exactly once (``index``), short batches padded.
    With ``process_count`` P > 1 every process walks the same plan of global batches of
    P x B rows and loads its B rows; the batch shapes come from the headers of all P x B
    files, so the processes agree on them.

    Each element: ``images`` f32 (B, S, D, H, W, 3), ``image_mask`` bool (B, S),
    ``input_ids``/``attention_mask``/``labels`` i32 (B, L), ``entity_mask`` bool (B, L),
    ``question_length``/``num_images``/``index``/``task`` i32 (B,), ``is_3d``/``valid`` bool
    (B,), ``skipped`` i32 () — with B = ``batch_size_2d`` or ``batch_size_3d``, L =
    ``max_length``. Padded and skipped rows have ``valid`` False, labels -100, entity_mask
    False, index -1. Shapes vary between batches (kind, S, depth bucket, size), so a jitted
    step compiles once per shape.
    """
    return batching.bucketed_batches(
        source,
        data_cfg,
        bucketing(data_cfg),
        seed=seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
    )


# The format batches itself (radjax.data.pipeline calls this instead of its own batching).
batches = radfm_batches
