"""Golden outputs of the ORIGINAL segment-anything image encoder (``ImageEncoderViT``), for
radjax's parity tests (``tests/models/test_sam_image_encoder.py``).

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_sam_encoder_golden.py --sam_repo /tmp/src/sam \
        --out tests/golden/data

``--sam_repo`` is a checkout of facebookresearch/segment-anything at commit
dca509fe793f601edb92606367a655c15ac00fdf (only ``segment_anything/`` is read). Needs torch and
numpy only. ``segment_anything/__init__.py`` imports the automatic mask generator, which needs
torchvision; the package is therefore a bare namespace over the checkout in ``sys.modules``,
so its ``__init__`` does not run, and ``segment_anything.modeling`` (torch only) and
``segment_anything.build_sam`` are imported from it unchanged.

Cases (``ImageEncoderViT`` built by the original class, f32, eval mode, ``torch.no_grad``,
2 seeded N(0, 1) images):

- ``pad``: image 64, patch 8 (an 8 x 8 map), width 32, depth 4, 4 heads, MLP ratio 4, out 16,
  window 3 (the map is padded to 9 x 9: not a multiple of the window, as SAM's 64 x 64 map
  with window 14), global blocks (1, 3), relative positions, q/k/v bias, LayerNorm eps 1e-6
  (``build_sam``'s arguments otherwise).
- ``plain``: image 32, patch 4 (8 x 8), width 24, depth 2, 3 heads, MLP ratio 2.5 (60),
  out 8, window 4 (no padding), global block (1,), no relative positions, no q/k/v bias.

After construction every 1-D parameter (norm gains, biases) gets N(0, 0.1) noise, and
``pos_embed`` and the ``rel_pos_h`` / ``rel_pos_w`` tables (zero-initialised by the original)
are drawn N(0, 0.5), so that a swapped norm, table or axis shows in the outputs.

``get_rel_pos`` (the original function) on random (L, 4) tables for (q_size, k_size, L) in
``REL_POS_CASES``: a fitting table, tables resized by its linear interpolation (shorter and
longer than 2 max(q, k) - 1), and q != k sizes (coordinate scaling). Inside the encoder
neither happens (its tables always fit), so they are recorded on the function.

ViT-B / L / H: ``build_sam.sam_model_registry[name]()`` built on torch's ``meta`` device
(nothing allocated): the image encoder's parameter count and its state-dict shapes.

Keys: ``<case>/sd/<ImageEncoderViT state-dict key>``, ``<case>/in/pixels`` (B, 3, H, W),
``<case>/out/embeddings`` (B, out, h, w), ``<case>/mid/patch_embed`` (B, h, w, width: the
PatchEmbed output), ``<case>/mid/blocks/<i>`` (B, h, w, width: each block's output, forward
hooks), ``relpos/<q>_<k>_<L>/{table, out}``, ``meta/{repo, commit, config}`` (config is JSON:
each case's arguments), ``meta/<name>/{param_count, shapes}`` (shapes is JSON, keys with the
``image_encoder.`` prefix of a SAM checkpoint).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

SAM_COMMIT = "dca509fe793f601edb92606367a655c15ac00fdf"
REPO = "facebookresearch/segment-anything"
BATCH = 2
CASES = {
    "pad": dict(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=4,
        num_heads=4,
        mlp_ratio=4.0,
        out_chans=16,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=3,
        global_attn_indexes=(1, 3),
    ),
    "plain": dict(
        img_size=32,
        patch_size=4,
        embed_dim=24,
        depth=2,
        num_heads=3,
        mlp_ratio=2.5,
        out_chans=8,
        qkv_bias=False,
        use_rel_pos=False,
        window_size=4,
        global_attn_indexes=(1,),
    ),
}
REL_POS_CASES = ((3, 3, 5), (3, 3, 9), (4, 4, 3), (3, 5, 7), (5, 3, 9), (2, 6, 11), (6, 4, 5))
NAMES = ("vit_b", "vit_l", "vit_h")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _commit(repo: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def import_sam(repo: str) -> types.SimpleNamespace:
    """``segment_anything.modeling.image_encoder`` and ``segment_anything.build_sam`` from
    the checkout, the top package a bare namespace (its ``__init__`` needs torchvision)."""
    package = types.ModuleType("segment_anything")
    package.__path__ = [os.path.join(repo, "segment_anything")]
    sys.modules["segment_anything"] = package
    return types.SimpleNamespace(
        image_encoder=importlib.import_module("segment_anything.modeling.image_encoder"),
        build_sam=importlib.import_module("segment_anything.build_sam"),
    )


def build(sam, seed: int, args: dict) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = sam.image_encoder.ImageEncoderViT(
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), **args
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def run_case(sam, name: str, args: dict, seed: int) -> dict[str, np.ndarray]:
    model = build(sam, seed, args)
    out = {f"{name}/sd/{k}": _np(v) for k, v in model.state_dict().items()}
    mids: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(_module, _inputs, output):
            mids[key] = output

        return hook

    model.patch_embed.register_forward_hook(keep("patch_embed"))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(keep(f"blocks/{i}"))
    size = args["img_size"]
    pixels = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        embeddings = model(pixels)
    out[f"{name}/in/pixels"] = _np(pixels)
    out[f"{name}/out/embeddings"] = _np(embeddings)
    out |= {f"{name}/mid/{k}": _np(v) for k, v in mids.items()}
    return out


def rel_pos_cases(sam) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(7)
    out = {}
    for q, k, length in REL_POS_CASES:
        table = torch.randn(length, 4, generator=gen)
        got = sam.image_encoder.get_rel_pos(q, k, table)
        out[f"relpos/{q}_{k}_{length}/table"] = _np(table)
        out[f"relpos/{q}_{k}_{length}/out"] = _np(got)
    return out


def paper_encoders(sam) -> dict[str, np.ndarray]:
    out = {}
    for name in NAMES:
        with torch.device("meta"):
            encoder = sam.build_sam.sam_model_registry[name]().image_encoder
        shapes = {f"image_encoder.{k}": list(v.shape) for k, v in encoder.state_dict().items()}
        out[f"meta/{name}/param_count"] = np.asarray(sum(p.numel() for p in encoder.parameters()))
        out[f"meta/{name}/shapes"] = np.asarray(json.dumps(shapes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam_repo", required=True)
    parser.add_argument("--out", default="tests/golden/data")
    flags = parser.parse_args()
    commit = _commit(flags.sam_repo) or SAM_COMMIT
    if commit != SAM_COMMIT:
        raise SystemExit(f"{flags.sam_repo} is at {commit}, expected {SAM_COMMIT}")
    sam = import_sam(flags.sam_repo)
    arrays: dict[str, np.ndarray] = {}
    for seed, (name, args) in enumerate(CASES.items()):
        arrays |= run_case(sam, name, args, 10 * seed)
    arrays |= rel_pos_cases(sam)
    arrays |= paper_encoders(sam)
    arrays["meta/repo"] = np.asarray(REPO)
    arrays["meta/commit"] = np.asarray(commit)
    arrays["meta/config"] = np.asarray(json.dumps(CASES))
    os.makedirs(flags.out, exist_ok=True)
    path = os.path.join(flags.out, "sam_image_encoder.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
