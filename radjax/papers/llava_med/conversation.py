"""LLaVA-Med's conversation templates, tokenisation and label masking, as the released code.

Two versions (spec mllm.md §3; the code is the authority, file:line refs below):

**v1.0** (microsoft/LLaVA-Med b9a98a7, the only version with training code). Every training
script runs ``--version v0``, so ``train.preprocess`` takes its v0 path with
``conv_v1_2``'s system text and roles (``llava/conversation.py:191``):

    {SYSTEM}\\n\\n### Human: {value}\\n### Assistant: {value}\\n … ### ␠

(``_add_speaker_and_signal``, train.py:166-184: each turn ``"### " + role + ": " + value +
"\\n"``, the trailing ``"### "`` kept; ``from`` matched case-insensitively against
``human`` / ``gpt``, anything else is the role ``unknown``). Before that every ``<image>``
in every turn of a record with an image becomes ``<im_start>`` + 256 ``<im_patch>`` +
``<im_end>`` (``preprocess_multimodal``, train.py:187-208; numbers are stringified there).
Labels (``_mask_targets``, train.py:128-163): the text is tokenised once (BOS, no EOS,
truncated to ``model_max_length``); the header and each turn are tokenised again *on their
own* (each with its own BOS, truncated), and those lengths walk the labels: the header's
tokens are IGNORE, and for a turn whose ``from`` is exactly ``"human"`` (case-sensitive,
unlike the role text) the tokens ``[cur + 2, cur + len)`` are IGNORE. Everything else is
trained: the first two tokens of each human turn, whole assistant turns with their
``### Assistant:`` header, the ``unknown`` turns, capitalised ``"Human"`` turns (image
block included), and the trailing ``### ``. No EOS, and no check that the lengths add up.
With LLaMA-1's vocabulary stand-alone ``BOS ▁###`` and in-context ``## #`` are both two
tokens, so the lengths line up and ``+2`` keeps ``## #``; with another vocabulary (Mistral's
``###`` is one token both ways) the masks drift one token per turn — this module computes
what the code computes, whatever the vocabulary.

Tokens (train.py:512-524, llava.py:368-397): ``[PAD]`` is added as the pad token when the
tokenizer has none, then ``<im_patch>``, then ``<im_start>``, ``<im_end>``; from LLaMA's 32000
pieces that gives ids 32000-32003 and 32004 rows. Tokens already present are not added again
(LLaVA-7b-v0, the initialisation of LLaVA-Med, holds all four) and then no row is
re-initialised. New ``[PAD]`` and new start / end rows (input and output embeddings) are set
to the mean of the rows before them; a new ``<im_patch>`` row keeps the resize's random
initialisation (``V10Vocab.mean_init`` / ``random_init``). The tokenizer is transformers
4.28's slow ``LlamaTokenizer``: these four tokens strip the whitespace on both sides of them
from the text next to them (``"figure.\\n<image>"`` tokenises ``"figure."`` + the block).
When the model path contains ``"llama"`` the code also sets bos / eos / unk to
``</s>`` / ``</s>`` / ``<unk>``, so the BOS id becomes 2 (``path_has_llama``).

**v1.5** (HEAD d406e3f) ships inference code only and no training code (issue #88). Its
template is ``mistral_instruct`` (conversation.py:407-415): style ``LLAMA_2``, empty system,
``sep=""``, ``sep2="</s>"``: user turns ``"[INST] {msg} [/INST]"``, assistant turns
``" " + msg + " " + "</s>"`` (``"[INST] <image>\\nq [/INST] a </s>[INST] q2 [/INST] …"``).
``<image>`` is tokenised as ``IMAGE_TOKEN_INDEX = -200`` (``mm_utils.tokenizer_image_token``:
each text chunk on its own, only the first chunk's BOS kept); the model replaces each -200
by the 576 projected patch features with label -100 and truncates to
``tokenizer_model_max_length`` (``llava_arch.prepare_inputs_labels_for_multimodal``). The
label masking is upstream LLaVA's ``preprocess_llama_2`` (haotian-liu/LLaVA
``llava/train/train.py``, with its ``preprocess_multimodal``, which moves ``<image>`` to the
front of its turn, and its collator truncation): the mask is radjax's choice of reference,
documented as such. Here the -200 is expanded to ``image_token_len`` copies of the
placeholder id (``ImageTokens(placeholder_id=-200)``), so the ids already have the length
the model sees.

Outputs (both versions, fixed length L = ``max_length``, right-padded): ``input_ids``,
``labels`` (IGNORE = -100), ``attention_mask``, ``image_mask`` bool (1,) (the record's image
has its feature positions in the ids: ``splice_features``' ``feature_mask``), ``image_start``
i32 (1,) (first feature position, -1 if none) and ``length``. Image positions: v1.0 the 256
``<im_patch>`` ids (``V10Vocab.image_tokens``), v1.5 the placeholder id
(``V15_IMAGE_TOKENS``); ``radjax.models.vlm.splice_features`` places the features in order.

Deviations, all on input the original mishandles: a record whose truncation cuts into the
image block raises (v1.0's forward raises too; v1.5 would keep a partial image); more than
one image block raises (v1.0 splices only the last, v1.5 takes the next sample's image);
a number as a value of a text-only v1.0 record, and any non-string value in v1.5, raise
(the original fails with a TypeError).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from radjax.data.errors import BadRecordError
from radjax.data.prompt_answer import IGNORE
from radjax.data.tokenizers import add_special_tokens
from radjax.models.vlm import ImageTokens

IMAGE_TOKEN = "<image>"
IMAGE_PATCH_TOKEN = "<im_patch>"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
PAD_TOKEN = "[PAD]"
IMAGE_TOKEN_INDEX = -200  # v1.5 llava/constants.py
V15_IMAGE_TOKENS = ImageTokens(placeholder_id=IMAGE_TOKEN_INDEX)

V10_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
V10_ROLES = ("Human", "Assistant")
V10_IMAGE_TOKEN_LEN = 256  # (224 // 14) ** 2
V15_ROLES = ("USER", "ASSISTANT")
V15_IMAGE_TOKEN_LEN = 576  # (336 // 14) ** 2
BEGIN_SIGNAL = "### "
END_SIGNAL = "\n"
# conv "simple" (the v1.0 VQA eval, model_vqa_med.py): the few-shot turns it carries
V10_EVAL_FEW_SHOT = (("Human", "Hi!"), ("Assistant", "Hi there!  How can I help you today?\n"))


class Turn(NamedTuple):
    """One entry of a conversation: ``from`` (speaker) and ``value`` as in the JSON."""

    speaker: str
    value: str | int


def _as_turns(turns) -> list[Turn]:
    return [t if isinstance(t, Turn) else Turn(t["from"], t["value"]) for t in turns]


# ----------------------------------------------------------------------------- tokenizers


@dataclasses.dataclass(frozen=True)
class V10Vocab:
    """Ids of v1.0's tokens after ``setup_v10_tokenizer``.

    ``mean_init``: ``(rows, n)`` groups: rows the original sets to the mean of rows ``[:n]``
    (input and output embeddings) because they were new; ``random_init``: new rows left at
    the resize's random init (``<im_patch>``). Both empty when the tokenizer already held the
    tokens (LLaVA-7b-v0).
    """

    pad_id: int
    patch_id: int
    start_id: int | None
    end_id: int | None
    bos_id: int
    vocab_size: int
    mean_init: tuple[tuple[tuple[int, ...], int], ...] = ()
    random_init: tuple[int, ...] = ()

    @property
    def image_tokens(self) -> ImageTokens:
        """The 256 ``<im_patch>`` positions take the image features, in order."""
        return ImageTokens(placeholder_id=self.patch_id)


def _rebuilt(tokenizer, strip: Sequence[str], bos: str | None = None):
    """A fast tokenizer equal to ``tokenizer`` but with the added tokens ``strip`` atomic and
    eating the whitespace on both sides (as transformers 4.28's slow tokenizer treats tokens
    added as strings, whatever flags a saved folder gave them), and with the BOS that is put
    in front replaced by ``bos`` when given."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for added in spec["added_tokens"]:
        if added["content"] in strip:
            added.update(lstrip=True, rstrip=True, normalized=False, special=True)
    specials = {
        k: getattr(tokenizer, k)
        for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(tokenizer, k)
    }
    if bos is not None:
        old = tokenizer.bos_token
        post = spec.get("post_processor") or {}
        if old and post.get("type") == "TemplateProcessing":
            for key in ("single", "pair"):
                for item in post.get(key, []):
                    if "SpecialToken" in item and item["SpecialToken"]["id"] == old:
                        item["SpecialToken"]["id"] = bos
            post["special_tokens"].pop(old, None)
            bos_id = tokenizer.convert_tokens_to_ids(bos)
            post["special_tokens"][bos] = dict(id=bos, ids=[bos_id], tokens=[bos])
        elif old and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
            raise ValueError(
                "cannot replace the BOS: the tokenizer puts it in front without a "
                f"TemplateProcessing post-processor ({post.get('type')})"
            )
        specials["bos_token"] = bos
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **specials
    )


def setup_v10_tokenizer(
    tokenizer, *, path_has_llama: bool = False, use_im_start_end: bool = True
) -> tuple[object, V10Vocab]:
    """A copy of ``tokenizer`` (a fast LLaMA tokenizer, e.g. ``radjax.data.tokenizers.
    load_tokenizer`` of a local folder) set up as v1.0's ``train()`` does, and its ids.

    ``[PAD]`` as the pad token if there is none, the BOS quirk when ``path_has_llama`` (the
    original tests ``"llama" in model_name_or_path``: bos / eos / unk = ``</s>`` / ``</s>`` /
    ``<unk>``, BOS id 2 for LLaMA), then ``<im_patch>`` and (``use_im_start_end``)
    ``<im_start>``, ``<im_end>``; existing tokens keep their ids. Raises ValueError if the
    quirk's tokens are not in the vocabulary.
    """
    tok = copy.deepcopy(tokenizer)
    mean_init, random_init = [], []
    start = len(tok)
    if tok.pad_token is None:
        add_special_tokens(tok, [PAD_TOKEN], strip_whitespace=True)
        tok.pad_token = PAD_TOKEN
        if len(tok) > start:
            mean_init.append(((len(tok) - 1,), len(tok) - 1))
    bos = None
    if path_has_llama:
        vocab = tok.get_vocab()
        missing = [t for t in ("</s>", "<unk>") if t not in vocab]
        if missing:
            raise ValueError(f"path_has_llama: the tokenizer has no {missing}")
        tok.eos_token, tok.unk_token, bos = "</s>", "<unk>", "</s>"
    before = len(tok)
    patch_id = add_special_tokens(tok, [IMAGE_PATCH_TOKEN], strip_whitespace=True)[0]
    if len(tok) > before:
        random_init.append(patch_id)
    start_id = end_id = None
    if use_im_start_end:
        before = len(tok)
        start_id, end_id = add_special_tokens(
            tok, [IM_START_TOKEN, IM_END_TOKEN], strip_whitespace=True
        )
        new = len(tok) - before
        if new:
            mean_init.append((tuple(range(len(tok) - new, len(tok))), len(tok) - new))
    strip = [PAD_TOKEN, IMAGE_PATCH_TOKEN, IM_START_TOKEN, IM_END_TOKEN]
    tok = _rebuilt(tok, strip, bos)
    return tok, V10Vocab(
        pad_id=tok.pad_token_id,
        patch_id=patch_id,
        start_id=start_id,
        end_id=end_id,
        bos_id=tok.bos_token_id,
        vocab_size=len(tok),
        mean_init=tuple(mean_init),
        random_init=tuple(random_init),
    )


def setup_v15_tokenizer(tokenizer, *, add_patch_token: bool = False):
    """A copy of ``tokenizer`` (Mistral's) set up as upstream LLaVA's training does for the
    ``mistral_instruct`` version: pad = unk. ``add_patch_token``: also add ``<im_patch>``, as
    v1.5's loader does when the checkpoint config lacks ``mm_use_im_patch_token``
    (builder.py:62-68; the released config is reported to set it false), without whitespace stripping
    (transformers 4.36 adds it so)."""
    tok = copy.deepcopy(tokenizer)
    if tok.unk_token is None:
        raise ValueError("the tokenizer has no unk token (the pad token of v1.5 training)")
    tok.pad_token = tok.unk_token
    if add_patch_token:
        add_special_tokens(tok, [IMAGE_PATCH_TOKEN])
    return tok


def _ids(tokenizer, text: str) -> list[int]:
    """``tokenizer(text).input_ids``: BOS in front, no EOS (LLaMA)."""
    return list(tokenizer(text)["input_ids"])


# ----------------------------------------------------------------------------- v1.0


def image_block_text(
    image_token_len: int = V10_IMAGE_TOKEN_LEN, use_im_start_end: bool = True
) -> str:
    """What v1.0 writes for each ``<image>``: ``<im_start>`` + N ``<im_patch>`` + ``<im_end>``."""
    block = IMAGE_PATCH_TOKEN * image_token_len
    return IM_START_TOKEN + block + IM_END_TOKEN if use_im_start_end else block


def _value_text(turn: Turn, has_image: bool, source: str, field: str) -> str:
    value = turn.value
    number = isinstance(value, int) and not isinstance(value, bool)
    if number and has_image:
        return str(value)  # preprocess_multimodal stringifies numbers (train.py:203-204)
    if not isinstance(value, str):
        hint = " (the original stringifies numbers only in records with an image)"
        raise BadRecordError(
            source,
            f"{field}.value",
            f"{type(value).__name__} {value!r}: must be a string" + (hint if number else ""),
        )
    return value


def v10_segments(
    turns,
    *,
    has_image: bool,
    image_token_len: int = V10_IMAGE_TOKEN_LEN,
    use_im_start_end: bool = True,
    system: str = V10_SYSTEM,
    roles: tuple[str, str] = V10_ROLES,
    source: str = "conversation",
    field: str = "conversations",
) -> tuple[str, list[str]]:
    """v1.0's header and turn strings (``preprocess_multimodal`` + ``_add_speaker_and_signal``):
    ``header = system + "\\n\\n"``, each turn ``"### {role}: {value}\\n"``; the full text is
    ``header + "".join(turns) + "### "``."""
    segments = []
    block = image_block_text(image_token_len, use_im_start_end)
    for j, turn in enumerate(_as_turns(turns)):
        if not isinstance(turn.speaker, str):
            raise BadRecordError(
                source, f"{field}[{j}].from", f"must be a string, got {turn.speaker!r}"
            )
        value = _value_text(turn, has_image, source, f"{field}[{j}]")
        if has_image:
            value = value.replace(IMAGE_TOKEN, block)
        speaker = turn.speaker.lower()
        role = roles[0] if speaker == "human" else roles[1] if speaker == "gpt" else "unknown"
        segments.append(BEGIN_SIGNAL + role + ": " + value + END_SIGNAL)
    return f"{system}\n\n", segments


def tokenize_v10(
    turns,
    tokenizer,
    max_length: int,
    *,
    has_image: bool,
    image_token_len: int = V10_IMAGE_TOKEN_LEN,
    use_im_start_end: bool = True,
    system: str = V10_SYSTEM,
    roles: tuple[str, str] = V10_ROLES,
    source: str = "conversation",
    field: str = "conversations",
) -> tuple[np.ndarray, np.ndarray]:
    """v1.0's ``preprocess`` (v0 path) on one conversation: unpadded ``(ids, labels)`` i32
    (n,), n <= ``max_length`` (the tokenizer's ``model_max_length``). ``turns``: ``Turn`` s
    or ``{"from", "value"}`` dicts; ``tokenizer`` from ``setup_v10_tokenizer``."""
    turns = _as_turns(turns)
    header, segments = v10_segments(
        turns,
        has_image=has_image,
        image_token_len=image_token_len,
        use_im_start_end=use_im_start_end,
        system=system,
        roles=roles,
        source=source,
        field=field,
    )
    pad = tokenizer.pad_token_id
    ids = np.asarray(_ids(tokenizer, header + "".join(segments) + BEGIN_SIGNAL)[:max_length])
    lengths = [
        int(np.count_nonzero(np.asarray(_ids(tokenizer, s)[:max_length]) != pad))
        for s in [header, *segments]
    ]
    labels = ids.copy()
    cur = lengths[0]
    labels[:cur] = IGNORE
    for length, turn in zip(lengths[1:], turns):
        if turn.speaker == "human":  # exact, unlike the role text (train.py:163)
            labels[cur + 2 : cur + length] = IGNORE
        cur += length
    return ids.astype(np.int32), labels.astype(np.int32)


def _v10_image(ids, vocab: V10Vocab, image_token_len, use_im_start_end, max_length, where):
    """(image_mask (1,), image_start (1,)) of v1.0 ids; raises on blocks the original's
    forward refuses (llava.py:233-263) or splices wrongly (several)."""
    ids = np.asarray(ids)
    patches = np.flatnonzero(ids == vocab.patch_id)
    if use_im_start_end:
        starts = np.flatnonzero(ids == vocab.start_id)
        ends = np.flatnonzero(ids == vocab.end_id)
        firsts = starts + 1
        for p in starts:
            block_end = p + image_token_len + 1
            if block_end >= len(ids) and len(ids) == max_length:
                raise BadRecordError(
                    *where,
                    f"max_length={max_length} cuts the image block that starts at token "
                    f"{p} (the original's forward raises: the image end token must follow "
                    "the image start token)",
                )
            if block_end >= len(ids) or ids[block_end] != vocab.end_id:
                raise BadRecordError(
                    *where, f"image block at token {p} is not {image_token_len} patches + end"
                )
        if len(starts) != len(ends):
            raise BadRecordError(
                *where, f"{len(starts)} {IM_START_TOKEN} but {len(ends)} {IM_END_TOKEN} tokens"
            )
    else:
        firsts = patches[:1]
        if len(patches) and len(patches) != image_token_len and len(ids) == max_length:
            raise BadRecordError(*where, f"max_length={max_length} cuts the image patch tokens")
    expected = np.concatenate([np.arange(f, f + image_token_len) for f in firsts] or [[]])
    if len(patches) != len(expected) or np.any(patches != expected):
        raise BadRecordError(
            *where, f"{len(patches)} {IMAGE_PATCH_TOKEN} tokens outside complete image blocks"
        )
    if len(firsts) > 1:
        raise BadRecordError(
            *where,
            f"{len(firsts)} image blocks but one image a record (the original splices only "
            "the last, llava.py:245)",
        )
    start = int(firsts[0]) if len(firsts) else -1
    return np.asarray([start >= 0]), np.asarray([start], np.int32)


def _padded(ids, labels, max_length, pad_id, attention=None):
    n = len(ids)
    input_ids = np.full(max_length, pad_id, np.int32)
    input_ids[:n] = ids
    out_labels = np.full(max_length, IGNORE, np.int32)
    out_labels[:n] = labels
    if attention is None:
        attention = input_ids != pad_id
    return input_ids, out_labels, np.asarray(attention, np.int32)


def encode_v10(
    turns,
    tokenizer,
    vocab: V10Vocab,
    max_length: int,
    *,
    has_image: bool,
    image_token_len: int = V10_IMAGE_TOKEN_LEN,
    use_im_start_end: bool = True,
    system: str = V10_SYSTEM,
    roles: tuple[str, str] = V10_ROLES,
    source: str = "conversation",
    field: str = "conversations",
) -> dict[str, np.ndarray]:
    """One v1.0 training example of L = ``max_length`` tokens (``tokenize_v10``, padded as
    the original's collator: ids with the pad id, labels with IGNORE, ``attention_mask = ids
    != pad``).

    Returns input_ids, labels, attention_mask i32 (L,); image_mask bool (1,): the image's 256
    ``<im_patch>`` positions are in the ids (False for a text-only record, or when truncation
    removed the whole block: the original then trains on the text alone); image_start i32
    (1,): the first patch position or -1; length i32 (). Raises BadRecordError (``source``,
    ``field``) for a truncation inside the block, several blocks, bad values.
    """
    ids, labels = tokenize_v10(
        turns,
        tokenizer,
        max_length,
        has_image=has_image,
        image_token_len=image_token_len,
        use_im_start_end=use_im_start_end,
        system=system,
        roles=roles,
        source=source,
        field=field,
    )
    image_mask, image_start = _v10_image(
        ids, vocab, image_token_len, use_im_start_end, max_length, (source, field)
    )
    input_ids, labels, attention = _padded(ids, labels, max_length, vocab.pad_id)
    return dict(
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention,
        image_mask=image_mask & has_image,
        image_start=image_start,
        length=np.asarray(len(ids), np.int32),
    )


def v10_eval_prompt(
    question: str,
    *,
    with_image: bool = True,
    image_token_len: int = V10_IMAGE_TOKEN_LEN,
    use_im_start_end: bool = True,
    system: str = V10_SYSTEM,
) -> str:
    """The v1.0 VQA prompt of ``llava/eval/model_vqa_med.py`` (conv-mode ``simple``): the
    question without ``<image>``, stripped, then ``"\\n"`` + the image block *after* it, in
    conv ``simple`` (style SINGLE, sep ``###``, its two few-shot turns), no assistant cue::

        {SYSTEM}###Human: Hi!###Assistant: Hi there!  How can I help you today?\\n###Human: {q}\\n<im_start>…<im_end>###

    It differs from the training text (no ``"\\n\\n"``, no space after ``###``)."""
    qs = question.replace(IMAGE_TOKEN, "").strip()
    if with_image:
        qs = qs + "\n" + image_block_text(image_token_len, use_im_start_end)
    ret = system + "###"
    for role, message in (*V10_EVAL_FEW_SHOT, ("Human", qs)):
        ret += role + ": " + message + "###"
    return ret


# ----------------------------------------------------------------------------- v1.5


def llama2_prompt(
    messages: Sequence[tuple[str, str | None]],
    *,
    system: str = "",
    roles: tuple[str, str] = V15_ROLES,
    sep: str = "",
    sep2: str = "</s>",
) -> str:
    """``Conversation.get_prompt`` for style ``LLAMA_2`` (v1.5 conversation.py:77-97); the
    defaults are ``mistral_instruct``. Message i: user (even i) ``sep + "[INST] {m} [/INST]"``,
    assistant ``" " + m + " " + sep2``; the first message gets ``"<<SYS>>\\n{system}\\n
    <</SYS>>\\n\\n"`` in front when ``system`` is not empty; an empty or None message adds
    nothing; finally ``lstrip(sep)`` (a character set, as Python's). Raises ValueError where
    the original asserts: an empty first message or one not from ``roles[0]``."""
    ret = ""
    for i, (role, message) in enumerate(messages):
        if i == 0 and (not message or role != roles[0]):
            raise ValueError("the first message must be a non-empty user message")
        if message:
            if i == 0 and system:
                message = f"<<SYS>>\n{system}\n<</SYS>>\n\n" + message
            if i % 2 == 0:
                ret += sep + f"[INST] {message} [/INST]"
            else:
                ret += " " + message + " " + sep2
    return ret.lstrip(sep)


def v15_eval_prompt(question: str) -> str:
    """The v1.5 VQA prompt of ``llava/eval/model_vqa.py`` (``mistral_instruct``, start/end
    off): ``"[INST] <image>\\n{question without <image>, stripped} [/INST]"``."""
    qs = IMAGE_TOKEN + "\n" + question.replace(IMAGE_TOKEN, "").strip()
    return llama2_prompt([(V15_ROLES[0], qs), (V15_ROLES[1], None)])


def tokenizer_image_token(
    prompt: str, tokenizer, placeholder_id: int = IMAGE_TOKEN_INDEX
) -> list[int]:
    """v1.5 ``mm_utils.tokenizer_image_token``: each chunk between ``<image>`` s tokenised on
    its own (``tokenizer(chunk)``, so each gets the SentencePiece dummy prefix), the first
    chunk's BOS kept, the later chunks' BOS dropped, chunks joined by one ``placeholder_id``.
    No truncation."""
    chunks = [_ids(tokenizer, c) for c in prompt.split(IMAGE_TOKEN)]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(placeholder_id)
        ids.extend(chunk[offset:])
    return ids


def v15_messages(turns, *, has_image: bool, source: str, field: str):
    """(role, text) messages of upstream LLaVA's ``preprocess_multimodal`` + the prompt loop
    of ``preprocess_llama_2``: in a record with an image each value holding ``<image>`` has
    them removed and one ``"<image>\\n"`` put in front (then stripped); a first turn not from
    ``human`` is dropped; speakers must be exactly ``human`` / ``gpt`` and alternate."""
    turns = _as_turns(turns)
    values = []
    for j, turn in enumerate(turns):
        if not isinstance(turn.value, str):
            raise BadRecordError(
                source, f"{field}[{j}].value", f"must be a string, got {turn.value!r}"
            )
        value = turn.value
        if has_image and IMAGE_TOKEN in value:
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        if turn.speaker not in ("human", "gpt"):
            raise BadRecordError(
                source,
                f"{field}[{j}].from",
                f"{turn.speaker!r}: v1.5 (LLaMA-2 style) takes 'human' / 'gpt'",
            )
        values.append((turn.speaker, value, j))
    if values and values[0][0] != "human":
        values = values[1:]
    messages = []
    for k, (speaker, value, j) in enumerate(values):
        want = ("human", "gpt")[k % 2]
        if speaker != want:
            raise BadRecordError(
                source, f"{field}[{j}].from", f"{speaker!r} where the turns need {want!r}"
            )
        messages.append((V15_ROLES[k % 2], value))
    return messages


def expand_image(
    ids: Sequence[int],
    labels: Sequence[int],
    image_token_len: int = V15_IMAGE_TOKEN_LEN,
    placeholder_id: int = IMAGE_TOKEN_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Each ``placeholder_id`` becomes ``image_token_len`` copies of it with label IGNORE
    (the positions ``prepare_inputs_labels_for_multimodal`` fills with the image features)."""
    out_ids, out_labels = [], []
    for t, lab in zip(ids, labels):
        if t == placeholder_id:
            out_ids += [placeholder_id] * image_token_len
            out_labels += [IGNORE] * image_token_len
        else:
            out_ids.append(int(t))
            out_labels.append(int(lab))
    return np.asarray(out_ids, np.int32), np.asarray(out_labels, np.int32)


@dataclasses.dataclass(frozen=True)
class V15Tokens:
    """``tokenize_v15``'s result: ``prompt`` (the template text), ``prompt_ids`` (before the
    expansion and truncation), ``ids`` / ``labels`` (n,) after them, and ``mismatch``: the
    masked lengths did not add up to the token count, so every label is IGNORE (upstream
    prints a "tokenization mismatch" warning)."""

    prompt: str
    prompt_ids: list[int]
    ids: np.ndarray
    labels: np.ndarray
    mismatch: bool


def tokenize_v15(
    turns,
    tokenizer,
    max_length: int,
    *,
    has_image: bool,
    image_token_len: int = V15_IMAGE_TOKEN_LEN,
    placeholder_id: int = IMAGE_TOKEN_INDEX,
    source: str = "conversation",
    field: str = "conversations",
) -> V15Tokens:
    """v1.5 training tokens of one conversation (upstream LLaVA ``preprocess_llama_2`` on
    ``mistral_instruct``; its collator truncation; the splice's expansion and truncation).

    Labels: BOS IGNORE; the prompt is split on ``"</s>"`` into rounds and each round on
    ``"[/INST] "``; per round ``len(tok(instruction + "[/INST] ")) - 2`` tokens are IGNORE
    (its BOS and the trailing space piece are not in the round) and the cursor moves by
    ``len(tok(round))`` (its BOS stands for the ``</s>``); a round that does not split in
    two ends the walk; all after the cursor is IGNORE; if the cursor (below ``max_length``)
    is not the token count, everything is IGNORE. ``tok`` = ``tokenizer_image_token`` when
    ``has_image``, else ``tokenizer(text)`` (the full text then truncated to ``max_length``).
    Then: truncation to ``max_length``, tokens equal to the pad id (= unk) dropped (the
    attention mask the splice indexes with), each placeholder expanded, truncation again.
    """
    messages = v15_messages(turns, has_image=has_image, source=source, field=field)
    try:
        prompt = llama2_prompt(messages)
    except ValueError as err:
        raise BadRecordError(source, field, str(err)) from err

    def count(text):
        if has_image:
            return len(tokenizer_image_token(text, tokenizer, placeholder_id))
        return len(_ids(tokenizer, text))

    if has_image:
        prompt_ids = tokenizer_image_token(prompt, tokenizer, placeholder_id)
    else:
        prompt_ids = _ids(tokenizer, prompt)[:max_length]
    pad = tokenizer.pad_token_id
    ids = np.asarray(prompt_ids, np.int64)
    labels = ids.copy()
    total = int(np.count_nonzero(ids != pad))
    sep = "[/INST] "
    cur = 1
    labels[:cur] = IGNORE
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        instruction = count(parts[0] + sep) - 2
        labels[cur : cur + instruction] = IGNORE
        cur += count(rou)
    labels[cur:] = IGNORE
    mismatch = cur < max_length and cur != total
    if mismatch:
        labels[:] = IGNORE
    ids, labels = ids[:max_length], labels[:max_length]
    keep = ids != pad
    ids, labels = expand_image(ids[keep], labels[keep], image_token_len, placeholder_id)
    return V15Tokens(prompt, list(prompt_ids), ids[:max_length], labels[:max_length], mismatch)


def encode_v15(
    turns,
    tokenizer,
    max_length: int,
    *,
    has_image: bool,
    image_token_len: int = V15_IMAGE_TOKEN_LEN,
    placeholder_id: int = IMAGE_TOKEN_INDEX,
    source: str = "conversation",
    field: str = "conversations",
) -> dict[str, np.ndarray]:
    """One v1.5 training example of L = ``max_length`` positions (``tokenize_v15``), padded as
    the splice pads: ids with the pad id, labels IGNORE, ``attention_mask`` 1 on the n real
    positions.

    Returns input_ids (the image as ``image_token_len`` placeholder ids), labels,
    attention_mask i32 (L,); image_mask bool (1,) (False for a text-only record or when the
    truncation removed the placeholder: the original then uses no feature of the image);
    image_start i32 (1,); length i32 (); mismatch bool (). Raises BadRecordError for a
    truncation inside the image, several images, bad speakers or values.
    """
    out = tokenize_v15(
        turns,
        tokenizer,
        max_length,
        has_image=has_image,
        image_token_len=image_token_len,
        placeholder_id=placeholder_id,
        source=source,
        field=field,
    )
    starts = np.flatnonzero(out.ids == placeholder_id)[::image_token_len]
    images = out.prompt_ids[:max_length].count(placeholder_id)
    if images > 1:
        raise BadRecordError(source, field, f"{images} images in the ids but one image a record")
    if len(starts) and starts[0] + image_token_len > len(out.ids):
        raise BadRecordError(
            source,
            field,
            f"max_length={max_length} cuts the image's {image_token_len} positions that "
            f"start at {starts[0]} (the original would keep a partial image)",
        )
    n = len(out.ids)
    input_ids, labels, attention = _padded(
        out.ids, out.labels, max_length, tokenizer.pad_token_id, np.arange(max_length) < n
    )
    start = int(starts[0]) if len(starts) else -1
    return dict(
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention,
        image_mask=np.asarray([start >= 0 and has_image]),
        image_start=np.asarray([start], np.int32),
        length=np.asarray(n, np.int32),
        mismatch=np.asarray(out.mismatch),
    )
