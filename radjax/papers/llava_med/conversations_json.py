"""Readers of LLaVA-Med's JSON files: conversation lists (training) and VQA ``test.json``.

Conversation file (v1.0 ``LazySupervisedDataset``, train.py:337-429): one JSON list (the
original reads it with ``json.load``, so JSON lines are refused here with that reason) of
records ``{"id", "image" (optional, relative to the image folder), "conversations": [{"from":
"human" | "gpt", "value": str}, …]}``. Some released files misspell the key
``conversatons``: the original tries ``conversations`` and falls back to it (train.py:401-413;
the PathVQA eval scripts read only the misspelt key), and so does ``parse_conversation``.
Numbers as values are kept (v1.0 stringifies them in records with an image).

VQA ``test.json`` (v1.0 ``llava/eval/model_vqa_med.py``, ``run_eval.py``,
``run_eval_batch.py``): the same records with two turns, ``conversations[0]`` the question
(``"<image>\\n…"``; the eval removes ``<image>`` and strips) and ``conversations[1]`` the
``gpt`` answer (the ground truth), plus ``answer_type``: ``"OPEN"`` or ``"CLOSED"``
(compared exactly; ``PVQA_ANSWER_TYPES`` maps PathVQA's ``other`` / ``number`` /
``yes/no`` as ``run_eval_pvqa.py`` does). Predictions are matched to ``id`` (as
``question_id``).

Every problem is a ``radjax.data.errors.BadRecordError`` naming the file and the field, e.g.
``"train.json: [3].conversations[1].value: empty"``; with ``errors=[...]`` the readers skip
bad records and collect their errors instead (the original would crash, or for an image that
does not open, silently train on a random other record). Also refused, where the original
would go on silently: an ``<image>`` token in a record without an image (tokenised as text),
more than one (v1.0 splices only the last), none in a record with an image
(``require_image_token``; the original trains on the text alone), and an empty value.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from radjax.data.errors import BadRecordError
from radjax.papers.llava_med.conversation import IMAGE_TOKEN, Turn

CONVERSATION_KEYS = ("conversations", "conversatons")  # the second: the original's typo
VQA_ANSWER_TYPES = {"OPEN": "OPEN", "CLOSED": "CLOSED"}
PVQA_ANSWER_TYPES = {
    "OPEN": "OPEN",
    "other": "OPEN",
    "number": "OPEN",
    "yes/no": "CLOSED",
    "CLOSED": "CLOSED",
}


@dataclasses.dataclass(frozen=True)
class ConversationRecord:
    """One record: ``row`` its index in the file, ``key`` the conversation key it used,
    ``turns`` its ``Turn`` s, ``image`` the relative image path or None, ``extra`` the other
    keys (``domain``, ``answer_type``, …)."""

    path: str
    row: int
    id: object
    image: str | None
    turns: tuple[Turn, ...]
    key: str
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @property
    def field(self) -> str:
        """``"[row].conversations"`` (or the misspelt key): the field prefix of its errors."""
        return f"[{self.row}].{self.key}"

    @property
    def has_image(self) -> bool:
        return self.image is not None


@dataclasses.dataclass(frozen=True)
class VqaRecord:
    """One VQA item: ``question`` (the human value as in the file), ``answer`` (the gpt value,
    as a string), ``answer_type`` ``"OPEN"`` / ``"CLOSED"`` (after the mapping) and
    ``raw_answer_type`` (as in the file)."""

    path: str
    row: int
    id: object
    image: str | None
    question: str
    answer: str
    answer_type: str
    raw_answer_type: str

    @property
    def question_text(self) -> str:
        """The question as the eval prompts it: ``<image>`` removed, stripped."""
        return self.question.replace(IMAGE_TOKEN, "").strip()


def read_json_list(path: str | os.PathLike) -> list:
    """The JSON list in ``path``; BadRecordError (file, no field) if it is missing, not JSON
    (a JSON-lines file says so) or not a list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRecordError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadRecordError(path, None, f"cannot be read ({err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data":
            hint = (
                "; it looks like JSON lines: LLaVA-Med reads one JSON list (json.load), "
                "convert with [json.loads(line) for line in file]"
            )
        raise BadRecordError(path, None, f"not valid JSON ({err}){hint}") from err
    if not isinstance(data, list):
        raise BadRecordError(
            path, None, f"expected a JSON list of records, got {type(data).__name__}"
        )
    return data


def parse_conversation(
    obj,
    path: str | os.PathLike,
    row: int,
    *,
    image_folder: str | os.PathLike | None = None,
    require_image_token: bool = True,
) -> ConversationRecord:
    """One record of a conversation list, checked (see the module docstring).

    ``image_folder``: if given, the image file must exist there. Raises BadRecordError naming
    ``path`` and the field (``[row].conversations[j].value``, ``[row].image``, …).
    """
    path = os.fspath(path)
    if not isinstance(obj, dict):
        raise BadRecordError(path, f"[{row}]", f"expected an object, got {type(obj).__name__}")
    key = next((k for k in CONVERSATION_KEYS if k in obj), None)
    if key is None:
        raise BadRecordError(
            path, f"[{row}].conversations", "missing (nor the misspelt 'conversatons')"
        )
    field = f"[{row}].{key}"
    turns = obj[key]
    if not isinstance(turns, list) or not turns:
        raise BadRecordError(path, field, f"expected a non-empty list of turns, got {turns!r}")
    parsed = []
    for j, turn in enumerate(turns):
        where = f"{field}[{j}]"
        if not isinstance(turn, dict):
            raise BadRecordError(path, where, f"expected an object, got {type(turn).__name__}")
        for name in ("from", "value"):
            if name not in turn:
                raise BadRecordError(path, f"{where}.{name}", "missing")
        speaker, value = turn["from"], turn["value"]
        if not isinstance(speaker, str) or not speaker:
            raise BadRecordError(path, f"{where}.from", f"expected a speaker, got {speaker!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise BadRecordError(path, f"{where}.value", f"expected a string, got {value!r}")
        if isinstance(value, str) and not value.strip():
            raise BadRecordError(path, f"{where}.value", "empty")
        parsed.append(Turn(speaker, value))
    image = obj.get("image")
    if "image" in obj and (not isinstance(image, str) or not image):
        raise BadRecordError(path, f"[{row}].image", f"expected a file name, got {image!r}")
    if image is not None and image_folder is not None:
        file = Path(image_folder) / image
        if not file.is_file():
            raise BadRecordError(path, f"[{row}].image", f"image file not found: {file}")
    images = [
        (j, t.value.count(IMAGE_TOKEN)) for j, t in enumerate(parsed) if isinstance(t.value, str)
    ]
    count = sum(n for _, n in images)
    first = next((j for j, n in images if n), None)
    if image is None and count:
        raise BadRecordError(
            path, f"{field}[{first}].value", f"{IMAGE_TOKEN} token but the record has no image"
        )
    if image is not None and count > 1:
        raise BadRecordError(path, field, f"{count} {IMAGE_TOKEN} tokens but one image")
    if image is not None and not count and require_image_token:
        raise BadRecordError(
            path,
            field,
            f"no {IMAGE_TOKEN} token but the record has an image (the original would train "
            "on the text alone)",
        )
    extra = {k: v for k, v in obj.items() if k not in ("id", "image", key)}
    return ConversationRecord(path, row, obj.get("id"), image, tuple(parsed), key, extra)


def read_conversations(
    path: str | os.PathLike,
    *,
    image_folder: str | os.PathLike | None = None,
    require_image_token: bool = True,
    errors: list | None = None,
) -> list[ConversationRecord]:
    """Every record of a LLaVA conversation list (``parse_conversation``). ``errors``: a list
    to collect the BadRecordErrors of skipped records in; None raises the first."""
    records = []
    for row, obj in enumerate(read_json_list(path)):
        try:
            records.append(
                parse_conversation(
                    obj,
                    path,
                    row,
                    image_folder=image_folder,
                    require_image_token=require_image_token,
                )
            )
        except BadRecordError as err:
            if errors is None:
                raise
            errors.append(err)
    return records


def parse_vqa(
    obj,
    path: str | os.PathLike,
    row: int,
    *,
    answer_types: Mapping[str, str] = VQA_ANSWER_TYPES,
    image_folder: str | os.PathLike | None = None,
) -> VqaRecord:
    """One VQA item: a conversation record (the question may lack ``<image>``: the eval puts
    the image in itself) whose first turn is ``human`` and second ``gpt`` (the original
    asserts it), with an ``id`` and an ``answer_type`` in ``answer_types``."""
    record = parse_conversation(
        obj, path, row, image_folder=image_folder, require_image_token=False
    )
    path = os.fspath(path)
    turns = record.turns
    if len(turns) < 2:
        raise BadRecordError(path, record.field, "expected a question and an answer turn")
    for j, want in ((0, "human"), (1, "gpt")):
        if turns[j].speaker != want:
            raise BadRecordError(
                path, f"{record.field}[{j}].from", f"expected {want!r}, got {turns[j].speaker!r}"
            )
    if "id" not in obj:
        raise BadRecordError(path, f"[{row}].id", "missing (predictions are matched to it)")
    raw = obj.get("answer_type")
    if raw not in answer_types:
        raise BadRecordError(
            path, f"[{row}].answer_type", f"{raw!r}: expected one of {sorted(answer_types)}"
        )
    return VqaRecord(
        path,
        row,
        obj["id"],
        record.image,
        str(turns[0].value),
        str(turns[1].value),
        answer_types[raw],
        raw,
    )


def read_vqa(
    path: str | os.PathLike,
    *,
    answer_types: Mapping[str, str] = VQA_ANSWER_TYPES,
    image_folder: str | os.PathLike | None = None,
    errors: list | None = None,
) -> list[VqaRecord]:
    """Every item of a VQA ``test.json`` (``parse_vqa``), in file order (the original pairs
    predictions with items by order and asserts the ids agree). ``errors``: as in
    ``read_conversations``."""
    records = []
    for row, obj in enumerate(read_json_list(path)):
        try:
            records.append(
                parse_vqa(obj, path, row, answer_types=answer_types, image_folder=image_folder)
            )
        except BadRecordError as err:
            if errors is None:
                raise
            errors.append(err)
    return records
