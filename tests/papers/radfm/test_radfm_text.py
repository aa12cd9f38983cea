"""RadFM's image-token layout, insertion quirk, labels and loss weights."""

import numpy as np
import pytest

from radjax.data.tokenizers import phantom_tokenizer
from radjax.metrics.entities import EntityMatcher
from radjax.papers.radfm.text import (
    IGNORE,
    ImageTokenLayout,
    check_image_tokens,
    encode_sample,
    insert_images,
    register_image_tokens,
)

V = 708  # phantom tokenizer


@pytest.fixture(scope="module")
def tok_layout():
    layout = ImageTokenLayout(V, max_images=3)
    return register_image_tokens(phantom_tokenizer(), layout), layout


def test_layout_ids_are_the_originals():
    layout = ImageTokenLayout(32000, max_images=100)
    assert (layout.start_id, layout.end_id) == (32000, 32001)
    assert layout.image_token_id(2, 5) == 32002 + 64 + 5
    block = layout.block_ids(1)
    assert block[0] == 32000 and block[-1] == 32001 and len(block) == 34
    np.testing.assert_array_equal(block[1:-1], 32002 + 32 + np.arange(32))
    text = layout.image_token_text(1)
    assert text.startswith("<image><image32><image33>") and text.endswith("<image63></image>")
    assert layout.total_vocab_size == 32002 + 3200


def test_registered_tokenizer_gives_layout_ids(tok_layout):
    tok, layout = tok_layout
    for n in range(3):
        ids = tok(layout.image_token_text(n), add_special_tokens=False)["input_ids"]
        np.testing.assert_array_equal(ids, layout.block_ids(n))
    assert len(tok) == layout.total_vocab_size
    assert phantom_tokenizer().convert_tokens_to_ids("<image>") == 4  # caller's copy untouched


def test_missing_pad_token_pads_with_id_0():
    base = phantom_tokenizer()
    base.pad_token = None
    tok = register_image_tokens(base, ImageTokenLayout(V, max_images=1))
    assert tok.pad_token_id == 0


def test_register_rejects_other_vocab_size():
    with pytest.raises(ValueError, match="V=32000"):
        register_image_tokens(phantom_tokenizer(), ImageTokenLayout(32000, 1))


def test_insert_images_quirk_and_clean():
    layout = ImageTokenLayout(V, max_images=2)
    a, b = layout.image_token_text(0), layout.image_token_text(1)
    assert insert_images("abc", [3], layout) == "ab" + a + "c"
    assert insert_images("abc", [3], layout, faithful_position_quirk=False) == "abc" + a
    assert insert_images("abc", [0, 1], layout) == a + b + "abc"
    assert insert_images("abc", [1], layout, faithful_position_quirk=False) == "a" + a + "bc"
    with pytest.raises(ValueError, match="outside"):
        insert_images("abc", [4], layout)
    with pytest.raises(ValueError, match="max_images"):
        insert_images("abc", [0, 0, 0], layout)


def test_encode_sample_labels_and_weights(tok_layout):
    tok, layout = tok_layout
    question, answer = "Is there effusion?", "Large pleural effusion on the left."
    out = encode_sample(
        question,
        answer,
        [0, len(question)],
        tok,
        layout,
        160,
        matcher=EntityMatcher(["pleural effusion"]),
    )
    ids, labels, entities = out["input_ids"], out["labels"], out["entity_mask"]
    n = int(out["attention_mask"].sum()) + 1  # the EOS is not attended, as in the original
    q = int(out["question_length"])
    check_image_tokens(ids, 2, layout)
    assert ids[0] == tok.bos_token_id and ids[n - 1] == tok.eos_token_id
    assert (ids[n:] == tok.pad_token_id).all()
    assert (labels[:q] == IGNORE).all() and (labels[n:] == IGNORE).all()
    np.testing.assert_array_equal(labels[q:n], ids[q:n])
    assert (ids[:q] >= V).sum() == 2 * 34  # both image blocks lie in the prefix
    assert not entities[labels == IGNORE].any() and not entities[n - 1]
    assert tok.decode(ids[q : n - 1]).strip() == answer
    assert tok.decode(ids[entities]).strip().lower() == "pleural effusion"


def test_encode_sample_marks_only_answer_entities_with_the_default_lexicon(tok_layout):
    tok, layout = tok_layout
    out = encode_sample(
        "Is there a pleural effusion on CT?", "Yes: pleural effusion on CT.", [0], tok, layout, 160
    )
    q = int(out["question_length"])
    assert not out["entity_mask"][:q].any()
    ids, mask = out["input_ids"], out["entity_mask"]
    runs = np.split(np.flatnonzero(mask), np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
    assert [tok.decode(ids[r]).strip().lower() for r in runs] == ["pleural effusion", "ct"]


def test_encode_sample_errors_name_the_sample(tok_layout):
    tok, layout = tok_layout
    with pytest.raises(ValueError, match="case7: .*exceed max_length=40"):
        encode_sample("Describe.", "x " * 10, [0], tok, layout, 40, name="case7")
    with pytest.raises(ValueError, match="case8: .*max_images"):
        encode_sample("Describe.", "x", [0] * 4, tok, layout, 400, name="case8")
    with pytest.raises(ValueError, match="case9: .*outside any image block"):
        encode_sample("Look <image1> here.", "x", [0], tok, layout, 400, name="case9")


def test_check_image_tokens_rejects_bad_blocks():
    layout = ImageTokenLayout(V, max_images=2)
    good = np.concatenate([[0], layout.block_ids(0), [7], layout.block_ids(1), [1]])
    check_image_tokens(good, 2, layout)
    swapped = good.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    with pytest.raises(ValueError, match="mis-numbered"):
        check_image_tokens(swapped, 2, layout)
    check_image_tokens(np.concatenate([layout.block_ids(1), layout.block_ids(0)]), 2, layout)
    twice = np.concatenate([layout.block_ids(1), layout.block_ids(1)])
    with pytest.raises(ValueError, match="repeated"):
        check_image_tokens(twice, 2, layout)
    with pytest.raises(ValueError, match="incomplete"):
        check_image_tokens(good[:-5], 2, layout)
    with pytest.raises(ValueError, match="expected 1 image blocks"):
        check_image_tokens(good, 1, layout)
    stray = np.concatenate([good, [layout.image_token_id(0, 3)]])
    with pytest.raises(ValueError, match="outside any image block"):
        check_image_tokens(stray, 2, layout)
