"""experiments.predict on real scans that ship in the test dependencies: nilearn's MNI152 T1
template (NIfTI), pydicom's CT_small / MR_small (one slice each) and the multi-frame
emri_small (10 frames, given as a folder), and a PNG of MR_small's pixels.

One tiny RP3D-Diag run (2 steps) serves every RP3D prediction; RadFM predicts with
``--untrained`` (the restore path is the launcher's, shared with RP3D)."""

import importlib
import importlib.resources
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radjax import registry
from radjax.data.errors import BadRecordError
from tests.e2e.launcher import REPO, run_launcher

RP3D, RADFM = "configs/rp3d_diag.py:tiny", "configs/radfm.py:tiny"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """name -> path of each real input (and a corrupt NIfTI)."""
    root = tmp_path_factory.mktemp("scans")
    mni = importlib.resources.files("nilearn") / "datasets/data"
    mni = mni / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    series = root / "emri_series"
    series.mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), series / "emri_small.dcm")
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float64)
    grey = np.round(255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8)
    Image.fromarray(grey).save(root / "mr_small.png")
    broken = root / "broken.nii.gz"
    broken.write_bytes(b"this is not a NIfTI file" * 20)
    return dict(
        mni=str(mni),
        ct=get_testdata_file("CT_small.dcm"),
        mr=get_testdata_file("MR_small.dcm"),
        emri=str(series),
        png=str(root / "mr_small.png"),
        broken=str(broken),
    )


@pytest.fixture(scope="module")
def rp3d_run(tiny_data, tmp_path_factory):
    """(workdir, data root) of a 2-step tiny RP3D-Diag run."""
    workdir = tmp_path_factory.mktemp("rp3d") / "run"
    root = tiny_data("rp3d_diag")
    run_launcher(
        "experiments.train",
        workdir,
        f"--config.data.root={root}",
        "--config.train.steps=2",
        "--config.train.eval_every=0",
        "--config.checkpoint.every=2",
        config=RP3D,
    )
    return workdir, root


def predict(config: str, root: str, out, *args, devices: int = 1, check: bool = True):
    """``python -m experiments.predict`` in a fresh process on ``devices`` CPU devices;
    asserts success when ``check``. Returns the CompletedProcess."""
    env = dict(
        os.environ,
        JAX_NUM_CPU_DEVICES=str(devices),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    cmd = [sys.executable, "-m", "experiments.predict", "--config", config,
           f"--config.data.root={root}", "--out", str(out), *args]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def read_outputs(out, name: str) -> dict:
    """The JSON of one input; checks its figure is a PNG that decodes."""
    figure = (out / f"{name}.png").read_bytes()
    assert figure.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(figure)) as image:
        image.verify()
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
def test_rp3d_predicts_ranked_disorders_on_real_scans(rp3d_run, scans, tmp_path):
    workdir, root = rp3d_run
    out = tmp_path / "out"
    names = ("mni", "ct", "mr", "emri", "png")
    inputs = [a for n in names for a in ("--input", scans[n])]
    # two devices: the one example is repeated to fill the mesh's batch shards
    predict(RP3D, root, out, "--workdir", str(workdir), "--modality", "MRI", *inputs, devices=2)
    results = {
        n: read_outputs(out, s)
        for n, s in zip(
            names,
            (
                "mni_icbm152_t1_tal_nlin_sym_09a_converted",
                "CT_small",
                "MR_small",
                "emri_series",
                "mr_small",
            ),  # fmt: skip
        )
    }
    for name, r in results.items():
        assert r["paper"] == "rp3d_diag"
        assert r["weights"] == dict(
            source="checkpoint", path=str((workdir / "checkpoints" / "2").resolve()), step=2
        )
        probs = [d["probability"] for d in r["disorders"]]
        assert len(probs) == 12 and len({d["name"] for d in r["disorders"]}) == 12
        assert all(0.0 <= p <= 1.0 for p in probs), name
        assert probs == sorted(probs, reverse=True), name
        assert r["input"]["model_input"] == [1, 4, 32, 32, 1]
        assert len(r["summary"]) == 11
    # the DICOM tag wins over --modality; files without one take --modality
    assert [results[n]["input"]["modality"] for n in names] == ["MRI", "CT", "MRI", "MRI", "MRI"]
    assert results["emri"]["input"]["shape"] == [64, 64, 10]
    assert results["emri"]["input"]["key_slice"] == 5
    assert results["mni"]["input"]["orientation"] == "RAS"
    assert results["ct"]["input"]["orientation"] == "LPS"
    first = {n: np.array([d["probability"] for d in r["disorders"]]) for n, r in results.items()}
    assert np.abs(np.sort(first["mni"]) - np.sort(first["ct"])).max() > 1e-4


@pytest.mark.slow
def test_radfm_generates_an_answer_untrained(tiny_data, scans, tmp_path):
    out = tmp_path / "out"
    root = tiny_data("radfm")
    predict(
        RADFM, root, out, "--untrained", "--config.eval.max_new_tokens=12",
        "--input", scans["mni"], "--input", scans["png"],
    )  # fmt: skip
    volume = read_outputs(out, "mni_icbm152_t1_tal_nlin_sym_09a_converted")
    image = read_outputs(out, "mr_small")
    for r in (volume, image):
        assert r["paper"] == "radfm" and r["weights"] == {"source": "untrained"}
        assert r["prompt"] == "Write the radiology report for these images."
        assert isinstance(r["answer"], str) and 0 < r["generated_tokens"] <= 12
    # 189 slices -> the format's bucket 64, capped at the tiny ViT's 16 frames; halved size
    assert volume["input"]["model_input"] == [1, 16, 16, 16, 3]
    assert volume["input"]["depth_bucket"] == 64 and volume["input"]["depth_capped"]
    assert image["input"]["model_input"] == [1, 1, 32, 32, 3]
    assert volume["answer"] != image["answer"]


@pytest.mark.slow
def test_bad_input_file_is_named_before_anything_is_built(rp3d_run, scans, tmp_path):
    workdir, root = rp3d_run
    bad = predict(
        RP3D, root, tmp_path / "bad", "--workdir", str(workdir), "--modality", "MRI",
        "--input", scans["ct"], "--input", scans["broken"], check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    message = f"experiments.predict: bad input: {scans['broken']}: not a readable NIfTI file"
    assert message in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()  # nothing written, not even for the good input


def test_no_weights_without_asking(tmp_path):
    from absl import app

    from experiments.predict import weights_source

    empty = tmp_path / "run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(app.UsageError, match="no checkpoint under .*--untrained"):
        weights_source(str(empty), "", False)
    with pytest.raises(app.UsageError, match="exactly one of"):
        weights_source("", "", False)
    with pytest.raises(app.UsageError, match="exactly one of"):
        weights_source(str(empty), "", True)
    with pytest.raises(app.UsageError, match="not a checkpoint step directory"):
        weights_source("", str(empty / "checkpoints"), False)
    (empty / "checkpoints" / "7" / "state").mkdir(parents=True)
    assert weights_source(str(empty), "", False) == ("workdir", empty.resolve() / "checkpoints")
    step = empty / "checkpoints" / "7"
    assert weights_source("", str(step), False) == ("checkpoint", step.resolve())
    assert weights_source("", "", True) == ("untrained", None)


def _prepared(paper: str, root: str):
    from radjax.train import experiment

    config = importlib.import_module(f"configs.{paper}").get_config("tiny")
    config.data.root = root
    experiment.prepare_config(config)
    return config, registry.module(paper, "predict")


def test_hooks_refuse_options_they_do_not_take(tiny_data, scans):
    from experiments.predict import read_scan

    config, hook = _prepared("rp3d_diag", tiny_data("rp3d_diag"))
    with pytest.raises(BadRecordError, match="modality.*pass --modality") as err:
        hook.load_input(read_scan(scans["mni"]), config)
    assert err.value.path == scans["mni"] and err.value.field == "modality"
    with pytest.raises(BadRecordError, match="no prompt"):
        hook.load_input(read_scan(scans["ct"]), config, prompt="Is it broken?")
    config, hook = _prepared("radfm", tiny_data("radfm"))
    with pytest.raises(BadRecordError, match="reads no modality"):
        hook.load_input(read_scan(scans["png"]), config, modality="MRI")


def test_radfm_prompt_reaches_the_model_input(tiny_data, scans):
    from experiments.predict import read_scan
    from radjax.papers.radfm import data

    config, hook = _prepared("radfm", tiny_data("radfm"))
    tokenizer, layout = data.text_tools(config.data)
    inputs = hook.load_input(read_scan(scans["ct"]), config, prompt="Is there a fracture?")
    batch = inputs["batch"]
    ids = batch["input_ids"][0, : batch["question_length"][0]]
    text = tokenizer.decode(ids[ids < layout.text_vocab_size].tolist(), skip_special_tokens=True)
    assert text.strip() == "Is there a fracture?"
    assert ids[1] == layout.text_vocab_size  # <image> right after BOS: the image comes first
    # CT_small is one slice: the format's volume path (min-max over the file, depth bucket 4)
    assert batch["images"].shape == (1, 1, 4, 32, 32, 3)
    assert 0.0 <= inputs["view"].min() < inputs["view"].max() <= 1.0


def test_read_scan_names_the_file(scans, tmp_path):
    from experiments.predict import output_names, read_scan

    with pytest.raises(BadRecordError, match="not a readable NIfTI") as err:
        read_scan(scans["broken"])
    assert err.value.path == scans["broken"]
    with pytest.raises(BadRecordError, match="file not found"):
        read_scan(tmp_path / "missing.nii.gz")
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(BadRecordError, match="unknown input type"):
        read_scan(odd)
    assert output_names(["a/scan.nii.gz", "b/scan.nii", "series/", "x.PNG"]) == [
        "scan",
        "scan_2",
        "series",
        "x",
    ]
    scan = read_scan(scans["emri"])
    assert scan["reader"] == "dicom" and scan["modality"] == "MR"
    assert scan["volume"].array.shape == (64, 64, 10)
