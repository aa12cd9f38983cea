"""Golden outputs of the ORIGINAL RP3D-Diag and RadFM code, for radjax's parity tests.

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_golden.py --rp3d_repo /tmp/rp3d --radfm_repo /tmp/radfm \
        --out tests/golden/data

``--rp3d_repo`` is a checkout of qiaoyu-zheng/RP3D-Diag at commit
7bdbbbb4a0fa07416e3751017190568b76588723, ``--radfm_repo`` one of chaoyi-wu/RadFM at commit
9efba84cced9ffdcbce00d6005f255414ffa8c36 (tests/golden/README.md says how to get them).
Needs torch, einops, einops-exts, monai, transformers, safetensors, tqdm, matplotlib, PIL.

The original modules are imported from the checkouts, built on small seeded configs (f32,
eval mode) and run on seeded random inputs under ``torch.no_grad``. Each ``.npz`` holds
``sd/<original state-dict key>``, ``in/<name>`` inputs, ``out/<name>`` outputs,
``mid/<name>`` intermediates (forward hooks on the original modules) and ``meta/{repo,
commit,config}`` strings. Where an original module needs something heavy or absent at
import or construction time, that one thing is replaced here, each place saying so.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch
from torch import nn

RP3D_COMMIT = "7bdbbbb4a0fa07416e3751017190568b76588723"
RADFM_COMMIT = "9efba84cced9ffdcbce00d6005f255414ffa8c36"

# RP3D-Diag: RadNet on 4x4 slices of a 16-d "trunk" (see _SliceFeatures).
RP3D = dict(hid_dim=16, depth=4, num_cls=6, height=4, width=4)
# RadFM: MyEmbedding with a 2-layer ViT and a 2-layer perceiver.
RADFM_VIT = dict(image_size=16, frames=16, depth=2, heads=2, dim_head=8, mlp_dim=48)
RADFM_PERCEIVER = dict(depth=2, heads=2, dim_head=8)
RADFM = dict(
    num_embeddings=10, embedding_dim=32, perceiver_num=4, vis_dim=24, patch_size=4,
    frame_patch_size=4,
)  # fmt: skip


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _commit(repo: str) -> str:
    """HEAD of ``repo`` when it is a git work tree, else '' (the caller uses the pin)."""
    try:
        return subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


class Recorder:
    """Collects module inputs / outputs under names through forward hooks."""

    def __init__(self):
        self.values: dict[str, np.ndarray] = {}
        self.handles = []

    def remove(self) -> None:
        """Detaches every hook this recorder registered."""
        for handle in self.handles:
            handle.remove()

    def _put(self, name: str, value) -> None:
        if isinstance(value, torch.Tensor):
            self.values[name] = _np(value)

    def outputs(self, module: nn.Module, name: str, names: tuple[str, ...]) -> None:
        """Records the module's output (a tensor, or a tuple named by ``names``)."""

        def hook(_, __, out):
            out = out if isinstance(out, tuple) else (out,)
            for n, v in zip(names, out):
                self._put(f"{name}/{n}", v)

        self.handles.append(module.register_forward_hook(hook))

    def inputs(self, module: nn.Module, name: str, names: tuple[str, ...]) -> None:
        """Records the module's positional inputs, named by ``names``."""

        def hook(_, args):
            for n, v in zip(names, args):
                self._put(f"{name}/{n}", v)

        self.handles.append(module.register_forward_pre_hook(hook))


def _perturb_vectors(model: nn.Module, seed: int) -> None:
    """Adds N(0, 0.1) noise to every 1-D parameter: norm gains and biases become non-trivial,
    so a swapped or unused-but-applied norm shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _save(path: str, sd: dict, inputs: dict, outputs: dict, mids: dict, meta: dict) -> None:
    arrays = {f"sd/{k}": _np(v) for k, v in sd.items()}
    arrays |= {f"in/{k}": np.asarray(v) for k, v in inputs.items()}
    arrays |= {f"out/{k}": np.asarray(v) for k, v in outputs.items()}
    arrays |= {f"mid/{k}": v for k, v in mids.items()}
    arrays |= {f"meta/{k}": np.array(v) for k, v in meta.items()}
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(arrays)} arrays, {os.path.getsize(path) / 1024:.0f} KiB")


# ---------------------------------------------------------------- RP3D-Diag


class _SliceFeatures(nn.Module):
    """Stands in for ``resnet2D.resnet50_2D``: (N, 3, H, W) -> {"x": (N, H*W)}, the first
    channel flattened row-major. The real trunk needs torchvision and its ImageNet download
    (and its 23M parameters do not fit a golden file); radjax's trunk converter is tested
    apart. Parameter-free, so the state dict has no ``resnet2D.*`` keys."""

    def forward(self, x):
        return {"x": x[:, 0].flatten(1)}


def _import_rp3d(repo: str):
    """``modelRadNet`` from the checkout, with ``resnet2D`` stubbed in sys.modules (it imports
    torchvision at import time, which radjax's environment lacks)."""
    train = os.path.join(repo, "src", "Train")
    sys.path[:0] = [train, os.path.join(train, "Model")]
    stub = types.ModuleType("resnet2D")
    stub.resnet50_2D = stub.resnet34_2D = lambda **_: _SliceFeatures()
    stub.ResNet50_Weights = stub.ResNet34_Weights = types.SimpleNamespace(DEFAULT=None)
    sys.modules["resnet2D"] = stub
    import modelRadNet
    import vitFuse

    # RadNet builds vitFuse with hid_dim=2048 fixed (modelRadNet.py:83); shrink it to ours.
    modelRadNet.vitFuse = lambda **kw: vitFuse.vitFuse(**{**kw, "hid_dim": RP3D["hid_dim"]})
    return modelRadNet


def _rp3d_inputs(fuse: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The original's layouts: late image_x (B, 1, H, W, D), marks (B, D); early image_x
    (B, N, 1, H, W, D), marks (B, N, D), mods (B, N) with 0 = padding scan."""
    d, h, w, c = RP3D["depth"], RP3D["height"], RP3D["width"], RP3D["num_cls"]
    if fuse == "late":
        slices = torch.tensor([[3], [4]])  # real slices per scan
        mods = torch.tensor([[2], [5]])
        keys = torch.tensor([[1], [2]])
    else:
        slices = torch.tensor([[2, 4, 3], [4, 1, 0]])
        mods = torch.tensor([[1, 7, 4], [9, 3, 0]])
        keys = torch.tensor([[1, 3, 0], [2, 0, 0]])
    b, n = slices.shape
    marks = (torch.arange(d) < slices[..., None]).float()  # (B, N, D)
    images = torch.rand(b, n, 1, h, w, d, generator=g) * marks[:, :, None, None, None]
    labels = (torch.rand(b, c, generator=g) < 0.4).float()
    if fuse == "late":
        return dict(image_x=images[:, 0], mods=mods, marks=marks[:, 0], keys=keys, labels=labels)
    return dict(image_x=images, mods=mods, marks=marks, keys=keys, labels=labels)


def _rp3d_hooks(model: nn.Module, fuse: str) -> Recorder:
    rec = Recorder()
    parts = [("attention1D", model.attention1D)]
    if fuse == "early":
        parts.append(("vitFuse", model.vitFuse))
    for name, part in parts:
        rec.inputs(part, name, ("x", "marks" if name == "attention1D" else "mods"))
        rec.outputs(part, name, ("out", "attn", "score") if name == "attention1D" else ("out",))
        enc = part.transformer_encoder
        rec.inputs(enc, f"{name}/encoder", ("x", "mask"))
        rec.outputs(enc, f"{name}/encoder", ("out", "attn", "scores"))
        for i, layer in enumerate(enc.encoder.layers):
            rec.outputs(layer, f"{name}/encoder/layers/{i}", ("out", "attn", "scores"))
    return rec


def rp3d_golden(repo: str, out_dir: str, fuse: str, seed: int) -> None:
    """RadNet (``modelRadNet.py``) in ``fuse`` mode: logits, losses and every encoder's
    per-layer outputs, attention probabilities and raw scores."""
    modelRadNet = _import_rp3d(repo)
    torch.manual_seed(seed)
    cfg = dict(
        num_cls=RP3D["num_cls"], backbone="resnet", size=RP3D["height"], depth=RP3D["depth"],
        hid_dim=RP3D["hid_dim"], fuse=fuse, ke=False,
    )  # fmt: skip
    model = modelRadNet.RadNet(**cfg)
    _perturb_vectors(model, seed)
    model.eval()
    inputs = _rp3d_inputs(fuse, torch.Generator().manual_seed(seed))
    rec = _rp3d_hooks(model, fuse)
    with torch.no_grad():
        out = model(inputs["image_x"], inputs["mods"], inputs["marks"], inputs["keys"],
                    inputs["labels"])  # fmt: skip
    outputs = {k: _np(out[k]) for k in ("logits", "loss", "loss_attn", "loss_cls")}
    _save(
        os.path.join(out_dir, f"rp3d_{fuse}.npz"),
        model.state_dict(),
        {k: _np(v) for k, v in inputs.items()},
        outputs,
        rec.values,
        dict(
            repo="qiaoyu-zheng/RP3D-Diag",
            commit=_commit(repo) or RP3D_COMMIT,
            config=json.dumps(cfg | {"image": [RP3D["height"], RP3D["width"]], "seed": seed}),
        ),
    )


# ---------------------------------------------------------------- RadFM


class _NoHub:
    """Stands in for transformers' AutoTokenizer / AutoModel inside ``my_embedding_layer``:
    ``MyEmbedding.__init__`` downloads Med-KEBERT (my_embedding_layer.py:50-51), which only the
    keyword-matching branch uses; that branch does not run without ``key_words_query``."""

    @staticmethod
    def from_pretrained(*_, **__):
        return None


def _import_radfm(repo: str):
    """``Model.RadFM.my_embedding_layer`` from the checkout. ``torchvision`` is stubbed in
    sys.modules: my_embedding_layer.py and utils.py import it at import time, and nothing on
    the vision-token path uses it."""
    sys.path.insert(0, os.path.join(repo, "src"))
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.transforms", tv.transforms)
    from Model.RadFM import helpers, my_embedding_layer, transformer_decoder, vit_3d

    mel = my_embedding_layer
    mel.AutoTokenizer = mel.AutoModel = _NoHub
    # MyEmbedding fixes the ViT (512^3 input, 12 layers), the perceiver (6 layers) and the
    # unused decoder's 2048-wide feed-forward (my_embedding_layer.py:56-81, 93); shrink them.
    mel.ViT = lambda **kw: vit_3d.ViT(**{**kw, **RADFM_VIT})
    mel.PerceiverResampler = functools.partial(helpers.PerceiverResampler, **RADFM_PERCEIVER)
    mel.TransformerDecoderLayer = functools.partial(
        transformer_decoder.TransformerDecoderLayer, dim_feedforward=8
    )
    return mel


def _radfm_hooks(emb: nn.Module) -> Recorder:
    rec = Recorder()
    vit = emb.vision_encoder
    rec.outputs(vit.to_patch_embedding, "vit/patch_embed", ("out",))
    rec.outputs(vit, "vit", ("out", "pos"))
    for i, (attn, _) in enumerate(vit.transformer.layers):
        rec.inputs(attn, f"vit/layers/{i}", ("in",))
        rec.outputs(attn.fn.attend, f"vit/layers/{i}/attn", ("probs",))
    for i, (attn, _) in enumerate(emb.perceiver.layers):
        rec.inputs(attn, f"perceiver/layers/{i}", ("media", "latents_in"))
    rec.inputs(emb.perceiver, "perceiver", ("in",))
    rec.outputs(emb.perceiver, "perceiver", ("out",))
    rec.outputs(emb.fc, "fc", ("out",))
    return rec


def _radfm_run(emb: nn.Module, vision_x: torch.Tensor, text: torch.Tensor) -> dict:
    rec = _radfm_hooks(emb)
    with torch.no_grad():
        out, loss_matching = emb(text, vision_x)
    rec.remove()
    assert loss_matching is None
    b, s = vision_x.shape[:2]
    tokens = rec.values.pop("fc/out").reshape(b, s * RADFM["perceiver_num"], -1)
    return dict(embeddings=_np(out), vision_tokens=tokens), rec.values


# MyEmbedding's branches that the 'Text' path without key words never runs.
RADFM_UNUSED = (
    "bert_projection_fc.", "transformer_decoder.", "transformer_decoder_mlp.", "cls_head.",
    "output_upscaling.",
)  # fmt: skip


def _zero_unused(emb: nn.Module) -> None:
    """Zeros the never-run branches' tensors (they keep their keys and shapes): the file stays
    small (bert_projection_fc alone is 768 wide)."""
    with torch.no_grad():
        for key, value in emb.state_dict().items():
            if key.startswith(RADFM_UNUSED) and value.is_floating_point():
                value.zero_()


def radfm_golden(repo: str, out_dir: str, seed: int) -> None:
    """MyEmbedding (``my_embedding_layer.py``), 'Text' mode: images -> vision tokens, and the
    token embeddings of ids that address text rows, figure tokens and vision tokens."""
    mel = _import_radfm(repo)
    torch.manual_seed(seed)
    emb = mel.MyEmbedding(**RADFM)
    _perturb_vectors(emb, seed)
    _zero_unused(emb)
    emb.eval()
    g = torch.Generator().manual_seed(seed)
    v, n = RADFM["num_embeddings"], RADFM["perceiver_num"]
    # (B, S, C, H, W, D) on 4-entry tables: rows 0-3, columns and depths strided (1, 3)
    vision_x = torch.rand(1, 2, 3, 16, 8, 8, generator=g)
    text = torch.randint(0, v + 2 + 2 * n, (1, 12), generator=g)
    outputs, mids = _radfm_run(emb, vision_x, text)
    # a 2D image: the original's datasets resize (3, H, W, 1) to depth 4, nearest
    image_2d = torch.rand(1, 2, 3, 16, 16, 1, generator=g)
    volume = nn.functional.interpolate(image_2d.flatten(0, 1), size=(16, 16, 4))[None]
    outputs_2d, _ = _radfm_run(emb, volume, text)
    outputs |= {f"2d/{k}": w for k, w in outputs_2d.items()}
    _save(
        os.path.join(out_dir, "radfm_vision.npz"),
        emb.state_dict(),
        dict(vision_x=_np(vision_x), text_input=_np(text), image_2d=_np(image_2d)),
        outputs,
        mids,
        dict(
            repo="chaoyi-wu/RadFM",
            commit=_commit(repo) or RADFM_COMMIT,
            config=json.dumps(
                dict(embedding=RADFM, vit=RADFM_VIT, perceiver=RADFM_PERCEIVER, seed=seed)
            ),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rp3d_repo", required=True)
    parser.add_argument("--radfm_repo", required=True)
    parser.add_argument("--out", default="tests/golden/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    for fuse in ("late", "early"):
        rp3d_golden(args.rp3d_repo, args.out, fuse, args.seed)
    radfm_golden(args.radfm_repo, args.out, args.seed)


if __name__ == "__main__":
    main()
