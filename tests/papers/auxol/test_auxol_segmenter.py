"""SAM as AuxOL calls it (radjax.papers.auxol.segmenter): logits at the image's own size for
box and point prompts, weights set from {path: array} with errors naming the source."""

import jax
import numpy as np
import pytest
from flax import nnx

from radjax.models.sam.image_encoder import SamVisionConfig
from radjax.models.sam.sam import Sam, sam_config
from radjax.papers.auxol import segmenter

VISION = SamVisionConfig(
    image_size=64, patch_size=8, width=16, depth=2, num_heads=2, out_channels=16,
    window_size=4, global_attn_indexes=(1,),
)  # fmt: skip
CONFIG = sam_config(VISION, dim=16, decoder_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16)


def _values(sam):
    return {
        segmenter._key(p): np.asarray(v)
        for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(sam))
    }


def test_predict_returns_logits_at_the_image_size_and_matches_the_model():
    sam = Sam(CONFIG, rngs=nnx.Rngs(0))
    seg = segmenter.SamSegmenter(sam)
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict(box=(1, 2, 3, 4))
    image = np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    seg.set_image(image)
    box = seg.predict(box=(10, 5, 50, 30))
    point = seg.predict(point=(20.0, 15.0))
    assert box.shape == point.shape == (40, 80) and not np.allclose(box, point)
    with pytest.raises(ValueError, match="a box or a point"):
        seg.predict(box=(1, 2, 3, 4), point=(1.0, 1.0))


def test_assign_copies_every_variable_and_names_the_source_of_a_wrong_size():
    source, target = Sam(CONFIG, rngs=nnx.Rngs(0)), Sam(CONFIG, rngs=nnx.Rngs(1))
    values = _values(source)
    segmenter.assign(target, values, "model.sam.workdir='w'")
    got = _values(target)
    assert got.keys() == values.keys()
    for k in values:  # the prompt encoder's random frequencies (no Param) too
        np.testing.assert_array_equal(got[k], values[k])
    del values["prompt_encoder/pe_layer/gaussian_matrix"]
    with pytest.raises(ValueError, match="model.sam.workdir='w'.*gaussian_matrix"):
        segmenter.assign(target, values, "model.sam.workdir='w'")
    wider = Sam(
        sam_config(
            SamVisionConfig(**{**VISION.__dict__, "width": 32}),
            dim=16, decoder_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16,
        ),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"(?s)ckpt: .*blocks/0/attn/proj/bias: checkpoint \(32,\) != model \(16,\)",
    ):
        segmenter.assign(target, _values(wider), "ckpt")
