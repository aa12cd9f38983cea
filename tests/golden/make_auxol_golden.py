"""Golden outputs of the ORIGINAL AuxOL code (U-Net, structure loss, crop processing, adaptive
fusion, metrics), for radjax's parity tests.

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_auxol_golden.py --auxol_repo /tmp/auxol --out tests/golden/data

``--auxol_repo`` is a checkout of qianxihaoyue/AuxOL at commit
3bc80097153d3be5ac54dae8932aef6af16cfb5e. Needs torch, numpy, PIL, monai, plus two packages
radjax's environment does not have: torchvision (``transforms``, as ``main.py`` uses them)
and opencv (``cv2.resize``), e.g. ``pip install --target /tmp/goldenpkgs --no-deps
torchvision==0.28.0 opencv-python-headless==4.14.0.94`` and ``--extra_path /tmp/goldenpkgs``.
torchvision's package ``__init__`` is bypassed (a bare namespace over its folder): it loads
compiled ops that a CPU-only torch of another build rejects; ``transforms`` is Python over PIL.

What runs is the original's code where it exists as a function or module:

- ``Nets/Unet/unet_model.UNet`` and ``unet_parts`` (imported from the checkout). Full width
  (the original hardcodes 64 ... 1024) for ``bilinear`` True and False; its 17M / 31M weights
  are NOT stored: each state-dict entry is drawn from ``np.random.default_rng(seed)`` in
  state-dict order as N(0, 1) / sqrt(prod(shape[1:])) in f32 (``draw_weights``; the test
  redraws them; keys, shapes, seed and each entry's sum of |w| are stored). Narrow U-Nets:
  the original parts (``DoubleConv``, ``Down``, ``Up``, ``OutConv``) built at base width 4
  with torch's default init, under the original attribute names, run by the original
  ``UNet.forward`` (called on that module); their state dicts are stored.
- ``tool.structure_loss`` and ``tool.binary`` (tool.py imports cv2, colorlog and skimage at
  the top: stand-ins in ``sys.modules``, the loss uses none of them), with the gradient of the
  loss with respect to the logits.
- ``metric.calc_dice`` and ``metric.calc_hf`` (metric.py imports cv2: a stand-in).

``main.py:predict_with_prompt`` cannot be imported as a function of one crop (it runs SAM,
reads files and plots), so two of its inline steps are MIRRORED here line by line, with the
original's own calls:

- the crop processing: ``transforms.Compose([ToPILImage(), Resize((128, 128)),
  ToTensor()])`` on the (h, w, 4) uint8 crop (RGB + SAM's binary mask * 255) and on the RGB
  crop, ``(cv2.resize(mask_crop, (128, 128)) >= 0.5)`` on a (h, w, 1) uint8 mask,
  ``F.interpolate(logits, mode='bilinear', size=(h, w))`` of (1, 1, 128, 128) logits;
- the adaptive fusion over a stream of crops (``fusion_stream`` below mirrors the loop after
  the online step: the alpha grid, calc_dice of the sigmoid of the fused logits, strict ``>``,
  ``alphas[-1 - alpha_num:-1]``, the binary union in the image).

Keys (per file): ``meta/{repo,commit,config}`` (config JSON), ``in/...``, ``out/...``,
``sd/<original key>`` for stored state dicts, ``keys`` / ``shapes`` / ``abs_sums`` for drawn
ones. Deterministic.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types

import numpy as np

AUXOL_COMMIT = "3bc80097153d3be5ac54dae8932aef6af16cfb5e"
REPO = "qianxihaoyue/AuxOL"
FULL_SEED = 20240601
NARROW_BASE = 4
CROP = 128


def draw_weights(shapes: list[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """The full-width U-Nets' weights: N(0, 1) / sqrt(prod(shape[1:])) in f32, in order."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        out.append((rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32))
    return out


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod


def import_original(repo: str, extra_path: str | None):
    """(unet_model, unet_parts, tool, metric, transforms, cv2) with the stand-ins above."""
    if not os.path.isfile(os.path.join(repo, "Nets", "Unet", "unet_model.py")):
        raise SystemExit(f"{repo}: no Nets/Unet/unet_model.py (a qianxihaoyue/AuxOL checkout?)")
    if extra_path:
        sys.path.append(extra_path)
    import cv2  # the real one, for the mirrored cv2.resize

    spec = importlib.util.find_spec("torchvision")  # located, its __init__ not run
    if spec is None:
        raise SystemExit("torchvision not found (see --extra_path)")
    tv = types.ModuleType("torchvision")
    tv.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = tv
    from torchvision import transforms

    real_cv2 = sys.modules.pop("cv2")
    _stub("cv2")  # tool.py / metric.py import it; the functions used here do not call it
    _stub("colorlog", ColoredFormatter=None)
    _stub("skimage")
    _stub("skimage.morphology")
    sys.modules["skimage"].morphology = sys.modules["skimage.morphology"]
    sys.path.insert(0, repo)
    import metric
    import tool
    from Nets.Unet import unet_model, unet_parts

    sys.modules["cv2"] = real_cv2
    return unet_model, unet_parts, tool, metric, transforms, cv2


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def full_unet(unet_model, bilinear: bool, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    net = unet_model.UNet(n_channels=4, n_classes=1, bilinear=bilinear)
    sd = net.state_dict()
    keys = list(sd)
    shapes = [tuple(sd[k].shape) for k in keys]
    weights = draw_weights(shapes, FULL_SEED)
    net.load_state_dict({k: torch.from_numpy(w) for k, w in zip(keys, weights)}, strict=True)
    net.eval()
    arrays = {
        "keys": np.array(keys),
        "shapes": np.array(json.dumps(shapes)),
        "abs_sums": np.array([np.abs(w).sum(dtype=np.float64) for w in weights]),
    }
    with torch.no_grad():
        for name, x in inputs.items():
            arrays[f"out/{name}"] = _np(net(torch.from_numpy(x)))
    return arrays


def narrow_unet(
    unet_model, unet_parts, bilinear: bool, inputs: dict[str, np.ndarray], seed: int
) -> dict[str, np.ndarray]:
    """The original parts at base width NARROW_BASE, assembled as ``UNet.__init__`` does and run
    by the original ``UNet.forward``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    c = NARROW_BASE
    factor = 2 if bilinear else 1
    net = nn.Module()
    net.inc = unet_parts.DoubleConv(4, c)
    net.down1 = unet_parts.Down(c, 2 * c)
    net.down2 = unet_parts.Down(2 * c, 4 * c)
    net.down3 = unet_parts.Down(4 * c, 8 * c)
    net.down4 = unet_parts.Down(8 * c, 16 * c // factor)
    net.up1 = unet_parts.Up(16 * c, 8 * c // factor, bilinear)
    net.up2 = unet_parts.Up(8 * c, 4 * c // factor, bilinear)
    net.up3 = unet_parts.Up(4 * c, 2 * c // factor, bilinear)
    net.up4 = unet_parts.Up(2 * c, c, bilinear)
    net.outc = unet_parts.OutConv(c, 1)
    net.eval()
    arrays = {f"sd/{k}": _np(v) for k, v in net.state_dict().items()}
    with torch.no_grad():
        for name, x in inputs.items():
            arrays[f"out/{name}"] = _np(unet_model.UNet.forward(net, torch.from_numpy(x)))
    return arrays


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """{0, 1} f32 masks made of cell x cell blocks (so the 31x31 pool sees edges)."""
    *lead, h, w = shape
    coarse = rng.random((*lead, -(-h // cell), -(-w // cell))) > 0.5
    full = np.repeat(np.repeat(coarse, cell, axis=-2), cell, axis=-1)
    return full[..., :h, :w].astype(np.float32)


def loss_cases(tool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    import torch

    arrays = {}
    for name, shape in (("small", (3, 1, 40, 36)), ("crop", (2, 1, 128, 128))):
        logits = (3 * rng.standard_normal(shape)).astype(np.float32)
        masks = _blobs(rng, shape, 9)
        x = torch.from_numpy(logits).requires_grad_(True)
        loss = tool.structure_loss(x, torch.from_numpy(masks))
        loss.backward()
        arrays |= {
            f"in/{name}/logits": logits,
            f"in/{name}/masks": masks,
            f"out/{name}/loss": _np(loss),
            f"out/{name}/grad": _np(x.grad),
        }
    return arrays


def crop_cases(transforms, cv2, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Mirrors main.py's crop processing (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    trans = transforms.Compose(
        [transforms.ToPILImage(), transforms.Resize((CROP, CROP)), transforms.ToTensor()]
    )
    arrays = {}
    for i, (h, w) in enumerate(((37, 53), (150, 121), (128, 128), (17, 64))):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sam = _blobs(rng, (h, w), 5)  # crop_predict_queue[i]: (h, w) {0, 1} f32
        fourth = sam[:, :, None].astype(np.uint8) * 255
        four = trans(np.concatenate([image, fourth], axis=2)).permute(1, 2, 0).numpy()
        three = trans(image).permute(1, 2, 0).numpy()
        mask = _blobs(rng, (h, w), 3).astype(np.uint8)[:, :, None]  # mask[y1:y2, x1:x2]
        target = (cv2.resize(mask, (CROP, CROP)) >= 0.5).astype(np.float32)
        logits = (4 * rng.standard_normal((1, 1, CROP, CROP))).astype(np.float32)
        back = F.interpolate(torch.from_numpy(logits), mode="bilinear", size=(h, w))
        for name, t in (("four", four), ("three", three)):  # ToTensor = uint8 / 255
            u8 = np.rint(t * 255).astype(np.uint8)
            assert np.array_equal(u8.astype(np.float32) / np.float32(255), t)
            arrays[f"out/{i}/{name}_u8"] = u8
        arrays |= {
            f"in/{i}/image": image,
            f"in/{i}/sam": sam.astype(np.uint8),
            f"in/{i}/mask": mask[:, :, 0],
            f"in/{i}/logits": logits[0, 0],
            f"out/{i}/target": target.astype(np.uint8),
            f"out/{i}/logits_back": _np(back)[0, 0],
        }
    # cv2.resize of random uint8 images (not just masks): the fixed-point rounding itself
    for i, (h, w, size) in enumerate(((50, 70, 128), (200, 33, 128), (31, 31, 100))):
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        arrays[f"in/cv2/{i}/image"] = image
        arrays[f"out/cv2/{i}/resized"] = cv2.resize(image, (size, size))
    return arrays


def fusion_stream(
    tool, metric, crops: list[dict], image_shapes: list[tuple[int, int]], alpha_num: int
) -> dict[str, np.ndarray]:
    """The loop after the online step in ``predict_with_prompt``, per image, with the
    original calc_dice / binary (crops: dicts of sam_logits / aux_logits (h, w, 1) f32,
    mask (h, w, 1) uint8, box, image)."""
    import torch

    alphas, mean_alphas, best_dices, fused_maps, merged = [], [], [], [], []
    alpha_percent = 1
    for image_index, shape in enumerate(image_shapes):
        queue = [c for c in crops if c["image"] == image_index]
        crop_merge_queue = []
        for c in queue:
            best_alpha = 1
            best_dice = 0
            for a in [round(g, 2) for g in np.arange(0, alpha_percent + 0.01, 0.05).tolist()]:
                temp = a * c["sam_logits"] + (1 - a) * c["aux_logits"]
                temp = torch.from_numpy(temp).sigmoid().numpy()
                temp_dice = metric.calc_dice(temp, c["mask"])
                if temp_dice > best_dice:
                    best_alpha = a
                    best_dice = temp_dice
            alphas.append(best_alpha)
            best_dices.append(best_dice)
            if len(alphas) <= alpha_num:
                temp_merge = torch.from_numpy(c["sam_logits"]).sigmoid().numpy()
                mean_alphas.append(1)
            else:
                mean_a = sum(alphas[-1 - alpha_num : -1]) / alpha_num
                temp_merge = mean_a * c["sam_logits"] + (1 - mean_a) * c["aux_logits"]
                temp_merge = torch.from_numpy(temp_merge).sigmoid().numpy()
                mean_alphas.append(mean_a)
            crop_merge_queue.append(temp_merge)
            fused_maps.append(temp_merge[:, :, 0])
        pre_merge = np.zeros((*shape, 3), dtype=np.float32)
        for c, m in zip(queue, crop_merge_queue):
            x1, y1, x2, y2 = c["box"]
            pre_merge[y1:y2, x1:x2, :] = pre_merge[y1:y2, x1:x2, :] + tool.binary(m)
        merged.append(tool.binary(pre_merge)[:, :, 0].astype(np.uint8))
    return dict(
        best_alphas=np.array(alphas, np.float64),
        best_dices=np.array(best_dices, np.float64),
        mean_alphas=np.array(mean_alphas, np.float64),
        fused=np.concatenate([f.reshape(-1) for f in fused_maps]),
        merged=merged,
    )


def fusion_cases(tool, metric, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Three images, nine crops (alpha_num 5: the last four crops fuse with mean alphas)."""
    image_shapes = [(60, 70), (50, 50), (64, 48)]
    crops = []
    for image_index, (h, w) in enumerate(image_shapes):
        for _ in range(3):
            ch, cw = rng.integers(12, min(h, w) - 5, 2)
            y1, x1 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            mask = _blobs(rng, (ch, cw), 4).astype(np.uint8)
            sam = (6 * (mask - 0.5) + 3 * rng.standard_normal((ch, cw))).astype(np.float32)
            aux = (6 * (mask - 0.5) + 4 * rng.standard_normal((ch, cw))).astype(np.float32)
            crops.append(
                dict(image=image_index, box=(int(x1), int(y1), int(x1 + cw), int(y1 + ch)),
                     mask=mask[:, :, None], sam_logits=sam[:, :, None],
                     aux_logits=aux[:, :, None])
            )  # fmt: skip
    crops[4]["aux_logits"] = crops[4]["sam_logits"].copy()  # every alpha ties: alpha 0 wins
    out = fusion_stream(tool, metric, crops, image_shapes, alpha_num=5)
    arrays = {
        "in/image_shapes": np.array(image_shapes),
        "in/image_index": np.array([c["image"] for c in crops]),
        "in/boxes": np.array([c["box"] for c in crops]),
        "in/sam_logits": np.concatenate([c["sam_logits"].reshape(-1) for c in crops]),
        "in/aux_logits": np.concatenate([c["aux_logits"].reshape(-1) for c in crops]),
        "in/masks": np.concatenate([c["mask"].reshape(-1) for c in crops]),
        "out/best_alphas": out["best_alphas"],
        "out/best_dices": out["best_dices"],
        "out/mean_alphas": out["mean_alphas"],
        "out/fused": out["fused"],
    }
    for i, m in enumerate(out["merged"]):
        arrays[f"out/merged/{i}"] = m
    return arrays


def metric_cases(metric, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """calc_dice / calc_hf on (H, W) {0, 1} f64 masks as dice_and_hf reads them."""
    h, w = 40, 52
    empty = np.zeros((h, w))
    a, b = _blobs(rng, (h, w), 6).astype(np.float64), _blobs(rng, (h, w), 6).astype(np.float64)
    dot = empty.copy()
    dot[39, 0] = 1
    pairs = {"blobs": (a, b), "pred_empty": (empty, b), "gt_empty": (a, empty),
             "both_empty": (empty, empty), "dot": (dot, b), "same": (a, a)}  # fmt: skip
    arrays = {}
    for name, (p, g) in pairs.items():
        arrays[f"in/{name}/pred"] = p.astype(np.uint8)
        arrays[f"in/{name}/gt"] = g.astype(np.uint8)
        arrays[f"out/{name}/dice"] = np.array(metric.calc_dice(p, g))
        arrays[f"out/{name}/hd"] = np.array(metric.calc_hf(p, g))
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--auxol_repo", default="/tmp/auxol")
    parser.add_argument("--extra_path", default=None, help="folder holding torchvision + cv2")
    parser.add_argument("--out", default="tests/golden/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import monai
    import PIL
    import torch

    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    unet_model, unet_parts, tool, metric, transforms, cv2 = import_original(
        args.auxol_repo, args.extra_path
    )
    rng = np.random.default_rng(args.seed)
    small = rng.random((2, 4, 40, 40), dtype=np.float32)
    odd = rng.random((1, 4, 37, 45), dtype=np.float32)
    crop_u8 = rng.integers(0, 256, (1, 4, CROP, CROP), dtype=np.uint8)
    crop = crop_u8.astype(np.float32) / np.float32(255)
    meta = dict(repo=REPO, commit=AUXOL_COMMIT)
    from torchvision import version as tv_version

    versions = dict(torch=torch.__version__, monai=monai.__version__, pillow=PIL.__version__,
                    torchvision=tv_version.__version__, cv2=cv2.__version__,
                    numpy=np.__version__)  # fmt: skip

    def write(name: str, arrays: dict[str, np.ndarray], config: dict) -> None:
        arrays = dict(arrays)
        arrays["meta/repo"] = np.array(meta["repo"])
        arrays["meta/commit"] = np.array(meta["commit"])
        arrays["meta/config"] = np.array(json.dumps(config | {"versions": versions}))
        path = os.path.join(args.out, name)
        np.savez_compressed(path, **arrays)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB")

    unet = {"in/small": small, "in/odd": odd, "in/crop_u8": crop_u8}
    for bilinear in (True, False):
        tag = "bilinear" if bilinear else "transposed"
        full = full_unet(unet_model, bilinear, {"small": small, "crop": crop})
        unet |= {f"full_{tag}/{k}": v for k, v in full.items()}
        narrow = narrow_unet(unet_model, unet_parts, bilinear, {"small": small, "odd": odd}, 1)
        unet |= {f"narrow_{tag}/{k}": v for k, v in narrow.items()}
    write("auxol_unet.npz", unet, dict(full_seed=FULL_SEED, narrow_base=NARROW_BASE,
                                        in_channels=4, n_classes=1))  # fmt: skip
    write("auxol_loss.npz", loss_cases(tool, rng), dict(fn="tool.structure_loss"))
    write("auxol_crops.npz", crop_cases(transforms, cv2, rng), dict(crop_size=CROP))
    fusion = fusion_cases(tool, metric, rng) | {
        f"metric/{k}": v for k, v in metric_cases(metric, rng).items()
    }
    write("auxol_fusion.npz", fusion, dict(alpha_num=5, alpha_percent=1))


if __name__ == "__main__":
    main()
