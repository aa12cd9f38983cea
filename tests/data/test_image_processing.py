"""CLIP / LLaVA pad-to-square / BLIP preprocessing on real images shipped in installed packages.

References: transformers' ``CLIPImageProcessor`` (its Pillow backend, built from explicit
arguments) for CLIP; torchvision's transforms for BLIP where torchvision is installed, otherwise
Pillow's resize and ``ToTensor`` / ``Normalize`` written with torch ops as torchvision writes
them. LLaVA's ``expand2square`` is checked by its defining properties, not by a re-written copy.
"""

import importlib.resources

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radjax.data import image_processing as ip

# (package, path inside it): RGB portrait, RGB landscape with an odd side difference, a wide
# RGBA logo with transparent pixels, a small square RGBA icon (upscaled to 224 / 336).
PACKAGE_IMAGES = {
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "china": ("sklearn.datasets", "images/china.jpg"),
    "logo2": ("matplotlib", "mpl-data/sample_data/logo2.png"),
    "minduka": ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
}


def _package_image(name: str) -> Image.Image:
    package, relative = PACKAGE_IMAGES[name]
    path = importlib.resources.files(package) / relative
    if not path.is_file():
        pytest.skip(f"{package} does not ship {relative}")
    with Image.open(path) as image:
        image.load()
        return image


@pytest.fixture(scope="module")
def images():
    return {name: _package_image(name) for name in PACKAGE_IMAGES}


@pytest.fixture(scope="module")
def ct_grey():
    """pydicom's CT_small.dcm min-max scaled to uint8 grey, cropped to 128 x 107 (not square,
    odd side difference)."""
    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float64)
    scaled = np.round((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255)
    return Image.fromarray(scaled.astype(np.uint8)[:, 10:117])


def _clip_reference(transformers, size, crop=None):
    """transformers' CLIP processor with every argument explicit (no hub download)."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    crop_h, crop_w = (size, size) if crop is None else crop
    processor = cls(
        do_convert_rgb=True,
        do_resize=True,
        size={"shortest_edge": size},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": crop_h, "width": crop_w},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(ip.CLIP_MEAN),
        image_std=list(ip.CLIP_STD),
    )

    def run(image):
        pixels = processor(image, return_tensors="np")["pixel_values"][0]
        return np.asarray(pixels).transpose(1, 2, 0)  # (3, H, W) -> channels-last

    return run


def _normalised(rgb) -> np.ndarray:
    """An RGB colour through rescale + normalise, the float32 steps transformers takes."""
    x = (np.asarray(rgb, np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.asarray(ip.CLIP_MEAN, np.float32)) / np.asarray(ip.CLIP_STD, np.float32)


# --- CLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 336])
def test_clip_equals_transformers_bit_for_bit(transformers, images, ct_grey, size):
    reference = _clip_reference(transformers, size)
    for name, image in {**images, "ct_grey": ct_grey}.items():
        ours = ip.clip_preprocess(image, size=size)
        assert ours.shape == (size, size, 3) and ours.dtype == np.float32, name
        # RGBA: the originals drop alpha (convert('RGB')); give transformers the same RGB image.
        np.testing.assert_array_equal(ours, reference(image.convert("RGB")), err_msg=name)
        np.testing.assert_array_equal(
            ip.clip_preprocess(np.asarray(image), size=size), ours, err_msg=name
        )
    # grey and RGB go through transformers' own conversion unchanged
    np.testing.assert_array_equal(ip.clip_preprocess(ct_grey, size=size), reference(ct_grey))


def test_clip_crop_larger_than_resized_and_not_square(transformers, images):
    """transformers zero-pads a crop larger than the resized image; the crop may be (h, w)."""
    image = images["china"]  # 640 x 427 -> resized (224, 335)
    for crop in [(240, 230), (200, 360), (224, 100)]:
        ours = ip.clip_preprocess(image, size=224, crop_size=crop)
        assert ours.shape == crop + (3,)
        np.testing.assert_array_equal(
            ours, _clip_reference(transformers, 224, crop)(image), err_msg=str(crop)
        )


def test_shortest_edge_size_equals_transformers(transformers):
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    for height, width in [
        (600, 512),
        (427, 640),
        (130, 542),
        (128, 128),
        (3, 1000),
        (301, 300),
        (7, 5),
    ]:
        array = np.zeros((height, width, 3), np.uint8)
        for size in (224, 336):
            expected = get_resize_output_image_size(
                array, size=size, default_to_square=False, input_data_format=ChannelDimension.LAST
            )
            assert ip.shortest_edge_size(height, width, size) == tuple(expected), (
                height,
                width,
                size,
            )


def test_alpha_is_dropped_not_composited(images):
    """convert('RGB') keeps the stored colour of transparent pixels (transformers 5 would blend
    them onto white); logo2.png has fully and partly transparent pixels."""
    rgba = images["logo2"]
    array = np.asarray(rgba)
    assert rgba.mode == "RGBA" and (array[..., 3] < 255).any()
    np.testing.assert_array_equal(np.asarray(ip.to_rgb(rgba)), array[..., :3])
    np.testing.assert_array_equal(np.asarray(ip.to_rgb(array)), array[..., :3])


def test_array_inputs_and_their_errors(ct_grey):
    grey = np.asarray(ct_grey)
    assert ip.as_pil(grey).mode == "L" and ip.as_pil(grey[..., None]).mode == "L"
    np.testing.assert_array_equal(
        np.asarray(ip.to_rgb(grey[..., None])), np.repeat(grey[..., None], 3, axis=-1)
    )
    with pytest.raises(ValueError, match="uint8"):
        ip.as_pil(grey.astype(np.uint16) * 256)
    with pytest.raises(ValueError, match="uint8"):
        ip.clip_preprocess(grey / 255.0)
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4, 3\)"):
        ip.as_pil(np.zeros((2, 4, 4, 3), np.uint8))


# --- LLaVA pad-to-square --------------------------------------------------------------------


def test_pad_colours():
    # int(x * 255) of the CLIP mean, and v1.5's grey int(255 * mean(mean)); both truncated.
    assert ip.llava_pad_color("RGB") == (122, 116, 104)
    assert ip.llava_pad_color("RGBA") == (122, 116, 104)
    assert ip.llava_pad_color("L") == 114


@pytest.mark.parametrize("shift", [0, 1])
def test_expand2square_properties(images, ct_grey, shift):
    cases = {
        "grace_hopper": images["grace_hopper"],  # 512 x 600: pasted along x
        "china": images["china"],  # 640 x 427: along y, d = 213 (odd)
        "logo2": images["logo2"].convert("RGB"),  # 542 x 130: d = 412 (even)
        "ct_grey": ct_grey,  # 107 x 128, mode L
    }
    for name, image in cases.items():
        width, height = image.size
        colour = ip.llava_pad_color(image.mode)
        result = ip.expand2square(image, colour, shift=shift)
        side = max(width, height)
        assert result.size == (side, side) and result.mode == image.mode, name
        out = np.asarray(result)
        offset = abs(width - height) // 2 + shift
        y0, x0 = (offset, 0) if width > height else (0, offset)
        # the original pixels, untouched, at the offset
        np.testing.assert_array_equal(
            out[y0 : y0 + height, x0 : x0 + width], np.asarray(image), err_msg=name
        )
        # everything else is exactly the fill colour
        outside = np.ones((side, side), bool)
        outside[y0 : y0 + height, x0 : x0 + width] = False
        assert outside.sum() == side * side - width * height
        np.testing.assert_array_equal(
            out[outside], np.broadcast_to(colour, out[outside].shape), err_msg=name
        )


def test_expand2square_square_and_bad_shift(images):
    square = images["minduka"]
    assert ip.expand2square(square, (1, 2, 3)) is square
    with pytest.raises(ValueError, match="shift"):
        ip.expand2square(images["china"], (1, 2, 3), shift=2)


def test_llava_med_v10_square_is_clip_224(transformers, images):
    reference = _clip_reference(transformers, 224)
    for name in ("grace_hopper", "china"):
        np.testing.assert_array_equal(
            ip.llava_med_preprocess(images[name]), reference(images[name]), err_msg=name
        )


def test_llava_med_v15_pads_then_clip_336(transformers, images):
    reference = _clip_reference(transformers, 336)
    image = images["china"]
    padded = ip.expand2square(image, (122, 116, 104))
    ours = ip.llava_med_preprocess(image, version="v1.5", jitter=False)
    np.testing.assert_array_equal(ours, reference(padded))
    # the pad band (107 rows of 640 -> 56 rows of 336) is the fill colour, exactly
    np.testing.assert_array_equal(
        ours[:50], np.broadcast_to(_normalised((122, 116, 104)), ours[:50].shape)
    )
    assert not np.array_equal(ours, ip.clip_preprocess(image, size=336))  # not a centre crop


def test_llava_med_grey_fill_per_version(ct_grey):
    """v1.5 pads mode L with the grey 114 before RGB conversion; v1.0 converts first and pads
    with (122, 116, 104). The 10/11 pad columns of the 107-wide CT slice stay pure fill."""
    v15 = ip.llava_med_preprocess(ct_grey, version="v1.5", jitter=False)
    np.testing.assert_array_equal(
        v15[:, :20], np.broadcast_to(_normalised((114, 114, 114)), v15[:, :20].shape)
    )
    v10 = ip.llava_med_preprocess(ct_grey, version="v1.0", aspect_ratio="pad")
    assert v10.shape == (224, 224, 3)
    np.testing.assert_array_equal(
        v10[:, :10], np.broadcast_to(_normalised((122, 116, 104)), v10[:, :10].shape)
    )


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA"])
def test_llava_med_v15_other_modes_pad_as_rgb(images, mode):
    """Palette / LA / RGBA images are padded as their RGB conversion (the original garbles P and
    raises on LA; RGBA there pads with opaque fill and drops alpha later: the same result)."""
    image = images["grace_hopper"].convert(mode)
    np.testing.assert_array_equal(
        ip.llava_med_preprocess(image, version="v1.5", jitter=False),
        ip.llava_med_preprocess(image.convert("RGB"), version="v1.5", jitter=False),
    )


def test_llava_med_v15_random_shift(ct_grey):
    """Default v1.5: offset d//2 + a 0/1 draw from rng; both outcomes occur, seeds reproduce."""
    candidates = [
        ip.clip_preprocess(ip.expand2square(ct_grey, 114, shift=s), size=336) for s in (0, 1)
    ]
    assert not np.array_equal(*candidates)
    seen = []
    for seed in range(16):
        out = ip.llava_med_preprocess(ct_grey, version="v1.5", rng=np.random.default_rng(seed))
        matches = [s for s, c in enumerate(candidates) if np.array_equal(out, c)]
        assert len(matches) == 1, seed
        seen.append(matches[0])
        again = ip.llava_med_preprocess(ct_grey, version="v1.5", rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
    assert set(seen) == {0, 1}
    with pytest.raises(ValueError, match="rng"):
        ip.llava_med_preprocess(ct_grey, version="v1.5")
    np.testing.assert_array_equal(
        ip.llava_med_preprocess(ct_grey, version="v1.5", jitter=False), candidates[0]
    )


def test_llava_med_bad_options(images):
    with pytest.raises(ValueError, match="version"):
        ip.llava_med_preprocess(images["china"], version="v2")
    with pytest.raises(ValueError, match="aspect_ratio"):
        ip.llava_med_preprocess(images["china"], aspect_ratio="keep")


# --- BLIP (Uni-Med) -------------------------------------------------------------------------


def _blip_reference(torch, image, size):
    """torchvision's Compose([Resize(size, BICUBIC), ToTensor(), Normalize]) if installed, else
    Pillow's resize and ToTensor / Normalize's arithmetic in torch; channels-last."""
    height, width = (size, size) if isinstance(size, int) else size
    try:
        from torchvision import transforms
    except ImportError:
        transforms = None
    if transforms is not None:
        transform = transforms.Compose(
            [
                transforms.Resize(
                    (height, width), interpolation=transforms.InterpolationMode.BICUBIC
                ),
                transforms.ToTensor(),
                transforms.Normalize(ip.CLIP_MEAN, ip.CLIP_STD),
            ]
        )
        tensor = transform(image.convert("RGB"))
    else:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        tensor = torch.from_numpy(np.array(resized)).permute(2, 0, 1).contiguous()
        tensor = tensor.to(torch.float32).div(255)
        mean = torch.as_tensor(ip.CLIP_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.as_tensor(ip.CLIP_STD, dtype=torch.float32)[:, None, None]
        tensor = tensor.sub(mean).div(std)
    return tensor.numpy().transpose(1, 2, 0)


def test_blip_equals_reference(torch, images, ct_grey):
    for name, image in {**images, "ct_grey": ct_grey}.items():
        for size in (224, (160, 256)):
            ours = ip.blip_preprocess(image, size=size)
            expected_shape = (size, size, 3) if isinstance(size, int) else size + (3,)
            assert ours.shape == expected_shape and ours.dtype == np.float32
            np.testing.assert_array_equal(
                ours, _blip_reference(torch, image, size), err_msg=f"{name} {size}"
            )
        np.testing.assert_array_equal(
            ip.blip_preprocess(np.asarray(image)), ip.blip_preprocess(image), err_msg=name
        )
