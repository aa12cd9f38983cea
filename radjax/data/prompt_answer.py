"""Prompt + answer -> one fixed-length training sequence whose labels cover the answer only.

The vision-language papers (RadFM, M3D, LLaVA-Med, Uni-Med) train on ``prompt + separator +
answer`` and compute the loss on the answer tokens. ``tokenize_prompt_answer`` tokenises the
joined text once (so the tokens are those the tokenizer gives the whole text), with BOS in
front and EOS at the end as configured; its prompt is every token that starts inside the
prompt's characters. ``pack`` pads (or truncates) to a fixed length and masks the prompt and
the padding out of the labels (``IGNORE``, i.e. loss weight 0;
``radjax.train.vlm_steps.answer_weights``). ``encode_prompt_answer`` does both.
``generated_texts`` / ``answer_texts`` turn generated ids and training labels back into text
for the evaluations.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE = -100


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    """``ids`` (n,) and ``offsets`` (n, 2) character spans in ``text`` (special tokens:
    empty spans), ``prompt_length``: the leading tokens that belong to the prompt (BOS
    included)."""

    ids: np.ndarray
    offsets: np.ndarray
    prompt_length: int
    text: str


def _special_id(tokenizer, name: str) -> int:
    value = getattr(tokenizer, f"{name}_token_id")
    if value is None:
        raise ValueError(f"the tokenizer has no {name} token (set tokenizer.{name}_token)")
    return int(value)


def tokenize_prompt_answer(
    prompt: str,
    answer: str,
    tokenizer,
    *,
    separator: str = " ",
    add_bos: bool = True,
    add_eos: bool = True,
) -> TokenizedPair:
    """Tokenises ``prompt + separator + answer`` (a fast HF tokenizer, with offsets), then
    puts the tokenizer's BOS in front / EOS at the end when ``add_bos`` / ``add_eos``.

    The prompt's tokens are those whose span starts before ``len(prompt)`` (a token spanning
    the boundary counts as prompt), plus the BOS.
    """
    text = prompt + separator + answer
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(span) for span in encoded["offset_mapping"]]
    prompt_length = sum(start < len(prompt) for start, _ in offsets)
    if add_bos:
        ids, offsets = [_special_id(tokenizer, "bos")] + ids, [(0, 0)] + offsets
        prompt_length += 1
    if add_eos:
        ids, offsets = ids + [_special_id(tokenizer, "eos")], offsets + [(len(text), len(text))]
    return TokenizedPair(
        ids=np.asarray(ids, np.int32),
        offsets=np.asarray(offsets, np.int64).reshape(-1, 2),
        prompt_length=int(prompt_length),
        text=text,
    )


def pack(
    ids: np.ndarray, prompt_length: int, max_length: int, pad_id: int, *, truncate: bool = False
) -> dict[str, np.ndarray]:
    """One right-padded sequence of ``max_length`` (L) tokens.

    Args:
      ids: (n,) token ids, prompt first. prompt_length: leading ids masked out of the labels.
      pad_id: the id after the last token.
      truncate: False: more than L ids raise ValueError. True: keep the first L ids (the
        answer's tail, and its EOS, are cut); a prompt that leaves no answer token within L
        still raises.
    Returns:
      input_ids i32 (L,); attention_mask i32 (L,), 1 on the real tokens; labels i32 (L,):
      ``input_ids`` with ``IGNORE`` on the prompt and the padding; prompt_length i32 ().
    """
    ids = np.asarray(ids, np.int32)
    if len(ids) > max_length and not truncate:
        raise ValueError(f"{len(ids)} tokens exceed max_length={max_length}")
    if prompt_length >= min(len(ids), max_length):
        raise ValueError(
            f"no answer token: the prompt takes {prompt_length} of the {len(ids)} tokens "
            f"(max_length={max_length})"
        )
    ids = ids[:max_length]
    input_ids = np.full(max_length, pad_id, np.int32)
    input_ids[: len(ids)] = ids
    real = np.arange(max_length) < len(ids)
    labels = np.where(real & (np.arange(max_length) >= prompt_length), input_ids, IGNORE)
    return dict(
        input_ids=input_ids,
        attention_mask=real.astype(np.int32),
        labels=labels.astype(np.int32),
        prompt_length=np.asarray(prompt_length, np.int32),
    )


def encode_prompt_answer(
    prompt: str,
    answer: str,
    tokenizer,
    max_length: int,
    *,
    separator: str = " ",
    add_bos: bool = True,
    add_eos: bool = True,
    truncate: bool = False,
    name: str = "sample",
) -> dict[str, np.ndarray]:
    """``tokenize_prompt_answer`` then ``pack`` with the tokenizer's pad id: input_ids,
    attention_mask, labels (L,) and prompt_length (). Errors (no pad token, too long, no
    answer token) are ValueErrors naming ``name``."""
    try:
        pair = tokenize_prompt_answer(
            prompt, answer, tokenizer, separator=separator, add_bos=add_bos, add_eos=add_eos
        )
        return pack(
            pair.ids,
            pair.prompt_length,
            max_length,
            _special_id(tokenizer, "pad"),
            truncate=truncate,
        )
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def until_eos(ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """(T,) ids -> the ids before the first EOS (all of them when there is none)."""
    ids = np.asarray(ids)
    ends = np.flatnonzero(ids == eos_token_id)
    return ids[: ends[0]] if len(ends) else ids


def generated_texts(tokens: np.ndarray, tokenizer, eos_token_id: int) -> list[str]:
    """(N, T) generated ids -> N strings, each cut at its first EOS, specials skipped,
    stripped."""
    return [
        tokenizer.decode(until_eos(row, eos_token_id).tolist(), skip_special_tokens=True).strip()
        for row in np.asarray(tokens)
    ]


def answer_texts(labels: np.ndarray, tokenizer, eos_token_id: int) -> list[str]:
    """(N, L) training labels (``IGNORE`` = not answer) -> the N reference answers (EOS
    dropped, specials skipped, stripped)."""
    out = []
    for row in np.asarray(labels):
        answer = row[(row >= 0) & (row != eos_token_id)]
        out.append(tokenizer.decode(answer.tolist(), skip_special_tokens=True).strip())
    return out
