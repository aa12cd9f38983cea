"""AuxOL's stream layout (radjax.papers.auxol.data) and phantoms: sorted order, parts in
sequence, and each bad input a BadRecordError naming the file and the field."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from radjax.data.errors import BadRecordError
from radjax.papers.auxol import data, phantoms, prompts


def _cfg(root, dataset="BUSI", parts=("benign", "malignant"), enabled=True, n=3):
    return ml_collections.ConfigDict(
        dict(
            root=str(root),
            dataset=dataset,
            parts=parts,
            phantoms=dict(enabled=enabled, images_per_part=n, seed=0, datasets=(dataset,)),
        )
    )


def test_phantoms_are_written_in_auxols_layout_and_every_lesion_is_a_prompt(tmp_path):
    cfg = _cfg(tmp_path / "d")
    data.ensure_data(cfg)
    samples = data.stream(cfg)
    assert [(s.part, s.name) for s in samples] == [
        ("benign", "benign_0000.png"),
        ("benign", "benign_0001.png"),
        ("benign", "benign_0002.png"),
        ("malignant", "malignant_0000.png"),
        ("malignant", "malignant_0001.png"),
        ("malignant", "malignant_0002.png"),
    ]
    for sample in samples:
        image, mask = data.load_sample(sample)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        # every drawn lesion is one 8-connected component with a box of >= 16 px a side
        assert len(prompts.objects(mask)) == len(prompts.components(mask)) - 1 >= 1


@pytest.mark.parametrize("dataset", sorted(phantoms.DATASETS))
def test_each_dataset_looks_different_inside_and_outside_its_lesions(dataset):
    look = phantoms.DATASETS[dataset]
    for part in look.parts:
        image, mask = phantoms.draw_image(dataset, part, np.random.default_rng(1))
        assert image.shape == (look.size[1], look.size[0], 3)
        inside, outside = image[mask > 0].mean(0), image[mask == 0].mean(0)
        assert np.abs(inside - outside).max() > 10, (dataset, part, inside, outside)
        lesions = prompts.objects(mask > 0)
        assert len(lesions) == len(prompts.components(mask > 0)) - 1
        assert look.parts[part].count[0] <= len(lesions) <= look.parts[part].count[1]


def test_missing_root_without_phantoms_names_the_folder(tmp_path):
    cfg = _cfg(tmp_path / "nothing", enabled=False)
    with pytest.raises(FileNotFoundError, match="nothing"):
        data.ensure_data(cfg)


def _stream_dir(tmp_path, size=(40, 30)):
    root = tmp_path / "d"
    for kind in ("images", "masks"):
        (root / "BUSI" / "benign" / kind).mkdir(parents=True)
    image = np.zeros((size[1], size[0], 3), np.uint8)
    Image.fromarray(image).save(root / "BUSI" / "benign" / "images" / "a.png")
    return root, _cfg(root, parts=("benign",), enabled=False)


def test_an_image_without_its_mask_is_named(tmp_path):
    root, cfg = _stream_dir(tmp_path)
    with pytest.raises(BadRecordError, match=r"masks/a.png: mask: missing"):
        data.stream(cfg)


def test_a_mask_of_another_size_names_both_sizes(tmp_path):
    root, cfg = _stream_dir(tmp_path)
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(root / "BUSI/benign/masks/a.png")
    (sample,) = data.stream(cfg)
    with pytest.raises(
        BadRecordError, match=r"a.png: size: mask is 40 x 31 \(W x H\), its image 40 x 30"
    ):
        data.load_sample(sample)


def test_a_colour_mask_is_refused_and_a_grey_one_stored_as_rgb_read(tmp_path):
    root, cfg = _stream_dir(tmp_path)
    mask_path = root / "BUSI/benign/masks/a.png"
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[5:20, 5:20, 0] = 255
    Image.fromarray(colour).save(mask_path)
    (sample,) = data.stream(cfg)
    with pytest.raises(BadRecordError, match="channels: a colour mask"):
        data.load_sample(sample)
    colour[5:20, 5:20] = 200  # grey in three equal channels; > 127 is the object
    colour[0, 0] = 127  # not above the threshold
    Image.fromarray(colour).save(mask_path)
    _, mask = data.load_sample(sample)
    assert mask.sum() == 15 * 15 and mask[0, 0] == 0


def test_an_unreadable_image_is_named(tmp_path):
    root, cfg = _stream_dir(tmp_path)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "BUSI/benign/masks/a.png")
    (root / "BUSI/benign/images/a.png").write_bytes(b"not a png")
    (sample,) = data.stream(cfg)
    with pytest.raises(BadRecordError, match="images/a.png"):
        data.load_sample(sample)
