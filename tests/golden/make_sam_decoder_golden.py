"""Golden outputs of the ORIGINAL segment-anything prompt encoder and mask decoder, for radjax's
parity tests (tests/models/test_sam_decoder.py).

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_sam_decoder_golden.py --sam_repo /tmp/src/sam \
        --auxol_repo /tmp/src/auxol --out tests/golden/data

``--sam_repo`` is a checkout of facebookresearch/segment-anything at commit
dca509fe793f601edb92606367a655c15ac00fdf (only ``segment_anything/`` is read); only
``segment_anything/modeling/{prompt_encoder,mask_decoder,transformer,common}.py`` are
imported: the packages ``segment_anything`` and ``segment_anything.modeling`` are bare
namespaces over the checkout, so their ``__init__`` (which imports torchvision through
``build_sam`` / ``predictor``) does not run. Needs torch and numpy only.

``--auxol_repo`` (optional) is a checkout of qianxihaoyue/AuxOL at commit
3bc80097153d3be5ac54dae8932aef6af16cfb5e: its vendored ``SAM/segment_anything/modeling/
prompt_encoder.py`` builds ``get_dense_pe``'s grid with ``torch.range(0.5, 64, 1)`` (64 fixed)
instead of ``cumsum - 0.5``; the script runs both ``PositionEmbeddingRandom`` on a 64 x 64
grid with the same Gaussian matrix and records the largest difference in
``meta/auxol_dense_pe_64_max_abs_diff`` (0.0: the same numbers).

The modules are built as ``build_sam._build_sam`` builds them, at tiny sizes (``CONFIG``):
``PromptEncoder(embed_dim, image_embedding_size, input_image_size, mask_in_chans)`` and
``MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth, embed_dim,
mlp_dim, num_heads), transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim)``,
with torch's default initialisation, then every 1-D parameter gets N(0, 0.1) noise (so a
wrong or missing norm shows). f32, eval mode, ``torch.no_grad``. Each case runs the
predictor's path (``SamPredictor.predict_torch``): one image embedding (1, C, h, w) for B
prompts, ``prompt_encoder(points=(coords, labels) | None, boxes, masks)``, then
``mask_decoder(image_embeddings, get_dense_pe(), sparse, dense, multimask_output)``.

Keys: ``sd/<original state-dict key>`` (``prompt_encoder.*``, ``mask_decoder.*``),
``in/image_embeddings`` (1, C, h, w), ``in/<case>/{coords, labels, boxes, masks}`` (those the
case gives; the original's layouts), ``out/dense_pe`` (1, C, h, w), ``out/<case>/{sparse,
dense, masks, iou}``, ``meta/{repo, commit, config, auxol_dense_pe_64_max_abs_diff}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

SAM_COMMIT = "dca509fe793f601edb92606367a655c15ac00fdf"
AUXOL_COMMIT = "3bc80097153d3be5ac54dae8932aef6af16cfb5e"
CONFIG = dict(
    embed_dim=32, image_embedding_size=8, input_image_size=64, mask_in_chans=8, depth=2,
    mlp_dim=64, num_heads=4, iou_head_hidden_dim=16, prompts=2, num_points=3,
)  # fmt: skip
# case -> (points, boxes, masks, multimask_output)
CASES = {
    "points": (True, False, False, True),
    "box": (False, True, False, True),
    "points_box": (True, True, False, False),
    "mask_points": (True, False, True, False),
    "mask": (False, False, True, True),
    "empty": (False, False, False, True),
}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _commit(repo: str) -> str:
    """HEAD of ``repo`` when it is the top of a git work tree, else '' (the pin is used)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", repo, *argv], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(repo):
            return ""
        return git("rev-parse", "HEAD")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


def import_modeling(package_dir: str, name: str):
    """``<name>.modeling.{prompt_encoder, mask_decoder, transformer}`` from ``package_dir``
    (a ``segment_anything`` folder) with bare package modules, so no ``__init__`` runs."""
    modeling = os.path.join(package_dir, "modeling")
    if not os.path.isfile(os.path.join(modeling, "prompt_encoder.py")):
        raise SystemExit(f"{package_dir}: no modeling/prompt_encoder.py (segment_anything?)")
    for pkg, path in ((name, package_dir), (f"{name}.modeling", modeling)):
        mod = types.ModuleType(pkg)
        mod.__path__ = [path]
        sys.modules[pkg] = mod
    import importlib

    return types.SimpleNamespace(
        **{m: importlib.import_module(f"{name}.modeling.{m}") for m in ("prompt_encoder", "mask_decoder", "transformer")}
    )  # fmt: skip


def build(sam, seed: int):
    c = CONFIG
    torch.manual_seed(seed)
    grid = (c["image_embedding_size"],) * 2
    prompt_encoder = sam.prompt_encoder.PromptEncoder(
        embed_dim=c["embed_dim"],
        image_embedding_size=grid,
        input_image_size=(c["input_image_size"],) * 2,
        mask_in_chans=c["mask_in_chans"],
    )
    mask_decoder = sam.mask_decoder.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sam.transformer.TwoWayTransformer(
            depth=c["depth"],
            embedding_dim=c["embed_dim"],
            mlp_dim=c["mlp_dim"],
            num_heads=c["num_heads"],
        ),
        transformer_dim=c["embed_dim"],
        iou_head_depth=3,
        iou_head_hidden_dim=c["iou_head_hidden_dim"],
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in (prompt_encoder, mask_decoder):
            for p in module.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return prompt_encoder.eval(), mask_decoder.eval()


def inputs(case: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    c = CONFIG
    use_points, use_boxes, use_masks, _ = CASES[case]
    b, n, size = c["prompts"], c["num_points"], c["input_image_size"]
    out = {}
    if use_points:
        out["coords"] = torch.rand(b, n, 2, generator=g) * size
        # every row has a foreground point; the user-given -1 is a "not a point"
        out["labels"] = torch.tensor([[1, 0, -1], [1, 1, 0]])[:b, :n]
    if use_boxes:
        corner = torch.rand(b, 2, generator=g) * size / 2
        out["boxes"] = torch.cat([corner, corner + 4 + torch.rand(b, 2, generator=g) * size / 2], 1)
    if use_masks:
        mask = 4 * c["image_embedding_size"]
        out["masks"] = 3 * torch.randn(b, 1, mask, mask, generator=g)
    return out


def run(prompt_encoder, mask_decoder, image_embeddings, case, prompt):
    points = (prompt["coords"], prompt["labels"]) if "coords" in prompt else None
    sparse, dense = prompt_encoder(
        points=points, boxes=prompt.get("boxes"), masks=prompt.get("masks")
    )
    masks, iou = mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=CASES[case][3],
    )
    return dict(sparse=sparse, dense=dense, masks=masks, iou=iou)


def auxol_dense_pe_diff(auxol_repo: str, sam) -> float:
    """Largest |AuxOL - segment-anything| of PositionEmbeddingRandom on a 64 x 64 grid."""
    auxol = import_modeling(os.path.join(auxol_repo, "SAM", "segment_anything"), "auxol_sam")
    ours = sam.prompt_encoder.PositionEmbeddingRandom(16)
    theirs = auxol.prompt_encoder.PositionEmbeddingRandom(16)
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        return float((ours((64, 64)) - theirs((64, 64))).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sam_repo", default="/tmp/src/sam")
    parser.add_argument("--auxol_repo", default="/tmp/src/auxol")
    parser.add_argument("--out", default="tests/golden/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float32)
    sam = import_modeling(os.path.join(args.sam_repo, "segment_anything"), "segment_anything")
    prompt_encoder, mask_decoder = build(sam, args.seed)

    g = torch.Generator().manual_seed(args.seed + 2)
    c = CONFIG
    grid = c["image_embedding_size"]
    image_embeddings = torch.randn(1, c["embed_dim"], grid, grid, generator=g)
    arrays = {f"sd/prompt_encoder.{k}": _np(v) for k, v in prompt_encoder.state_dict().items()}
    arrays |= {f"sd/mask_decoder.{k}": _np(v) for k, v in mask_decoder.state_dict().items()}
    arrays["in/image_embeddings"] = _np(image_embeddings)
    with torch.no_grad():
        arrays["out/dense_pe"] = _np(prompt_encoder.get_dense_pe())
        for case in CASES:
            prompt = inputs(case, g)
            arrays |= {f"in/{case}/{k}": _np(v) for k, v in prompt.items()}
            outs = run(prompt_encoder, mask_decoder, image_embeddings, case, prompt)
            arrays |= {f"out/{case}/{k}": _np(v) for k, v in outs.items()}

    meta = dict(
        repo="facebookresearch/segment-anything",
        commit=_commit(args.sam_repo) or SAM_COMMIT,
        config=json.dumps(CONFIG | {"cases": CASES, "seed": args.seed}),
    )
    if args.auxol_repo and os.path.isdir(args.auxol_repo):
        meta["auxol_commit"] = _commit(args.auxol_repo) or AUXOL_COMMIT
        meta["auxol_dense_pe_64_max_abs_diff"] = auxol_dense_pe_diff(args.auxol_repo, sam)
    arrays |= {f"meta/{k}": np.array(v) for k, v in meta.items()}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "sam_decoder.npz")
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(arrays)} arrays, {os.path.getsize(path) / 1024:.0f} KiB; meta {meta}")


if __name__ == "__main__":
    main()
