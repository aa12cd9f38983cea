"""Uni-Med's datasets (MSIIP/Uni-Med @ 5c902a5, ``uni_med/datasets/datasets``): validated
records, examples in the original prompt template, and one-dataset batches.

``data.tasks`` maps a dataset name (the original's builder names) to its ``kind`` and paths
(relative to ``data.root``):

  kind            task      layout                                              original class
  slake_vqa       vqa       ``dir``/{train,test}.txt, ``dir``/imgs/<id>/question.json  SlakeVQADataset
  slake_ref       refer     ``dir``/{train,test}.txt, ``dir``/imgs/<id>/detection.json ReferSlakeDataset
  slake_invref    identify  (as slake_ref)                                      InvReferSlakeDataset
  mimic_caption   caption   ``<split>``: annotation JSON (key = split), ``images``  MimicCaptionDataset
                            (image = images/files/<image_path[0]>)
  medmnist        cls       ``dir``/<flag>_<size>.npz (MedMNIST+), ``flags``     MedMNISTDataset_2D
                            (comma list), ``size``; labels and question of the
                            flag from ``MEDMNIST_INFO`` or ``dir``/<flag>_info.json

Texts, as the original builds them (``blip_caption_new`` = ``text_processor``):

* training instruction ``"<Img><ImageHere></Img> {pool choice} "`` wrapped by the chat
  template ``"[INST] {} [/INST]"`` (so two spaces before ``[/INST]``); tokenised in two
  segments split at ``<ImageHere>``, each without special tokens; ``[BOS]`` first (an
  embedding prepended in the original), ``T`` image placeholders between the segments; the
  target is ``answer + "</s>"`` tokenised alone (``add_special_tokens=False``), at most
  ``data.max_txt_len`` (1024) tokens (a truncated answer loses its EOS, as the original's).
* evaluation (``rng`` None): the eval scripts' question (``EVAL_QUESTIONS``) in their
  template ``"<s>[INST] <Img><ImageHere></Img> {question} [/INST]"`` whose first segment is
  tokenised WITH special tokens: BOS twice (the tokenizer's and the literal ``<s>``), one
  space before ``[/INST]`` (two for the caption question, which ends with a space).
  ``data.eval_prompt='train'`` uses the training template instead.
* boxes: ``[x, y, w, h]`` pixels -> ``[x / W, y / H, (x + w) / W, (y + h) / H] * 100``,
  ``int()`` (truncation) -> ``"{<x1><y1><x2><y2>}"``.
* ``data.truncate_50_words`` (default True, the original's ``max_words=50``): questions,
  answers, object names and reports keep at most 50 space-separated words, ground truths too.

Examples: ``images`` f32 (S, S, 3) (``blip_preprocess``: bicubic squash to
``data.image_size``, CLIP mean / std), ``input_ids`` / ``attention_mask`` / ``labels`` i32 (L,)
right-padded (labels ``IGNORE`` but on answer + EOS; image positions hold
``IMAGE_PLACEHOLDER``), ``prompt_length`` i32 () (the tokens up to ``[/INST]``), ``task`` i32
() (index into ``connector.TASKS``), ``closed`` bool () (VQA ``answer_type`` CLOSED), ``box`` f32
(4,) the ground-truth box in pixels ``[x, y, x + w, y + h]`` (REC), ``image_wh`` f32 (2,),
``index`` i32 ().

Batches (``batches``): one dataset per training batch, as the original's ``MultiIterLoader``
draws one dataset per step (``data.one_task_per_batch``). With sampling ratios
(``sample_ratios``: ``data.sample_ratio.<dataset>`` or ``data.tasks.<dataset>.sample_ratio``,
the original's ``datasets.<name>.sample_ratio``) each batch's dataset is drawn with
probability ``ratio / sum of ratios`` and its batches come from that dataset's own shuffled
epochs (``radjax.data.batching.WeightedBatchPlan``); without them a dataset's share of the
batches follows its record count. Evaluation batches one dataset at a time.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from radjax.data import batching, specs
from radjax.data.errors import BadRecordError
from radjax.data.image_processing import blip_preprocess
from radjax.data.phantoms import ensure_phantoms
from radjax.data.prompt_answer import IGNORE, pack
from radjax.data.readers import read_json, require_files, resolve_path
from radjax.data.tokenizers import load_tokenizer, phantom_tokenizer
from radjax.papers.uni_med.connector import TASKS

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = -200  # input id of an image position (the splice replaces its embedding)
IMAGE_HERE = "<ImageHere>"
END_SYM = "</s>"  # end_sym of the train config
PROMPT_TEMPLATE = "[INST] {} [/INST]"  # uni_med.py:45 (chat_template True)
EVAL_TEMPLATE = "<s>[INST] <Img><ImageHere></Img> {} [/INST]"  # eval_vqa.py conv_temp
KINDS = {
    "slake_vqa": "vqa",
    "slake_ref": "refer",
    "slake_invref": "identify",
    "mimic_caption": "caption",
    "medmnist": "cls",
}
# Instruction pools of the training datasets (format with the question / object / box).
POOLS = {
    "vqa": (
        "[vqa] {}",
        "[vqa] Based on the image, respond to this question with a short answer: {}",
    ),
    "refer": (
        "[refer] {}",
        "[refer] give me the location of {}",
        "[refer] where is {} ?",
        "[refer] from this image, tell me the location of {}",
        "[refer] the location of {} is",
        "[refer] could you tell me the location for {} ?",
        "[refer] where can I locate the {} ?",
    ),
    "identify": (
        "[identify] {}",
        "[identify] what object is in this location {}",
        "[identify] identify the object present at this location {}",
        "[identify] what is it in {}",
        "[identify] describe this object in {}",
        "[identify] this {} is",
        "[identify] the object in {} is",
    ),
    "caption": (
        "[caption] Describe the given chest x-ray image in detail.",
        "[caption] Take a look at this chest x-ray and describe the findings and impression.",
        "[caption] Could you provide a detailed description of the given x-ray image?",
        "[caption] Describe the given chest x-ray image as detailed as possible.",
        "[caption] What are the key findings in this chest x-ray image?",
    ),
    "cls": ("[cls] {}",),
}
# The evaluation scripts' questions (eval_vqa / eval_ref / eval_identify / eval_caption /
# eval_cls).
EVAL_QUESTIONS = {
    "vqa": "[vqa] Based on the image, respond to this question with a short answer: {}",
    "refer": "[refer] give me the location of {}",
    "identify": "[identify] what object is in this location {}",
    "caption": "[caption] Describe the given chest x-ray image in detail. ",
    "cls": "[cls] {}",
}
# medmnist's INFO of the two flags Uni-Med trains on (labels as in medmnist.info.INFO;
# FormatedDataset turns "x-left" / "x-right" into "left x" / "right x").
MEDMNIST_INFO = {
    "dermamnist": dict(
        question=(
            "Which category does this multi-source dermatoscopic image of common pigmented "
            "skin lesions belong to: actinic keratoses and intraepithelial carcinoma, basal "
            "cell carcinoma, benign keratosis-like lesions, dermatofibroma, melanoma, "
            "melanocytic nevi, or vascular lesions?"
        ),
        label={
            "0": "actinic keratoses and intraepithelial carcinoma",
            "1": "basal cell carcinoma",
            "2": "benign keratosis-like lesions",
            "3": "dermatofibroma",
            "4": "melanoma",
            "5": "melanocytic nevi",
            "6": "vascular lesions",
        },
    ),
    "organsmnist": dict(
        question=(
            "Which category does this CT image belong to: bladder, left femur, right femur, "
            "heart, left kidney, right kidney, liver, left lung, right lung, pancreas, or "
            "spleen?"
        ),
        label={
            "0": "bladder",
            "1": "femur-left",
            "2": "femur-right",
            "3": "heart",
            "4": "kidney-left",
            "5": "kidney-right",
            "6": "liver",
            "7": "lung-left",
            "8": "lung-right",
            "9": "pancreas",
            "10": "spleen",
        },
    ),
}
_BOX = re.compile(r"\{<(\d{1,3})><(\d{1,3})><(\d{1,3})><(\d{1,3})>\}")


# ---------------------------------------------------------------------------------------
# Texts.
# ---------------------------------------------------------------------------------------


def blip_caption_new(s: str, max_words: int | None = 50) -> str:
    """``blip_caption_new`` (blip_processors.py:71-106): runs of >= 2 whitespace characters
    become one space, trailing newlines and surrounding spaces are stripped, and more than
    ``max_words`` space-separated words are cut to the first ``max_words`` (None: no cut). No
    lower-casing, no punctuation removal."""
    s = re.sub(r"\s{2,}", " ", s)
    s = s.rstrip("\n").strip(" ")
    words = s.split(" ")
    return " ".join(words[:max_words]) if max_words is not None and len(words) > max_words else s


def box_string(box: tuple[float, ...], width: float, height: float) -> str:
    """``[x, y, w, h]`` pixels of a ``width`` x ``height`` image -> ``"{<x1><y1><x2><y2>}"`` on
    the 0-100 grid, each ``int()``-truncated (slake_dataset.py:58-66)."""
    x, y, w, h = box
    grid = (x / width * 100, y / height * 100, (x + w) / width * 100, (y + h) / height * 100)
    return "{{<{}><{}><{}><{}>}}".format(*(int(v) for v in grid))


def parse_box(answer: str) -> tuple[int, int, int, int] | None:
    """eval_ref.py: spaces and ``<unk>`` removed, ``{<a><b><c><d>}`` at the start (trailing
    text allowed), the first four integers; None when the answer is no box."""
    answer = answer.replace("<unk>", "").replace(" ", "").strip()
    if not _BOX.match(answer):
        return None
    return tuple(int(v) for v in re.findall(r"\d+", answer)[:4])


def _max_words(data_cfg) -> int | None:
    return 50 if data_cfg.get("truncate_50_words", True) else None


def _text(data_cfg, s: str) -> str:
    return blip_caption_new(s, _max_words(data_cfg))


# ---------------------------------------------------------------------------------------
# Config, tokenizer.
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    return phantom_tokenizer() if name == "phantom" else load_tokenizer(name)


def tokenizer(data_cfg: ml_collections.ConfigDict):
    """``data.tokenizer``: 'phantom' (the shipped phantom tokenizer) or a local HF LLaMA
    tokenizer directory (Llama-2-7b-chat-hf); cached."""
    return _tokenizer(str(data_cfg.get("tokenizer", "phantom")))


def special_ids(tok) -> dict[str, int]:
    """bos / eos / pad ids. The original sets ``pad_token = "$$"``, not a LLaMA piece, so its
    id is the unknown id; padding is masked either way."""
    pad = tok.pad_token_id
    if pad is None:
        pad = tok.unk_token_id if tok.unk_token_id is not None else 0
    return dict(bos=int(tok.bos_token_id), eos=int(tok.eos_token_id), pad=int(pad))


def _phantoms(data_cfg) -> bool:
    return bool(data_cfg.get("phantoms", {}).get("enabled", False))


def phantom_tasks(tasks: tuple[str, ...] = ()) -> dict[str, dict]:
    """``data.tasks`` for ``radjax.papers.uni_med.phantoms`` (its dataset names as the
    original's builders): every task, or those named (``vqa``, ``refer``, ...)."""
    from radjax.papers.uni_med.phantoms import MEDMNIST_FLAG

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"data.phantom_tasks: unknown tasks {unknown}; known: {list(TASKS)}")
    specs = {
        "slakevqa_en": dict(kind="slake_vqa", dir="Slake", lang="en"),
        "ref_slake": dict(kind="slake_ref", dir="Slake"),
        "invref_slake": dict(kind="slake_invref", dir="Slake"),
        "mimic_caption": dict(
            kind="mimic_caption",
            train="MIMIC/annotation.json",
            test="MIMIC/annotation.json",
            images="MIMIC-CXR-JPG",
        ),
        "medmnist_2d_small": dict(kind="medmnist", dir="MedMNIST", flags=MEDMNIST_FLAG, size=64),
    }
    return {name: spec for name, spec in specs.items() if not tasks or KINDS[spec["kind"]] in tasks}


def _tasks(data_cfg) -> dict:
    if data_cfg.get("tasks") or not _phantoms(data_cfg):
        return dict(data_cfg.get("tasks") or {})
    return phantom_tasks(tuple(data_cfg.get("phantom_tasks", ())))


def _splits(data_cfg) -> tuple[str, ...]:
    return tuple(data_cfg.get("splits", ("train", "test")))


def _medmnist_flags(spec) -> list[str]:
    return [f.strip() for f in str(spec.get("flags", "")).split(",") if f.strip()]


def _medmnist_file(spec, flag: str) -> str:
    size = int(spec.get("size", 224))
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    return f"{spec['dir']}/{name}"


def _spec_files(name: str, spec, splits) -> list[str]:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"data.tasks.{name}.kind {kind!r} unknown; use one of {sorted(KINDS)}")
    if kind.startswith("slake"):
        return [f"{spec['dir']}/{split}.txt" for split in splits]
    if kind == "mimic_caption":
        return [spec[split] for split in splits if spec.get(split)]
    files = []
    for flag in _medmnist_flags(spec):
        files.append(_medmnist_file(spec, flag))
        if flag not in MEDMNIST_INFO:
            files.append(f"{spec['dir']}/{flag}_info.json")
    return files


def data_files(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """Files a run reads under ``data.root``: SLAKE split lists, MIMIC annotation files,
    MedMNIST npz (and the info JSON of a flag medmnist's two are not)."""
    splits = _splits(data_cfg)
    return sorted({f for n, s in _tasks(data_cfg).items() for f in _spec_files(n, s, splits)})


def ensure_data(data_cfg: ml_collections.ConfigDict) -> None:
    """Checks that ``data.root`` holds ``data_files``; with ``data.phantoms.enabled`` first
    writes the Uni-Med phantoms into a missing or empty root.

    Raises:
      FileNotFoundError: naming the root and the first missing file.
      ValueError: ``data.tasks`` empty with phantoms off, or an unknown dataset kind.
    """
    from radjax.papers.uni_med.phantoms import write_uni_med_phantoms

    if _phantoms(data_cfg):
        ensure_phantoms(
            data_cfg,
            lambda out, p: write_uni_med_phantoms(
                out,
                p.num_train,
                p.num_test,
                seed=p.get("seed", 0),
                medmnist_size=p.get("medmnist_size", 64),
            ),
            "Uni-Med datasets (SLAKE, MIMIC-CXR captions, MedMNIST)",
        )
    elif not data_cfg.get("tasks"):
        raise ValueError("data.tasks is empty and data.phantoms.enabled is off: name datasets")
    require_files(data_cfg.root, data_files(data_cfg), "Uni-Med datasets")


def complete_config(config: ml_collections.ConfigDict) -> None:
    """Fills what the data decides: ``data.tasks`` (the phantom datasets when empty and
    phantoms are on), ``data.num_image_tokens`` (the connector's T for the ViT's patches),
    ``data.eval_batch_size`` (= ``eval.batch_size``), ``model.llm.vocab_size`` (when 0: the
    tokenizer's size) and ``model.bos/eos/pad_token_id``."""
    from radjax.papers.uni_med.sizes import connector_config, vit_config

    d, m = config.data, config.model
    if not d.get("tasks"):
        d.tasks = _tasks(d)
    vit = vit_config(m)
    patches = (vit.image_size // vit.patch_size) ** 2
    d.num_image_tokens = connector_config(m).num_tokens(patches)
    if int(d.image_size) != int(vit.image_size):
        raise ValueError(
            f"data.image_size {d.image_size} must equal model.vision.img_size {vit.image_size}"
        )
    d.eval_batch_size = int(config.eval.batch_size)
    sample_ratios(d)  # bad ratios raise here, before training
    tok = tokenizer(d)
    if int(m.llm.vocab_size) <= 0:
        m.llm.vocab_size = len(tok)
    ids = special_ids(tok)
    m.bos_token_id, m.eos_token_id, m.pad_token_id = ids["bos"], ids["eos"], ids["pad"]


# ---------------------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------------------


def _string(value: Any, file, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRecordError(file, field, f"expected a non-empty string, got {value!r:.60}")
    return value


def _image_path(data_cfg, rel: str, file, field: str) -> str:
    try:
        path = resolve_path(data_cfg.root, rel)
    except BadRecordError as err:
        raise BadRecordError(file, field, err.message) from err
    if not path.is_file():
        raise BadRecordError(file, field, f"image file not found: {path}")
    return str(path)


def _bbox(value: Any, file, field: str) -> list[float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 4
    ok = ok and all(isinstance(v, (int, float)) and np.isfinite(v) for v in value)
    if not ok:
        raise BadRecordError(file, field, f"expected [x, y, w, h] numbers, got {value!r:.60}")
    if value[2] < 0 or value[3] < 0:
        raise BadRecordError(
            file, field, f"box {list(value)} has a negative width or height (x2 < x1 or y2 < y1)"
        )
    return [float(v) for v in value]


def _image_list(data_cfg, spec, split: str) -> tuple[Path, list[str]]:
    file = Path(data_cfg.root) / spec["dir"] / f"{split}.txt"
    if not file.is_file():
        raise BadRecordError(file, None, "file not found")
    return file, file.read_text().split()


def _slake_vqa(data_cfg, spec, split) -> list[dict]:
    """SlakeVQADataset (train) / eval_vqa's test loader: every ``q_lang`` question of the
    listed images with a non-empty answer (the original leaves the others out)."""
    list_file, ids = _image_list(data_cfg, spec, split)
    imgs = Path(data_cfg.root) / spec["dir"] / "imgs"
    lang = spec.get("lang", "en")
    out, empty = [], 0
    for image_id in ids:
        file = imgs / image_id / "question.json"
        questions = read_json(file)
        if not isinstance(questions, list):
            raise BadRecordError(file, None, "expected a JSON list of questions")
        for i, q in enumerate(questions):
            where = f"[{i}]"
            if not isinstance(q, dict):
                raise BadRecordError(file, where, "expected a JSON object")
            if q.get("q_lang") != lang:
                continue
            if isinstance(q.get("answer"), str) and len(q["answer"]) == 0:
                empty += 1  # SlakeVQADataset: len(answer) != 0
                continue
            kind = str(q.get("answer_type", "")).upper()
            if kind not in ("OPEN", "CLOSED"):
                raise BadRecordError(
                    file, f"{where}.answer_type", f"expected OPEN or CLOSED, got {kind!r}"
                )
            rel = f"{spec['dir']}/imgs/{_string(q.get('img_name'), file, where + '.img_name')}"
            out.append(
                dict(
                    file=str(file),
                    where=where,
                    image=_image_path(data_cfg, rel, file, f"{where}.img_name"),
                    question=_string(q.get("question"), file, f"{where}.question"),
                    answer=_string(q.get("answer"), file, f"{where}.answer"),
                    closed=kind == "CLOSED",
                )
            )
    if empty:
        log.info(
            "%s: %d questions with an empty answer left out (as the original)", list_file, empty
        )
    return out


def _slake_regions(data_cfg, spec, split) -> list[dict]:
    """ReferSlakeDataset / InvReferSlakeDataset: one record per detection entry
    ``{name: [x, y, w, h]}`` of the listed images (``source.jpg``)."""
    _, ids = _image_list(data_cfg, spec, split)
    out = []
    for image_id in ids:
        folder = f"{spec['dir']}/imgs/{image_id}"
        file = Path(data_cfg.root) / folder / "detection.json"
        regions = read_json(file)
        if not isinstance(regions, list):
            raise BadRecordError(file, None, "expected a JSON list of {name: [x, y, w, h]}")
        for i, region in enumerate(regions):
            where = f"[{i}]"
            if not isinstance(region, dict) or len(region) < 1:
                raise BadRecordError(file, where, "expected an object {name: [x, y, w, h]}")
            name, box = next(iter(region.items()))
            out.append(
                dict(
                    file=str(file),
                    where=where,
                    image=_image_path(data_cfg, f"{folder}/source.jpg", file, where),
                    object=_string(name, file, f"{where} (name)"),
                    bbox=_bbox(box, file, f"{where}.{name}"),
                )
            )
    return out


def _mimic(data_cfg, spec, split) -> list[dict]:
    """MimicCaptionDataset: rows of the annotation file's ``split`` key; ``image_path[0]``
    under ``images``/files. (The original silently drops rows whose image is missing; here
    that is a bad record.)"""
    file = Path(data_cfg.root) / spec[split]
    rows = read_json(file)
    if not isinstance(rows, dict) or not isinstance(rows.get(split), list):
        raise BadRecordError(file, split, f"expected an object with a {split!r} list of rows")
    out = []
    for i, row in enumerate(rows[split]):
        where = f"{split}[{i}]"
        if not isinstance(row, dict):
            raise BadRecordError(file, where, "expected a JSON object")
        paths = row.get("image_path")
        if not isinstance(paths, list) or not paths:
            raise BadRecordError(file, f"{where}.image_path", "expected a non-empty list")
        rel = f"{spec['images']}/files/{_string(paths[0], file, f'{where}.image_path[0]')}"
        out.append(
            dict(
                file=str(file),
                where=where,
                image=_image_path(data_cfg, rel, file, f"{where}.image_path[0]"),
                report=_string(row.get("report"), file, f"{where}.report"),
            )
        )
    return out


def _medmnist_info(data_cfg, spec, flag: str) -> dict:
    if flag in MEDMNIST_INFO:
        return MEDMNIST_INFO[flag]
    file = Path(data_cfg.root) / spec["dir"] / f"{flag}_info.json"
    info = read_json(file)
    labels = info.get("label") if isinstance(info, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise BadRecordError(file, "label", "expected an object {class index: name}")
    return dict(question=_string(info.get("question"), file, "question"), label=labels)


@functools.lru_cache(maxsize=8)
def _npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of a MedMNIST npz (loaded once, no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # zipfile / format errors
        raise BadRecordError(path, None, f"not a readable npz: {err}") from err


def _label_name(name: str) -> str:
    """FormatedDataset: ``x-left`` -> ``left x``, ``x-right`` -> ``right x``."""
    for side in ("left", "right"):
        if name.endswith(f"-{side}"):
            return f"{side} " + name.replace(f"-{side}", "")
    return name


def _medmnist(data_cfg, spec, split) -> list[dict]:
    """MedMNISTDataset_2D_*: every image of ``{split}_images`` of each flag, the question
    listing the flag's classes, the answer its label name."""
    out = []
    for flag in _medmnist_flags(spec):
        path = Path(data_cfg.root) / _medmnist_file(spec, flag)
        info = _medmnist_info(data_cfg, spec, flag)
        arrays = _npz(str(path))
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None or labels is None:
            raise BadRecordError(path, f"{split}_images", "missing array")
        if images.ndim not in (3, 4) or len(labels) != len(images):
            raise BadRecordError(
                path,
                f"{split}_images",
                f"expected (N, H, W[, 3]) images and N labels, got {images.shape} / {labels.shape}",
            )
        for i, label in enumerate(np.asarray(labels).reshape(len(labels), -1)[:, 0]):
            name = info["label"].get(str(int(label)))
            if name is None:
                raise BadRecordError(path, f"{split}_labels[{i}]", f"unknown class {int(label)}")
            out.append(
                dict(
                    file=str(path),
                    where=f"{split}_images[{i}]",
                    image=str(path),
                    array=f"{split}_images",
                    row=i,
                    question=info["question"],
                    answer=_label_name(name),
                )
            )
    return out


_READERS = {
    "slake_vqa": _slake_vqa,
    "slake_ref": _slake_regions,
    "slake_invref": _slake_regions,
    "mimic_caption": _mimic,
    "medmnist": _medmnist,
}


def make_source(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated records of every ``data.tasks`` dataset for ``split`` (datasets in
    ConfigDict order, i.e. sorted by name). Each record: ``task, dataset, file, where, image``,
    its text fields and ``index``. Missing files, empty fields, malformed boxes and images
    outside the root raise BadRecordError naming file and field (``data.skip_bad_records``:
    a dataset file that fails is left out and listed in ``skipped_records``)."""
    records, skipped = [], []
    for name, spec in _tasks(data_cfg).items():
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"data.tasks.{name}.kind {kind!r} unknown; use one of {sorted(KINDS)}")
        if kind == "mimic_caption" and not spec.get(split):
            continue
        try:
            found = _READERS[kind](data_cfg, spec, split)
        except BadRecordError as err:
            if not data_cfg.get("skip_bad_records", False):
                raise
            skipped.append(err)
            continue
        records += [r | dict(task=KINDS[kind], dataset=name) for r in found]
    if skipped:
        log.warning("skipped %d bad Uni-Med files; first: %s", len(skipped), skipped[0])
    for i, r in enumerate(records):
        r["index"] = i
    source = grain.MapDataset.source(records)
    source.skipped_records = tuple(skipped)
    return source


# ---------------------------------------------------------------------------------------
# Examples.
# ---------------------------------------------------------------------------------------


def load_image(record: dict) -> Image.Image:
    """The record's image as RGB PIL (``.convert("RGB")``); BadRecordError naming it."""
    try:
        if "array" in record:
            pixels = _npz(record["image"])[record["array"]][record["row"]]
            return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
        with Image.open(record["image"]) as image:
            return image.convert("RGB")
    except BadRecordError:
        raise
    except Exception as err:
        raise BadRecordError(record["image"], None, f"not a readable image: {err}") from err


def _pick(pool, rng: np.random.Generator | None, eval_form: str) -> str:
    return pool[int(rng.integers(len(pool)))] if rng is not None else eval_form


def instruction_answer(
    record: dict, data_cfg, rng: np.random.Generator | None, image_wh: tuple[int, int]
) -> tuple[str, str]:
    """(instruction, answer) of a record: a pool choice (``rng``) or the eval question."""
    task = record["task"]
    pool, eval_form = POOLS[task], EVAL_QUESTIONS[task]
    if task in ("vqa", "cls"):
        question = _text(data_cfg, record["question"])
        return _pick(pool, rng, eval_form).format(question), _text(data_cfg, record["answer"])
    if task == "caption":
        return _pick(pool, rng, eval_form), _text(data_cfg, record["report"])
    box = box_string(record["bbox"], *image_wh)
    name = _text(data_cfg, record["object"])
    if task == "refer":
        return _pick(pool, rng, eval_form).format(name), box
    return _pick(pool, rng, eval_form).format(box), _text(data_cfg, name)


def prompt_text(instruction: str, train_template: bool, chat_template: bool = True) -> str:
    """The whole prompt string with one ``<ImageHere>``: training ``"[INST] <Img><ImageHere>
    </Img> {instruction}  [/INST]"`` (the dataset's trailing space, then the template's), or
    the eval scripts' ``"<s>[INST] <Img><ImageHere></Img> {question} [/INST]"``."""
    if not train_template:
        return EVAL_TEMPLATE.format(instruction)
    text = f"<Img>{IMAGE_HERE}</Img> {instruction} "
    return PROMPT_TEMPLATE.format(text) if chat_template else text


def encode(
    prompt: str,
    answer: str,
    tok,
    num_image_tokens: int,
    max_length: int,
    *,
    train_template: bool = True,
    max_txt_len: int = 1024,
) -> dict[str, np.ndarray]:
    """Prompt (one ``<ImageHere>``) + answer -> ``pack``-ed ids / mask / labels (L,) and
    ``prompt_length``. Training: ``[BOS] seg0 [image x T] seg1`` + ``answer</s>`` (each piece
    tokenised alone without special tokens); eval template: seg0 tokenised WITH special
    tokens (BOS, then the literal ``<s>``), no extra BOS."""
    segments = prompt.split(IMAGE_HERE)
    if len(segments) != 2:
        raise ValueError(f"the prompt must hold one {IMAGE_HERE}, it holds {len(segments) - 1}")
    ids = special_ids(tok)
    first = list(tok(segments[0], add_special_tokens=not train_template)["input_ids"])
    head = ([ids["bos"]] if train_template else []) + first
    rest = list(tok(segments[1], add_special_tokens=False)["input_ids"])
    prompt_ids = head + [IMAGE_PLACEHOLDER] * num_image_tokens + rest
    target = list(tok(answer + END_SYM, add_special_tokens=False)["input_ids"])[:max_txt_len]
    return pack(np.asarray(prompt_ids + target, np.int32), len(prompt_ids), max_length, ids["pad"])


def load_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """One record as arrays (see the module docstring); rng None = the eval question and
    template. Raises BadRecordError naming file and field for an unreadable image, a box
    outside the 0-100 grid, an empty answer or text over ``data.max_length``."""
    image = load_image(record)
    width, height = image.size
    where = f"{record['where']}"
    instruction, answer = instruction_answer(record, data_cfg, rng, (width, height))
    if not answer.strip():
        raise BadRecordError(record["file"], where, "empty answer")
    box = np.zeros(4, np.float32)
    if record["task"] in ("refer", "identify"):
        grid = parse_box(box_string(record["bbox"], width, height))
        if grid is None or max(grid) > 100:
            raise BadRecordError(
                record["file"],
                where,
                f"box {record['bbox']} lies outside the {width} x {height} image (0-100 grid: "
                f"{box_string(record['bbox'], width, height)})",
            )
        x, y, w, h = record["bbox"]
        box = np.asarray([x, y, x + w, y + h], np.float32)  # torch.Tensor(bbox): float32
    train_template = rng is not None or data_cfg.get("eval_prompt", "original") == "train"
    prompt = prompt_text(instruction, train_template, bool(data_cfg.get("chat_template", True)))
    try:
        text = encode(
            prompt,
            answer,
            tokenizer(data_cfg),
            int(data_cfg.num_image_tokens),
            int(data_cfg.get("max_length", 512)),
            train_template=train_template,
            max_txt_len=int(data_cfg.get("max_txt_len", 1024)),
        )
    except ValueError as err:
        raise BadRecordError(record["file"], where, str(err)) from err
    pixels = blip_preprocess(image, size=int(data_cfg.get("image_size", 224)))
    return dict(
        images=pixels.astype(np.float32),
        **text,
        task=np.asarray(TASKS.index(record["task"]), np.int32),
        closed=np.asarray(bool(record.get("closed", False))),
        box=box,
        image_wh=np.asarray([width, height], np.float32),
        index=np.asarray(record["index"], np.int32),
    )


def image_size(record: dict) -> tuple[int, int]:
    """(W, H) of the record's image (a header read for files)."""
    if "array" in record:
        shape = _npz(record["image"])[record["array"]].shape
        return int(shape[2]), int(shape[1])
    try:
        with Image.open(record["image"]) as image:
            return image.size
    except Exception as err:
        raise BadRecordError(record["image"], None, f"not a readable image: {err}") from err


def most_frequent_answers(data_cfg: ml_collections.ConfigDict, split: str) -> dict[str, str]:
    """The constant-answer baselines of ``metrics.uni_med_report`` from ``split``: per task its
    most frequent answer (VQA per answer type: ``vqa_open``, ``vqa_closed``); REC a fixed box
    centred in the image with the mean size of the split's boxes on the 0-100 grid."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    sizes = []
    for record in make_source(data_cfg, split):
        task = record["task"]
        if task == "refer":
            w, h = image_size(record)
            x1, y1, x2, y2 = parse_box(box_string(record["bbox"], w, h))
            sizes.append((x2 - x1, y2 - y1))
            continue
        wh = image_size(record) if task == "identify" else (1, 1)
        answer = instruction_answer(record, data_cfg, None, wh)[1]
        key = f"vqa_{'closed' if record['closed'] else 'open'}" if task == "vqa" else task
        counts[key][answer] += 1
    out = {key: c.most_common(1)[0][0] for key, c in counts.items()}
    if sizes:
        w, h = np.mean(sizes, axis=0)
        out["refer"] = "{{<{}><{}><{}><{}>}}".format(
            *(int(v) for v in (50 - w / 2, 50 - h / 2, 50 + w / 2, 50 + h / 2))
        )
    return out


# ---------------------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------------------


def _empty_example(data_cfg) -> dict[str, np.ndarray]:
    """Zero arrays of an example's shapes (the template of a batch whose rows all failed)."""
    size, length = int(data_cfg.get("image_size", 224)), int(data_cfg.get("max_length", 512))
    return dict(
        images=np.zeros((size, size, 3), np.float32),
        input_ids=np.zeros(length, np.int32),
        attention_mask=np.zeros(length, np.int32),
        labels=np.full(length, IGNORE, np.int32),
        prompt_length=np.zeros((), np.int32),
        task=np.zeros((), np.int32),
        closed=np.zeros((), bool),
        box=np.zeros(4, np.float32),
        image_wh=np.zeros(2, np.float32),
        index=np.full((), -1, np.int32),
    )


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes and dtypes of a training batch on one process (``radjax.data.specs``)
    from config fields: an example's arrays (``_empty_example``: S = ``data.image_size``, L =
    ``data.max_length``) with B = ``data.batch_size`` rows (the format sets the rows;
    ``train.batch_size`` is nominal) and ``valid`` bool (B,) (the pipeline takes ``skipped``
    and ``pipeline.REPAIRED`` out before the step)."""
    rows = {k: (v.shape, v.dtype) for k, v in _empty_example(config.data).items()}
    return specs.rows_of(int(config.data.get("batch_size", 4)), {**rows, "valid": ((), np.bool_)})


def _collate(data_cfg, examples: list[dict], records: list[dict], key) -> dict[str, np.ndarray]:
    if not examples:
        return {k: v[None][:0] for k, v in _empty_example(data_cfg).items()}
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


# sample_ratio of each dataset in the released mix (train_configs/uni_med.yaml:35-147), by the
# original's builder names (``data.sample_ratio = dict(RELEASED_SAMPLE_RATIO)`` trains with it;
# the names of datasets a run does not have are ignored)
RELEASED_SAMPLE_RATIO = {
    "medqa_en": 2,
    "pubmedqa": 2,
    "slakevqa_en": 5,
    "path_vqa": 5,
    "ref_slake": 4,
    "invref_slake": 4,
    "ref_sa_med": 4,
    "invref_sa_med": 4,
    "medpix_single": 8,
    "mimic_caption": 8,
    "medmnist_2d_small": 4,
}


def sample_ratios(data_cfg: ml_collections.ConfigDict) -> dict[str, float] | None:
    """Each dataset's sampling ratio (``data.sample_ratio.<name>``, else
    ``data.tasks.<name>.sample_ratio``), or None when no dataset has one (batches then follow
    the record counts). The original (``runner_base.py:558-565``) reads ``sample_ratio`` of
    every dataset when the first has one and samples uniformly when it has none; here all or
    none must have one. Names in ``data.sample_ratio`` that are no dataset of the run are
    ignored when they are a released dataset (``RELEASED_SAMPLE_RATIO``) or a phantom one.

    Raises:
      ValueError: a ratio for an unknown dataset name (names the datasets), ratios for
        some datasets only (names the others), or ratios without one dataset per batch.
    """
    tasks = _tasks(data_cfg)
    given = dict(data_cfg.get("sample_ratio") or {})
    known = set(tasks) | set(RELEASED_SAMPLE_RATIO) | set(phantom_tasks())
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"data.sample_ratio: {unknown} are not datasets; the datasets: {sorted(tasks)}"
        )
    ratios = {name: given.get(name, spec.get("sample_ratio")) for name, spec in tasks.items()}
    if all(r is None for r in ratios.values()):
        return None
    missing = sorted(name for name, r in ratios.items() if r is None)
    if missing:
        raise ValueError(
            f"data.sample_ratio: no ratio for {missing} (give every dataset one, or none)"
        )
    if not data_cfg.get("one_task_per_batch", True):
        raise ValueError(
            "data.sample_ratio draws one dataset per batch: it needs data.one_task_per_batch"
        )
    return {name: float(r) for name, r in ratios.items()}


def bucketing(data_cfg: ml_collections.ConfigDict, train: bool) -> batching.Bucketing:
    """One dataset per batch (``data.one_task_per_batch``, default True) of
    ``data.batch_size`` rows (train) or ``data.eval_batch_size`` rows (eval); in training
    with ``sample_ratios`` each batch's dataset drawn by ratio."""
    rows = int(data_cfg.get("batch_size", 4) if train else data_cfg.get("eval_batch_size", 8))
    one = bool(data_cfg.get("one_task_per_batch", True))
    ratios = sample_ratios(data_cfg) if train else None
    return batching.Bucketing(
        key=(lambda r: r["dataset"]) if one else (lambda r: ""),
        rows=lambda key: rows,
        load_example=load_example,
        collate=functools.partial(_collate, data_cfg),
        fill={"labels": IGNORE, "index": -1},
        weight=ratios.__getitem__ if ratios else None,
    )


def batches(
    source: grain.MapDataset,
    data_cfg: ml_collections.ConfigDict,
    *,
    seed: int = 0,
    train: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """This process's batches (``radjax.data.batching.bucketed_batches``): train, an endless
    stream of shuffled epochs whose batches each hold one dataset (the original's
    ``MultiIterLoader`` + per-dataset loaders; with ``sample_ratios`` the dataset of each
    batch drawn by ratio); eval, one pass dataset by dataset in record
    order with the eval prompts. Each batch: the example fields stacked (B, ...), ``valid``
    bool (B,) (padded rows: labels IGNORE, index -1) and ``skipped``."""
    return batching.bucketed_batches(
        source,
        data_cfg,
        bucketing(data_cfg, train),
        seed=seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
    )
