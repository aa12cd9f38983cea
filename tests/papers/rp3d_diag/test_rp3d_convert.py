"""Released RadDiag checkpoint import: the original's state dict (golden file of
``modelRadNet.RadNet``, tests/golden) plus a torchvision-named trunk is saved as the HF
Trainer does (``pytorch_model.bin`` / ``model.safetensors``) and loaded with
``convert.load_released``. Logit parity with the original is test_rp3d_golden.py."""

import jax
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.resnet import from_torchvision
from radjax.convert.torch_io import ConversionError
from radjax.papers.rp3d_diag import convert as convert
from radjax.papers.rp3d_diag import model as rp3d_diag
from tests.papers.rp3d_diag.test_rp3d_golden import (
    FirstChannel,
    batch,
    golden_config,
    load,
    state_dict,
)
from tests.parity import rel_err

TEXT_DIM = 12


def _torch_resnet(width: int):
    """A torchvision-named ResNet with one basic block per stage: only its state dict (the
    checkpoint's key names and shapes) is used, so it stays with this test."""
    from torch import nn

    class TorchBasicBlock(nn.Module):
        """torchvision's basic block, with its attribute names."""

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = (
                nn.Conv2d(planes, planes, 3, 1, 1, bias=False),
                nn.BatchNorm2d(planes),
            )
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                if stride != 1 or cin != planes
                else None
            )

    class TorchResNet(nn.Module):
        """torchvision-named ResNet with one basic block per stage (its state dict only)."""

        def __init__(self, width):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            cin = width
            for i in range(4):
                planes = width * 2**i
                block = TorchBasicBlock(cin, planes, 1 if i == 0 else 2)
                setattr(self, f"layer{i + 1}", nn.Sequential(block))
                cin = planes
            self.fc = nn.Linear(cin, 1000)  # in the checkpoint, unused
            self.out_features = cin

    return TorchResNet(width)


def _trunk_state(width: int) -> dict[str, np.ndarray]:
    """A torchvision-named ResNet state dict under ``resnet2D.``."""
    import torch

    torch.manual_seed(0)
    trunk = _torch_resnet(width)
    for m in trunk.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_var, 0.5, 1.5)
    return {f"resnet2D.{k}": v.detach().numpy() for k, v in trunk.state_dict().items()}


def _config(fusion: str, ke: bool = False):
    c = golden_config(load(fusion), fusion)
    c.model.ke.enabled = ke
    return c


def _checkpoint(fusion: str) -> dict[str, np.ndarray]:
    return state_dict(load(fusion)) | _trunk_state(2)


def _trunk_values(model) -> dict[str, np.ndarray]:
    return {
        "/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.state(model.trunk).flat_state()
    }


def _golden_logits_with_stand_in_trunk(model, fusion: str) -> float:
    """Swaps in the golden's trunk stand-in and returns the logits' relative error."""
    golden = load(fusion)
    model.trunk = FirstChannel()
    b = batch(golden, fusion)
    graphdef, state = nnx.split(model)
    logits, _ = jax.jit(lambda s: nnx.merge(graphdef, s)(b["images"], b["marks"], b["mods"]))(state)
    return rel_err(logits, golden["out/logits"])


def test_late_fusion_bin_checkpoint_loads_every_part(torch, tmp_path):
    sd = _checkpoint("late")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    model = convert.load_released(tmp_path, _config("late"))
    want = from_torchvision(sd, "resnet2D.")
    got = _trunk_values(model)
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert _golden_logits_with_stand_in_trunk(model, "late") < 1e-5


def test_early_fusion_knowledge_safetensors_checkpoint(torch, tmp_path):
    from safetensors.numpy import save_file

    golden = load("early")
    r = np.random.default_rng(1)
    emb = r.normal(size=(golden["out/logits"].shape[1], TEXT_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    dim = golden["mid/vitFuse/out"].shape[1]
    fcke_w = r.normal(size=(dim, TEXT_DIM)).astype(np.float32) * 0.3
    fcke_b = r.normal(size=(dim,)).astype(np.float32) * 0.1
    sd = {k: v for k, v in _checkpoint("early").items() if not k.startswith("fc.")}
    sd |= {"fcke.weight": fcke_w, "fcke.bias": fcke_b}
    save_file(sd, str(tmp_path / "model.safetensors"))
    model = convert.load_released(
        tmp_path / "model.safetensors", _config("early", ke=True), label_embeddings=emb
    )
    assert isinstance(model.head.label_embeddings, rp3d_diag.LabelEmbeddings)
    # the original's knowledge head: output_x @ fcke(embeds).T (modelRadNet.py:205-212)
    feat = golden["mid/vitFuse/out"]
    want = feat @ (emb @ fcke_w.T + fcke_b).T
    model.trunk = FirstChannel()
    b = batch(golden, "early")
    graphdef, state = nnx.split(model)
    got, _ = jax.jit(lambda s: nnx.merge(graphdef, s)(b["images"], b["marks"], b["mods"]))(state)
    assert rel_err(got, want) < 1e-5


def test_mismatched_checkpoint_is_refused(torch):
    sd = _checkpoint("early")
    with pytest.raises(ConversionError, match="vitFuse"):
        convert.from_released(sd, _config("late"))
    with pytest.raises(ConversionError, match="fcke"):
        convert.from_released(sd, _config("early", ke=True))
    with pytest.raises(ConversionError, match="unexpected_key"):
        convert.from_released(sd | {"unexpected_key": np.zeros(1)}, _config("early"))
    with pytest.raises(ConversionError, match="resnet2D"):
        convert.from_released(state_dict(load("early")), _config("early"))
