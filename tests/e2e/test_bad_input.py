"""Bad input: clear errors naming file and field; with skip_bad_records the run goes on and
reports how many records it skipped."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import rp3d_diag
from radjax import sharding
from radjax.data import pipeline
from radjax.data.errors import BadRecordError
from radjax.papers.rp3d_diag import data as rp3d
from radjax.train import loop
from tests.e2e.launcher import run_launcher


def _config(root, skip):
    config = rp3d_diag.get_config("tiny")
    config.data.root = str(root)
    config.data.skip_bad_records = skip
    config.train.steps = 6
    config.train.log_every = 1
    config.train.eval_every = 0
    config.checkpoint.every = 6
    return config


@pytest.fixture
def broken_root(tmp_path, tiny_data):
    """A copy of the phantoms with four kinds of damage in the training split."""
    rp3d_data = tiny_data("rp3d_diag")
    root = tmp_path / "data"
    shutil.copytree(rp3d_data, root)
    cases = json.loads((root / "train.json").read_text())
    links = list(cases)
    first_image = lambda link: root / cases[link]["Samples"][0]["image_data_path"][0]
    # 1. a truncated .npy
    corrupt = first_image(links[0])
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    # 2. NaN voxels
    nan_path = first_image(links[1])
    volume = np.load(nan_path)
    volume[..., 0] = np.nan
    np.save(nan_path, volume)
    # 3. a case without its Samples field
    del cases[links[2]]["Samples"]
    # 4. a path outside the data root
    cases[links[3]]["Samples"][0]["image_data_path"][0] = "../../outside.npy"
    (root / "train.json").write_text(json.dumps(cases))
    return root, corrupt, nan_path, links


def test_each_bad_input_names_file_and_field(broken_root):
    root, corrupt, nan_path, links = broken_root
    data_cfg = _config(root, skip=False).data
    with pytest.raises(BadRecordError, match=r"train\.json.*Samples") as err:
        rp3d.make_source(data_cfg, "train")
    assert err.value.field and links[2] in err.value.field

    lenient = _config(root, skip=True).data
    source = rp3d.make_source(lenient, "train")
    messages = [str(e) for e in source.skipped_records]
    assert len(messages) == 2
    assert any("Samples" in m for m in messages)
    assert any("outside" in m and "image_data_path" in m for m in messages)

    records = {r["case"]: r for r in source}
    for link, path in ((links[0], corrupt), (links[1], nan_path)):
        with pytest.raises(BadRecordError) as err:
            rp3d.load_example(records[link], data_cfg, None)
        assert path.name in str(err.value) and "image_data_path" in str(err.value)
    with pytest.raises(BadRecordError, match="NaN|non-finite|finite"):
        rp3d.load_example(records[links[1]], data_cfg, None)


@pytest.mark.slow
def test_skip_bad_records_run_continues_and_reports_count(tmp_path, broken_root):
    root = broken_root[0]
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    loop.train_and_evaluate(_config(root, skip=True), str(tmp_path / "run"), mesh=mesh)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["train/loss"]) for r in rows)
    # the two cases dropped from the index are always counted
    assert rows[-1]["train/skipped_records"] >= 2
    assert rows[-1]["train/repaired_records"] == 0  # data.nonfinite='error': NaN is skipped

    # without skipping, the same data stops the run with the file and field named
    with pytest.raises(BadRecordError, match=r"train\.json.*Samples"):
        loop.train_and_evaluate(_config(root, skip=False), str(tmp_path / "strict"), mesh=mesh)


def _draw_over_an_epoch(cfg) -> tuple[list[dict], pipeline.SkipCounter]:
    """Training batches of 16 over more than one epoch (every broken file is drawn), and the
    pipeline's counter."""
    ds, counter = pipeline.train_dataset(
        rp3d, cfg, global_batch=16, seed=0, process_index=0, process_count=1
    )
    it = iter(ds)
    n_cases = len(rp3d.make_source(cfg, "train"))
    return [next(it) for _ in range(n_cases // 16 + 2)], counter


def test_skipped_load_failures_are_counted_when_drawn(broken_root):
    batches, counter = _draw_over_an_epoch(_config(broken_root[0], skip=True).data)
    assert all(np.isfinite(batch["images"]).all() for batch in batches)
    assert counter.count >= 2 + 2


def test_nonfinite_voxels_zeroed_on_request_are_counted(broken_root):
    cfg = _config(broken_root[0], skip=True).data
    cfg.nonfinite = "zero"
    batches, counter = _draw_over_an_epoch(cfg)
    for batch in batches:
        assert np.isfinite(batch["images"]).all() and pipeline.REPAIRED not in batch
    assert counter.repaired >= 1  # the NaN case, now loaded
    assert counter.count >= 2  # the two cases left out of the index are still skipped


def test_mistyped_data_root_without_phantoms_stops_before_training(tmp_path):
    typo = tmp_path / "dataa"
    proc = run_launcher(
        "experiments.train",
        tmp_path / "run",
        f"--config.data.root={typo}",
        "--config.data.phantoms.enabled=False",
        check=False,
        log=str(tmp_path / "train.log"),
    )
    assert proc.wait(timeout=300) != 0
    log = (tmp_path / "train.log").read_text()
    assert f"data.root {typo} does not exist" in log, log[-3000:]
    assert not typo.exists() and not (tmp_path / "run" / "checkpoints").exists()
