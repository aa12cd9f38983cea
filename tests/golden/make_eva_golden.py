"""Golden outputs of the ORIGINAL EVA ViT-g of Uni-Med (``uni_med/models/eva_vit.py``), for
``tests/models/test_eva_vit.py``.

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_eva_golden.py --uni_med_repo /tmp/uni_med --out tests/golden/data

``--uni_med_repo`` is a checkout (or ``git archive``) of MSIIP/Uni-Med at commit
5c902a5fecbd1688cdabeb84e11fcf57eaddfa38; only ``uni_med/models/eva_vit.py`` and
``uni_med/models/base_model.py`` are read. Needs torch and numpy only.

What is taken from the original, unchanged:

* ``create_eva_vit_g(224, 0, True, 'fp16')`` (the call ``BaseModel.init_vision_encoder``
  makes with Uni-Med's config) is run with ``VisionTransformer`` swapped for a recorder, so
  the constructor arguments of the paper tower (patch 14, width 1408, depth 39, 1408 // 88
  heads, mlp_ratio 4.3637, qkv_bias, ``LayerNorm(eps=1e-6)``, ...) come from the original
  code, not from us. The recorder stops the call before it downloads ``eva_vit_g.pth``.
* The paper tower is then built from those arguments with its parameters on torch's
  ``meta`` device (shapes, no memory) to count its parameters and read its MLP width.
* The tiny tower is ``VisionTransformer`` with the same arguments except ``img_size`` 28,
  ``embed_dim`` 48, ``depth`` 2, ``num_heads`` 4, ``mlp_ratio`` 2 and no checkpointing.
* ``ln_vision``: the class ``LayerNorm`` of ``base_model.py`` (the fp16-safe subclass of
  ``nn.LayerNorm``) is cut out of that file with ``ast`` and executed alone (the module
  imports omegaconf, transformers and peft at the top), then built as
  ``init_vision_encoder`` builds it: ``LayerNorm(visual_encoder.num_features)``, fresh.

What is replaced (``eva_vit.py`` imports them at the top):

* ``timm.models.layers`` (timm 0.6.13 is pinned; not installed here): ``to_2tuple`` (n ->
  (n, n)), ``trunc_normal_`` (= ``torch.nn.init.trunc_normal_``, which timm's is a copy of;
  init only, the weights are saved anyway) and ``drop_path`` (identity in eval mode, as
  timm's; it raises in training). With ``drop_path_rate=0`` no ``DropPath`` is even built.
* ``uni_med.common.dist_utils.download_cached_file`` (imports ``timm.models.hub``): raises;
  it is never reached.

After construction (seed 0), every 1-D parameter (norm gains and biases, ``q_bias``,
``v_bias``, linear biases), ``cls_token`` and ``pos_embed`` get N(0, 0.1) noise, so a
misplaced bias, norm or position shows in the outputs. Eval mode, f32, ``torch.no_grad``.

Keys of ``eva_vit.npz``: ``sd/<original state-dict key>``; ``in/image`` (2, 3, 28, 28)
(B, C, H, W); ``out/tokens`` (2, 5, 48), the tower's output (the raw output of the last
block, CLS first; there is no final norm); ``out/ln_vision`` (2, 5, 48), ``ln_vision`` of
it; ``mid/patch_embed`` (2, 4, 48), ``mid/blocks/<i>`` each block's output; ``meta/repo``,
``meta/commit``, ``meta/config`` (JSON: the tiny tower's constructor arguments, the norm
as ``norm_eps``), ``meta/paper_config`` (JSON, the same for ``create_eva_vit_g``),
``meta/paper_param_count``, ``meta/paper_mlp_dim``, ``meta/ln_vision_eps``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch
from torch import nn

REPO = "MSIIP/Uni-Med"
COMMIT = "5c902a5fecbd1688cdabeb84e11fcf57eaddfa38"
TINY = dict(img_size=28, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, use_checkpoint=False)
BATCH = 2
NOISE = 0.1


def _commit(repo: str) -> str:
    """HEAD of ``repo`` when it is a git work tree, else the pin."""
    try:
        return subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return COMMIT


def _drop_path(x, drop_prob: float = 0.0, training: bool = False):
    if drop_prob == 0.0 or not training:
        return x
    raise NotImplementedError("the golden outputs are made in eval mode")


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _no_download(*args, **kwargs):
    raise RuntimeError("download_cached_file is not used by the golden outputs")


def _stub_modules() -> None:
    """The two imports of eva_vit.py that are not torch (see the module docstring)."""
    layers = types.ModuleType("timm.models.layers")
    layers.drop_path, layers.to_2tuple = _drop_path, _to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    dist_utils = types.ModuleType("uni_med.common.dist_utils")
    dist_utils.download_cached_file = _no_download
    for name, module in {
        "timm": types.ModuleType("timm"),
        "timm.models": types.ModuleType("timm.models"),
        "timm.models.layers": layers,
        "uni_med": types.ModuleType("uni_med"),
        "uni_med.common": types.ModuleType("uni_med.common"),
        "uni_med.common.dist_utils": dist_utils,
    }.items():
        sys.modules.setdefault(name, module)


def load_eva_vit(repo: str) -> types.ModuleType:
    """``uni_med/models/eva_vit.py`` of the checkout, imported as a module."""
    _stub_modules()
    path = os.path.join(repo, "uni_med", "models", "eva_vit.py")
    spec = importlib.util.spec_from_file_location("uni_med_eva_vit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_ln_vision_class(repo: str) -> type[nn.LayerNorm]:
    """The class ``LayerNorm`` of ``uni_med/models/base_model.py``, executed alone."""
    path = os.path.join(repo, "uni_med", "models", "base_model.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LayerNorm"]
    namespace = {"torch": torch, "nn": nn}
    exec(compile(ast.Module([cls], type_ignores=[]), path, "exec"), namespace)
    return namespace["LayerNorm"]


class _Captured(Exception):
    pass


def paper_kwargs(eva: types.ModuleType) -> dict:
    """The ``VisionTransformer`` arguments of ``create_eva_vit_g`` as Uni-Med calls it."""
    captured = {}

    def record(**kwargs):
        captured.update(kwargs)
        raise _Captured

    original = eva.VisionTransformer
    eva.VisionTransformer = record
    try:
        # BaseModel.init_vision_encoder(img_size 224, drop_path_rate 0,
        # use_grad_checkpoint True, precision fp16) (train_configs/uni_med.yaml)
        eva.create_eva_vit_g(224, 0, True, "fp16")
    except _Captured:
        pass
    finally:
        eva.VisionTransformer = original
    if not captured:
        raise RuntimeError("create_eva_vit_g did not build a VisionTransformer")
    return captured


def _jsonable(kwargs: dict) -> dict:
    out = {}
    for key, value in kwargs.items():
        if key == "norm_layer":
            if not (isinstance(value, functools.partial) and value.func is nn.LayerNorm):
                raise RuntimeError(f"unexpected norm_layer {value!r}")
            out["norm_eps"] = value.keywords["eps"]
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def _params_on_meta():
    """Parameters registered inside are moved to the ``meta`` device (shapes, no memory);
    the rest of the constructor (``torch.linspace(...).item()``) runs as usual."""
    register = nn.Module.register_parameter

    def on_meta(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _perturb(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name in ("cls_token", "pos_embed"):
                p.add_(NOISE * torch.randn(p.shape, generator=generator))


def make(repo: str, out_dir: str) -> str:
    eva = load_eva_vit(repo)
    paper = paper_kwargs(eva)
    with _params_on_meta():
        big = eva.VisionTransformer(**paper)
    paper_count = sum(p.numel() for p in big.parameters())
    paper_mlp = big.blocks[0].mlp.fc1.out_features

    torch.manual_seed(0)
    tiny_kwargs = paper | TINY
    model = eva.VisionTransformer(**tiny_kwargs).eval()
    generator = torch.Generator().manual_seed(0)
    _perturb(model, generator)
    ln_vision = load_ln_vision_class(repo)(model.num_features).eval()

    mids = {}
    hooks = [
        model.patch_embed.register_forward_hook(
            lambda m, i, o: mids.__setitem__("mid/patch_embed", o)
        )
    ]
    for index, block in enumerate(model.blocks):
        hooks.append(
            block.register_forward_hook(
                lambda m, i, o, index=index: mids.__setitem__(f"mid/blocks/{index}", o)
            )
        )
    size = tiny_kwargs["img_size"]
    image = torch.randn((BATCH, 3, size, size), generator=generator)
    with torch.no_grad():
        tokens = model(image)
        normed = ln_vision(tokens)
    for hook in hooks:
        hook.remove()

    arrays = {f"sd/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    arrays["in/image"] = image.numpy()
    arrays["out/tokens"] = tokens.numpy()
    arrays["out/ln_vision"] = normed.numpy()
    arrays.update({k: v.detach().numpy() for k, v in mids.items()})
    arrays["meta/repo"] = np.array(REPO)
    arrays["meta/commit"] = np.array(_commit(repo))
    arrays["meta/config"] = np.array(json.dumps(_jsonable(tiny_kwargs), sort_keys=True))
    arrays["meta/paper_config"] = np.array(json.dumps(_jsonable(paper), sort_keys=True))
    arrays["meta/paper_param_count"] = np.array(paper_count, np.int64)
    arrays["meta/paper_mlp_dim"] = np.array(paper_mlp, np.int64)
    arrays["meta/ln_vision_eps"] = np.array(ln_vision.eps, np.float64)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "eva_vit.npz")
    np.savez_compressed(path, **arrays)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uni_med_repo", default="/tmp/s3/src")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
    args = parser.parse_args()
    path = make(args.uni_med_repo, args.out)
    with np.load(path) as z:
        print(path, f"{os.path.getsize(path) / 1024:.0f} KiB")
        for key in ("meta/paper_config", "meta/paper_param_count", "meta/paper_mlp_dim"):
            print(key, z[key])


if __name__ == "__main__":
    main()
