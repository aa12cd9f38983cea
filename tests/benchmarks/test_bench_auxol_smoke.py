"""The AuxOL benchmark (``benchmarks/auxol.py``) and its PyTorch reference.

* ``tests/references/auxol_unet_torch.py`` reproduces the ORIGINAL AuxOL U-Net's golden
  outputs (``tests/golden/data/auxol_unet.npz``, made by ``tests/golden/make_auxol_golden.py``
  from qianxihaoyue/AuxOL) with the golden's weights, and its ``structure_loss`` the
  original's loss and radjax's.
* The tiny benchmark prints both tables with torch and radjax rows, finite positive times and
  equal parameter counts. ``torch.compile`` is replaced by the identity there (inductor's
  cold compile of even the tiny nets takes minutes on 2 cores): the compiled rows' plumbing is
  tested, not inductor; a ``torch.compile`` that raises leaves its row out with the reason.

No timing assertions.
"""

import io
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import auxol
from benchmarks import run as bench_run
from tests.parity import assert_close

DATA = pathlib.Path(__file__).parents[1] / "golden" / "data"


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "auxol_unet.npz")


@pytest.fixture(scope="module")
def loss_golden():
    return np.load(DATA / "auxol_loss.npz")


@pytest.fixture(scope="module")
def reference(torch):
    from tests.references import auxol_unet_torch

    torch.set_num_threads(2)
    return auxol_unet_torch


def _golden_weights(golden, tag):
    """The full-width net's state dict: make_auxol_golden's draw, N(0, 1) / sqrt(fan_in) in
    f32 from the stored seed, checked against the stored |w| sums."""
    keys = [str(k) for k in golden[f"{tag}/keys"]]
    shapes = [tuple(s) for s in json.loads(str(golden[f"{tag}/shapes"]))]
    rng = np.random.default_rng(json.loads(str(golden["meta/config"]))["full_seed"])
    weights = []
    for shape in shapes:
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        weights.append((rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32))
    sums = [np.abs(w).sum(dtype=np.float64) for w in weights]
    np.testing.assert_allclose(sums, golden[f"{tag}/abs_sums"], rtol=1e-12)
    return dict(zip(keys, weights))


def _run(torch, net, sd, x):
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        return net.eval()(torch.from_numpy(np.asarray(x, np.float32))).numpy()


@pytest.mark.parametrize("bilinear", [True, False])
def test_reference_unet_matches_original(torch, reference, golden, bilinear):
    mode = "bilinear" if bilinear else "transposed"
    full = reference.UNet(4, 1, bilinear=bilinear)
    sd = _golden_weights(golden, f"full_{mode}")
    crop = golden["in/crop_u8"].astype(np.float32) / np.float32(255)
    for name, x in (("small", golden["in/small"]), ("crop", crop)):
        assert_close(_run(torch, full, sd, x), golden[f"full_{mode}/out/{name}"], 1e-5, name)
    narrow = reference.UNet(4, 1, bilinear=bilinear, base=4)
    tag = f"narrow_{mode}"
    sd = {
        k.removeprefix(f"{tag}/sd/"): golden[k] for k in golden.files if k.startswith(f"{tag}/sd/")
    }
    for name in ("small", "odd"):  # odd: 37 x 45, the up path pads on both axes
        got = _run(torch, narrow, sd, golden[f"in/{name}"])
        assert got.shape == golden[f"{tag}/out/{name}"].shape
        assert_close(got, golden[f"{tag}/out/{name}"], 1e-5, f"{tag} {name}")


def test_reference_loss_matches_original_and_radjax(torch, reference, loss_golden):
    from radjax.papers.auxol.losses import structure_loss

    for name in ("small", "crop"):
        logits, masks = (
            torch.from_numpy(loss_golden[f"in/{name}/{k}"]) for k in ("logits", "masks")
        )
        assert_close(reference.structure_loss(logits, masks), loss_golden[f"out/{name}/loss"], 1e-6)
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((5, 1, 48, 40))).astype(np.float32)
    masks = (rng.random((5, 1, 48, 40)) > 0.6).astype(np.float32)
    nhwc = [jnp.asarray(np.transpose(a, (0, 2, 3, 1))) for a in (logits, masks)]
    got = reference.structure_loss(torch.from_numpy(logits), torch.from_numpy(masks))
    assert_close(got, structure_loss(*nhwc), 1e-6, "torch vs radjax loss")
    # the released BCE is one mean: the weighted BCE it meant differs on this batch
    assert abs(float(got) - float(structure_loss(*nhwc, weighted_bce=True))) > 1e-3


def test_shapes_follow_the_unet_and_the_encoder():
    shapes = auxol.unet_conv_shapes(auxol.SIZES["bench"])
    assert len(shapes) == 9 * 2 + 1 and shapes[0] == (32 * 128 * 128, 9 * 4, 64)
    assert shapes[8] == (32 * 8 * 8, 9 * 512, 512) and shapes[-1] == (32 * 128 * 128, 64, 1)
    # 17,254,721 parameters: the conv kernels plus OutConv's bias
    assert sum(k * n for _, k, n in shapes) + 1 == 17_254_721
    sam = auxol.sam_matmul_shapes(auxol.SIZES["bench"])
    assert sam[0] == (4096, 768, 768) and (4096, 64, 4096) in sam and (196, 64, 196) in sam


def _fake_compile(monkeypatch, torch, fail: bool):
    """The identity, or (``fail``) a wrapper that raises when called, as inductor does."""

    def compile_(fn, *args, **kwargs):
        def failing(*a, **k):
            raise RuntimeError("no compiler here\nsecond line")

        return failing if fail else fn

    monkeypatch.setattr(torch, "compile", compile_)


def test_tiny_auxol_benchmark_runs_both_tables(torch, transformers, monkeypatch):
    assert bench_run.discover()[-1].name == "auxol"
    _fake_compile(monkeypatch, torch, fail=False)
    out = io.StringIO()
    reported = auxol.BENCHMARK.report(
        "tiny", warmup=0, iters=1, ceiling=100.0, out=out, auxol_bare=1, ceiling_iters=1
    )
    text = out.getvalue()
    for key, table in reported.tables.items():
        lines = table.splitlines()
        assert "torch/radjax" in lines[0] and "MFU" in lines[0], table
        assert sum(line.startswith("torch (eager") for line in lines) == 1, table
        assert sum(line.startswith("torch.compile") for line in lines) == 1, table
        assert sum(line.startswith("radjax") for line in lines) == (2 if key == "update" else 1)
    assert "online update torch/radjax" in text and "SAM encoder torch.compile/radjax" in text
    assert "first-step loss" in text and "embeddings vs radjax" in text
    assert reported.ceiling >= 100.0
    assert [r.table for r in reported.summary] == ["online update", "SAM encoder forward"]
    assert all(r.vs_eager > 0 and r.vs_compiled > 0 and r.mfu > 0 for r in reported.summary)

    result = reported.result
    update, sam = result.update, result.sam
    assert set(update.rows) == {"torch", "torch.compile", "radjax", "radjax bare"}
    assert set(sam.rows) == {"torch", "torch.compile", "radjax"}
    for comparison in (update, sam):
        assert comparison.flops > 0
        rows = comparison.rows.values()
        assert len({r.params for r in rows}) == 1 and next(iter(rows)).params > 0
        for r in rows:
            assert len(r.timing.times) == 1
            assert all(math.isfinite(t) and t > 0 for t in r.timing.times), r
        assert comparison.rows["radjax"].compile_s > 0
    # same weights, same batch, same number of steps: the losses agree across rows
    losses = [r.value for r in update.rows.values()]
    assert all(math.isfinite(v) for v in losses) and max(losses) - min(losses) < 1e-3 * max(losses)
    assert all(r.value < auxol.SAM_TOL for r in sam.rows.values())


def test_failing_compile_leaves_its_row_out(torch, transformers, monkeypatch):
    _fake_compile(monkeypatch, torch, fail=True)
    sam = auxol.run_sam(auxol.SIZES["tiny"], warmup=0, iters=1)
    assert set(sam.rows) == {"torch", "radjax"}
    assert "torch.compile row left out: RuntimeError: no compiler here" in sam.notes
    assert "torch.compile" not in auxol.table(sam, 1.0, unit="forward", value="rel err")
