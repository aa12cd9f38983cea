"""LLaVA-Med's data on the paper contract: conversation JSON for training, VQA ``test.json`` for
evaluation, images through the version's CLIP preprocessing.

Splits: ``train`` is the conversation list ``data.conversations`` (stage 1: the alignment
captions, stage 2: the instruction conversations; a VQA ``train.json`` is a conversation list
too, for the VQA fine-tuning the paper does next) with images under ``data.image_folder``;
every other split names a VQA file in ``data.vqa`` (``{"test": "vqa/test.json"}``) with
images under ``data.vqa_image_folder``. Paths are relative to ``data.root``. The readers are
``conversations_json`` (both key spellings, ``OPEN`` / ``CLOSED``, errors naming file and
field).

Examples (fixed shapes, L = ``data.max_length``, S = ``data.image_size``):

* conversation records (``conversation.encode_v10`` / ``encode_v15``, the released masking):
  ``input_ids``, ``labels`` (IGNORE -100), ``attention_mask`` i32 (L,), ``image_mask`` bool (1,),
  ``images`` f32 (S, S, 3) (zeros for a text-only record, as v1.0's ``zeros(3, 224, 224)``).
* VQA records: the question as the eval prompts it, right-padded: ``input_ids`` i32 (L,),
  ``prompt_length`` i32 (), ``image_mask``, ``images``, ``answer_type`` i32 () (1 = CLOSED),
  and the question and reference answer as UTF-8 bytes ``question_bytes`` /
  ``answer_bytes`` uint8 (``data.max_text_bytes``,), zero-padded, for the host-side
  evaluation (exact whatever the tokenizer).

Eval prompts (``data.eval_prompt``): ``'released'`` is what each version's VQA script
builds (v1.0 ``model_vqa_med.py``: conv ``simple`` with its "Hi!" few-shot turns and the
image block *after* the question, no ``Assistant:`` cue; v1.5 ``model_vqa.py``:
``[INST] <image>\\n{q} [/INST]``). ``'train'`` prompts v1.0 in the training template instead
(header, ``### Human: <image block>\\n{q}\\n### Assistant:``): a model that only ever saw the
training template (the tiny one, trained from scratch) cannot follow the released prompt.
v1.5's released prompt is its training template already.

Image token count: ``data.image_size`` and ``data.image_token_len`` follow the model's tower
(``(image_size // patch_size) ** 2``), set by ``complete_config``.
"""

from __future__ import annotations

import collections
import functools
import logging
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np

from radjax.data import specs
from radjax.data.errors import BadRecordError
from radjax.data.image_processing import LLAVA_MED_VERSIONS, llava_med_preprocess
from radjax.data.phantoms import ensure_phantoms
from radjax.data.readers import read_image, require_files
from radjax.data.tokenizers import load_tokenizer, phantom_tokenizer
from radjax.metrics import text as text_metrics
from radjax.papers.llava_med import conversation as C
from radjax.papers.llava_med import conversations_json as R

log = logging.getLogger(__name__)

VERSIONS = ("v1.0", "v1.5")
EVAL_PROMPTS = ("released", "train")
ANSWER_TYPES = {"vqa": R.VQA_ANSWER_TYPES, "pvqa": R.PVQA_ANSWER_TYPES}


# ---------------------------------------------------------------------------------------
# Config, tokenizer.
# ---------------------------------------------------------------------------------------


def _version(data_cfg) -> str:
    version = str(data_cfg.get("version", "v1.0"))
    if version not in VERSIONS:
        raise ValueError(f"data.version {version!r}: expected one of {VERSIONS}")
    return version


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str, version: str, path_has_llama: bool, use_im_start_end: bool):
    base = phantom_tokenizer() if name == "phantom" else load_tokenizer(name)
    if version == "v1.0":
        return C.setup_v10_tokenizer(
            base, path_has_llama=path_has_llama, use_im_start_end=use_im_start_end
        )
    return C.setup_v15_tokenizer(base), None


def text_tools(data_cfg: ml_collections.ConfigDict):
    """(tokenizer, ``V10Vocab`` or None for v1.5) of ``data.tokenizer`` ('phantom' or a local
    tokenizer directory) set up as the version's training does; cached."""
    return _tokenizer(
        str(data_cfg.get("tokenizer", "phantom")),
        _version(data_cfg),
        bool(data_cfg.get("path_has_llama", False)),
        bool(data_cfg.get("use_im_start_end", True)),
    )


def _phantoms_enabled(data_cfg) -> bool:
    return bool(data_cfg.get("phantoms", {}).get("enabled", False))


def data_files(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """The JSON files a run reads under ``data.root``: the conversation list, every VQA
    split and the baseline's VQA train file (images are checked per record)."""
    files = [data_cfg.get("conversations", "")]
    files += [str(v) for v in dict(data_cfg.get("vqa", {})).values()]
    files.append(data_cfg.get("baseline_file", ""))
    return sorted({f for f in files if f})


def ensure_data(data_cfg: ml_collections.ConfigDict) -> None:
    """With ``data.phantoms.enabled`` writes the LLaVA-Med phantoms
    (``radjax.papers.llava_med.phantoms``) into a missing or empty ``data.root``; then checks
    that the root holds ``data_files``.

    Raises:
      FileNotFoundError: naming the root and the first missing file.
      ValueError: an unknown ``data.version`` / ``data.eval_prompt``.
    """
    from radjax.papers.llava_med.phantoms import write_llava_med_phantoms

    _version(data_cfg)
    if data_cfg.get("eval_prompt", "released") not in EVAL_PROMPTS:
        raise ValueError(f"data.eval_prompt {data_cfg.eval_prompt!r}: expected {EVAL_PROMPTS}")
    if _phantoms_enabled(data_cfg):
        ensure_phantoms(
            data_cfg,
            lambda out, p: write_llava_med_phantoms(
                out,
                p.num_train,
                p.num_test,
                seed=p.get("seed", 0),
                image_size=p.get("image_size", 32),
                vqa_open_per_image=p.get("vqa_open_per_image", 2),
            ),
            "LLaVA-Med conversation / VQA JSON files",
        )
    require_files(data_cfg.root, data_files(data_cfg), "LLaVA-Med conversation / VQA JSON files")


def image_token_len(vision: ml_collections.ConfigDict) -> int:
    """Patch features of the tower (CLS dropped): ``(image_size // patch_size) ** 2``."""
    return (int(vision.image_size) // int(vision.patch_size)) ** 2


def complete_config(config: ml_collections.ConfigDict) -> None:
    """Fills what the data and the tower decide (after ``ensure_data``):
    ``data.image_size`` / ``data.image_token_len`` from ``model.vision`` (0 = follow it; a
    different value raises), ``data.use_im_start_end`` from the model, ``model.llm.vocab_size``
    (0 = the tokenizer's length), and the token ids the model reads: ``model.patch_id``
    (v1.0 ``<im_patch>``, v1.5 -200), ``model.start_id`` / ``model.end_id`` (v1.0; -1 without
    start / end), ``model.pad_token_id``, ``model.eos_token_id``.

    Raises:
      ValueError: ``data.version`` differs from ``model.version``; image sizes or token counts
        that do not follow the tower; a vocabulary smaller than the tokenizer.
    """
    d, m = config.data, config.model
    if _version(d) != m.get("version", d.version):
        raise ValueError(f"data.version {d.version} differs from model.version {m.version}")
    for field, want in (
        ("image_size", int(m.vision.image_size)),
        ("image_token_len", image_token_len(m.vision)),
    ):
        have = int(d.get(field, 0) or 0)
        if have and have != want:
            raise ValueError(
                f"data.{field} {have} does not follow the model's tower ({want}: image_size "
                f"{m.vision.image_size}, patch_size {m.vision.patch_size}); leave it 0"
            )
        d[field] = want
    d.use_im_start_end = bool(m.get("use_im_start_end", d.version == "v1.0"))
    tokenizer, vocab = text_tools(d)
    if int(m.llm.vocab_size) <= 0:
        m.llm.vocab_size = len(tokenizer)
    if len(tokenizer) > int(m.llm.vocab_size):
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but model.llm.vocab_size is "
            f"{m.llm.vocab_size}"
        )
    if vocab is not None:
        m.patch_id = vocab.patch_id
        m.start_id = -1 if vocab.start_id is None else vocab.start_id
        m.end_id = -1 if vocab.end_id is None else vocab.end_id
    else:
        m.patch_id, m.start_id, m.end_id = C.IMAGE_TOKEN_INDEX, -1, -1
    m.pad_token_id = int(tokenizer.pad_token_id)
    m.eos_token_id = int(tokenizer.eos_token_id)


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes and dtypes of a training batch (``radjax.data.specs``) from config
    fields: the conversation records' arrays (the ``train`` split is a conversation list)
    with B = ``train.batch_size``, L = ``data.max_length`` and S = ``data.image_size`` (0 =
    the tower's ``model.vision.image_size``, as ``complete_config`` sets it)."""
    d = config.data
    length = int(d.max_length)
    size = int(d.get("image_size", 0) or 0) or int(config.model.vision.image_size)
    return specs.rows_of(
        int(config.train.batch_size),
        dict(
            input_ids=((length,), np.int32),
            labels=((length,), np.int32),
            attention_mask=((length,), np.int32),
            image_mask=((1,), np.bool_),
            images=((size, size, 3), np.float32),
        ),
    )


# ---------------------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------------------


def _folder(data_cfg, key: str, default: str = "") -> Path:
    return Path(data_cfg.root) / str(data_cfg.get(key, default) or "")


def _split_file(data_cfg, split: str) -> tuple[str, Path]:
    """('conversation' | 'vqa', file) of ``split``."""
    if split == "train":
        return "conversation", Path(data_cfg.root) / data_cfg.conversations
    vqa = dict(data_cfg.get("vqa", {}))
    if split not in vqa:
        raise ValueError(
            f"no data file for split {split!r}: 'train' is data.conversations, the others "
            f"data.vqa (has {sorted(vqa)})"
        )
    return "vqa", Path(data_cfg.root) / vqa[split]


def _conversation_record(r: R.ConversationRecord, folder: Path) -> dict:
    return dict(
        kind="conversation",
        file=r.path,
        field=r.field,
        row=r.row,
        image=None if r.image is None else str(folder / r.image),
        turns=[(t.speaker, t.value) for t in r.turns],
    )


def _vqa_record(r: R.VqaRecord, folder: Path) -> dict:
    return dict(
        kind="vqa",
        file=r.path,
        field=f"[{r.row}]",
        row=r.row,
        id=r.id,
        image=None if r.image is None else str(folder / r.image),
        question=r.question,
        answer=r.answer,
        answer_type=r.answer_type,
    )


def read_records(data_cfg: ml_collections.ConfigDict, split: str, errors: list | None = None):
    """The split's validated records as dicts (see ``make_source``)."""
    kind, file = _split_file(data_cfg, split)
    if kind == "conversation":
        folder = _folder(data_cfg, "image_folder")
        found = R.read_conversations(
            file,
            image_folder=folder,
            require_image_token=bool(data_cfg.get("require_image_token", True)),
            errors=errors,
        )
        return [_conversation_record(r, folder) for r in found]
    folder = _folder(data_cfg, "vqa_image_folder", data_cfg.get("image_folder", ""))
    types = ANSWER_TYPES[str(data_cfg.get("answer_types", "vqa"))]
    found = R.read_vqa(file, answer_types=types, image_folder=folder, errors=errors)
    return [_vqa_record(r, folder) for r in found]


def make_source(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated records of ``split`` in file order: ``train`` = the conversation list
    (``kind='conversation'``: ``file, field, row, image, turns``), other splits = a VQA file
    (``kind='vqa'``: ``file, field, row, id, image, question, answer, answer_type``), each with
    ``index``. Image paths are absolute (checked to exist). Bad records raise BadRecordError
    naming file and field; under ``data.skip_bad_records`` they are left out and listed in
    ``skipped_records``."""
    skipped: list | None = [] if data_cfg.get("skip_bad_records", False) else None
    records = read_records(data_cfg, split, skipped)
    if skipped:
        log.warning("skipped %d bad LLaVA-Med records; first: %s", len(skipped), skipped[0])
    for i, r in enumerate(records):
        r["index"] = i
    source = grain.MapDataset.source(records)
    source.skipped_records = tuple(skipped or ())
    return source


# ---------------------------------------------------------------------------------------
# Examples.
# ---------------------------------------------------------------------------------------


def load_image(record: dict, data_cfg, rng: np.random.Generator | None) -> np.ndarray:
    """The record's image as the tower reads it, f32 (S, S, 3) (zeros without an image):
    ``image_processing.llava_med_preprocess`` with the version's aspect handling
    (``data.aspect_ratio`` overrides it; v1.5's 0/1-pixel pad jitter only with an ``rng``)."""
    size = int(data_cfg.image_size)
    if record["image"] is None:
        return np.zeros((size, size, 3), np.float32)
    where = (record["file"], f"[{record['row']}].image")
    try:
        pixels = read_image(record["image"])
    except BadRecordError as err:
        raise BadRecordError(*where, str(err)) from err
    version = _version(data_cfg)
    jitter = bool(data_cfg.get("jitter", LLAVA_MED_VERSIONS[version]["jitter"]))
    try:
        return llava_med_preprocess(
            pixels,
            version=version,
            aspect_ratio=data_cfg.get("aspect_ratio", "") or None,
            jitter=jitter and rng is not None,
            rng=rng,
            size=size,
        )
    except ValueError as err:
        raise BadRecordError(*where, f"{record['image']}: {err}") from err


def _text_bytes(value: str, n: int, where, field: str) -> np.ndarray:
    raw = value.encode("utf-8")
    if len(raw) > n:
        raise BadRecordError(
            where[0], f"{where[1]}.{field}", f"{len(raw)} bytes, more than data.max_text_bytes={n}"
        )
    out = np.zeros(n, np.uint8)
    out[: len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def decode_bytes(row: np.ndarray) -> str:
    """A zero-padded uint8 row back to its string."""
    return bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode("utf-8")


def _encode_conversation(record: dict, data_cfg) -> dict[str, np.ndarray]:
    tokenizer, vocab = text_tools(data_cfg)
    turns = [C.Turn(s, v) for s, v in record["turns"]]
    common = dict(
        has_image=record["image"] is not None,
        image_token_len=int(data_cfg.image_token_len),
        source=record["file"],
        field=record["field"],
    )
    if vocab is not None:
        out = C.encode_v10(
            turns,
            tokenizer,
            vocab,
            int(data_cfg.max_length),
            use_im_start_end=bool(data_cfg.get("use_im_start_end", True)),
            system=system_text(data_cfg),
            **common,
        )
    else:
        out = C.encode_v15(turns, tokenizer, int(data_cfg.max_length), **common)
    return {k: out[k] for k in ("input_ids", "labels", "attention_mask", "image_mask")}


def system_text(data_cfg) -> str:
    """v1.0's system line: ``data.system``, or the released ``conversation.V10_SYSTEM``."""
    return str(data_cfg.get("system", "") or C.V10_SYSTEM)


def eval_prompt(question: str, data_cfg) -> str:
    """The prompt text of a VQA question (``data.eval_prompt``, module docstring)."""
    version, n = _version(data_cfg), int(data_cfg.image_token_len)
    if version == "v1.5":
        return C.v15_eval_prompt(question)
    system = system_text(data_cfg)
    start_end = bool(data_cfg.get("use_im_start_end", True))
    if data_cfg.get("eval_prompt", "released") == "released":
        return C.v10_eval_prompt(
            question, image_token_len=n, use_im_start_end=start_end, system=system
        )
    q = C.IMAGE_TOKEN + "\n" + question.replace(C.IMAGE_TOKEN, "").strip()
    header, segments = C.v10_segments(
        [C.Turn("human", q)],
        has_image=True,
        image_token_len=n,
        use_im_start_end=start_end,
        system=system,
    )
    return header + segments[0] + C.BEGIN_SIGNAL + C.V10_ROLES[1] + ":"


def prompt_ids(question: str, data_cfg) -> np.ndarray:
    """The eval prompt's ids (n,): v1.0 ``tokenizer(prompt)``, v1.5
    ``tokenizer_image_token`` with the -200 expanded to ``image_token_len`` positions."""
    tokenizer, _ = text_tools(data_cfg)
    prompt = eval_prompt(question, data_cfg)
    if _version(data_cfg) == "v1.5":
        ids = C.tokenizer_image_token(prompt, tokenizer)
        ids = C.expand_image(ids, ids, int(data_cfg.image_token_len))[0]
    else:
        ids = np.asarray(tokenizer(prompt)["input_ids"], np.int32)
    return np.asarray(ids, np.int32)


def _encode_vqa(record: dict, data_cfg) -> dict[str, np.ndarray]:
    tokenizer, vocab = text_tools(data_cfg)
    where = (record["file"], record["field"])
    length = int(data_cfg.max_length)
    ids = prompt_ids(record["question"], data_cfg)
    if len(ids) > length:
        raise BadRecordError(
            *where, f"the eval prompt has {len(ids)} tokens, more than data.max_length={length}"
        )
    image_id = C.IMAGE_TOKEN_INDEX if vocab is None else vocab.patch_id
    if int(np.sum(ids == image_id)) != int(data_cfg.image_token_len):
        raise BadRecordError(*where, "the eval prompt does not hold one whole image")
    input_ids = np.full(length, tokenizer.pad_token_id, np.int32)
    input_ids[: len(ids)] = ids
    n = int(data_cfg.get("max_text_bytes", 512))
    return dict(
        input_ids=input_ids,
        prompt_length=np.asarray(len(ids), np.int32),
        image_mask=np.asarray([record["image"] is not None]),
        answer_type=np.asarray(record["answer_type"] == "CLOSED", np.int32),
        question_bytes=_text_bytes(record["question"], n, where, "conversations[0].value"),
        answer_bytes=_text_bytes(record["answer"], n, where, "conversations[1].value"),
    )


def load_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """One example of fixed shapes (module docstring). ``rng``: the pipeline's seeded
    generator in training (v1.5's pad jitter), None in evaluation. Raises BadRecordError
    naming file and field (an unreadable image, a truncation inside the image block, a
    prompt longer than ``data.max_length``, ...)."""
    if record["kind"] == "conversation":
        example = _encode_conversation(record, data_cfg)
    else:
        example = _encode_vqa(record, data_cfg)
    example["images"] = load_image(record, data_cfg, rng)
    return example


# ---------------------------------------------------------------------------------------
# Evaluation helpers.
# ---------------------------------------------------------------------------------------


def question_key(question: str) -> str:
    """A question as the baseline groups it: ``<image>`` removed, normalised as the metric
    normalises answers (lower case, VQA punctuation rules)."""
    return text_metrics.normalize_answer(question.replace(C.IMAGE_TOKEN, "").strip().lower())


def most_frequent_answers(data_cfg: ml_collections.ConfigDict) -> tuple[dict[str, str], str]:
    """The most-frequent-answer baseline from ``data.baseline_file`` (a VQA train file):
    ({normalised question: its most frequent train answer}, the most frequent answer overall
    for unseen questions); ({}, '') when no baseline file is configured."""
    name = data_cfg.get("baseline_file", "")
    if not name:
        return {}, ""
    types = ANSWER_TYPES[str(data_cfg.get("answer_types", "vqa"))]
    records = R.read_vqa(Path(data_cfg.root) / name, answer_types=types)
    per_question: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    overall: collections.Counter = collections.Counter()
    for r in records:
        per_question[question_key(r.question)][r.answer] += 1
        overall[r.answer] += 1
    best = {q: c.most_common(1)[0][0] for q, c in per_question.items()}
    return best, (overall.most_common(1)[0][0] if overall else "")


def decode_answer(ids: np.ndarray, data_cfg, eos_token_id: int) -> str:
    """Generated ids -> the answer text as the version's VQA script keeps it: up to EOS,
    special tokens skipped; v1.0 cut at the first ``###`` (its stop string), then stripped."""
    tokenizer, _ = text_tools(data_cfg)
    ids = [int(t) for t in np.asarray(ids)]
    if eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id)]
    out = tokenizer.decode([t for t in ids if t >= 0], skip_special_tokens=True)
    if _version(data_cfg) == "v1.0":
        out = out.split("###")[0]
    return out.strip()
