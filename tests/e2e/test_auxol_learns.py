"""AuxOL end to end through the real launchers: the weak tiny SAM is trained
(``experiments.train``, configs/auxol.py:tiny,stage=sam), then a phantom stream (BUSI-like,
benign then malignant) runs through ``experiments.online``. AuxOL beats SAM alone in both
parts, the online step compiles once for the whole stream, and a run killed mid-stream
resumes to exactly the rows of an uninterrupted run."""

import json
import signal
import time

import pytest

from tests.e2e.launcher import metrics_rows, run_launcher

CONFIG = "configs/auxol.py:tiny"
IMAGES = 12  # a part (the demo streams 40: benign +5.6, malignant +79 DSC points)


@pytest.fixture(scope="module")
def weak_sam(tmp_path_factory):
    root = tmp_path_factory.mktemp("auxol")
    run_launcher(
        "experiments.train",
        root / "sam",
        f"--config.data.root={root / 'sam_data'}",
        config=f"{CONFIG},stage=sam",
    )
    return root


def _stream_args(root):
    return (
        f"--config.data.root={root / 'stream_data'}",
        f"--config.model.sam.workdir={root / 'sam'}",
        f"--config.data.phantoms.images_per_part={IMAGES}",
        "--config.checkpoint.every=5",
    )


@pytest.fixture(scope="module")
def stream_run(weak_sam):
    run_launcher("experiments.online", weak_sam / "run", *_stream_args(weak_sam), config=CONFIG)
    with open(weak_sam / "run" / "results.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_auxol_beats_the_weak_sam_in_every_part_with_one_compiled_update(stream_run):
    parts = stream_run["parts"]
    assert list(parts) == ["benign", "malignant"]
    assert parts["benign"]["dice_auxol"] > parts["benign"]["dice_sam"] + 0.02, parts
    assert parts["malignant"]["dice_auxol"] > parts["malignant"]["dice_sam"] + 0.3, parts
    assert parts["malignant"]["hd_auxol"] < parts["malignant"]["hd_sam"], parts
    assert stream_run["compilations"] == 1
    objects = len(stream_run["alpha_best"])
    assert objects == len(stream_run["alpha_used"]) >= 2 * IMAGES
    assert stream_run["alpha_used"][:5] == [1.0] * 5  # SAM alone while the history is short
    # after the shift to the malignant look SAM's share falls
    assert stream_run["alpha_used"][-1] < 0.5


@pytest.mark.slow
def test_a_stream_killed_mid_way_resumes_to_the_uninterrupted_rows(weak_sam, stream_run):
    workdir = weak_sam / "killed"
    proc = run_launcher(
        "experiments.online", workdir, *_stream_args(weak_sam), config=CONFIG, check=False
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (workdir / "metrics.jsonl").exists() and len(metrics_rows(workdir)) >= 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics_rows(workdir)) < 2 * IMAGES  # killed before the end
    run_launcher("experiments.online", workdir, *_stream_args(weak_sam), config=CONFIG)
    want = metrics_rows(weak_sam / "run")
    got = metrics_rows(workdir)
    drop = ("update_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == [
        {k: v for k, v in r.items() if k not in drop} for r in want
    ]
    with open(workdir / "results.json") as f:
        assert json.load(f)["parts"] == stream_run["parts"]
