"""RP3D-DiagDS format: validated records, RP3D's late/early sampling, and bad input."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from configs.rp3d_diag import get_config
from radjax.data.errors import BadRecordError
from radjax.data.readers import nonfinite_repairs
from radjax.data.transforms import resize, scale_intensity
from radjax.papers.rp3d_diag import data as rp3d
from radjax.train import experiment

LABELS = {"Normal": 0, "Nodule": 1, "Cyst": 2}
ICD10 = {"Z03": 0, "R91": 1, "N28": 2}
URL = "https://radiopaedia.org/cases/test-case-{}?lang=us"


def _config(root, arg="tiny", **data):
    config = get_config(arg)
    config.data.root = str(root)
    config.data.update(data)
    return config


def _raises(call, *parts):
    with pytest.raises(BadRecordError) as info:
        call()
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


# ---- a hand-written dataset in the RP3D schema -------------------------------------------


def _plane(root: Path, name: str, volume: np.ndarray, key: int) -> tuple[str, str]:
    """Saves one plane (f32 (H, W, D)) and its key slice; returns their relative paths."""
    (root / "npy").mkdir(parents=True, exist_ok=True)
    np.save(root / "npy" / f"{name}.npy", np.asarray(volume, np.float32))
    np.save(root / "npy" / f"{name}_key.npy", np.array([key], np.int64))
    return f"npy/{name}.npy", f"npy/{name}_key.npy"


def _sample(
    planes: list[tuple[str, str]], modality: str, articles=("Nodule",), icd10s=("R91",)
) -> dict:
    return dict(
        image_data_path=[d for d, _ in planes],
        image_key_path=[k for _, k in planes],
        image_modality=[modality] * len(planes),
        plane_projection=["Axial"] * len(planes),
        aux_modality=[None] * len(planes),
        articles=list(articles),
        icd10s=list(icd10s),
        finding="f",
        impression="i",
        image_caption="c",
        anatomy="Chest",
        link="l",
    )


def _case(samples: list[dict], modalities: list[str], **extra) -> dict:
    return dict(
        Modalities=modalities,
        Anatomy="Chest",
        Anatomies=["Chest"] * len(samples),
        Samples=samples,
        key_slice=[{} for _ in samples],
        **extra,
    )


def _dataset(root: Path, cases: list[dict], file_name="train.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / file_name).write_text(json.dumps({URL.format(i): c for i, c in enumerate(cases)}))
    (root / "disorder_label_dict.json").write_text(json.dumps(LABELS))
    (root / "icd10_label_dict.json").write_text(json.dumps(ICD10))
    return root


def _ramp(h=8, w=8, d=1, scale=1.0) -> np.ndarray:
    return scale * np.arange(h * w * d, dtype=np.float32).reshape(h, w, d)


# ---- phantoms through ensure_data ------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rp3d") / "phantoms"
    config = _config(root)
    config.data.phantoms.update(num_train=24, num_test=8, size=32)
    rp3d.ensure_data(config.data)
    return root


def test_ensure_data_writes_once_and_atomically(phantom_root, tmp_path):
    train = phantom_root / "train.json"
    assert train.is_file() and len(json.loads(train.read_text())) == 24
    assert not list(phantom_root.parent.glob(".phantoms.tmp-*"))
    before = train.stat().st_mtime_ns
    rp3d.ensure_data(_config(phantom_root).data)  # not empty: left alone
    assert train.stat().st_mtime_ns == before
    empty = tmp_path / "empty"
    empty.mkdir()
    config = _config(empty)
    config.data.phantoms.update(num_train=2, num_test=1, size=16)
    rp3d.ensure_data(config.data)
    assert (empty / "test.json").is_file()
    config = _config(tmp_path / "none")
    config.data.phantoms.enabled = False
    with pytest.raises(FileNotFoundError, match="phantoms.enabled"):
        rp3d.ensure_data(config.data)


def test_make_source_indexes_phantoms(phantom_root):
    config = _config(phantom_root)
    source = rp3d.make_source(config.data, "train")
    assert len(source) == 24 and len(rp3d.make_source(config.data, "test")) == 8
    assert source.skipped_records == ()
    record = pickle.loads(pickle.dumps(source[0]))
    for sample in record["samples"]:
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in sample["images"])
    assert rp3d.num_classes(config.data) == 12
    rp3d.complete_config(config)
    assert config.model.num_classes == 12
    with pytest.raises(ValueError, match="valid_file"):
        rp3d.make_source(config.data, "valid")


@pytest.mark.parametrize("fusion,n", [("late", 1), ("early", 2)])
def test_examples_match_the_contract(phantom_root, fusion, n):
    config = _config(phantom_root, f"tiny,fusion={fusion}")
    source = rp3d.make_source(config.data, "train")
    rng = np.random.default_rng(0)
    for index in range(len(source)):
        ex = rp3d.load_example(source[index], config.data, rng)
        assert {k: (v.shape, v.dtype) for k, v in ex.items()} == {
            "images": ((n, 4, 32, 32, 1), np.float32),
            "marks": ((n, 4), np.float32),
            "mods": ((n,), np.int32),
            "keys": ((n,), np.int32),
            "labels": ((12,), np.float32),
        }
        real = ex["marks"] > 0
        assert ex["images"].min() >= 0.0 and ex["images"].max() == 1.0
        assert not ex["images"][~real].any()  # padding is zero
        assert np.array_equal(ex["mods"] > 0, real.any(axis=1))
        assert np.all((ex["keys"] >= 0) == real.any(axis=1))
        assert np.all(ex["keys"] < real.sum(axis=1).clip(min=1))
        assert ex["labels"].sum() >= 1  # "Normal" is a class


def test_deterministic_path_and_random_path(phantom_root):
    config = _config(phantom_root, "tiny,fusion=early")
    record = next(r for r in rp3d.make_source(config.data, "train") if len(r["samples"]) > 1)
    a, b = (rp3d.load_example(record, config.data, None) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    picks = {
        tuple(rp3d.load_example(record, config.data, np.random.default_rng(s))["mods"])
        for s in range(12)
    }
    assert len(picks) > 1  # shuffled samples


# ---- RP3D sampling rules on hand-written cases -----------------------------------------


def test_late_fusion_picks_sample_and_plane_and_maps_key(tmp_path):
    deep = _ramp(d=40)
    planes = [_plane(tmp_path, "deep", deep, 37), _plane(tmp_path, "mid", deep, 14)]
    cases = [
        _case([_sample(planes, "CT", articles=("Nodule", "Cyst"))], ["CT"]),
        _case([_sample([_plane(tmp_path, "bad_key", deep, 99)], "MRI")], ["MRI"]),
    ]
    config = _config(_dataset(tmp_path, cases))
    source = rp3d.make_source(config.data, "train")
    ex = rp3d.load_example(source[0], config.data, None)
    # 40 slices -> kept 0, 10, 20, 30: key 37 is nearest to 30 (index 3).
    assert ex["keys"].tolist() == [3] and ex["mods"].tolist() == [1]
    np.testing.assert_array_equal(ex["marks"], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(ex["labels"], [0, 1, 1])
    examples = [
        rp3d.load_example(source[0], config.data, np.random.default_rng(s)) for s in range(8)
    ]
    seen = {(int(e["mods"][0]), int(e["keys"][0])) for e in examples}
    assert seen == {(1, 3), (2, 1)}  # plane 1: key 14 -> kept slice 10 (index 1)
    ex = rp3d.load_example(source[1], config.data, None)  # key 99 >= 40 -> middle
    assert ex["keys"].tolist() == [2] and ex["mods"].tolist() == [4]


def test_late_fusion_keeps_only_the_key_slice_of_3d_cases(tmp_path):
    volume = np.random.default_rng(0).normal(size=(8, 8, 6)).astype(np.float32)
    cases = [_case([_sample([_plane(tmp_path, "ct", volume, 4)], "CT")], ["CT"], Dim="3D")]
    config = _config(_dataset(tmp_path, cases))
    ex = rp3d.load_example(rp3d.make_source(config.data, "train")[0], config.data, None)
    np.testing.assert_array_equal(ex["marks"], [[1, 0, 0, 0]])
    assert ex["keys"].tolist() == [0]
    expected = scale_intensity(resize(volume[:, :, 4:5], (32, 32)))[..., 0]
    np.testing.assert_allclose(ex["images"][0, 0, :, :, 0], expected, atol=1e-6)
    assert not ex["images"][0, 1:].any()


def test_early_fusion_plane_rules_padding_and_joint_normalisation(tmp_path):
    ct = [_plane(tmp_path, f"ct{p}", _ramp(d=3, scale=1.0 / (p + 1)), 1) for p in range(4)]
    xray = [_plane(tmp_path, f"xr{p}", _ramp(), 0) for p in range(3)]
    us = [_plane(tmp_path, f"us{p}", _ramp(), 0) for p in range(2)]
    cases = [
        _case([_sample(ct, "CT", articles=("Cyst",)), _sample(xray, "X-ray")], ["CT", "X-ray"]),
        _case([_sample(xray, "X-ray"), _sample(us, "Ultrasound")], ["X-ray", "Ultrasound"]),
    ]
    config = _config(_dataset(tmp_path, cases), "fusion=early", image_size=8, depth=4, n_image=4)
    source = rp3d.make_source(config.data, "train")
    ex = rp3d.load_example(source[0], config.data, None)
    assert ex["mods"].tolist() == [1, 2, 3, 7]  # CT: first 3 planes; X-ray: cut at 4
    assert ex["keys"].tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(ex["labels"], [0, 0, 1])  # labels of the first sample
    # The CT planes are min-maxed together: plane p spans [0, max / (p + 1)].
    np.testing.assert_allclose(
        ex["images"][:3].max(axis=(1, 2, 3, 4)), [1, 1 / 2, 1 / 3], rtol=1e-6
    )
    ex = rp3d.load_example(source[1], config.data, None)
    assert ex["mods"].tolist() == [7, 8, 9, 0] and ex["keys"].tolist() == [0, 0, 0, -1]
    assert not ex["images"][3].any() and not ex["marks"][3].any()
    ultrasound_planes = {
        int(
            np.argmax(
                rp3d.load_example(source[1], config.data, np.random.default_rng(s))["mods"] == 9
            )
        )
        for s in range(10)
    }
    assert ultrasound_planes == {0, 2}  # shuffled sample order


def test_identical_rgb_channels_collapse_and_constant_scan_becomes_noise(tmp_path):
    grey = np.repeat(_ramp(), 3, axis=-1)
    flat = np.full((8, 8, 2), 5.0, np.float32)
    cases = [
        _case([_sample([_plane(tmp_path, "rgb", grey, 0)], "X-ray")], ["X-ray"]),
        _case([_sample([_plane(tmp_path, "flat", flat, 0)], "MRI")], ["MRI"]),
    ]
    config = _config(_dataset(tmp_path, cases))
    source = rp3d.make_source(config.data, "train")
    assert rp3d.load_example(source[0], config.data, None)["marks"].sum() == 1
    noise = rp3d.load_example(source[1], config.data, None)["images"][0, :2]
    assert noise.min() == 0.0 and noise.max() == 1.0 and noise.std() > 0.1
    np.testing.assert_array_equal(
        noise, rp3d.load_example(source[1], config.data, None)["images"][0, :2]
    )


def test_icd10_level_uses_icd10_codes(tmp_path):
    cases = [
        _case([_sample([_plane(tmp_path, "a", _ramp(), 0)], "X-ray", icd10s=("N28",))], ["X-ray"])
    ]
    config = _config(_dataset(tmp_path, cases), "tiny,label_level=icd10s")
    ex = rp3d.load_example(rp3d.make_source(config.data, "train")[0], config.data, None)
    np.testing.assert_array_equal(ex["labels"], [0, 0, 1])
    config.data.label_level = "organs"
    with pytest.raises(ValueError, match="label_level"):
        rp3d.num_classes(config.data)


def test_released_json_with_absolute_paths_loads_at_paper_size(tmp_path):
    """Real RP3D-DiagDS JSONs hold absolute cluster paths and 256x256 RGB exports."""
    prefix = "/mnt/petrelfs/share_data/someone/processed"
    grey = np.repeat(_ramp(256, 256), 3, axis=-1)
    mri = _ramp(256, 256, 20)
    planes = [_plane(tmp_path, "xr", grey, 0), _plane(tmp_path, "mr", mri, 7)]
    sample = lambda p, m: {
        **_sample([p], m, articles=("Nodule", "Cyst")),
        "image_data_path": [f"{prefix}/{p[0]}"],
        "image_key_path": [f"{prefix}/{p[1]}"],
    }
    case = dict(
        _case([sample(planes[0], "X-ray"), sample(planes[1], "MRI")], ["X-ray", "MRI"]),
        key_slice=[{"image_0": 0}, {"image_0": 7}],
    )
    root = _dataset(tmp_path, [case], file_name="demoData.json")
    config = _config(root, "fusion=early", test_file="demoData.json", path_prefix=prefix)
    ex = rp3d.load_example(rp3d.make_source(config.data, "test")[0], config.data, None)
    assert ex["images"].shape == (4, 32, 256, 256, 1)
    assert ex["mods"].tolist() == [7, 4, 0, 0] and ex["keys"].tolist() == [0, 7, -1, -1]
    np.testing.assert_array_equal(ex["marks"].sum(axis=1), [1, 20, 0, 0])
    config.data.path_prefix = ""
    _raises(
        lambda: rp3d.make_source(config.data, "test"),
        "demoData.json",
        "Samples[0].image_data_path[0]",
        "outside the data root",
    )


# ---- bad input -------------------------------------------------------------------------


def _good(root: Path, name: str) -> dict:
    return _case([_sample([_plane(root, name, _ramp(), 0)], "X-ray")], ["X-ray"])


def _broken_cases(root: Path) -> list[tuple[dict, str, str]]:
    """(case, field named in the error, message part) for each kind of bad case."""
    no_images = _good(root, "n1")
    del no_images["Samples"][0]["image_data_path"]
    no_modalities = _good(root, "n2")
    del no_modalities["Modalities"]
    unknown_label = _good(root, "n3")
    unknown_label["Samples"][0]["articles"] = ["Nodule", "Dragon scale"]
    unknown_modality = _good(root, "n4")
    unknown_modality["Modalities"] = ["Thermography"]
    outside = _good(root, "n5")
    outside["Samples"][0]["image_data_path"] = ["../../etc/passwd"]
    absent = _good(root, "n6")
    absent["Samples"][0]["image_key_path"] = ["npy/absent.npy"]
    extra_key = _good(root, "n7")
    extra_key["Samples"][0]["image_key_path"] *= 2
    return [
        (no_images, "Samples[0].image_data_path", "missing"),
        (no_modalities, ".Modalities", "missing"),
        (unknown_label, "Samples[0].articles", "Dragon scale"),
        (unknown_modality, "Modalities[0]", "Thermography"),
        (outside, "Samples[0].image_data_path[0]", "outside the data root"),
        (absent, "Samples[0].image_key_path[0]", "file not found"),
        (extra_key, "Samples[0].image_key_path", "2 key files for 1 image files"),
    ]


def test_bad_cases_name_json_file_case_and_field(tmp_path):
    for i, (case, field, message) in enumerate(_broken_cases(tmp_path)):
        _dataset(tmp_path, [case], file_name=f"bad{i}.json")
        config = _config(tmp_path, train_file=f"bad{i}.json")
        _raises(
            lambda config=config: rp3d.make_source(config.data, "train"),
            f"bad{i}.json",
            URL.format(0),
            field,
            message,
        )


def test_skip_bad_records_counts_them(tmp_path):
    broken = [case for case, _, _ in _broken_cases(tmp_path)]
    good = [_good(tmp_path, "g1"), _good(tmp_path, "g2")]
    config = _config(_dataset(tmp_path, [good[0]] + broken + [good[1]]), skip_bad_records=True)
    source = rp3d.make_source(config.data, "train")
    assert len(source) == 2 and len(source.skipped_records) == len(broken)
    assert [r["case"] for r in source] == [URL.format(0), URL.format(len(broken) + 1)]
    assert all("train.json" in str(e) for e in source.skipped_records)
    config.data.skip_bad_records = False
    _raises(lambda: rp3d.make_source(config.data, "train"), URL.format(1))


def test_unknown_labels_can_be_ignored_as_rp3d_does(tmp_path, caplog):
    case = _good(tmp_path, "a")
    case["Samples"][0]["articles"] = ["Cyst", "Dragon scale"]
    config = _config(_dataset(tmp_path, [case]), unknown_labels="ignore")
    source = rp3d.make_source(config.data, "train")
    np.testing.assert_array_equal(
        rp3d.load_example(source[0], config.data, None)["labels"], [0, 0, 1]
    )
    assert "ignored 1 label names" in caplog.text


def test_unreadable_scans_fail_at_load_naming_npy_and_json_field(tmp_path):
    cases = [
        _good(tmp_path, "corrupt"),
        _good(tmp_path, "nan"),
        _good(tmp_path, "floatkey"),
        _good(tmp_path, "rank"),
    ]
    config = _config(_dataset(tmp_path, cases))
    source = rp3d.make_source(config.data, "train")
    (tmp_path / "npy" / "corrupt.npy").write_bytes(b"garbage")
    nan = _ramp()
    nan[2, 3, 0] = np.nan
    np.save(tmp_path / "npy" / "nan.npy", nan)
    np.save(tmp_path / "npy" / "floatkey_key.npy", np.array([2.5]))
    np.save(tmp_path / "npy" / "rank.npy", np.zeros((2, 2, 2, 2), np.float32))
    expected = [
        ("corrupt.npy", "image_data_path[0]", "not a readable .npy"),
        ("nan.npy", "image_data_path[0]", "1 non-finite"),
        ("floatkey_key.npy", "image_key_path[0]", "integer key slice"),
        ("rank.npy", "image_data_path[0]", "rank 2 or 3"),
    ]
    for index, (file_name, field, message) in enumerate(expected):
        _raises(
            lambda index=index: rp3d.load_example(source[index], config.data, None),
            file_name,
            f"train.json['{URL.format(index)}'].Samples[0].{field}",
            message,
        )


def test_unreadable_json_and_label_dict(tmp_path):
    root = _dataset(tmp_path, [_good(tmp_path, "a")])
    config = _config(root)
    (root / "test.json").write_text("{not json")
    _raises(lambda: rp3d.make_source(config.data, "test"), "test.json", "not valid JSON")
    (root / "train.json").unlink()
    _raises(lambda: rp3d.make_source(config.data, "train"), "train.json", "file not found")
    (root / "disorder_label_dict.json").write_text(json.dumps({"Normal": 0, "Nodule": 2}))
    _raises(lambda: rp3d.num_classes(config.data), "disorder_label_dict.json", "not 0..1")


def test_nonfinite_voxels_zeroed_on_request(tmp_path):
    config = _config(_dataset(tmp_path, [_good(tmp_path, "nan")]), fusion="early")
    nan = _ramp(d=2)
    nan[2, 3, 0], nan[0, 0, 1] = np.nan, -np.inf
    np.save(tmp_path / "npy" / "nan.npy", nan)
    record = rp3d.make_source(config.data, "train")[0]
    _raises(lambda: rp3d.load_example(record, config.data, None), "nan.npy", "2 non-finite")
    config.data.nonfinite = "zero"
    with nonfinite_repairs() as repairs:
        images = rp3d.load_example(record, config.data, None)["images"]
    assert np.isfinite(images).all() and len(repairs) == 1 and "nan.npy" in repairs[0]
    config.data.nonfinite = "skip"
    with pytest.raises(ValueError, match="data.nonfinite 'skip'"):
        rp3d.ensure_data(config.data)


def test_data_root_must_hold_the_split_files_and_is_never_overwritten(tmp_path):
    root = _dataset(tmp_path / "mine", [_good(tmp_path / "mine", "a")])  # no test.json
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for enabled in (False, True):
        config = _config(root)
        config.data.phantoms.enabled = enabled
        with pytest.raises(FileNotFoundError, match=f"data.root {root} lacks test.json"):
            experiment.prepare_config(config)
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    config = _config(tmp_path / "typo")
    config.data.phantoms.enabled = False
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'typo'} does not exist"):
        experiment.prepare_config(config)
    assert rp3d.data_files(config.data) == ["test.json", "train.json", "disorder_label_dict.json"]
