"""LLaVA-Med's conversation data: radjax against the ORIGINAL code's ids and labels.

The golden file (tests/golden/make_llava_med_golden.py) holds what the original gives:
v1.0 (microsoft/LLaVA-Med b9a98a7 ``train.py``: tokenizer set-up, ``LazySupervisedDataset``
+ ``preprocess``; transformers 4.28.1, sentencepiece 0.1.99) and v1.5 (LLaVA-Med d406e3f's
``mistral_instruct`` + ``tokenizer_image_token`` with upstream LLaVA's ``preprocess_llama_2``;
transformers 4.36.2), on mistral-common's LLaMA-format SentencePiece model
``tokenizer.model.v1``. radjax builds the same tokenizer folders and runs its own path
(``load_tokenizer`` -> ``setup_v10_tokenizer`` / ``setup_v15_tokenizer`` -> ``encode_*``).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from radjax.data.errors import BadRecordError
from radjax.data.prompt_answer import IGNORE
from radjax.data.tokenizers import load_tokenizer
from radjax.papers.llava_med import conversation as C
from radjax.papers.llava_med import conversations_json as R

GOLDEN = json.loads(
    (Path(__file__).parents[2] / "golden" / "data" / "llava_med_conversation.json").read_text()
)
V10, V15 = GOLDEN["v1.0"], GOLDEN["v1.5"]
V10_ROWS = {(r["setup"], r["name"]): r for r in V10["samples"]}
V15_ROWS = {r["name"]: r for r in V15["samples"]}
V10_CUT = {"truncated_in_image"}  # the original's forward raises on it; radjax refuses it
V15_CUT = {"truncated_in_image"}  # the original keeps part of the image; radjax refuses it


def _sp_model(part) -> Path:
    mistral_common = pytest.importorskip("mistral_common")
    path = Path(mistral_common.__file__).parent / "data" / part["sp_model"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == part["sp_model_sha256"], f"{path} is not the model the golden ids used"
    return path


def _folder(tmp_path_factory, part, files, name) -> Path:
    folder = tmp_path_factory.mktemp("llava_med") / name
    folder.mkdir()
    shutil.copy(_sp_model(part), folder / "tokenizer.model")
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


@pytest.fixture(scope="module")
def v10_tokenizers(tmp_path_factory):
    raw = load_tokenizer(_folder(tmp_path_factory, V10, V10["raw_tokenizer_files"], "raw"))
    saved = load_tokenizer(
        _folder(tmp_path_factory, V10, V10["saved_tokenizer_files"], "llava-7b-v0")
    )
    return {
        "base": C.setup_v10_tokenizer(raw),
        "bos_quirk": C.setup_v10_tokenizer(raw, path_has_llama=True),
        "preexisting": C.setup_v10_tokenizer(saved),
    }


@pytest.fixture(scope="module")
def v15_tokenizer(tmp_path_factory):
    folder = _folder(tmp_path_factory, V15, V15["raw_tokenizer_files"], "raw15")
    return C.setup_v15_tokenizer(load_tokenizer(folder))


def _record(row):
    """The golden record through radjax's reader (either key spelling)."""
    return R.parse_conversation(row["record"], "golden.json", 0)


# ----------------------------------------------------------------------------- v1.0 golden


@pytest.mark.parametrize("setup", ["base", "bos_quirk", "preexisting"])
def test_v10_tokenizer_setup_matches_the_original(v10_tokenizers, setup):
    tok, vocab = v10_tokenizers[setup]
    want = V10["setups"][setup]
    names = {"[PAD]": vocab.pad_id, "<im_patch>": vocab.patch_id}
    names.update({"<im_start>": vocab.start_id, "<im_end>": vocab.end_id})
    assert names == want["token_ids"]
    assert vocab.vocab_size == len(tok) == want["length"] == want["embedding_rows"]
    specials = dict(pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id)
    assert specials | dict(unk=tok.unk_token_id) == want["special_ids"]
    assert vocab.bos_id == want["special_ids"]["bos"] == tok("a")["input_ids"][0]
    # the rows the original mean-initialises: {row: n} = mean of rows [:n]; None = random
    mean_from = {int(k.split("/")[1]): v for k, v in want["mean_init_from"].items() if "input" in k}
    ours = {row: n for rows, n in vocab.mean_init for row in rows}
    ours.update({row: None for row in vocab.random_init})
    assert ours == mean_from
    assert want["mean_init_from"] == {
        f"{side}/{row}": n for row, n in ours.items() for side in ("input", "output")
    }


@pytest.mark.parametrize("key", sorted(V10_ROWS), ids="/".join)
def test_v10_sample_matches_the_original(v10_tokenizers, key):
    row = V10_ROWS[key]
    tok, vocab = v10_tokenizers[row["setup"]]
    record = _record(row)
    length = V10["max_length"]
    ids, labels = C.tokenize_v10(record.turns, tok, length, has_image=record.has_image)
    np.testing.assert_array_equal(ids, row["input_ids"], err_msg=f"{key}: input_ids")
    np.testing.assert_array_equal(labels, row["labels"], err_msg=f"{key}: labels")
    header, segments = C.v10_segments(record.turns, has_image=record.has_image)
    text = header + "".join(segments) + C.BEGIN_SIGNAL
    assert text.replace("<im_patch>" * 256, "<im_patch>*256") == row["text"]
    if row["name"] in V10_CUT:
        with pytest.raises(BadRecordError, match="cuts the image block") as err:
            C.encode_v10(record.turns, tok, vocab, length, has_image=True, source="x.json")
        assert err.value.path == "x.json" and err.value.field == "conversations"
        return
    out = C.encode_v10(record.turns, tok, vocab, length, has_image=record.has_image)
    n = len(row["input_ids"])
    assert int(out["length"]) == n and out["input_ids"].shape == (length,)
    np.testing.assert_array_equal(out["input_ids"][:n], row["input_ids"])
    assert (out["input_ids"][n:] == vocab.pad_id).all() and (out["labels"][n:] == IGNORE).all()
    np.testing.assert_array_equal(out["labels"][:n], row["labels"])
    # the collator's mask: ids != pad
    np.testing.assert_array_equal(out["attention_mask"], out["input_ids"] != vocab.pad_id)
    start = int(out["image_start"][0])
    if record.has_image and row["name"] != "image_cut_off":
        assert out["image_mask"].tolist() == [True]
        assert ids[start - 1] == vocab.start_id and ids[start + 256] == vocab.end_id
        assert (ids[start : start + 256] == vocab.patch_id).all()
        assert (out["input_ids"] == vocab.patch_id).sum() == 256
    else:  # text only, or the whole block truncated away: no feature is placed
        assert out["image_mask"].tolist() == [False] and start == -1


def test_v10_masking_quirks_in_the_golden(v10_tokenizers):
    """What the original's masking does, read off its own labels (Mistral's vocabulary)."""
    rows = {name: r for (setup, name), r in V10_ROWS.items() if setup == "base"}
    # capitalised "Human" is not "human": its turn, image block included, is trained
    quirk = rows["speaker_case_and_unknown"]
    patch = V10["setups"]["base"]["token_ids"]["<im_patch>"]
    assert sum(t == patch for t in quirk["labels"]) == 256
    # exact "human": the image block is masked; nothing after the last turn is masked
    first = rows["image_first"]
    assert patch not in first["labels"] and first["labels"][-2:] == first["input_ids"][-2:]
    # no EOS anywhere
    assert all(2 not in r["input_ids"][1:] for r in rows.values())


def test_v10_eval_prompt_matches_the_original(v10_tokenizers):
    tok, _ = v10_tokenizers["base"]
    want = V10["eval_prompt"]
    prompt = C.v10_eval_prompt(want["question"])
    assert prompt.replace("<im_patch>" * 256, "<im_patch>*256") == want["prompt"]
    assert tok(prompt)["input_ids"] == want["input_ids"]
    assert C.v10_eval_prompt("<image>\n Is it?", with_image=False).endswith("###Human: Is it?###")


def test_v10_text_layout():
    turns = [C.Turn("human", "<image>\nq?"), C.Turn("GPT", "a."), C.Turn("system", "s")]
    header, segments = C.v10_segments(turns, has_image=True, image_token_len=2)
    assert header == C.V10_SYSTEM + "\n\n"
    assert segments == [
        "### Human: <im_start><im_patch><im_patch><im_end>\nq?\n",
        "### Assistant: a.\n",
        "### unknown: s\n",
    ]
    no_image = C.v10_segments(turns[:1], has_image=False)[1]
    assert no_image == ["### Human: <image>\nq?\n"]  # left as text without an image
    bare = C.v10_segments(turns[:1], has_image=True, image_token_len=2, use_im_start_end=False)
    assert bare[1] == ["### Human: <im_patch><im_patch>\nq?\n"]


def test_v10_splice_places_the_features_on_the_patch_tokens(v10_tokenizers):
    import jax.numpy as jnp

    from radjax.models.vlm import splice_features

    tok, vocab = v10_tokenizers["base"]
    turns = [C.Turn("human", "Describe.\n<image>"), C.Turn("gpt", "A cyst.")]
    out = C.encode_v10(turns, tok, vocab, 300, has_image=True)
    ids = jnp.asarray(out["input_ids"])[None]
    embeds = jnp.zeros((1, 300, 3))
    features = jnp.arange(1, 257, dtype=jnp.float32)[None, None, :, None] * jnp.ones(3)
    spliced = splice_features(
        embeds,
        features,
        vocab.image_tokens.placeholders(ids),
        index=vocab.image_tokens.index(ids),
        feature_mask=jnp.asarray(out["image_mask"])[None],
    )
    s = int(out["image_start"][0])
    np.testing.assert_array_equal(spliced[0, s : s + 256, 0], np.arange(1, 257))
    assert float(jnp.abs(spliced[0, :s]).sum() + jnp.abs(spliced[0, s + 256 :]).sum()) == 0


def test_v10_bad_input_is_named(v10_tokenizers):
    tok, vocab = v10_tokenizers["base"]
    where = dict(source="t.json", field="[4].conversations")
    with pytest.raises(BadRecordError, match="only in records with an image") as err:
        C.encode_v10(
            [C.Turn("human", "q"), C.Turn("gpt", 3)], tok, vocab, 64, has_image=False, **where
        )
    assert str(err.value).startswith("t.json: [4].conversations[1].value: int 3")
    two = [C.Turn("human", "<image> and <image>"), C.Turn("gpt", "a")]
    with pytest.raises(BadRecordError, match="2 image blocks"):
        C.encode_v10(two, tok, vocab, 1024, has_image=True, **where)
    stray = [C.Turn("human", "a <im_patch> b"), C.Turn("gpt", "a")]
    with pytest.raises(BadRecordError, match="outside complete image blocks"):
        C.encode_v10(stray, tok, vocab, 64, has_image=False, **where)


# ----------------------------------------------------------------------------- v1.5 golden


def test_v15_tokenizer_setup(v15_tokenizer):
    ids = dict(
        pad=v15_tokenizer.pad_token_id,
        bos=v15_tokenizer.bos_token_id,
        eos=v15_tokenizer.eos_token_id,
        unk=v15_tokenizer.unk_token_id,
    )
    assert ids == V15["special_ids"]
    with_patch = C.setup_v15_tokenizer(v15_tokenizer, add_patch_token=True)
    assert len(with_patch) == len(v15_tokenizer) + 1 == 32001
    assert with_patch.convert_tokens_to_ids("<im_patch>") == 32000


@pytest.mark.parametrize("name", sorted(V15_ROWS))
def test_v15_sample_matches_the_reference(v15_tokenizer, name):
    row = V15_ROWS[name]
    record = _record(row)
    length = V15["max_length"]
    got = C.tokenize_v15(record.turns, v15_tokenizer, length, has_image=record.has_image)
    assert got.prompt == row["prompt"]
    assert got.prompt_ids == row["prompt_ids"]
    np.testing.assert_array_equal(got.ids, row["input_ids"], err_msg=f"{name}: input_ids")
    np.testing.assert_array_equal(got.labels, row["labels"], err_msg=f"{name}: labels")
    assert got.mismatch == (name == "inst_in_text_mismatch")
    if name in V15_CUT:
        with pytest.raises(BadRecordError, match="cuts the image"):
            C.encode_v15(record.turns, v15_tokenizer, length, has_image=True)
        return
    out = C.encode_v15(record.turns, v15_tokenizer, length, has_image=record.has_image)
    n = len(row["input_ids"])
    np.testing.assert_array_equal(out["input_ids"][:n], row["input_ids"])
    np.testing.assert_array_equal(out["labels"][:n], row["labels"])
    assert (out["labels"][n:] == IGNORE).all()
    assert (out["input_ids"][n:] == v15_tokenizer.pad_token_id).all()
    np.testing.assert_array_equal(out["attention_mask"], np.arange(length) < n)
    placeholders = C.V15_IMAGE_TOKENS.placeholders(out["input_ids"])
    start = int(out["image_start"][0])
    if out["image_mask"][0]:
        assert placeholders.sum() == 576 and placeholders[start : start + 576].all()
        assert (out["labels"][placeholders] == IGNORE).all()
    else:
        assert placeholders.sum() == 0 and start == -1
        assert name in ("text_only", "image_cut_off")


def test_v15_eval_prompt_matches_the_original(v15_tokenizer):
    want = V15["eval_prompt"]
    prompt = C.v15_eval_prompt(want["question"])
    assert prompt == want["prompt"] == "[INST] <image>\nIs there a pleural effusion? [/INST]"
    assert C.tokenizer_image_token(prompt, v15_tokenizer) == want["input_ids"]
    assert C.v15_eval_prompt(" Is it?\n<image>") == "[INST] <image>\nIs it? [/INST]"


def test_v15_template_strings():
    msgs = [("USER", "q1"), ("ASSISTANT", "a1"), ("USER", "q2"), ("ASSISTANT", "a2")]
    assert C.llama2_prompt(msgs) == "[INST] q1 [/INST] a1 </s>[INST] q2 [/INST] a2 </s>"
    assert C.llama2_prompt(msgs[:1] + [("ASSISTANT", None)]) == "[INST] q1 [/INST]"
    # upstream conv_llava_llama_2: a system block in the first turn, sep "<s>" (lstripped)
    sys_prompt = C.llama2_prompt(msgs[:2], system="S", sep="<s>")
    assert sys_prompt == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1 </s>"
    with pytest.raises(ValueError, match="first message"):
        C.llama2_prompt([("ASSISTANT", "a")])
    turns = [C.Turn("gpt", "hello"), C.Turn("human", "Look <image> here"), C.Turn("gpt", "ok")]
    assert C.v15_messages(turns, has_image=True, source="s", field="f") == [
        ("USER", "<image>\nLook  here"),
        ("ASSISTANT", "ok"),
    ]


def test_v15_masking_by_hand(v15_tokenizer):
    """Two rounds: only the answers and their `` </s>`` are trained; BOS and instructions not."""
    tok = v15_tokenizer
    turns = [C.Turn("human", "q one"), C.Turn("gpt", "yes"), C.Turn("human", "q two")]
    turns += [C.Turn("gpt", "no")]
    got = C.tokenize_v15(turns, tok, 64, has_image=False)
    trained = tok.convert_ids_to_tokens(got.ids[got.labels != IGNORE].tolist())
    assert trained == ["▁yes", "▁", "</s>", "▁no", "▁", "</s>"]
    np.testing.assert_array_equal(got.ids, tok(got.prompt)["input_ids"])


def test_v15_bad_input_is_named(v15_tokenizer):
    where = dict(source="t.json", field="[2].conversations")
    bad = [
        ([C.Turn("human", "q"), C.Turn("GPT", "a")], "[2].conversations[1].from", "'GPT'"),
        ([C.Turn("human", "q"), C.Turn("human", "a")], "[2].conversations[1].from", "need 'gpt'"),
        ([C.Turn("human", "q"), C.Turn("gpt", 3)], "[2].conversations[1].value", "string"),
    ]
    for turns, field, match in bad:
        with pytest.raises(BadRecordError, match=match) as err:
            C.encode_v15(turns, v15_tokenizer, 64, has_image=False, **where)
        assert err.value.path == "t.json" and err.value.field == field
    two = [C.Turn("human", "<image>"), C.Turn("gpt", "a"), C.Turn("human", "<image>")]
    with pytest.raises(BadRecordError, match="2 images"):
        C.encode_v15(two + [C.Turn("gpt", "b")], v15_tokenizer, 2048, has_image=True, **where)


# ----------------------------------------------------------------------------- the readers


def _write(tmp_path, data, name="data.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_reader_accepts_both_spellings(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    rows = [
        dict(id="a", image="img.png", conversations=[dict(**{"from": "human", "value": "<image>\nq"}), {"from": "gpt", "value": "a"}]),
        dict(id="b", conversatons=[{"from": "human", "value": "q"}, {"from": "gpt", "value": 7}], domain={"ct": True}),
        dict(id="c", conversations=[{"from": "human", "value": "q"}], conversatons="ignored"),
    ]  # fmt: skip
    records = R.read_conversations(_write(tmp_path, rows), image_folder=tmp_path)
    assert [r.key for r in records] == ["conversations", "conversatons", "conversations"]
    assert records[0].turns == (C.Turn("human", "<image>\nq"), C.Turn("gpt", "a"))
    assert records[0].has_image and not records[1].has_image
    assert records[1].turns[1].value == 7 and records[1].extra == {"domain": {"ct": True}}
    assert records[1].field == "[1].conversatons"
    assert records[2].extra == {"conversatons": "ignored"}


@pytest.mark.parametrize(
    "row, field, match",
    [
        ("x", "[0]", "expected an object"),
        (dict(id=1), "[0].conversations", "misspelt"),
        (dict(conversations=[]), "[0].conversations", "non-empty list"),
        (dict(conversations=["hi"]), "[0].conversations[0]", "expected an object"),
        (dict(conversations=[{"value": "q"}]), "[0].conversations[0].from", "missing"),
        (dict(conversatons=[{"from": "human", "value": " "}]), "[0].conversatons[0].value", "empty"),
        (dict(conversations=[{"from": "human", "value": None}]), "[0].conversations[0].value", "string"),
        (dict(conversations=[{"from": "human", "value": True}]), "[0].conversations[0].value", "string"),
        (dict(conversations=[{"from": 1, "value": "q"}]), "[0].conversations[0].from", "speaker"),
        (dict(image="", conversations=[{"from": "human", "value": "<image>"}]), "[0].image", "file name"),
        (dict(image="gone.png", conversations=[{"from": "human", "value": "<image>"}]), "[0].image", "not found"),
        (dict(image="i.png", conversations=[{"from": "human", "value": "q"}]), "[0].conversations", "no <image> token"),
        (dict(image="i.png", conversations=[{"from": "human", "value": "<image><image>"}]), "[0].conversations", "2 <image> tokens"),
        (dict(conversations=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}]), "[0].conversations[1].value", "no image"),
    ],
)  # fmt: skip
def test_reader_bad_records_name_file_and_field(tmp_path, row, field, match):
    (tmp_path / "i.png").write_bytes(b"")
    path = _write(tmp_path, [row])
    with pytest.raises(BadRecordError, match=match) as err:
        R.read_conversations(path, image_folder=tmp_path)
    assert err.value.path == str(path) and err.value.field == field
    errors = []
    assert R.read_conversations(path, image_folder=tmp_path, errors=errors) == []
    assert [e.field for e in errors] == [field]


def test_reader_image_token_may_be_optional(tmp_path):
    path = _write(tmp_path, [dict(image="i.png", conversations=[{"from": "human", "value": "q"}])])
    (record,) = R.read_conversations(path, require_image_token=False)
    assert record.image == "i.png"


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"a": 1}\n{"a": 2}\n', "JSON lines"),
        ("{not json", "not valid JSON"),
        ('{"conversations": []}', "expected a JSON list"),
    ],
)
def test_reader_bad_files(tmp_path, text, match):
    path = _write(tmp_path, text, "train.jsonl")
    with pytest.raises(BadRecordError, match=match) as err:
        R.read_conversations(path)
    assert err.value.path == str(path) and err.value.field is None
    with pytest.raises(BadRecordError, match="file not found"):
        R.read_json_list(tmp_path / "missing.json")


def _vqa(id_, q, a, kind, key="conversations"):
    turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": id_, "image": "x.jpg", key: turns, "answer_type": kind}


def test_vqa_reader(tmp_path):
    rows = [
        _vqa(7, "<image>\nIs there an effusion? Please choose from [yes, no]", "yes", "CLOSED"),
        _vqa("q2", "What organ? <image>", "liver", "OPEN", key="conversatons"),
    ]
    a, b = R.read_vqa(_write(tmp_path, rows))
    assert (a.id, a.answer, a.answer_type) == (7, "yes", "CLOSED")
    assert a.question_text == "Is there an effusion? Please choose from [yes, no]"
    assert (b.id, b.question_text, b.answer_type, b.raw_answer_type) == (
        "q2",
        "What organ?",
        "OPEN",
        "OPEN",
    )
    pvqa = [_vqa(1, "q", "3", "number"), _vqa(2, "q", "yes", "yes/no"), _vqa(3, "q", "x", "other")]
    got = R.read_vqa(_write(tmp_path, pvqa, "p.json"), answer_types=R.PVQA_ANSWER_TYPES)
    assert [r.answer_type for r in got] == ["OPEN", "CLOSED", "OPEN"]


@pytest.mark.parametrize(
    "row, field, match",
    [
        (_vqa(1, "q", "a", "open"), "[0].answer_type", "'open'"),
        ({k: v for k, v in _vqa(1, "q", "a", "OPEN").items() if k != "answer_type"}, "[0].answer_type", "None"),
        ({k: v for k, v in _vqa(1, "q", "a", "OPEN").items() if k != "id"}, "[0].id", "missing"),
        (_vqa(1, "q", "", "OPEN"), "[0].conversations[1].value", "empty"),
        (dict(_vqa(1, "q", "a", "OPEN"), conversations=[{"from": "human", "value": "q"}]), "[0].conversations", "answer turn"),
        (dict(_vqa(1, "q", "a", "OPEN"), conversations=[{"from": "gpt", "value": "q"}, {"from": "gpt", "value": "a"}]), "[0].conversations[0].from", "'human'"),
    ],
)  # fmt: skip
def test_vqa_reader_bad_items(tmp_path, row, field, match):
    path = _write(tmp_path, [row])
    with pytest.raises(BadRecordError, match=match) as err:
        R.read_vqa(path)
    assert err.value.field == field
