"""AuxOL's stream: ``<root>/<dataset>/<part>/{images,masks}``, parts in the given order, each
part's images in sorted file-name order (``main.py``: ``sorted(os.listdir(image_path))``), the
mask of ``images/<name>`` at ``masks/<name>``.

An image is read as RGB uint8 (``cv2.imread`` + BGR->RGB), a mask as one channel thresholded
at 127 (``cv2.threshold(mask, 127, 255, THRESH_BINARY)``: > 127 is foreground). Every problem
is a ``BadRecordError`` naming the file and the field: an image without a mask, a mask of
another size, a colour mask (channels that differ: which channel is the label is unknown; a
grey mask stored as RGB is accepted). A mask with no object AuxOL can prompt (no component with
a box of 16 px a side) is not an error: the original predicts an empty mask for it and counts it
in the part's metrics, and so does radjax (``images_without_prompt`` counts them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from radjax.data import specs
from radjax.data.errors import BadRecordError
from radjax.data.phantoms import ensure_phantoms
from radjax.data.readers import read_image
from radjax.models.sam import processing
from radjax.papers.auxol import prompts
from radjax.papers.auxol.phantoms import write_auxol_phantoms

MASK_THRESHOLD = 127


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of the stream: its part, file name and both paths."""

    part: str
    name: str
    image: Path
    mask: Path


def part_dir(data_cfg: ml_collections.ConfigDict, part: str) -> Path:
    return Path(data_cfg.root) / data_cfg.dataset / part


def data_files(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """The folders the stream needs (relative to ``data.root``). With ``data.dataset`` empty
    the parts are ``<dataset>/<part>`` paths (several datasets in one run)."""
    return [
        str(Path(data_cfg.dataset) / part / kind)
        for part in data_cfg.parts
        for kind in ("images", "masks")
    ]


def ensure_data(data_cfg: ml_collections.ConfigDict) -> None:
    """Phantoms when ``data.phantoms.enabled`` and the root is empty; then every part's
    ``images`` and ``masks`` folder must exist (an error naming the first missing one)."""
    ensure_phantoms(data_cfg, write_auxol_phantoms, "AuxOL's TestDatasets/<dataset>/<part> folders")
    for rel in data_files(data_cfg):
        if not (Path(data_cfg.root) / rel).is_dir():
            raise FileNotFoundError(
                f"{Path(data_cfg.root) / rel}: missing (data.root={data_cfg.root!r}, "
                f"data.dataset={data_cfg.dataset!r}, data.parts={list(data_cfg.parts)})"
            )


def stream(data_cfg: ml_collections.ConfigDict) -> list[Sample]:
    """Every image of every part, in stream order. Raises BadRecordError for an image whose
    mask file is missing (before anything is processed)."""
    samples = []
    for part in data_cfg.parts:
        folder = part_dir(data_cfg, part)
        names = sorted(
            p.name
            for p in (folder / "images").iterdir()
            if p.is_file() and not p.name.startswith(".")
        )
        if not names:
            raise BadRecordError(folder / "images", None, "no images")
        for name in names:
            mask = folder / "masks" / name
            if not mask.is_file():
                raise BadRecordError(
                    mask, "mask", f"missing: the mask of {folder / 'images' / name}"
                )
            samples.append(Sample(part, name, folder / "images" / name, mask))
    return samples


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3): grey images repeated to three channels, alpha dropped."""
    image = read_image(path)
    if image.dtype != np.uint8:
        raise BadRecordError(path, "dtype", f"{image.dtype}: AuxOL reads 8-bit images")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_mask(path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) in {0, 1}: > 127 is the object. Raises BadRecordError for a colour mask or
    one whose size differs from its image's."""
    mask = read_image(path)
    if mask.ndim == 3:
        colour = mask[:, :, :3]
        if np.any(colour != colour[:, :, :1]):
            raise BadRecordError(
                path,
                "channels",
                f"a colour mask ({mask.shape[2]} channels that differ): "
                "AuxOL's masks are one grey channel",
            )
        mask = colour[:, :, 0]
    if mask.shape != tuple(image_hw):
        raise BadRecordError(
            path,
            "size",
            f"mask is {mask.shape[1]} x {mask.shape[0]} (W x H), its image "
            f"{image_hw[1]} x {image_hw[0]}",
        )
    return (mask > MASK_THRESHOLD).astype(np.uint8)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 (H, W, 3), mask uint8 (H, W) {0, 1})."""
    image = read_rgb(sample.image)
    return image, read_mask(sample.mask, image.shape[:2])


# ----------------------------------------------------------------- SAM pre-training records
# The tiny config's SAM is trained briefly on phantoms (``configs/auxol.py:tiny,stage=sam``)
# through the shared trainer: one record per prompted object of the stream layout's parts,
# the last ``data.val_images`` images of each part held out as the ``test`` split.


def make_source(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """One record per object AuxOL would prompt: image and mask paths, the object's box."""
    if split not in ("train", "test"):
        raise ValueError(f"data split {split!r}: 'train' or 'test'")
    samples, held = stream(data_cfg), int(data_cfg.val_images)
    records = []
    for part in data_cfg.parts:
        mine = [s for s in samples if s.part == part]
        chosen = mine[-held:] if split == "test" else mine[: len(mine) - held]
        for sample in chosen:
            image = read_rgb(sample.image)
            for obj in prompts.objects(read_mask(sample.mask, image.shape[:2])):
                records.append(dict(image=str(sample.image), mask=str(sample.mask), box=obj.box))
    if not records:
        raise BadRecordError(Path(data_cfg.root) / data_cfg.dataset, split, "no object to prompt")
    return grain.MapDataset.source(records)


def load_example(
    record: dict, data_cfg: ml_collections.ConfigDict, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """-> ``pixels`` f32 (S, S, 3) (SAM's pre-processing), ``box`` f32 (4,) in its frame
    (training: each side moved by up to ``data.box_jitter`` of the box's size, MedSAM's
    box perturbation), ``target`` f32 (L, L, 1): the object's mask in the low-res frame."""
    size, low = int(data_cfg.image_size), int(data_cfg.low_res_size)
    image = read_rgb(Path(record["image"]))
    mask = read_mask(Path(record["mask"]), image.shape[:2])
    x1, y1, x2, y2 = record["box"]
    only = prompts.component_at(mask, record["box"])
    pixels, (h, w) = processing.preprocess(image, size)
    box = np.array(record["box"], np.float64)
    if rng is not None and data_cfg.box_jitter:
        side = np.array([x2 - x1, y2 - y1] * 2, np.float64)
        box = box + rng.uniform(-1, 1, 4) * data_cfg.box_jitter * side
    box = processing.scale_boxes(box[None], mask.shape, size)[0]
    framed = np.zeros((size, size), np.uint8)
    framed[:h, :w] = np.asarray(
        Image.fromarray(only * 255).resize((w, h), Image.Resampling.BILINEAR)
    )
    target = np.asarray(Image.fromarray(framed).resize((low, low), Image.Resampling.BILINEAR)) > 127
    return dict(
        pixels=pixels, box=box.astype(np.float32), target=target[:, :, None].astype(np.float32)
    )


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes and dtypes of a SAM training batch (``radjax.data.specs``) from config
    fields: ``load_example``'s arrays with B = ``train.batch_size``, S = ``data.image_size``
    and L = ``data.low_res_size``."""
    size, low = int(config.data.image_size), int(config.data.low_res_size)
    return specs.rows_of(
        int(config.train.batch_size),
        dict(
            pixels=((size, size, 3), np.float32),
            box=((4,), np.float32),
            target=((low, low, 1), np.float32),
        ),
    )
