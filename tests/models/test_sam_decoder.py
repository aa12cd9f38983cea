"""SAM prompt encoder, two-way transformer and mask decoder (radjax.models.sam): golden outputs
of the ORIGINAL segment-anything modules, parity with transformers' SamModel, the converter's
errors, and a 3D (SegVol-style) smoke test."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radjax.convert.sam_decoder import from_original, from_transformers, load_decoder
from radjax.convert.torch_io import ConversionError
from radjax.models.sam.mask_decoder import MaskDecoder, MaskDecoderConfig
from radjax.models.sam.prompt_encoder import PromptEncoder, PromptEncoderConfig
from radjax.models.sam.two_way_transformer import TwoWayTransformerConfig
from tests.sharded import assert_sharded_equals_unsharded

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "data", "sam_decoder.npz")
DIM, GRID, IMAGE, MASK_CHANS, HEADS, MLP, IOU_HIDDEN = 32, 8, 64, 8, 4, 64, 16


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def build(ndim=2, grid=(GRID, GRID), image=(IMAGE, IMAGE), abstract=False, **decoder):
    """(PromptEncoder, MaskDecoder) at the tiny sizes: abstract (``nnx.eval_shape``: for
    loading a checkpoint into) or with seeded numpy-drawn values (N(0, 1 / fan_in) kernels,
    N(0, 0.25) vectors: initialising through jax compiles threefry for every parameter, ~30 s
    on 2 cores)."""
    prompt = PromptEncoderConfig(
        embed_dim=DIM,
        image_embedding_size=grid,
        input_image_size=image,
        mask_in_chans=MASK_CHANS,
        ndim=ndim,
    )
    transformer = TwoWayTransformerConfig(dim=DIM, depth=2, num_heads=HEADS, mlp_dim=MLP)
    dec = MaskDecoderConfig(
        transformer=transformer, iou_head_hidden_dim=IOU_HIDDEN, ndim=ndim, **decoder
    )

    def make():
        rngs = nnx.Rngs(0)
        return PromptEncoder(prompt, rngs=rngs), MaskDecoder(dec, rngs=rngs)

    modules = nnx.eval_shape(make)
    if abstract:
        return modules
    graphdef, state = nnx.split(modules)
    rng = np.random.default_rng(0)

    def draw(x):
        scale = 1 / np.sqrt(x.shape[-2]) if len(x.shape) > 1 else 0.5
        return jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32)

    return nnx.merge(graphdef, jax.tree.map(draw, state))


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(x), 1, -1)


@functools.partial(jax.jit, static_argnames=("graphdef", "multimask"))
def _decode(state, image, prompts, text, *, graphdef, multimask):
    prompt_encoder, mask_decoder = nnx.merge(graphdef, state, copy=True)
    sparse, dense = prompt_encoder(**prompts)
    masks, iou = mask_decoder(
        image,
        prompt_encoder.dense_pe(),
        sparse,
        dense,
        multimask_output=multimask,
        text_embedding=text,
    )
    return sparse, dense, masks, iou


def decode(modules, image, *, multimask, text=None, **prompts):
    """prompt encoder + mask decoder as one jitted pure function over (graphdef, state) (one
    compile per prompt combination; also shows that the shapes are static) ->
    (sparse, dense, masks, iou)."""
    graphdef, state = nnx.split(modules)
    return _decode(state, image, prompts, text, graphdef=graphdef, multimask=multimask)


# ----------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def converted(golden):
    prompt_encoder, mask_decoder = build(abstract=True)
    sd = {k[3:]: v for k, v in golden.items() if k.startswith("sd/")}
    load_decoder(prompt_encoder, mask_decoder, from_original(sd))
    return prompt_encoder, mask_decoder


def test_golden_dense_pe(golden, converted):
    prompt_encoder, _ = converted
    assert rel_err(prompt_encoder.dense_pe(), channels_last(golden["out/dense_pe"])) < 1e-5
    # AuxOL's torch.range grid (64 x 64 only) gives the same numbers (checked by the maker)
    assert float(golden["meta/auxol_dense_pe_64_max_abs_diff"]) == 0.0


@pytest.mark.parametrize("case", ["points", "box", "points_box", "mask_points", "mask", "empty"])
def test_golden_outputs(golden, converted, case):
    given = {k.rsplit("/", 1)[1]: golden[k] for k in golden if k.startswith(f"in/{case}/")}
    want = {k: golden[f"out/{case}/{k}"] for k in ("sparse", "dense", "masks", "iou")}
    sparse, dense, masks, iou = decode(
        converted,
        channels_last(golden["in/image_embeddings"]),
        multimask=want["masks"].shape[1] == 3,
        points=given.get("coords"),
        labels=given.get("labels"),
        boxes=given.get("boxes"),
        masks=channels_last(given["masks"]) if "masks" in given else None,
    )
    assert sparse.shape == want["sparse"].shape
    if sparse.size:
        assert rel_err(sparse, want["sparse"]) < 1e-5
    assert rel_err(dense, channels_last(want["dense"])) < 1e-5
    assert masks.shape == channels_last(want["masks"]).shape
    assert rel_err(masks, channels_last(want["masks"])) < 1e-5
    assert rel_err(iou, want["iou"]) < 1e-5


# ----------------------------------------------------------------------------- converter


def test_converter_names_the_key_on_a_shape_mismatch(golden):
    prompt_encoder, mask_decoder = build(abstract=True)
    sd = {k[3:]: v for k, v in golden.items() if k.startswith("sd/")}
    key = "mask_decoder.transformer.layers.1.cross_attn_token_to_image.k_proj.weight"
    sd[key] = sd[key][:, :-1]
    with pytest.raises(ConversionError, match="transformer/layers/1/cross_attn_token_to_image/key"):
        load_decoder(prompt_encoder, mask_decoder, from_original(sd))
    sd = {k[3:]: v for k, v in golden.items() if k.startswith("sd/")}
    sd["prompt_encoder.not_a_point_embed.weight"] = np.zeros((2, DIM), np.float32)
    with pytest.raises(ConversionError, match="prompt_encoder.not_a_point_embed.weight"):
        from_original(sd)
    sd = {k[3:]: v for k, v in golden.items() if k.startswith("sd/")}
    sd["mask_decoder.extra.weight"] = np.zeros((2,), np.float32)
    with pytest.raises(ConversionError, match="mask_decoder.extra.weight"):
        from_original(sd)


# ----------------------------------------------------------------------------- transformers


def _hf_model(torch, transformers):
    """A tiny SamModel with every weight redrawn (transformers' 0.02 init leaves the norms and
    biases trivial) and the Gaussian matrix N(0, 1), as in the released checkpoints."""
    cfg = transformers.SamConfig(
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            output_channels=DIM,
            image_size=IMAGE,
            patch_size=IMAGE // GRID,
            num_pos_feats=DIM // 2,
            global_attn_indexes=[0],
            window_size=4,
            mlp_dim=32,
        ),
        prompt_encoder_config=dict(
            hidden_size=DIM,
            image_size=IMAGE,
            patch_size=IMAGE // GRID,
            mask_input_channels=MASK_CHANS,
        ),
        mask_decoder_config=dict(
            hidden_size=DIM,
            mlp_dim=MLP,
            num_hidden_layers=2,
            num_attention_heads=HEADS,
            iou_head_hidden_dim=IOU_HIDDEN,
            layer_norm_eps=1e-5,  # the original's nn.LayerNorm (transformers: 1e-6 in norm1-4)
        ),
    )
    torch.manual_seed(0)
    model = transformers.SamModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("vision_encoder"):
                continue
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape))
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.shape[0] > 1 else 1
                p.copy_(torch.randn(p.shape) / np.sqrt(fan_in))
    return model


@pytest.fixture(scope="module")
def hf(torch, transformers):
    model = _hf_model(torch, transformers)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    prompt_encoder, mask_decoder = build(abstract=True)
    load_decoder(prompt_encoder, mask_decoder, from_transformers(sd))
    return model, prompt_encoder, mask_decoder


HF_CASES = {  # case -> (points, boxes, masks, multimask_output)
    "box": (False, True, False, True),
    "points": (True, False, False, True),
    "points_box": (True, True, False, False),
    "mask_points": (True, False, True, False),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_parity_with_transformers(torch, hf, case):
    """One image, two prompts (transformers' point_batch_size 2, the predictor's path; the
    shapes of the golden cases, so the compiled decoders are shared). transformers takes one
    mask per image: radjax gets it once per prompt."""
    model, prompt_encoder, mask_decoder = hf
    use_points, use_boxes, use_masks, multimask = HF_CASES[case]
    rng = np.random.default_rng(len(case))
    b = 2
    image = rng.standard_normal((1, DIM, GRID, GRID)).astype(np.float32)
    coords = (rng.random((b, 3, 2)) * IMAGE).astype(np.float32)
    labels = np.array([[1, 0, -1], [1, 1, 0]], np.int64)
    corner = rng.random((b, 2)) * IMAGE / 2
    boxes = np.concatenate([corner, corner + 4 + rng.random((b, 2)) * IMAGE / 2], 1)
    boxes = boxes.astype(np.float32)
    mask = (3 * rng.standard_normal((1, 1, 4 * GRID, 4 * GRID))).astype(np.float32)
    kwargs = {}
    if use_points:
        kwargs |= dict(
            input_points=torch.tensor(coords[None]), input_labels=torch.tensor(labels[None])
        )
    if use_boxes:
        kwargs["input_boxes"] = torch.tensor(boxes[None])
    if use_masks:
        kwargs["input_masks"] = torch.tensor(mask)
    with torch.no_grad():
        out = model(image_embeddings=torch.tensor(image), multimask_output=multimask, **kwargs)
        hf_pe = model.get_image_wide_positional_embeddings()
    assert rel_err(prompt_encoder.dense_pe(), channels_last(hf_pe.numpy())) < 1e-5

    _, _, got_masks, got_iou = decode(
        (prompt_encoder, mask_decoder),
        channels_last(image),
        multimask=multimask,
        points=coords if use_points else None,
        labels=labels if use_points else None,
        boxes=boxes if use_boxes else None,
        masks=np.repeat(channels_last(mask), b, 0) if use_masks else None,
    )
    want_masks = out.pred_masks[0].numpy()  # (prompts, M, 4h, 4w)
    assert got_masks.shape == channels_last(want_masks).shape
    assert rel_err(got_masks, channels_last(want_masks)) < 1e-4
    assert rel_err(got_iou, out.iou_scores[0].numpy()) < 1e-4


def test_transformers_tied_gaussian_matrix_must_agree(torch, transformers):
    sd = {k: v.numpy() for k, v in _hf_model(torch, transformers).state_dict().items()}
    sd["shared_image_embedding.positional_embedding"] = (
        sd["shared_image_embedding.positional_embedding"] + 1.0
    )
    with pytest.raises(ConversionError, match="shared_image_embedding.positional_embedding"):
        from_transformers(sd)


# ----------------------------------------------------------------------------- 3D (SegVol)


def test_3d_smoke():
    grid, image = (2, 4, 6), (8, 16, 24)
    prompt_encoder, mask_decoder = build(
        ndim=3,
        grid=grid,
        image=image,
        upscale_norm="joint",
        image_embedding_size=grid,
        text_dim=12,
    )
    pe = np.asarray(prompt_encoder.dense_pe())
    assert pe.shape == (1, *grid, DIM)
    # every axis moves the encoding, and the point coordinates (x, y, z) run along the
    # axes (1, 0, 2): a point at the centre of cell (i0, i1, i2) of a grid-sized image is
    # encoded as that cell
    for axis in range(3):
        assert not np.allclose(np.take(pe, 0, axis=1 + axis), np.take(pe, 1, axis=1 + axis))
    cell = (1, 2, 3)
    point = jnp.asarray([[cell[1], cell[0], cell[2]]], jnp.float32) + 0.5
    np.testing.assert_allclose(
        prompt_encoder.pe_layer.with_coords(point, grid)[0], pe[0][cell], atol=1e-5
    )

    b = 2
    rng = np.random.default_rng(0)
    coords = (rng.random((b, 2, 3)) * np.array([16, 8, 24])).astype(np.float32)  # (x, y, z)
    labels = np.array([[1, 0], [1, -1]])
    boxes = np.concatenate([coords[:, 0], coords[:, 0] + 2], 1)
    masks = rng.standard_normal((b, *(4 * g for g in grid), 1)).astype(np.float32)
    text = rng.standard_normal((b, DIM)).astype(np.float32)
    image_embeddings = rng.standard_normal((b, *grid, DIM)).astype(np.float32)  # one per row
    align = rng.standard_normal((b, 12)).astype(np.float32)
    run = functools.partial(
        decode,
        (prompt_encoder, mask_decoder),
        image_embeddings,
        points=coords,
        labels=labels,
        boxes=boxes,
        masks=masks,
        text_embedding=text,
    )
    sparse, dense, masks_out, iou = run(multimask=True, text=align)
    assert sparse.shape == (b, 2 + 2 + 1, DIM) and dense.shape == (b, *grid, DIM)
    np.testing.assert_array_equal(sparse[:, -1], text)
    assert masks_out.shape == (b, *(4 * g for g in grid), 3) and iou.shape == (b, 3)
    assert mask_decoder.output_upscaling.norm.scale.shape == (*(2 * g for g in grid), DIM // 4)
    _, _, plain, iou_plain = run(multimask=True)
    assert not np.allclose(masks_out, plain)  # the text term reaches every mask
    np.testing.assert_array_equal(iou, iou_plain)


def test_bad_prompt_shapes_are_named():
    prompt_encoder, mask_decoder = build()
    with pytest.raises(ValueError, match="boxes"):
        prompt_encoder(boxes=np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="masks"):
        prompt_encoder(masks=np.zeros((2, 16, 16, 1), np.float32))
    sparse, dense = prompt_encoder(boxes=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="image embeddings"):
        mask_decoder(
            jnp.zeros((3, GRID, GRID, DIM)),
            prompt_encoder.dense_pe(),
            sparse,
            dense,
            multimask_output=True,
        )


def test_sharded_decoder_equals_unsharded(converted):
    """fsdp 2 x tensor 4, one image embedding per prompt row (SegVol's layout)."""
    rng = np.random.default_rng(1)
    b = 4
    image = rng.standard_normal((b, GRID, GRID, DIM)).astype(np.float32)
    coords = (rng.random((b, 3, 2)) * IMAGE).astype(np.float32)
    labels = np.tile(np.array([[1, 0, -1]], np.int32), (b, 1))
    boxes = np.concatenate([coords[:, 0], coords[:, 0] + 8], 1)

    def forward(modules, image, coords, labels, boxes):
        prompt_encoder, mask_decoder = modules
        sparse, dense = prompt_encoder(coords, labels, boxes)
        return mask_decoder(image, prompt_encoder.dense_pe(), sparse, dense, multimask_output=True)

    run = assert_sharded_equals_unsharded(
        nnx.List(converted), image, coords, labels, boxes, fn=forward, atol=1e-5, atol_relative=True
    )
    kernel = run.state[1]["transformer"]["layers"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert not kernel.sharding.is_fully_replicated
