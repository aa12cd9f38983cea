"""Image preprocessing of the 2D vision-language papers: CLIP's, LLaVA's pad-to-square, BLIP's.

Host side (numpy + Pillow), for the data pipelines; nothing here runs under jit. Outputs are
channels-last ``(H, W, 3)`` float32, as radjax's models read them; the PyTorch processors return
``(3, H, W)``: transpose at the boundary when comparing.

What each original does, and what this module reproduces:

* :func:`clip_preprocess` is transformers' ``CLIPImageProcessor`` as LLaVA-Med loads it for
  ``openai/clip-vit-large-patch14`` (size 224) and ``-336`` (size 336): RGB conversion, the
  shortest side resized to ``size`` with Pillow's bicubic filter (the long side
  ``int(size * long / short)``), a centre crop of ``crop_size`` (top ``(H - h) // 2``, left
  ``(W - w) // 2``; zero padding where the crop is larger, as transformers does), ``x * (1/255)``
  in float64 cast to float32, then ``(x - mean) / std`` in float32 with the CLIP constants.
* :func:`expand2square` is LLaVA's pad-to-square (``image_aspect_ratio == 'pad'``): the image is
  pasted on a square of the longer side filled with :func:`llava_pad_color`. LLaVA-Med v1.0
  (``llava/train/train.py``) and upstream LLaVA paste at offset ``(long - short) // 2``; LLaVA-Med
  v1.5 (``llava/mm_utils.py``) draws the offset with ``random.randint(d // 2, d // 2 + 1)``, a
  0/1-pixel jitter, which here is ``shift`` (0 or 1) or, in :func:`llava_med_preprocess`, a draw
  from the caller's ``rng``.
* :func:`blip_preprocess` is Uni-Med's ``blip2_image_train`` / ``blip2_image_eval`` processor
  (identical; LAVIS ``Blip2Image*Processor``): torchvision ``Resize((size, size), BICUBIC)`` on a
  PIL image (Pillow's bicubic, the aspect ratio squashed, no crop, no flip, no RandAugment),
  ``ToTensor`` (``x / 255`` in float32) and ``Normalize`` with the CLIP constants.

Colour conversion is Pillow's ``convert('RGB')``, as the originals do it (their
``Image.open(...).convert('RGB')``, and the ``convert_to_rgb`` of the transformers versions they
pin, 4.28 and 4.36): grey is replicated, palette images are looked up, and **alpha is dropped,
not composited**. Newer transformers (5.x) composite transparent pixels onto white instead, so
for RGBA input this module and today's ``CLIPImageProcessor`` differ on purpose. Numpy inputs
must be uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (grey, RGB, RGBA); other
dtypes raise, because Pillow's conversion clips 16-bit grey at 255: window or scale first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The CLIP towers each LLaVA-Med version uses, and its default aspect handling and pad jitter.
LLAVA_MED_VERSIONS = {
    # openai/clip-vit-large-patch14; train.py: image_aspect_ratio default 'square' (no script
    # sets 'pad'); its 'pad' branch converts to RGB first and pastes at the centre.
    "v1.0": {"size": 224, "aspect_ratio": "square", "jitter": False, "grey_pad": False},
    # openai/clip-vit-large-patch14-336; 'pad' is what the microsoft/llava-med-v1.5-mistral-7b
    # config.json sets (read from a third-party copy, not the hub: verify); the repo's
    # mm_utils.process_images pads mode 'L' images with a grey scalar, others with the RGB
    # colour, and its expand2square jitters the offset by 0/1 pixel.
    "v1.5": {"size": 336, "aspect_ratio": "pad", "jitter": True, "grey_pad": True},
}

ImageLike = Image.Image | np.ndarray


def as_pil(image: ImageLike) -> Image.Image:
    """A PIL image from a PIL image (returned as is) or a uint8 array.

    Arrays: ``(H, W)`` or ``(H, W, 1)`` -> mode ``L``, ``(H, W, 3)`` -> ``RGB``, ``(H, W, 4)``
    -> ``RGBA``. Raises ValueError naming the shape or dtype for anything else.
    """
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"image array must be uint8 (0-255, what the originals read from 8-bit files), got "
            f"dtype {array.dtype}; window or scale it to uint8 first"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))  # uint8: L, RGB or RGBA
    raise ValueError(
        f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape}"
    )


def to_rgb(image: ImageLike) -> Image.Image:
    """Pillow ``convert('RGB')``: grey replicated, palette looked up, alpha dropped (not blended)."""
    image = as_pil(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``size`` and the longer ``int(size * long / short)``.

    transformers' ``get_resize_output_image_size(..., default_to_square=False)``: the long side
    is truncated, not rounded; a square image (either side the shorter) gives ``(size, size)``.
    """
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of an ``(H, W, C)`` array to ``(height, width)``, as transformers does it.

    Top ``(H - height) // 2``, left ``(W - width) // 2``. Where the crop is larger than the
    image the image is first zero-padded to ``max`` of both, placed at ``ceil(pad / 2)``.
    """
    h, w = array.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return array[top : top + height, left : left + width]
    new_h, new_w = max(height, h), max(width, w)
    pad_top, pad_left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    padded = np.zeros((new_h, new_w) + array.shape[2:], array.dtype)
    padded[pad_top : pad_top + h, pad_left : pad_left + w] = array
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def _normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` in float32 over the last (channel) axis."""
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def clip_preprocess(
    image: ImageLike,
    *,
    size: int = 224,
    crop_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    resample: int = Image.Resampling.BICUBIC,
) -> np.ndarray:
    """transformers' ``CLIPImageProcessor`` (slow / Pillow path): ``(crop_h, crop_w, 3)`` float32.

    ``size`` is the shortest edge (224 for clip-vit-large-patch14, 336 for -336); ``crop_size``
    (an int or ``(h, w)``) defaults to ``size``. See the module docstring for every step; the
    result equals ``CLIPImageProcessor(...)(image.convert('RGB'))['pixel_values'][0]``
    transposed to channels-last, bit for bit.
    """
    crop_h, crop_w = _pair(size if crop_size is None else crop_size)
    image = to_rgb(image)
    height, width = shortest_edge_size(image.height, image.width, size)
    image = image.resize((width, height), resample=resample)
    array = center_crop(np.asarray(image), crop_h, crop_w)
    x = (array.astype(np.float64) * (1 / 255)).astype(np.float32)
    return _normalize(x, mean, std)


def llava_pad_color(mode: str = "RGB", mean: Sequence[float] = CLIP_MEAN) -> int | tuple[int, ...]:
    """The fill of LLaVA's pad-to-square: ``tuple(int(m * 255) for m in mean)`` = (122, 116, 104).

    For mode ``'L'`` it is LLaVA-Med v1.5's grey scalar ``int(255 * sum(mean) / len(mean))`` =
    114 (``mm_utils.process_images``); v1.0 converts to RGB before padding and never needs it.
    """
    if mode == "L":
        return int(255 * sum(mean) / len(mean))
    return tuple(int(m * 255) for m in mean)


def expand2square(
    image: ImageLike, background: int | Sequence[int], *, shift: int = 0
) -> Image.Image:
    """LLaVA's ``expand2square``: the image pasted on a square of its longer side.

    The square is filled with ``background`` (an int for mode ``L``, a tuple for ``RGB``; see
    :func:`llava_pad_color`) and the image keeps its mode. It is pasted at offset
    ``(long - short) // 2 + shift`` along the shorter axis (0 along the other): ``shift`` 0 is
    v1.0's and upstream LLaVA's centred paste, ``shift`` 1 the other outcome of v1.5's
    ``random.randint(d // 2, d // 2 + 1)``. Square images come back unchanged (no copy).
    """
    if shift not in (0, 1):
        raise ValueError(
            f"shift must be 0 or 1 (the original's randint(d//2, d//2 + 1)), got {shift!r}"
        )
    image = as_pil(image)
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    fill = background if isinstance(background, int) else tuple(int(c) for c in background)
    result = Image.new(image.mode, (side, side), fill)
    offset = abs(width - height) // 2 + shift
    result.paste(image, (0, offset) if width > height else (offset, 0))
    return result


def llava_med_preprocess(
    image: ImageLike,
    *,
    version: str = "v1.0",
    aspect_ratio: str | None = None,
    jitter: bool | None = None,
    rng: np.random.Generator | None = None,
    size: int | None = None,
) -> np.ndarray:
    """One LLaVA-Med image as its vision tower reads it: ``(size, size, 3)`` float32.

    ``version`` ``'v1.0'`` (CLIP 224, ``aspect_ratio`` ``'square'``: shortest edge + centre
    crop) or ``'v1.5'`` (CLIP 336, ``'pad'``: :func:`expand2square` then the same processor,
    whose crop is then a no-op). ``aspect_ratio``, ``jitter`` and ``size`` override the
    version's defaults; LLaVA's ``'keep'`` mode (no crop, used by no script) is not provided.

    Padding follows each version's code: v1.0 converts to RGB first and pads with the RGB mean
    colour; v1.5 pads a grey (mode ``L``) image with the scalar 114 (then the processor makes it
    RGB) and any other image with the RGB colour. Other modes (palette, LA, 16-bit) are converted
    to RGB before padding: the original v1.5 code raises on LA / 16-bit and, for palette images,
    pastes palette indices onto a one-colour palette, which garbles them.

    ``jitter`` (default: the version's, True for v1.5) draws the paste's extra 0/1-pixel offset
    from ``rng``; the original draws it from Python's global ``random``. ``jitter=True`` needs an
    ``rng`` (the pipeline's seeded ``random_map`` generator); ``jitter=False`` is the
    deterministic centred paste.
    """
    if version not in LLAVA_MED_VERSIONS:
        raise ValueError(f"version must be one of {sorted(LLAVA_MED_VERSIONS)}, got {version!r}")
    preset = LLAVA_MED_VERSIONS[version]
    aspect_ratio = preset["aspect_ratio"] if aspect_ratio is None else aspect_ratio
    jitter = preset["jitter"] if jitter is None else jitter
    size = preset["size"] if size is None else size
    image = as_pil(image)
    if aspect_ratio == "pad":
        if not (preset["grey_pad"] and image.mode == "L"):
            image = to_rgb(image)
        shift = 0
        if jitter:
            if rng is None:
                raise ValueError(
                    f"LLaVA-Med {version} pads with a random 0/1-pixel shift (jitter=True): pass rng "
                    "(a numpy Generator, e.g. the pipeline's random_map one) or jitter=False for "
                    "the deterministic centred paste"
                )
            shift = int(rng.integers(0, 2))
        image = expand2square(image, llava_pad_color(image.mode), shift=shift)
    elif aspect_ratio != "square":
        raise ValueError(f"aspect_ratio must be 'square' or 'pad', got {aspect_ratio!r}")
    return clip_preprocess(image, size=size)


def blip_preprocess(
    image: ImageLike,
    *,
    size: int | Sequence[int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """Uni-Med's ``blip2_image_train`` / ``blip2_image_eval``: ``(h, w, 3)`` float32.

    ``convert('RGB')`` (the datasets do it), bicubic resize to exactly ``size`` (an int for a
    square, or ``(h, w)``; the aspect ratio is not kept), ``x / 255`` in float32 (``ToTensor``),
    ``(x - mean) / std`` in float32 (``Normalize``). Train and eval are the same transform.
    """
    height, width = _pair(size)
    image = to_rgb(image).resize((width, height), resample=Image.Resampling.BICUBIC)
    x = np.asarray(image).astype(np.float32) / np.float32(255)
    return _normalize(x, mean, std)
