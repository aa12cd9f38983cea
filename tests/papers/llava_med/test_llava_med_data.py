"""LLaVA-Med's data on the paper contract: phantoms written on demand, records, fixed-shape
examples for both versions (image tokens following the tower), eval prompts, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.llava_med import get_config
from radjax.data.errors import BadRecordError
from radjax.data.prompt_answer import IGNORE
from radjax.papers.llava_med import conversation as C
from radjax.papers.llava_med import data as D
from radjax.train import experiment


def _config(root, arg="tiny", **data):
    config = get_config(arg)
    config.data.root = str(root)
    config.data.phantoms.update(num_train=24, num_test=8)
    config.data.update(data)
    experiment.prepare_config(config)
    return config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_med") / "data"
    _config(root)  # writes the phantoms
    return root


@pytest.fixture(scope="module", params=["v1.0", "v1.5"])
def config(request, root):
    return _config(root, f"tiny,version={request.param}")


def test_phantoms_are_written_only_when_enabled(tmp_path):
    config = get_config("tiny")
    config.data.root = str(tmp_path / "none")
    config.data.phantoms.enabled = False
    with pytest.raises(FileNotFoundError, match="does not exist.*data.phantoms.enabled"):
        experiment.prepare_config(config)
    (tmp_path / "some").mkdir()
    (tmp_path / "some" / "instruct.json").write_text("[]")
    config.data.root = str(tmp_path / "some")
    with pytest.raises(FileNotFoundError, match=r"lacks vqa/test.json"):
        experiment.prepare_config(config)


def test_complete_config_follows_the_tower(root, config):
    d, m = config.data, config.model
    assert (d.image_size, d.image_token_len) == (32, 16)  # 32 px, 8 px patches
    tokenizer, vocab = D.text_tools(d)
    assert m.llm.vocab_size == len(tokenizer)
    if d.version == "v1.0":
        assert (m.patch_id, m.start_id, m.end_id) == (vocab.patch_id, vocab.start_id, vocab.end_id)
    else:
        assert (m.patch_id, m.start_id, m.end_id) == (C.IMAGE_TOKEN_INDEX, -1, -1)
    with pytest.raises(ValueError, match="does not follow the model's tower"):
        _config(root, image_size=64)
    bigger = get_config("tiny")
    bigger.model.vision.patch_size = 4
    bigger.data.root = str(root)
    experiment.prepare_config(bigger)
    assert bigger.data.image_token_len == 64


def test_sources_hold_the_conversations_and_the_vqa_items(config):
    train, test = D.make_source(config.data, "train"), D.make_source(config.data, "test")
    assert len(train) == 24 and len(test) == 32  # 8 images, 2 OPEN + 2 CLOSED items each
    assert {r["kind"] for r in train} == {"conversation"}
    assert {r["kind"] for r in test} == {"vqa"}
    assert [r["index"] for r in test] == list(range(32))
    assert {r["answer_type"] for r in test} == {"OPEN", "CLOSED"}
    with pytest.raises(ValueError, match="no data file for split 'val'"):
        D.make_source(config.data, "val")


def test_training_examples_have_fixed_shapes_and_the_image_block(config):
    d = config.data
    record = D.make_source(d, "train")[0]
    ex = D.load_example(record, d, np.random.default_rng(0))
    length = d.max_length
    assert {k: v.shape for k, v in ex.items()} == {
        "input_ids": (length,),
        "labels": (length,),
        "attention_mask": (length,),
        "image_mask": (1,),
        "images": (32, 32, 3),
    }
    assert ex["images"].dtype == np.float32 and ex["image_mask"].tolist() == [True]
    ids, labels = ex["input_ids"], ex["labels"]
    image = np.flatnonzero(ids == config.model.patch_id)
    assert len(image) == 16 and np.all(np.diff(image) == 1)
    assert np.all(labels[image] == IGNORE)  # image positions are never targets
    if d.version == "v1.0":
        assert ids[image[0] - 1] == config.model.start_id
        assert ids[image[-1] + 1] == config.model.end_id
    # the first answer is trained
    tokenizer, _ = D.text_tools(d)
    answer = record["turns"][1][1]
    trained = tokenizer.decode(ids[labels != IGNORE])
    assert answer in trained


def test_examples_equal_the_conversation_module(config):
    """load_example is the golden-tested conversation encoder on the record's turns."""
    d = config.data
    record = D.make_source(d, "train")[3]
    ex = D.load_example(record, d, None)
    tokenizer, vocab = D.text_tools(d)
    turns = [C.Turn(s, v) for s, v in record["turns"]]
    if vocab is not None:
        want = C.encode_v10(
            turns,
            tokenizer,
            vocab,
            d.max_length,
            has_image=True,
            image_token_len=16,
            system=d.system,
        )
    else:
        want = C.encode_v15(turns, tokenizer, d.max_length, has_image=True, image_token_len=16)
    for key in ("input_ids", "labels", "attention_mask"):
        np.testing.assert_array_equal(ex[key], want[key])


def test_eval_examples_prompt_the_question_and_carry_the_reference(config):
    d = config.data
    records = D.make_source(d, "test")
    record = records[1]
    ex = D.load_example(record, d, None)
    n = int(ex["prompt_length"])
    tokenizer, _ = D.text_tools(d)
    assert np.all(ex["input_ids"][n:] == tokenizer.pad_token_id)
    assert int(np.sum(ex["input_ids"][:n] == config.model.patch_id)) == 16
    assert D.decode_bytes(ex["answer_bytes"]) == record["answer"]
    assert D.decode_bytes(ex["question_bytes"]) == record["question"]
    assert int(ex["answer_type"]) == (record["answer_type"] == "CLOSED")
    prompt = D.eval_prompt(record["question"], d)
    if d.version == "v1.5":
        assert prompt == C.v15_eval_prompt(record["question"])
    else:  # the tiny config prompts in the training template
        assert prompt.endswith(record["question"].split("\n")[-1] + "\n### Assistant:")
        released = d.copy_and_resolve_references()
        released.eval_prompt = "released"
        want = C.v10_eval_prompt(record["question"], image_token_len=16, system=d.system)
        assert D.eval_prompt(record["question"], released) == want


def test_decode_answer_cuts_v10_at_the_stop_string(config):
    d = config.data
    tokenizer, _ = D.text_tools(d)
    ids = np.asarray(tokenizer(" Yes.\n### Human: more")["input_ids"][1:])
    eos = config.model.eos_token_id
    got = D.decode_answer(np.concatenate([ids, [eos, 5, 6]]), d, eos)
    assert got == ("Yes." if d.version == "v1.0" else "Yes.\n### Human: more")


def test_baseline_answers_each_question_with_its_most_frequent_train_answer(config):
    best, overall = D.most_frequent_answers(config.data)
    train = json.loads((Path(config.data.root) / config.data.baseline_file).read_text())
    counts = {}
    for item in train:
        q = D.question_key(item["conversations"][0]["value"])
        counts.setdefault(q, {}).setdefault(item["conversations"][1]["value"], 0)
        counts[q][item["conversations"][1]["value"]] += 1
    assert set(best) == set(counts)
    for q, answers in counts.items():
        assert answers[best[q]] == max(answers.values())
    assert overall in {a for c in counts.values() for a in c}
    no_file = config.data.copy_and_resolve_references()
    no_file.baseline_file = ""
    assert D.most_frequent_answers(no_file) == ({}, "")


# ----------------------------------------------------------------------------- bad input


@pytest.fixture()
def own_root(tmp_path, root):
    """A copy of the phantom root whose files a test may break."""
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def _write(path, records):
    path.write_text(json.dumps(records))


def test_missing_image_names_file_and_field(own_root):
    path = own_root / "instruct.json"
    records = json.loads(path.read_text())
    records[2]["image"] = "train/nowhere.png"
    _write(path, records)
    config = _config(own_root)
    with pytest.raises(BadRecordError, match=r"instruct.json: \[2\]\.image: image file not found"):
        D.make_source(config.data, "train")
    config.data.skip_bad_records = True
    source = D.make_source(config.data, "train")
    assert len(source) == 23 and len(source.skipped_records) == 1


def test_conversation_without_or_with_two_image_tokens_is_refused(own_root):
    path = own_root / "instruct.json"
    records = json.loads(path.read_text())
    records[0]["conversations"][0]["value"] = "What is shown?"
    _write(path, records)
    with pytest.raises(BadRecordError, match=r"\[0\]\.conversations: no <image> token"):
        D.make_source(_config(own_root).data, "train")
    records[0]["conversations"][0]["value"] = "<image>\nThis <image> and that?"
    _write(path, records)
    with pytest.raises(BadRecordError, match=r"\[0\]\.conversations: 2 <image> tokens but one"):
        D.make_source(_config(own_root).data, "train")


def test_unreadable_image_and_empty_answer(own_root):
    config = _config(own_root)
    records = D.make_source(config.data, "test")
    (own_root / "images" / "test" / "img_00001.png").write_bytes(b"not a png")
    assert records[4]["image"].endswith("img_00001.png")
    with pytest.raises(BadRecordError, match=r"test.json: \[4\]\.image: .*not a readable image"):
        D.load_example(records[4], config.data, None)
    path = own_root / "vqa" / "test.json"
    items = json.loads(path.read_text())
    items[1]["conversations"][1]["value"] = " "
    _write(path, items)
    with pytest.raises(BadRecordError, match=r"\[1\]\.conversations\[1\]\.value: empty"):
        D.make_source(config.data, "test")


def test_prompt_longer_than_max_length_is_named(root):
    config = _config(root, max_length=40)
    record = D.make_source(config.data, "test")[0]
    with pytest.raises(BadRecordError, match=r"test.json: \[0\]: the eval prompt has \d+ tokens"):
        D.load_example(record, config.data, None)


def test_v15_pads_non_square_images_with_a_seeded_jitter(own_root):
    config = _config(own_root, "tiny,version=v1.5")
    record = dict(D.make_source(config.data, "train")[0])
    wide = np.zeros((32, 35, 3), np.uint8)
    wide[:, 17] = 255
    Image.fromarray(wide).save(own_root / "wide.png")
    record["image"] = str(own_root / "wide.png")
    shifts = {
        D.load_image(record, config.data, np.random.default_rng(s)).tobytes() for s in range(8)
    }
    assert len(shifts) == 2  # the 0/1-pixel offset of v1.5's expand2square
    fixed = D.load_image(record, config.data, None)  # evaluation: the centred paste
    assert fixed.shape == (32, 32, 3)
