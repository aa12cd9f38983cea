"""RadFM's released tokenizer folder and its text procedure against the ORIGINAL's ids.

The golden file (tests/golden/make_tokenizer_golden.py) holds what the original
``multi_dataset`` (chaoyi-wu/RadFM 9efba84, transformers 4.28.1, sentencepiece 0.1.99) gives
on a folder laid out like ``Quick_demo/Language_files`` with mistral-common's LLaMA-format
SentencePiece model ``tokenizer.model.v1``. radjax builds the same folder here and runs its
own path (``load_radfm_tokenizer`` -> ``register_image_tokens`` -> ``encode_sample``).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from radjax.metrics.entities import EntityMatcher
from radjax.papers.radfm.text import (
    ImageTokenLayout,
    encode_sample,
    load_radfm_tokenizer,
    register_image_tokens,
)

GOLDEN = json.loads(
    (Path(__file__).parents[2] / "golden" / "data" / "radfm_tokenizer.json").read_text()
)
SAMPLES = {s["name"]: s for s in GOLDEN["samples"]}


def _sp_model() -> Path:
    mistral_common = pytest.importorskip("mistral_common")
    path = Path(mistral_common.__file__).parent / "data" / GOLDEN["sp_model"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == GOLDEN["sp_model_sha256"], f"{path} is not the model the golden ids used"
    return path


def _language_files(folder: Path, **config) -> Path:
    """``folder`` laid out like the released Language_files (its two JSON files as released,
    ``config`` entries replacing the tokenizer_config's)."""
    folder.mkdir()
    shutil.copy(_sp_model(), folder / "tokenizer.model")
    for name, text in GOLDEN["language_files"].items():
        content = {**json.loads(text), **config} if name == "tokenizer_config.json" else None
        (folder / name).write_text(json.dumps(content) if content is not None else text)
    return folder


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return _language_files(tmp_path_factory.mktemp("radfm") / "Language_files")


@pytest.fixture(scope="module")
def tok_layout(released):
    layout = ImageTokenLayout(GOLDEN["voc_size"], max_images=4, tokens_per_image=32)
    return register_image_tokens(load_radfm_tokenizer(released), layout), layout


def test_released_layout_loads_set_up_as_the_original(released):
    assert json.loads(GOLDEN["language_files"]["tokenizer_config.json"])["bos_token"] == ""
    tok = load_radfm_tokenizer(released)
    ids = {n: getattr(tok, f"{n}_token_id") for n in ("pad", "bos", "eos", "unk")}
    assert ids == GOLDEN["special_ids"] == dict(pad=0, bos=1, eos=2, unk=0)
    assert len(tok) == GOLDEN["voc_size"]
    assert tok("What")["input_ids"][0] == 1


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_matches_the_original(tok_layout, name):
    from radjax.train.vlm_steps import answer_weights

    tok, layout = tok_layout
    s = SAMPLES[name]
    matcher = EntityMatcher(s["entities"] or ["no such entity"])
    found = {s["answer"][a:b] for a, b, _ in matcher.spans(s["answer"])}
    assert found == set(s["key_words_query"])  # the entities the original was given
    out = encode_sample(
        s["question"], s["answer"], s["positions"], tok, layout, GOLDEN["max_seq"], matcher=matcher
    )
    for key in ("input_ids", "attention_mask", "labels"):
        np.testing.assert_array_equal(out[key], s[key], err_msg=f"{name}: {key}")
    assert int(out["question_length"]) == s["question_length"]
    weights = np.asarray(answer_weights(out["labels"], out["entity_mask"], 3.0))
    np.testing.assert_array_equal(weights, s["loss_reweight"], err_msg=f"{name}: weights")


def test_whitespace_next_to_image_tokens_is_stripped(tok_layout):
    tok, layout = tok_layout
    block = layout.image_token_text(0)
    spaced = tok(f"Is there \n{block}  a lesion?")["input_ids"]
    assert spaced == tok(f"Is there{block}a lesion?")["input_ids"]
    assert tok.convert_ids_to_tokens(spaced[-4:]) == ["▁a", "▁les", "ion", "?"]


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(bos_token="</s>"), r"special token ids \{'bos': 2\}"),
        (dict(add_bos_token=False), "does not put its BOS"),
    ],
    ids=["bos", "no-bos"],
)
def test_special_ids_other_than_the_checkpoints_are_an_error(tmp_path, config, match):
    folder = _language_files(tmp_path / "tok", **config)
    with pytest.raises(ValueError, match=match) as err:
        load_radfm_tokenizer(folder)
    assert str(folder) in str(err.value)


def test_other_vocabulary_size_is_an_error():
    from radjax.data.tokenizers import PHANTOM_TOKENIZER_DIR

    with pytest.raises(ValueError, match="V=32000"):
        load_radfm_tokenizer(PHANTOM_TOKENIZER_DIR)
