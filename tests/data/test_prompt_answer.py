"""radjax.data.prompt_answer with the shipped phantom tokenizer: prompt masked out of the
labels, BOS/EOS, padding, truncation and errors."""

import numpy as np
import pytest

from radjax.data import prompt_answer as pa
from radjax.data.prompt_answer import IGNORE, encode_prompt_answer, pack, tokenize_prompt_answer
from radjax.data.tokenizers import phantom_tokenizer

PROMPT, ANSWER = "Is there a pleural effusion?", "Yes, a large pleural effusion on the left."


@pytest.fixture(scope="module")
def tok():
    return phantom_tokenizer()


def test_labels_cover_the_answer_and_eos_only(tok):
    out = encode_prompt_answer(PROMPT, ANSWER, tok, 48)
    ids, labels, mask = out["input_ids"], out["labels"], out["attention_mask"]
    n, p = int(mask.sum()), int(out["prompt_length"])
    assert ids[0] == tok.bos_token_id and ids[n - 1] == tok.eos_token_id
    assert (ids[n:] == tok.pad_token_id).all() and (labels[n:] == IGNORE).all()
    assert (labels[:p] == IGNORE).all()
    np.testing.assert_array_equal(labels[p:n], ids[p:n])
    assert tok.decode(ids[1:p]) == PROMPT
    assert tok.decode(ids[p : n - 1]).strip() == ANSWER
    # the joined text's tokens: what the tokenizer gives the whole text
    np.testing.assert_array_equal(
        ids[:n], tok(PROMPT + " " + ANSWER)["input_ids"] + [tok.eos_token_id]
    )
    assert {k: v.dtype for k, v in out.items()} == {
        "input_ids": np.int32,
        "attention_mask": np.int32,
        "labels": np.int32,
        "prompt_length": np.int32,
    }


def test_bos_eos_and_separator_are_configurable(tok):
    pair = tokenize_prompt_answer(PROMPT, ANSWER, tok, separator="\n", add_bos=False, add_eos=False)
    assert pair.text == PROMPT + "\n" + ANSWER
    assert pair.ids[0] != tok.bos_token_id and pair.ids[-1] != tok.eos_token_id
    assert tok.decode(pair.ids[: pair.prompt_length]) == PROMPT
    assert len(pair.offsets) == len(pair.ids)
    with_specials = tokenize_prompt_answer(PROMPT, ANSWER, tok)
    assert with_specials.prompt_length == pair.prompt_length + 1
    np.testing.assert_array_equal(with_specials.offsets[[0, -1]], [[0, 0], [len(pair.text)] * 2])


def test_too_long_raises_or_truncates(tok):
    full = encode_prompt_answer(PROMPT, ANSWER, tok, 48)
    n, p = int(full["attention_mask"].sum()), int(full["prompt_length"])
    with pytest.raises(ValueError, match=f"case3: {n} tokens exceed max_length={n - 1}"):
        encode_prompt_answer(PROMPT, ANSWER, tok, n - 1, name="case3")
    cut = encode_prompt_answer(PROMPT, ANSWER, tok, p + 2, truncate=True)
    np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][: p + 2])
    assert cut["attention_mask"].all() and (cut["labels"][p:] >= 0).all()
    with pytest.raises(ValueError, match="no answer token"):
        encode_prompt_answer(PROMPT, ANSWER, tok, p, truncate=True)


def test_pack_masks_by_position_and_needs_a_pad_token(tok):
    out = pack(np.array([1, 9, 9, 0, 2]), 2, 7, pad_id=0)
    np.testing.assert_array_equal(out["input_ids"], [1, 9, 9, 0, 2, 0, 0])
    np.testing.assert_array_equal(out["labels"], [IGNORE, IGNORE, 9, 0, 2, IGNORE, IGNORE])
    np.testing.assert_array_equal(out["attention_mask"], [1, 1, 1, 1, 1, 0, 0])
    no_pad = phantom_tokenizer()
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        encode_prompt_answer(PROMPT, ANSWER, no_pad, 48)


def test_generated_texts_cut_at_eos_and_answer_texts_keep_only_the_answer():
    tok = phantom_tokenizer()
    ids = tok("left kidney", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    generated = np.array([ids + [eos] + ids, ids + ids + [0]])
    got = pa.generated_texts(generated, tok, eos)
    no_eos = tok.decode(ids + ids + [0], skip_special_tokens=True).strip()
    assert got == ["left kidney", no_eos] and len(no_eos) > len("left kidney")
    np.testing.assert_array_equal(pa.until_eos(np.array([5, eos, 6]), eos), [5])
    labels = np.array([[-100, -100] + ids + [eos, -100]])
    assert pa.answer_texts(labels, tok, eos) == ["left kidney"]
