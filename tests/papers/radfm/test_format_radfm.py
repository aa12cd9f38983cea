"""RadFM task files: records, examples, prompts and the 2D/3D batching of the original."""

import csv
import io
import json
import math
import shutil
from pathlib import Path

import ml_collections
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from radjax.data import batching, pipeline
from radjax.data.errors import BadRecordError
from radjax.papers.radfm import data as radfm
from radjax.papers.radfm.text import IGNORE

MODALITIES = ["CT", "MRI", "Ultrasound"]


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("radfm")
    rng = np.random.default_rng(0)
    np.save(root / "two.npy", rng.normal(size=(2, 3, 8, 8, 5)).astype(np.float32))
    np.save(root / "one.npy", rng.normal(size=(3, 6, 6, 10)).astype(np.float32))
    nib.save(
        nib.Nifti1Image(rng.normal(size=(8, 6, 12)).astype(np.float32), np.eye(4)),
        root / "ct.nii.gz",
    )
    Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(root / "rgb.png")
    (root / "modality_set.json").write_text(json.dumps({"modality": MODALITIES}))
    _csv(root / "modality.csv", ["image_path", "answer"], [["ct.nii.gz", "CT"], ["one.npy", "MRI"]])
    _csv(
        root / "vqa.csv",
        ["image_path", "question", "answer"],
        [["two.npy", "Where is the mass?", "Left lobe."], ["grey.png", "Is it normal?", "no"]],
    )
    case = dict(
        pre="Cough.",
        pat="Male, 60.",
        npy_path="two.npy",
        finding="A nodule.",
        impression="Nodule.",
        radiographic_features=["Round.", "Calcified."],
        articles=["Granuloma is common."],
        title="Granuloma",
    )
    (root / "cases.json").write_text(json.dumps([case, case | {"title": "Hamartoma"}]))
    _csv(
        root / "cls.csv",
        ["image_path", "label"],
        [["rgb.png", "pneumonia"], ["grey.png", "effusion"]],
    )
    _csv(
        root / "binary.csv",
        ["image_path", "disease", "label"],
        [["rgb.png", "pneumonia", "1"], ["grey.png", "effusion", "0"], ["rgb.png", "mass", 0]],
    )
    return root


def _cfg(root, **overrides):
    tasks = dict(
        modality=dict(task="modality", train="modality.csv", modality_set="modality_set.json"),
        vqa=dict(task="vqa", train="vqa.csv"),
        caption=dict(task="caption", train="cases.json"),
        rationale=dict(task="rationale", train="cases.json"),
        cls=dict(task="diagnosis_open", train="cls.csv"),
        binary=dict(task="diagnosis_closed", train="binary.csv"),
    )
    cfg = dict(
        root=str(root),
        tasks=tasks,
        tokenizer="phantom",
        max_images=4,
        max_length=320,
        image_size=16,
        batch_size_2d=2,
        batch_size_3d=2,
        num_threads=2,
    )
    return ml_collections.ConfigDict(cfg | overrides)


def _by_task(source, task):
    return [r for r in source if r["task"] == task]


def test_records_say_task_and_dimension(root):
    source = radfm.make_source(_cfg(root), "train")
    assert len(source) == 2 + 2 + 2 + 2 + 2 + 3
    assert [r["index"] for r in source] == list(range(len(source)))
    assert [r["is_3d"] for r in _by_task(source, "vqa")] == [True, False]
    assert all(not r["is_3d"] for r in _by_task(source, "diagnosis_closed"))
    assert [r["label"] for r in _by_task(source, "diagnosis_closed")] == ["yes", "no", "no"]
    assert _by_task(source, "modality")[0]["choices"] == MODALITIES


@pytest.mark.parametrize(
    "header,rows,match",
    [
        (["image_path", "disease"], [["rgb.png", "x"]], r"binary.csv: label: missing column"),
        (
            ["image_path", "disease", "label"],
            [["rgb.png", "x", "2"]],
            r"binary.csv: row 1.label: expected 0 or 1",
        ),
        (
            ["image_path", "disease", "label"],
            [["rgb.png", "x", "1"], ["gone.png", "x", "1"]],
            r"binary.csv: row 2.image_path: file not found",
        ),
        (
            ["image_path", "disease", "label"],
            [["../x.png", "x", "1"]],
            r"binary.csv: row 1.image_path: path resolves to .* outside the data root",
        ),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, header, rows, match):
    (tmp_path / "rgb.png").write_bytes(b"")
    _csv(tmp_path / "binary.csv", header, rows)
    cfg = _cfg(tmp_path, tasks=dict(binary=dict(task="diagnosis_closed", train="binary.csv")))
    with pytest.raises(BadRecordError, match=match):
        radfm.make_source(cfg, "train")


def test_missing_json_field_is_named(root, tmp_path):
    (tmp_path / "a.npy").write_bytes(b"")
    (tmp_path / "c.json").write_text(json.dumps([{"npy_path": "a.npy", "pre": "", "pat": ""}]))
    cfg = _cfg(tmp_path, tasks=dict(c=dict(task="caption", train="c.json")))
    with pytest.raises(BadRecordError, match=r"c.json: \[0\].finding: expected a string"):
        radfm.make_source(cfg, "train")


def test_images_channels_last_and_normalised(root):
    source = radfm.make_source(_cfg(root), "train")
    npy = radfm.load_images(_by_task(source, "vqa")[0])
    raw = np.load(root / "two.npy")
    want = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(npy, want.transpose(0, 4, 2, 3, 1), rtol=1e-6)
    nii = radfm.load_images(_by_task(source, "modality")[0])
    assert nii.shape == (1, 12, 6, 8, 3) and nii.min() == 0 and nii.max() == 1
    grey = radfm.load_images(_by_task(source, "vqa")[1])
    pixels = np.asarray(Image.open(root / "grey.png"), np.float32) / 255
    np.testing.assert_array_equal(grey, np.repeat(pixels[None, None, ..., None], 3, -1))


def _decoded_question(example, tok):
    ids = example["input_ids"][: int(example["question_length"])]
    return tok.decode(ids[ids < 708], skip_special_tokens=True)


@pytest.mark.parametrize("bug", [False, True])
def test_modality_no_branch(root, bug):
    cfg = _cfg(root, radfm_modality_no_bug=bug)
    tok, _ = radfm.text_tools(cfg)
    record = _by_task(radfm.make_source(cfg, "train"), "modality")[0]  # truth: CT
    asked = []
    for seed in range(40):
        ex = radfm.load_example(record, cfg, np.random.default_rng(seed))
        answer = tok.decode(ex["labels"][ex["labels"] != IGNORE], skip_special_tokens=True)
        if answer.strip() == "no":
            asked.append(_decoded_question(ex, tok))
    assert asked
    assert all(("CT" in q) == bug for q in asked)
    assert bug or all(any(m in q for m in ("MRI", "Ultrasound")) for q in asked)


def test_closed_diagnosis_quirk_puts_image_before_last_char(root):
    cfg = _cfg(root)
    tok, layout = radfm.text_tools(cfg)
    record = _by_task(radfm.make_source(cfg, "train"), "diagnosis_closed")[0]
    ex = radfm.load_example(record, cfg, None)
    ids = ex["input_ids"]
    end = int(np.flatnonzero(ids == layout.end_id)[0])
    assert tok.decode(ids[end + 1 : int(ex["question_length"])]) == "?"
    question = radfm.prompts(cfg, "yes_no_prompt")[0].replace("disease", "pneumonia")
    assert _decoded_question(ex, tok).replace(" ", "") == question.replace(" ", "")
    labels = ex["labels"][ex["labels"] != IGNORE]
    assert tok.decode(labels[:-1]).strip() == "yes" and labels[-1] == tok.eos_token_id


def test_caption_prompt_and_answer(root):
    cfg = _cfg(root)
    tok, _ = radfm.text_tools(cfg)
    ex = radfm.load_example(_by_task(radfm.make_source(cfg, "train"), "caption")[0], cfg, None)
    assert _decoded_question(ex, tok).startswith("Male, 60. Cough. ")
    labels = ex["labels"][ex["labels"] != IGNORE]
    assert tok.decode(labels[:-1]).strip() == "Finding: A nodule.Impression: Nodule."
    assert ex["images"].shape == (2, 5, 8, 8, 3) and int(ex["num_images"]) == 2


def test_user_prompt_file_in_original_schema(root, tmp_path):
    (tmp_path / "cls_prompt.json").write_text(json.dumps({"caption_prompt": ["Diagnose?"]}))
    cfg = _cfg(
        root,
        radfm_prompt_file=str(tmp_path),
        tasks=dict(cls=dict(task="diagnosis_open", train="cls.csv")),
    )
    tok, _ = radfm.text_tools(cfg)
    ex = radfm.load_example(
        _by_task(radfm.make_source(cfg, "train"), "diagnosis_open")[0],
        cfg,
        np.random.default_rng(0),
    )
    assert _decoded_question(ex, tok) == "Diagnose?"


def test_bucket_depth():
    assert [radfm.bucket_depth(d) for d in (1, 5, 6, 7, 30, 100)] == [4, 4, 4, 8, 28, 64]
    assert radfm.bucket_depth(50, limit=32) == 32


def _example(s, d, is_3d=True, hw=6):
    return dict(
        images=np.ones((s, d, hw, hw, 3), np.float32),
        is_3d=np.asarray(is_3d),
        **{k: np.zeros(8, np.int32) for k in ("input_ids", "attention_mask", "labels")},
        entity_mask=np.zeros(8, bool),
        **{k: np.asarray(0, np.int32) for k in ("question_length", "num_images", "task", "index")},
    )


def test_collate_shapes_follow_the_original():
    cfg = ml_collections.ConfigDict(dict(image_size=16))
    batch = radfm.collate([_example(1, 5), _example(3, 10)], cfg)
    assert batch["images"].shape == (2, 3, 8, 16, 16, 3)
    np.testing.assert_array_equal(batch["image_mask"], [[1, 0, 0], [1, 1, 1]])
    assert (batch["images"][0, 1:] == 0).all()
    assert radfm.collate([_example(1, 10)], cfg)["images"].shape == (1, 1, 8, 8, 8, 3)
    assert radfm.collate([_example(1, 3)], cfg)["images"].shape == (1, 1, 4, 16, 16, 3)
    assert radfm.collate([_example(7, 50)], cfg)["images"].shape == (1, 7, 32, 8, 8, 3)
    cfg.halve_single_3d = False
    assert radfm.collate([_example(1, 10)], cfg)["images"].shape[3:5] == (16, 16)
    assert radfm.collate([_example(1, 1, False, 9)], cfg)["images"].shape == (1, 1, 1, 16, 16, 3)
    with pytest.raises(ValueError, match="all 2D or all 3D"):
        radfm.collate([_example(1, 1, False), _example(1, 4)], cfg)


def test_eval_pass_sees_every_record_once(root):
    cfg = _cfg(root)
    source = radfm.make_source(cfg, "train")
    batches = list(radfm.radfm_batches(source, cfg, train=False))
    n3 = sum(r["is_3d"] for r in source)
    assert len(batches) == math.ceil(n3 / 2) + math.ceil((len(source) - n3) / 2)
    seen = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(source)))
    for b in batches:
        kinds = {bool(source[int(i)]["is_3d"]) for i in b["index"][b["valid"]]}
        assert len(kinds) == 1 and (b["images"].shape[2] == 1) == (kinds == {False})
        assert (b["labels"][~b["valid"]] == IGNORE).all()
        assert b["input_ids"].shape == (2, 320) and b["entity_mask"].dtype == bool


def per_epoch(source, cfg):
    keys = np.array([r["is_3d"] for r in source])
    return len(batching.epoch_batches(keys, radfm.bucketing(cfg).rows, None))


def test_train_stream_is_seeded_and_resumable(root):
    cfg = _cfg(root)
    source = radfm.make_source(cfg, "train")
    it = iter(radfm.radfm_batches(source, cfg, seed=3))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    after = next(it)
    again = iter(radfm.radfm_batches(source, cfg, seed=3))
    again.set_state(state)
    resumed = next(again)
    np.testing.assert_array_equal(resumed["input_ids"], after["input_ids"])
    np.testing.assert_array_equal(resumed["images"], after["images"])
    epoch = first + [after] + [next(it) for _ in range(per_epoch(source, cfg) - 4)]
    seen = np.concatenate([b["index"][b["valid"]] for b in epoch])
    assert sorted(seen.tolist()) == list(range(len(source)))  # one epoch = every record
    assert seen.tolist() != sorted(seen.tolist())  # shuffled
    other = iter(radfm.radfm_batches(source, cfg, seed=4))
    assert [next(other)["index"].tolist() for _ in range(4)] != [
        b["index"].tolist() for b in first + [after]
    ]
    for b in first + [after]:
        assert len({bool(source[int(i)]["is_3d"]) for i in b["index"][b["valid"]]}) == 1


def test_processes_split_each_global_batch_and_agree_on_shapes(root):
    one = _cfg(root)  # B = 2 rows on one process
    two = _cfg(root, batch_size_2d=1, batch_size_3d=1)  # B = 1 row on each of two
    source = radfm.make_source(one, "train")
    whole = list(radfm.radfm_batches(source, one, train=False))
    parts = [
        list(radfm.radfm_batches(source, two, train=False, process_index=p, process_count=2))
        for p in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for w, *halves in zip(whole, *parts):
        for key in ("images", "image_mask", "input_ids", "labels", "index", "valid"):
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), w[key])
    streams = [
        iter(radfm.radfm_batches(source, two, seed=5, process_index=p, process_count=2))
        for p in (0, 1)
    ]
    glob = iter(radfm.radfm_batches(source, one, seed=5))
    for _ in range(2 * per_epoch(source, one)):
        b0, b1, g = next(streams[0]), next(streams[1]), next(glob)
        assert {k: v.shape for k, v in b0.items()} == {k: v.shape for k, v in b1.items()}
        for key in ("index", "input_ids", "images"):  # random prompts and crops too
            np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), g[key])
    with pytest.raises(ValueError, match="process_index 2"):
        radfm.radfm_batches(source, two, process_index=2, process_count=2)


def test_skip_bad_records_marks_rows(root, tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    np.save(tmp_path / "ok.npy", np.ones((3, 4, 4, 4), np.float32) * np.arange(4))
    _csv(
        tmp_path / "v.csv",
        ["image_path", "question", "answer"],
        [["bad.npy", "Q?", "A."], ["ok.npy", "Q?", "A."]],
    )
    cfg = _cfg(tmp_path, tasks=dict(v=dict(task="vqa", train="v.csv")))
    source = radfm.make_source(cfg, "train")
    with pytest.raises(BadRecordError, match=r"v.csv: row 1.image_path: .*bad.npy"):
        list(radfm.radfm_batches(source, cfg, train=False))
    cfg.skip_bad_records = True
    (batch,) = list(radfm.radfm_batches(source, cfg, train=False))
    assert int(batch["skipped"]) == 1 and batch["index"].tolist() == [1, -1]
    assert batch["valid"].tolist() == [True, False]


def test_missing_prompt_pool_fails_when_the_source_is_built(root, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"cls_prompt": {"caption_prompt": ["Q?"]}}))
    cfg = _cfg(
        root,
        radfm_prompt_file=str(tmp_path / "p.json"),
        tasks=dict(modality=dict(task="modality", train="modality.csv")),
    )
    with pytest.raises(BadRecordError, match=r"p.json: modality_prompt.caption_prompt"):
        radfm.make_source(cfg, "train")


def test_random_resized_crop_keeps_80_to_100_percent():
    image = np.arange(40 * 30 * 3, dtype=np.float32).reshape(40, 30, 3)
    for seed in range(20):
        crop = radfm.random_resized_crop(image, np.random.default_rng(seed))
        h, w = crop.shape[:2]
        assert 0.8 * 1200 - 40 <= h * w <= 1200 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
        top, left = np.argwhere(image[..., 0] == crop[0, 0, 0])[0]
        np.testing.assert_array_equal(crop, image[top : top + h, left : left + w])


def test_reads_the_phantom_writer(tmp_path):
    cfg = _cfg(
        tmp_path / "phantoms",
        tasks=radfm.phantom_tasks(),
        phantoms=dict(enabled=True, num_train=2, num_test=1, image_size=16, max_depth=8),
    )
    radfm.ensure_data(cfg)
    source = radfm.make_source(cfg, "test")
    assert sorted(r["task"] for r in source) == sorted(radfm.phantom_tasks())
    batches = list(radfm.radfm_batches(source, cfg, train=False))
    assert sorted(np.concatenate([b["index"][b["valid"]] for b in batches])) == list(range(6))


NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _bad_datatype(out: Path) -> Path:
    """nibabel's real anatomical.nii with an unknown datatype code (9999) in its header."""
    raw = (NIB_DATA / "anatomical.nii").read_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header["datatype"] = 9999
    out.write_bytes(header.binaryblock + raw[len(header.binaryblock) :])
    return out


@pytest.fixture
def broken_3d(tmp_path):
    """vqa rows: a header nibabel rejects, a CIFTI-2 file, a good volume, a NaN volume."""
    _bad_datatype(tmp_path / "dtype.nii")
    shutil.copy(NIB_DATA / "row_major.dconn.nii", tmp_path / "surface.nii")
    shutil.copy(NIB_DATA / "anatomical.nii", tmp_path / "good.nii")
    shutil.copy(NIB_DATA / "resampled_anat_moved.nii", tmp_path / "nan.nii")  # real NaNs
    names = ["dtype.nii", "surface.nii", "good.nii", "nan.nii"]
    _csv(tmp_path / "v.csv", ["image_path", "question", "answer"], [[n, "Q?", "A."] for n in names])
    return _cfg(tmp_path, tasks=dict(v=dict(task="vqa", train="v.csv")), batch_size_3d=4)


def test_bad_headers_in_the_batcher_are_named_or_skipped(broken_3d):
    source = radfm.make_source(broken_3d, "train")
    with pytest.raises(BadRecordError, match=r"v.csv: row 1.image_path: .*dtype.nii: datatype:"):
        list(radfm.radfm_batches(source, broken_3d, train=False))
    broken_3d.skip_bad_records = True
    (batch,) = list(radfm.radfm_batches(source, broken_3d, train=False))
    # dtype.nii, surface.nii and nan.nii (NaN rejected by default) are skipped rows
    assert int(batch["skipped"]) == 3 and batch["index"].tolist() == [2, -1, -1, -1]
    assert batch["images"].shape[2] == radfm.bucket_depth(25)  # good.nii's 25 slices


def test_nonfinite_voxels_zeroed_on_request_and_counted(broken_3d):
    broken_3d.update(skip_bad_records=True, nonfinite="zero")
    batches, counter = pipeline.eval_batches(
        radfm, broken_3d, "train", batch_size=4, process_index=0, process_count=1
    )
    (batch,) = list(batches)
    assert batch["index"].tolist() == [2, 3, -1, -1] and np.isfinite(batch["images"]).all()
    assert (counter.count, counter.repaired) == (2, 1)
    assert pipeline.REPAIRED not in batch


def _phantom_cfg(root, enabled):
    return _cfg(
        root,
        tasks={},
        phantom_tasks=("vqa",),
        phantoms=dict(enabled=enabled, num_train=2, num_test=1, image_size=16, max_depth=8),
    )


def test_phantoms_only_when_enabled_and_never_over_other_files(tmp_path):
    typo = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match=f"{typo} does not exist"):
        radfm.ensure_data(_cfg(typo))  # real task files named, phantoms off
    assert not typo.exists()
    with pytest.raises(ValueError, match="data.tasks is empty"):
        radfm.ensure_data(_phantom_cfg(typo, enabled=False))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match=f"{other} lacks vqa"):
        radfm.ensure_data(_phantom_cfg(other, enabled=True))
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    radfm.ensure_data(_phantom_cfg(typo, enabled=True))
    assert radfm.data_files(_phantom_cfg(typo, enabled=True)) == ["vqa_test.csv", "vqa_train.csv"]
    assert all(
        (typo / name).is_file()
        for name in radfm.data_files(_cfg(typo, tasks={}, phantoms=dict(enabled=True)))
    )
