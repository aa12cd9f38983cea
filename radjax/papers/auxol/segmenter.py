"""SAM as AuxOL uses it: ``SamPredictor.set_image`` once per image, then one
``predict(box=... | point_coords=..., multimask_output=False, return_logits=True)`` per
object, returning the logits at the image's size.

``build(config)`` makes the model of ``model.sam`` and fills its weights from, in order:
``model.sam.workdir`` (a radjax run of ``configs/auxol.py:tiny,stage=sam``: its newest
checkpoint), ``model.sam.checkpoint`` (an original segment-anything / MedSAM ``.pth``, or a
transformers ``SamModel`` folder), or, only with ``model.sam.untrained``, none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from radjax.convert import torch_io
from radjax.convert.torch_io import ConversionError
from radjax.models.sam import processing
from radjax.models.sam.sam import Sam
from radjax.papers.auxol import model as model_lib
from radjax.train import stages


class SamSegmenter:
    """A ``stream.Segmenter`` over a radjax SAM: the image encoder and the decoder each
    compile once (the decoder once per prompt kind); the post-processing once per image
    size."""

    def __init__(self, sam: Sam):
        self.image_size = sam.cfg.image_size
        graphdef, params = nnx.split(sam)
        self._params = params

        def encode(params, pixels):
            return nnx.merge(graphdef, params).encode(pixels)

        def decode(params, embeddings, boxes, points):
            model = nnx.merge(graphdef, params)
            if boxes is not None:
                return model.decode(embeddings, boxes=boxes)[0]
            labels = jnp.ones(points.shape[:2], jnp.int32)
            return model.decode(embeddings, points=points, labels=labels)[0]

        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)
        self._embeddings = None
        self._hw = self._input_hw = None

    def set_image(self, image: np.ndarray) -> None:
        pixels, self._input_hw = processing.preprocess(image, self.image_size)
        self._embeddings = self._encode(self._params, pixels[None])
        self._hw = tuple(image.shape[:2])

    def predict(self, *, box=None, point=None) -> np.ndarray:
        if self._embeddings is None:
            raise RuntimeError("SamSegmenter: set_image(...) before predict(...)")
        if (box is None) == (point is None):
            raise ValueError("SamSegmenter.predict: give a box or a point")
        boxes = points = None
        if box is not None:
            boxes = processing.scale_boxes(np.array([box]), self._hw, self.image_size)
            boxes = jnp.asarray(boxes, jnp.float32)
        else:
            coords = processing.scale_coords(np.array([[point]]), self._hw, self.image_size)
            points = jnp.asarray(coords, jnp.float32)
        low_res = self._decode(self._params, self._embeddings, boxes, points)
        logits = processing.postprocess_masks(
            low_res, input_hw=self._input_hw, original_hw=self._hw, image_size=self.image_size
        )
        return np.asarray(logits[0, :, :, 0])


def _key(path) -> str:
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _paths(sam: Sam) -> list[str]:
    """'/'-joined paths of every SAM variable (parameters and the prompt encoder's fixed
    random frequencies, which checkpoints hold too)."""
    return [_key(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(sam))]


def trained_params(workdir: str, sam: Sam) -> dict[str, np.ndarray]:
    """The SAM variables of a radjax training run's newest checkpoint."""
    paths = _paths(sam)
    return stages.read_source({"workdir": workdir}, dict(zip(paths, paths, strict=True)))


def assign(sam: Sam, values: dict[str, np.ndarray], source: str) -> None:
    """Sets every SAM variable from ``values`` ({path: array}) with ``torch_io.assign``
    (strict: missing, unexpected and wrongly shaped entries are listed). The prompt encoder's
    fixed random frequencies are no Param, so their presence is checked here. Raises
    ValueError naming ``source`` (a checkpoint of another model.sam.variant, say)."""
    missing = [k for k in _paths(sam) if k not in values]
    try:
        if missing:
            raise ConversionError(f"missing {missing[0]!r} (and {len(missing) - 1} more)")
        torch_io.assign(sam, values)
    except ConversionError as e:
        raise ValueError(f"{source}: {e}") from None


def build(config: ml_collections.ConfigDict) -> SamSegmenter:
    s = config.model.sam
    sam = model_lib.build_model(config, rngs=nnx.Rngs(int(config.seed)))
    if s.workdir:
        assign(sam, trained_params(s.workdir, sam), f"model.sam.workdir={s.workdir!r}")
    elif s.checkpoint:
        assign(sam, model_lib.pretrained_params(config), f"model.sam.checkpoint={s.checkpoint!r}")
    elif not s.get("untrained", False):
        raise ValueError(
            "model.sam: set workdir (a stage=sam run), checkpoint (a SAM .pth) or, for a "
            "randomly initialised SAM, untrained=True"
        )
    return SamSegmenter(sam)
