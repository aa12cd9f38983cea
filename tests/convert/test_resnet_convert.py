"""radjax.convert.resnet: parity with PyTorch references (transformers ResNetModel, a
torchvision-named state dict, RP3D-Diag v1's 3D ResNet and shared fuse encoder)."""

import functools
import re

import jax
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert import resnet as convert
from radjax.convert.torch_io import ConversionError, assign, load_state_dict
from radjax.models import resnet
from tests.parity import assert_close

TOL = 1e-5  # relative error (in norm: the helper this file had measured that), f32


def _randomise(module, seed=0):
    """Random BatchNorm affine parameters and running statistics, so eval-mode BN is exercised."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


def _numpy_sd(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _load(ctor, values):
    """Builds ``ctor()`` abstractly (no init compiles) and assigns converted weights, strictly."""
    model = nnx.eval_shape(ctor)
    assign(model, values)
    return model


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    model = nnx.merge(graphdef, state, copy=True)
    return model(x), nnx.state(model, nnx.BatchStat)


def _run(model, x, *, train=False):
    """Jitted forward; returns the output and the BatchNorm statistics after it."""
    model.train() if train else model.eval()
    graphdef, state = nnx.split(model)
    return _apply(graphdef, state, np.asarray(x))


def _nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


# ----------------------------------------------------------------------------- transformers


def _hf_model(layer_type):
    import torch
    import transformers

    width = 8
    expansion = 4 if layer_type == "bottleneck" else 1
    config = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=width,
        layer_type=layer_type,
        depths=(2, 1, 1, 1),
        hidden_sizes=tuple(width * expansion * 2**i for i in range(4)),
        downsample_in_bottleneck=False,
        downsample_in_first_stage=False,
    )
    torch.manual_seed(0)
    return _randomise(transformers.ResNetModel(config)).eval()


def _radjax_ctor(layer_type):
    return lambda: resnet.ResNet(block=layer_type, layers=(2, 1, 1, 1), width=8, rngs=nnx.Rngs(0))


def _images(seed=0):
    """(2, 3, 64, 64): the last stage sees 2x2 positions, so train-mode BatchNorm normalises
    over 8 values per channel (over 2, it is ill-conditioned enough to amplify rounding)."""
    return np.random.default_rng(seed).normal(size=(2, 3, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("layer_type", ["bottleneck", "basic"])
def test_hf_resnet_parity_eval_and_train(torch, transformers, layer_type):
    ref = _hf_model(layer_type)
    model = _load(_radjax_ctor(layer_type), convert.from_hf_resnet(_numpy_sd(ref)))
    x = _images()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).pooler_output.flatten(1).numpy()
    got, _ = _run(model, _nhwc(torch.from_numpy(x)))
    assert_close(got, want, TOL, norm=True)

    # train mode: batch statistics normalise, running statistics move (momentum 0.1)
    ref.train()
    bn = ref.embedder.embedder.normalization
    old_var = bn.running_var.clone()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).pooler_output.flatten(1).numpy()
    got, stats = _run(model, _nhwc(torch.from_numpy(x)), train=True)
    assert_close(got, want, TOL, norm=True)
    np.testing.assert_allclose(
        stats["bn1"]["mean"].get_value(), bn.running_mean.numpy(), rtol=1e-5, atol=1e-6
    )
    # flax uses the biased batch variance, PyTorch the unbiased one: n = B * 32 * 32 positions
    n = x.shape[0] * 32 * 32
    torch_batch_var = (bn.running_var - 0.9 * old_var).numpy() / 0.1
    want_var = 0.9 * old_var.numpy() + 0.1 * torch_batch_var * (n - 1) / n
    np.testing.assert_allclose(stats["bn1"]["var"].get_value(), want_var, rtol=1e-5)


# Independent of radjax.convert: HF ResNetModel name -> torchvision name.
_HF_TO_TV = [
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.",
    ),
]


def _torchvision_name(hf_key):
    for pattern, repl in _HF_TO_TV:
        new, n = re.subn(pattern, repl, hf_key)
        if n:
            return new
    raise AssertionError(hf_key)


def test_torchvision_checkpoint_file(torch, transformers, tmp_path):
    """A torchvision-named .pth (DDP prefix, wrapper, fc head, BN counters) converts exactly."""
    ref = _hf_model("bottleneck")
    sd = {f"module.{_torchvision_name(k)}": v for k, v in ref.state_dict().items()}
    assert any(k.endswith("num_batches_tracked") for k in sd)
    sd["module.fc.weight"], sd["module.fc.bias"] = torch.zeros(10, 256), torch.zeros(10)
    torch.save({"state_dict": sd, "epoch": 7}, tmp_path / "resnet.pth")

    values = convert.from_torchvision(load_state_dict(tmp_path / "resnet.pth"))
    model = _load(_radjax_ctor("bottleneck"), values)
    x = _images(seed=1)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).pooler_output.flatten(1).numpy()
    got, _ = _run(model, _nhwc(torch.from_numpy(x)))
    assert_close(got, want, TOL, norm=True)


def test_hf_prefix_and_classifier_model(torch, transformers):
    config = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=(8, 16, 32, 64),
        depths=(1, 1, 1, 1),
        layer_type="basic",
        num_labels=5,
    )
    clf = transformers.ResNetForImageClassification(config)
    values = convert.from_hf_resnet(_numpy_sd(clf), prefix="resnet.")
    reference = convert.from_hf_resnet(_numpy_sd(clf.resnet))
    assert values.keys() == reference.keys()
    assert "layer2/0/downsample/conv/kernel" in values
    assert "layer1/0/downsample/conv/kernel" not in values  # 8 -> 8 channels, stride 1
    with pytest.raises(ConversionError, match=r"not ResNet parameters: \[.resnet\.embedder"):
        convert.from_hf_resnet(_numpy_sd(clf))  # no prefix: the head is not a ResNet key
    with pytest.raises(ConversionError, match="no ResNet keys"):
        convert.from_hf_resnet(_numpy_sd(clf), prefix="vit.")


def test_wrong_architecture_is_a_clear_error(torch, transformers):
    values = convert.from_hf_resnet(_numpy_sd(_hf_model("basic")))
    model = nnx.eval_shape(
        lambda: resnet.ResNet(block="basic", layers=(1, 1, 1, 1), width=8, rngs=nnx.Rngs(0))
    )
    with pytest.raises(ConversionError, match=r"unexpected \(10\)[\s\S]*layer1/1/conv1/kernel"):
        assign(model, values)


# ----------------------------------------------------------------------------- RP3D-Diag v1


@pytest.mark.parametrize("depth", [16, 32])
def test_medicalnet_3d_parity(torch, depth):
    from tests.references.rp3d_resnet_torch import TorchMedicalNet3D

    torch.manual_seed(depth)
    ref = _randomise(TorchMedicalNet3D(depth, width=4)).eval()
    sd = {f"resnet3D.{k}": v for k, v in _numpy_sd(ref).items()}
    sd["resnet2D.conv1.weight"] = np.zeros((4, 3, 7, 7), np.float32)  # outside the prefix
    model = _load(
        lambda: resnet.ResNet3D(depth=depth, width=4, rngs=nnx.Rngs(0)),
        convert.from_medicalnet(sd, prefix="resnet3D."),
    )
    x = np.random.default_rng(depth).normal(size=(1, 3, 32, 32, depth)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x))
    got, _ = _run(model, np.transpose(x, (0, 4, 2, 3, 1)))  # (B, C, H, W, D) -> (B, D, H, W, C)
    assert got.shape == (1, 1, 1, 32)
    assert_close(got, _nhwc(want), TOL, norm=True)


def test_resnet_fuse_parity(torch):
    from tests.references.rp3d_resnet_torch import TorchFuse

    torch.manual_seed(0)
    ref = _randomise(TorchFuse(16, 16, 32, (2, 1, 1, 1))).eval()
    sd = {f"resnetFuse.{k}": v for k, v in _numpy_sd(ref).items()}
    model = _load(
        lambda: resnet.ResNetFuse(
            layers=(2, 1, 1, 1), in_channels=16, width=16, vis_dim=32, rngs=nnx.Rngs(0)
        ),
        convert.from_resnet_fuse(sd, prefix="resnetFuse."),
    )
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got, _ = _run(model, _nhwc(torch.from_numpy(x)))
    assert_close(got, want, TOL, norm=True)
