"""radjax.convert.torch_io: reading checkpoints, layouts, and assigning into NNX modules."""

import json
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.numpy import save_file

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert.torch_io import (
    ConversionError,
    assign,
    conv_kernel,
    linear_kernel,
    load_state_dict,
)
from radjax.sharding import make_mesh

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "a.bias": rng.normal(size=(3,)).astype(np.float16),
        "steps": np.arange(5, dtype=np.int64),
    }


def _assert_same(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_safetensors_round_trip(tmp_path):
    want = _arrays()
    save_file(want, str(tmp_path / "w.safetensors"))
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), want)


@needs_torch
def test_safetensors_bf16(tmp_path):
    from safetensors.torch import save_file as save_torch

    t = torch.randn(2, 3).to(torch.bfloat16)
    save_torch({"w": t, "f": torch.ones(2)}, str(tmp_path / "bf16.safetensors"))
    sd = load_state_dict(tmp_path / "bf16.safetensors")
    assert sd["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(sd["w"].astype(np.float32), t.float().numpy())
    np.testing.assert_array_equal(sd["f"], np.ones(2, np.float32))


@needs_torch
def test_torch_round_trip_unwraps_and_strips(tmp_path):
    want = _arrays()
    sd = {f"module.{k}": torch.from_numpy(v) for k, v in want.items()}
    wrapped = {"epoch": 3, "state_dict": sd}
    wrapped["state_dict"]["module.bf"] = torch.ones(2, dtype=torch.bfloat16)
    torch.save(wrapped, tmp_path / "w.pth")
    sd = load_state_dict(tmp_path / "w.pth")
    assert sd.pop("bf").dtype == ml_dtypes.bfloat16
    _assert_same(sd, want)
    assert "module.a.weight" in load_state_dict(tmp_path / "w.pth", strip_prefix=None)


class _Payload:
    pass


@needs_torch
def test_torch_never_unpickles_objects(tmp_path):
    torch.save({"w": torch.ones(1), "obj": _Payload()}, tmp_path / "evil.bin")
    with pytest.raises(ConversionError, match="evil.bin"):
        load_state_dict(tmp_path / "evil.bin")


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("absent.bin", None, "not found"),
        ("w.npz", b"x", "unknown checkpoint type"),
        ("trunc.safetensors", b"\x10\x00\x00", "trunc.safetensors"),
        pytest.param("trunc.pt", b"PK\x03", "trunc.pt", marks=needs_torch),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ConversionError, match=match):
        load_state_dict(tmp_path / name)


@needs_torch
def test_non_tensor_entries_are_an_error(tmp_path):
    torch.save({"w": torch.ones(1), "lr": 0.1}, tmp_path / "mixed.bin")
    with pytest.raises(ConversionError, match=r"mixed.bin.*\['lr'\]"):
        load_state_dict(tmp_path / "mixed.bin")


def test_torch_file_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "w.bin").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ConversionError, match="w.bin: reading a PyTorch file needs torch"):
        load_state_dict(tmp_path / "w.bin")


def _write_index(path, name, weight_map):
    with open(path / name, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def test_sharded_safetensors_dir(tmp_path):
    want = _arrays()
    keys = sorted(want)
    shards = {
        "model-00001-of-00002.safetensors": keys[:1],
        "model-00002-of-00002.safetensors": keys[1:],
    }
    for shard, ks in shards.items():
        save_file({k: want[k] for k in ks}, str(tmp_path / shard))
    _write_index(
        tmp_path,
        "model.safetensors.index.json",
        {k: shard for shard, ks in shards.items() for k in ks},
    )
    _assert_same(load_state_dict(tmp_path), want)


@needs_torch
def test_sharded_bin_dir_and_inconsistent_index(tmp_path):
    want = _arrays()
    keys = sorted(want)
    shards = {
        "pytorch_model-00001-of-00002.bin": keys[:2],
        "pytorch_model-00002-of-00002.bin": keys[2:],
    }
    for shard, ks in shards.items():
        torch.save({k: torch.from_numpy(want[k]) for k in ks}, tmp_path / shard)
    weight_map = {k: shard for shard, ks in shards.items() for k in ks}
    _write_index(tmp_path, "pytorch_model.bin.index.json", weight_map)
    _assert_same(load_state_dict(tmp_path), want)
    weight_map["ghost"] = weight_map[keys[0]]
    _write_index(tmp_path, "pytorch_model.bin.index.json", weight_map)
    with pytest.raises(ConversionError, match="ghost"):
        load_state_dict(tmp_path)


def test_single_file_dir_and_empty_dir(tmp_path):
    want = _arrays()
    save_file(want, str(tmp_path / "model.safetensors"))
    _assert_same(load_state_dict(tmp_path), want)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="empty"):
        load_state_dict(tmp_path / "empty")


# ----------------------------------------------------------------------------- layouts


@needs_torch
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_kernel_matches_torch_conv(nd):
    rng = np.random.default_rng(nd)
    w = rng.normal(size=(5, 3) + (3,) * nd).astype(np.float32)
    x = rng.normal(size=(2, 3) + (6,) * nd).astype(np.float32)
    conv = getattr(torch.nn.functional, f"conv{nd}d")
    want = conv(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    x_cl = np.moveaxis(x, 1, -1)
    spatial = "DHW"[3 - nd :]
    got = jax.lax.conv_general_dilated(
        x_cl,
        conv_kernel(w),
        (1,) * nd,
        [(1, 1)] * nd,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), want, atol=1e-5)


@needs_torch
def test_conv_kernel_depth_last():
    """A torch conv over (B, C, H, W, D) equals radjax's over (B, D, H, W, C)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2, 3, 5, 1)).astype(np.float32)  # (O, I, kH, kW, kD)
    x = rng.normal(size=(1, 2, 6, 7, 4)).astype(np.float32)  # (B, C, H, W, D)
    want = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    kernel = conv_kernel(w, depth_last=True)
    assert kernel.shape == (1, 3, 5, 2, 4)
    got = jax.lax.conv_general_dilated(
        np.transpose(x, (0, 4, 2, 3, 1)),
        kernel,
        (1, 1, 1),
        "VALID",
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 4, 2, 3, 1)), want, atol=1e-5)


def test_linear_kernel_and_bad_ranks():
    w = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(np.ones((1, 3)) @ linear_kernel(w), np.ones((1, 3)) @ w.T)
    with pytest.raises(ConversionError):
        linear_kernel(np.ones(3))
    with pytest.raises(ConversionError):
        conv_kernel(np.ones((2, 2)))


# ----------------------------------------------------------------------------- assign


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.blocks = nnx.List([nnx.Linear(3, 4, rngs=rngs)])
        self.bn = nnx.BatchNorm(4, rngs=rngs)


def _net_values():
    rng = np.random.default_rng(0)
    shapes = {
        "blocks/0/kernel": (3, 4),
        "blocks/0/bias": (4,),
        "bn/scale": (4,),
        "bn/bias": (4,),
        "bn/mean": (4,),
        "bn/var": (4,),
    }
    return {k: rng.normal(size=s) for k, s in shapes.items()}  # f64: assign casts to f32


def test_assign_writes_in_place():
    model, values = _Net(nnx.Rngs(0)), _net_values()
    assign(model, values)
    assert model.blocks[0].kernel.get_value().dtype == jnp.float32
    np.testing.assert_allclose(model.bn.var.get_value(), values["bn/var"], rtol=1e-6)
    np.testing.assert_allclose(
        model.blocks[0].kernel.get_value(), values["blocks/0/kernel"], rtol=1e-6
    )


def test_assign_reports_missing_unexpected_and_shapes():
    model, values = _Net(nnx.Rngs(0)), _net_values()
    before = np.asarray(model.bn.scale.get_value())
    del values["bn/mean"]
    values["blocks/0/kernel"] = np.zeros((4, 3))
    values["head/kernel"] = np.zeros((2, 2))
    with pytest.raises(ConversionError) as e:
        assign(model, values)
    msg = str(e.value)
    assert "missing (1)" in msg and "bn/mean (4,)" in msg
    assert "unexpected (1)" in msg and "head/kernel (2, 2)" in msg
    assert "blocks/0/kernel: checkpoint (4, 3) != model (3, 4)" in msg
    np.testing.assert_array_equal(model.bn.scale.get_value(), before)  # nothing written


def test_assign_non_strict_allows_partial():
    model = _Net(nnx.Rngs(0))
    assign(model, {"bn/mean": np.full(4, 2.0)}, strict=False)
    np.testing.assert_array_equal(model.bn.mean.get_value(), np.full(4, 2.0))
    with pytest.raises(ConversionError, match="unexpected"):
        assign(model, {"nope": np.zeros(1)}, strict=False)


def test_assign_keeps_sharding():
    model = _Net(nnx.Rngs(0))
    kernel = model.blocks[0].kernel
    placed = NamedSharding(make_mesh({"data": 2, "fsdp": 4}), P(None, "fsdp"))
    kernel.set_value(jax.device_put(kernel.get_value(), placed))
    assign(model, _net_values())
    assert kernel.get_value().sharding == placed
