"""Tokenizer loading, special tokens and vocabulary growth with mean-initialised rows."""

import json
import shutil
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401
from radjax.data import tokenizers
from radjax.models.embeddings import resize_vocab
from radjax.models.gpt2 import GPT2, GPT2Config
from radjax.models.llama import Decoder, DecoderConfig
from radjax.papers.rp3d_diag.tokenizer_corpus import phantom_corpus


def _llama(tied):
    cfg = DecoderConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=tied,
    )
    return Decoder(cfg, rngs=nnx.Rngs(0))


def _gpt2():
    model = GPT2(
        GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2), rngs=nnx.Rngs(0)
    )
    model.eval()
    return model


@pytest.mark.parametrize(
    "make",
    [lambda: _llama(True), lambda: _llama(False), _gpt2],
    ids=["llama-tied", "llama-untied", "gpt2"],
)
def test_resize_keeps_old_logits_and_mean_initialises_new_rows(make):
    model = make()
    ids = jnp.array([[1, 5, 7, 3]])
    before = np.asarray(model(ids))
    table = np.asarray(model.embed(jnp.arange(40)[None])[0], np.float32)
    assert resize_vocab(model, 43) == 40
    after = np.asarray(model(ids))
    assert after.shape == (1, 4, 43) and model.cfg.vocab_size == 43
    np.testing.assert_allclose(after[..., :40], before, rtol=1e-5, atol=1e-6)
    new_rows = np.asarray(model.embed(jnp.array([[40, 41, 42]]))[0], np.float32)
    np.testing.assert_allclose(
        new_rows, np.repeat(table.mean(0, keepdims=True), 3, 0), rtol=1e-5, atol=1e-6
    )
    # the new tokens can be fed in
    assert np.isfinite(np.asarray(model(jnp.array([[41, 42]])))).all()
    with pytest.raises(ValueError, match="shrink"):
        resize_vocab(model, 10)


def test_shipped_phantom_tokenizer_round_trips_and_keeps_image_tokens_atomic():
    tok = tokenizers.phantom_tokenizer()
    text = "Finding: a 12 mm round nodule in the right upper lobe. <image></image>"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    tokens = tok.convert_ids_to_tokens(ids)
    assert "<image>" in tokens and "</image>" in tokens
    assert (
        tok.decode(ids, skip_special_tokens=True).strip()
        == text.replace(" <image></image>", "").strip()
    )
    assert len(ids) < len(text) / 2  # BPE merges learned from the phantom corpus


def test_shipped_tokenizer_is_what_the_builder_produces(tmp_path):
    tokenizers.train_tokenizer(phantom_corpus(), tmp_path)
    rebuilt = tokenizers.load_tokenizer(tmp_path)
    shipped = tokenizers.phantom_tokenizer()
    assert rebuilt.get_vocab() == shipped.get_vocab()


def test_add_special_tokens_then_resize_the_model():
    tok = tokenizers.phantom_tokenizer()
    n = len(tok)
    new_ids = tokenizers.add_special_tokens(tok, ["<im_patch>", "[SEG]"])
    assert new_ids == [n, n + 1] and len(tok) == n + 2
    assert tok.convert_ids_to_tokens(tok("x [SEG] y")["input_ids"]).count("[SEG]") == 1
    model = _llama(False)
    resize_vocab(model, 40 + 2)
    assert model.lm_head.kernel[...].shape == (16, 42)


def test_bad_tokenizer_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        tokenizers.load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        tokenizers.load_tokenizer(tmp_path / "empty")


def test_add_special_tokens_can_strip_the_whitespace_around_them():
    tok = tokenizers.phantom_tokenizer()
    tokenizers.add_special_tokens(tok, ["[SEG]"], strip_whitespace=True)
    assert tok("nodule \n [SEG]  lobe")["input_ids"] == tok("nodule[SEG]lobe")["input_ids"]


@pytest.fixture(scope="module")
def bare_sentencepiece(tmp_path_factory):
    """A folder holding only a LLaMA-format SentencePiece model (mistral-common's)."""
    mistral_common = pytest.importorskip("mistral_common")
    folder = tmp_path_factory.mktemp("sp") / "tok"
    folder.mkdir()
    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    shutil.copy(model, folder / "tokenizer.model")
    return folder


# whitespace runs, a leading space, tabs, digits, byte fallback: where transformers'
# conversion of the SentencePiece model gave other ids
TRICKY = [
    "Left  kidney,  lower pole",
    " What is shown?",
    "a" + " " * 20 + "b   ",
    "\t(Ø ;XYXc中the .5eflesion ijcf  9lesion 0   ",
    "c×g  0Y.-5Ø   lesion Z",
    "    \n",
]


def test_bare_sentencepiece_folder_loads_with_bos_and_sentencepiece_ids(bare_sentencepiece):
    import sentencepiece

    tok = tokenizers.load_tokenizer(bare_sentencepiece)
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(bare_sentencepiece / "tokenizer.model")
    )
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    for text in TRICKY:
        assert tok(text)["input_ids"] == [1] + sp.encode(text), repr(text)
    # legacy: text after an added token gets the dummy prefix, as SentencePiece per piece
    tokenizers.add_special_tokens(tok, ["</image>"])
    ids = tok("</image>What", add_special_tokens=False)["input_ids"]
    assert ids[1:] == sp.encode("What")


def test_empty_special_tokens_in_the_config_are_the_models(bare_sentencepiece, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(bare_sentencepiece, folder)
    config = dict(bos_token="", eos_token="", unk_token="", tokenizer_class="LlamaTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text("{}")
    tok = tokenizers.load_tokenizer(folder)
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert tok("What")["input_ids"][0] == 1


def test_sentencepiece_missing_says_to_install_it(bare_sentencepiece, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="install sentencepiece"):
        tokenizers.load_tokenizer(bare_sentencepiece)
