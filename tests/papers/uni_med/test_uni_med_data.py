"""Uni-Med data format: text processor, boxes, the prompt templates as the original builds them,
records of the original layouts, bad input, and one-dataset batches."""

import json
import shutil
from collections import Counter
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs.uni_med import get_config
from radjax.data.errors import BadRecordError
from radjax.data.image_processing import blip_preprocess
from radjax.data.prompt_answer import IGNORE
from radjax.papers.uni_med import data as D
from radjax.papers.uni_med.connector import TASKS
from radjax.train.experiment import prepare_config


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    c = get_config("tiny")
    c.data.root = str(tmp_path_factory.mktemp("um") / "data")
    c.data.phantoms.update(dict(num_train=12, num_test=4))
    prepare_config(c)
    return c


def test_blip_caption_new():
    assert D.blip_caption_new("  a  b\t\tc \n") == "a b c"
    assert D.blip_caption_new("a\nb") == "a\nb"  # a single newline survives
    long = " ".join(f"w{i}" for i in range(60))
    assert D.blip_caption_new(long) == " ".join(f"w{i}" for i in range(50))
    assert D.blip_caption_new(long, None) == long


def test_box_string_truncates_and_parse():
    # 10.9 / 33 * 100 = 33.03 -> 33; (10.9 + 5) / 33 * 100 = 48.18 -> 48; y 19.99/20 -> 99
    assert D.box_string([10.9, 0, 5, 19.99], 33, 20) == "{<33><0><48><99>}"
    assert D.box_string([0, 0, 64, 80], 64, 80) == "{<0><0><100><100>}"
    assert D.parse_box(" {<1> <2><3><4>} trailing") == (1, 2, 3, 4)
    assert D.parse_box("box {<1><2><3><4>}") is None  # anchored at the start
    assert D.parse_box("{<1><2><3>}") is None


def test_prompt_templates_as_the_original():
    train = D.prompt_text("[vqa] is it?", train_template=True)
    assert train == "[INST] <Img><ImageHere></Img> [vqa] is it?  [/INST]"  # two spaces
    assert (
        D.prompt_text("[vqa] is it?", False)
        == "<s>[INST] <Img><ImageHere></Img> [vqa] is it? [/INST]"
    )
    tok = D.tokenizer(ml_collections.ConfigDict(dict(tokenizer="phantom")))
    ids = D.special_ids(tok)
    enc = D.encode(train, "Yes", tok, 4, 64)
    seg0 = tok("[INST] <Img>", add_special_tokens=False)["input_ids"]
    seg1 = tok("</Img> [vqa] is it?  [/INST]", add_special_tokens=False)["input_ids"]
    answer = tok("Yes</s>", add_special_tokens=False)["input_ids"]
    assert answer[-1] == ids["eos"]
    want = [ids["bos"], *seg0, *[D.IMAGE_PLACEHOLDER] * 4, *seg1, *answer]
    n = len(want)
    assert enc["input_ids"][:n].tolist() == want and (enc["input_ids"][n:] == ids["pad"]).all()
    assert int(enc["prompt_length"]) == n - len(answer)
    labels = enc["labels"]
    assert labels[n - len(answer) : n].tolist() == answer  # answer + </s> only
    assert (labels[: n - len(answer)] == IGNORE).all() and (labels[n:] == IGNORE).all()
    evaluated = D.encode(
        D.prompt_text("[vqa] is it?", False), "Yes", tok, 4, 64, train_template=False
    )
    assert evaluated["input_ids"][:3].tolist()[:2] == [ids["bos"], ids["bos"]]  # double BOS
    cut = D.encode(train, "Yes", tok, 4, 64, max_txt_len=1)
    assert ids["eos"] not in cut["labels"][cut["labels"] >= 0]  # truncated: no EOS


def test_records_and_examples(config):
    d = config.data
    train = D.make_source(d, "train")
    counts = Counter(r["task"] for r in train)
    assert set(counts) == set(TASKS)
    root = d.root
    en = sum(
        q["q_lang"] == "en"
        for i in (Path(root) / "Slake" / "train.txt").read_text().split()
        for q in json.loads((Path(root) / "Slake" / "imgs" / i / "question.json").read_text())
    )
    assert counts["vqa"] == en  # the "zh" questions are left out
    assert counts["refer"] == counts["identify"]
    assert counts["caption"] == counts["cls"] == 12
    refer = next(r for r in train if r["task"] == "refer")
    example = D.load_example(refer, d, None)
    image = Image.open(refer["image"]).convert("RGB")
    np.testing.assert_array_equal(example["images"], blip_preprocess(image, size=64))
    w, h = image.size
    x, y, bw, bh = refer["bbox"]
    np.testing.assert_allclose(example["box"], [x, y, x + bw, y + bh])
    np.testing.assert_array_equal(example["image_wh"], [w, h])
    tok = D.tokenizer(d)
    answer = example["labels"][example["labels"] >= 0]
    assert tok.decode(answer[:-1].tolist()) == D.box_string(refer["bbox"], w, h)
    assert (example["input_ids"] == D.IMAGE_PLACEHOLDER).sum() == d.num_image_tokens == 16
    vqa = [D.load_example(r, d, None) for r in train if r["task"] == "vqa"][:6]
    assert any(e["closed"] for e in vqa) and not all(e["closed"] for e in vqa)
    assert int(example["task"]) == TASKS.index("refer")


def test_one_dataset_per_training_batch(config):
    d = config.data
    source = D.make_source(d, "train")
    it = iter(D.batches(source, d, seed=0, train=True))
    for _ in range(6):
        b = next(it)
        tasks = set(b["task"][b["valid"]].tolist())
        assert len(tasks) == 1 and b["images"].shape == (8, 64, 64, 3)
    test = D.make_source(d, "test")
    seen = [i for b in D.batches(test, d, train=False) for i in b["index"][b["valid"]].tolist()]
    assert sorted(seen) == list(range(len(test)))


def test_sample_ratio_draws_each_batch_dataset_by_ratio(config):
    d = config.data.copy_and_resolve_references()
    assert D.sample_ratios(d) is None  # default: batches follow the record counts
    d.batch_size = 2
    # the released ratios name the original's builders, the phantom datasets among them
    d.sample_ratio = dict(D.RELEASED_SAMPLE_RATIO)
    assert D.sample_ratios(d) == {
        "invref_slake": 4.0,
        "medmnist_2d_small": 4.0,
        "mimic_caption": 8.0,
        "ref_slake": 4.0,
        "slakevqa_en": 5.0,
    }
    d.sample_ratio = dict(
        slakevqa_en=0, ref_slake=0, invref_slake=0, mimic_caption=1.0, medmnist_2d_small=3.0
    )
    source = D.make_source(d, "train")

    def tasks(seed, n=160):
        it = iter(D.batches(source, d, seed=seed, train=True))
        out = []
        for _ in range(n):
            b = next(it)
            assert b["valid"].all()  # full batches of one dataset
            out.append(set(b["task"].tolist()))
        return out

    first = tasks(0)
    assert all(len(t) == 1 for t in first)
    counts = Counter(TASKS[next(iter(t))] for t in first)
    assert set(counts) == {"caption", "cls"}  # ratio 0: never drawn
    assert abs(counts["cls"] / 160 - 0.75) < 0.1  # 160 draws: std 0.034
    assert tasks(0, 40) == first[:40] and tasks(1, 40) != first[:40]
    # a dataset's ratio may sit in its data.tasks entry, as in the original's YAML
    per_spec = d.copy_and_resolve_references()
    per_spec.sample_ratio = {}
    for name, ratio in d.sample_ratio.items():
        per_spec.tasks[name].sample_ratio = ratio
    assert D.sample_ratios(per_spec) == D.sample_ratios(d)
    # evaluation ignores the ratios
    test = D.make_source(d, "test")
    seen = [i for b in D.batches(test, d, train=False) for i in b["index"][b["valid"]].tolist()]
    assert sorted(seen) == list(range(len(test)))

    bad = d.copy_and_resolve_references()
    bad.sample_ratio = dict(slakevqa=1.0)
    with pytest.raises(ValueError, match=r"\['slakevqa'\] are not datasets"):
        D.sample_ratios(bad)
    bad.sample_ratio = dict(slakevqa_en=1.0)
    with pytest.raises(ValueError, match="no ratio for .'invref_slake'"):
        D.sample_ratios(bad)
    bad = d.copy_and_resolve_references()
    bad.one_task_per_batch = False
    with pytest.raises(ValueError, match="needs data.one_task_per_batch"):
        D.bucketing(bad, train=True)


def _mini(tmp_path, detections, questions=None, report="There is a cyst."):
    """A one-image SLAKE copy and a one-row MIMIC file under tmp_path."""
    folder = tmp_path / "Slake" / "imgs" / "x0"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((20, 40, 3), 99, np.uint8)).save(folder / "source.jpg")
    (folder / "detection.json").write_text(json.dumps(detections))
    (folder / "question.json").write_text(json.dumps(questions or []))
    for split in ("train", "test"):
        (tmp_path / "Slake" / f"{split}.txt").write_text("x0\n")
    (tmp_path / "M" / "files").mkdir(parents=True)
    shutil.copy(folder / "source.jpg", tmp_path / "M" / "files" / "a.jpg")
    rows = {"train": [{"image_path": ["a.jpg"], "report": report}], "test": []}
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    tasks = {
        "ref": dict(kind="slake_ref", dir="Slake"),
        "vqa": dict(kind="slake_vqa", dir="Slake"),
        "mimic": dict(kind="mimic_caption", train="ann.json", images="M"),
    }
    return ml_collections.ConfigDict(
        dict(
            root=str(tmp_path),
            tasks=tasks,
            tokenizer="phantom",
            image_size=64,
            max_length=128,
            num_image_tokens=16,
        )
    )


def test_bad_input_names_file_and_field(tmp_path):
    d = _mini(tmp_path / "neg", [{"cyst": [5, 5, -3, 4]}])
    with pytest.raises(BadRecordError, match=r"detection.json: \[0\].cyst: .*negative width"):
        D.make_source(d, "train")
    d = _mini(tmp_path / "out", [{"cyst": [30, 5, 20, 4]}])  # x2 = 50 > W = 40
    record = next(r for r in D.make_source(d, "train") if r["task"] == "refer")
    with pytest.raises(BadRecordError, match=r"detection.json: \[0\]: .*outside"):
        D.load_example(record, d, None)
    d = _mini(tmp_path / "empty", [], report="   ")
    with pytest.raises(BadRecordError, match=r"ann.json: train\[0\].report: expected a non-empty"):
        D.make_source(d, "train")
    d = _mini(tmp_path / "gone", [{"cyst": [1, 1, 2, 2]}])
    (tmp_path / "gone" / "M" / "files" / "a.jpg").unlink()
    with pytest.raises(BadRecordError, match=r"ann.json: train\[0\].image_path\[0\]: image file"):
        D.make_source(d, "train")
    d.skip_bad_records = True
    source = D.make_source(d, "train")
    assert len(source.skipped_records) == 1 and {r["task"] for r in source} == {"refer"}


def test_empty_vqa_answers_are_left_out_as_the_original(tmp_path):
    questions = [
        dict(img_name="x0/source.jpg", question="q?", answer="", answer_type="OPEN", q_lang="en"),
        dict(
            img_name="x0/source.jpg", question="q?", answer="No", answer_type="CLOSED", q_lang="en"
        ),
    ]
    d = _mini(tmp_path, [], questions)
    vqa = [r for r in D.make_source(d, "train") if r["task"] == "vqa"]
    assert [r["answer"] for r in vqa] == ["No"]


def test_truncation_switch(tmp_path):
    report = " ".join(["word"] * 60)
    d = _mini(tmp_path, [], report=report)
    d.max_length = 512
    record = next(r for r in D.make_source(d, "train") if r["task"] == "caption")
    tok = D.tokenizer(d)

    def answer(cfg):
        labels = D.load_example(record, cfg, None)["labels"]
        return tok.decode(labels[(labels >= 0) & (labels != tok.eos_token_id)].tolist())

    assert answer(d).split() == ["word"] * 50
    d.truncate_50_words = False
    assert answer(d).split() == ["word"] * 60
