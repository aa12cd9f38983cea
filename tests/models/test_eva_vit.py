"""Uni-Med's EVA ViT-g as a configuration of radjax's ViT (``radjax.convert.eva_vit``), against
golden outputs of the ORIGINAL ``uni_med/models/eva_vit.py``.

``tests/golden/data/eva_vit.npz`` comes from ``tests/golden/make_eva_golden.py``: the original
``VisionTransformer`` with the arguments of ``create_eva_vit_g`` (q/v bias, LayerNorm eps
1e-6, patch 14, no final norm) on a tiny size (28 px, width 48, 2 blocks, 4 heads, MLP 96),
its output (the raw last block), the original ``ln_vision`` of it, and the parameter count of
the paper tower built by the original code. Needs numpy and jax only.
"""

import dataclasses
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.eva_vit import EVA_VIT_G, from_eva_vit, ln_vision, vit_config
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.vit import ViT, ViTConfig
from tests.parity import assert_close, rel_err

GOLDEN = pathlib.Path(__file__).parents[1] / "golden" / "data" / "eva_vit.npz"
TOL = 1e-5
PAPER_PARAMS = 985_894_528  # the original ViT-g, counted by make_eva_golden.py


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def state_dict(golden: dict) -> dict[str, np.ndarray]:
    return {k[len("sd/") :]: v for k, v in golden.items() if k.startswith("sd/")}


def tiny_config(golden: dict, **overrides) -> ViTConfig:
    return vit_config(json.loads(str(golden["meta/config"])), **overrides)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def forward(model: nnx.Module, image: np.ndarray) -> jax.Array:
    """(B, C, H, W) original layout -> the model's (B, H, W, C) input; one compilation per
    configuration (the GraphDef is the static argument)."""
    return _apply(*nnx.split(model), jnp.asarray(image.transpose(0, 2, 3, 1)))


def converted(golden: dict, sd: dict | None = None, **overrides) -> jax.Array:
    model = ViT(tiny_config(golden, **overrides), rngs=nnx.Rngs(0))
    assign(model, from_eva_vit(state_dict(golden) if sd is None else sd))
    return forward(model, golden["in/image"])


def test_tiny_config_is_the_original_quirks(golden):
    cfg = tiny_config(golden)
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.patch_size) == (48, 2, 4, 96, 14)
    assert cfg.qkv_bias == "qv" and cfg.layer_norm_eps == 1e-6
    assert cfg.posemb == "clip" and cfg.cls_token and not cfg.final_norm and not cfg.pre_norm


def test_parity_with_the_original(golden):
    model = ViT(tiny_config(golden), rngs=nnx.Rngs(0))
    assign(model, from_eva_vit(state_dict(golden)))

    @jax.jit
    def run(state, x):
        model = nnx.merge(graphdef, state)
        h = model.embed(x)
        return model(x), h, model.encoder.layers[0](h)[0]

    graphdef, state = nnx.split(model)
    got, embedded, block0 = run(state, jnp.asarray(golden["in/image"].transpose(0, 2, 3, 1)))
    # the patch embedding is the block input less CLS and position
    pos = np.asarray(model.pos_embed.embedding[...])
    assert_close(embedded[:, 1:] - pos[1:], golden["mid/patch_embed"], TOL, "patch embedding")
    assert_close(block0, golden["mid/blocks/0"], TOL, "block 0")
    assert got.shape == golden["out/tokens"].shape == (2, 1 + 4, 48)
    err = assert_close(got, golden["out/tokens"], TOL, "tower output")
    print(f"EVA tower rel err {err:.2e}")


def test_ln_vision_parity(golden):
    assert float(golden["meta/ln_vision_eps"]) == 1e-5
    norm = ln_vision(48, rngs=nnx.Rngs(0))
    got = norm(jnp.asarray(golden["out/tokens"]))
    err = assert_close(got, golden["out/ln_vision"], TOL, "ln_vision")
    print(f"ln_vision rel err {err:.2e}")
    # the tower's own eps (1e-6) here would be a different norm: the golden tells them apart
    tokens = jnp.asarray(golden["out/tokens"]) * 1e-3  # small variance makes eps matter
    wrong = nnx.LayerNorm(48, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))
    assert rel_err(wrong(tokens), norm(tokens)) > 1e-3


def test_key_has_no_bias_and_query_value_do(golden):
    model = ViT(tiny_config(golden), rngs=nnx.Rngs(0))
    attn = model.encoder.layers[0].attn
    assert attn.key.bias is None
    assert attn.query.bias is not None and attn.value.bias is not None
    paths = from_eva_vit(state_dict(golden))
    assert "encoder/layers/0/attn/key/bias" not in paths
    np.testing.assert_array_equal(
        paths["encoder/layers/1/attn/value/bias"], golden["sd/blocks.1.attn.v_bias"]
    )


def test_bias_placement_shows_in_the_outputs(golden):
    """Swapping q_bias and v_bias, or leaving v_bias out, breaks parity; a k bias would
    not (q.(k + b) shifts a query's scores by a constant, which the softmax removes),
    so the k bias is checked structurally above, and a fused one is rejected below."""
    sd = state_dict(golden)
    swapped = dict(sd)
    for i in range(2):
        q, v = f"blocks.{i}.attn.q_bias", f"blocks.{i}.attn.v_bias"
        swapped[q], swapped[v] = sd[v], sd[q]
    assert rel_err(converted(golden, swapped), golden["out/tokens"]) > 1e-3  # 1.9e-2
    zero_v = dict(sd) | {f"blocks.{i}.attn.v_bias": np.zeros(48, np.float32) for i in range(2)}
    assert rel_err(converted(golden, zero_v), golden["out/tokens"]) > 1e-3  # 1.0e-2


def test_fused_qkv_bias_is_rejected(golden):
    sd = state_dict(golden) | {"blocks.1.attn.qkv.bias": np.zeros(144, np.float32)}
    with pytest.raises(ConversionError, match=r"blocks\.1\.attn\.qkv\.bias: a fused q/k/v bias"):
        from_eva_vit(sd)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"blocks.0.gamma_1": np.ones(48)}, r"blocks\.0\.gamma_1: layer scale"),
        ({"rel_pos_bias.relative_position_bias_table": np.ones((3, 4))}, "relative position"),
        ({"norm.weight": np.ones(48)}, r"1 keys are no parameter of the model: \['norm\.weight'\]"),
    ],
)
def test_bad_keys_are_named(golden, extra, message):
    with pytest.raises(ConversionError, match=message):
        from_eva_vit(state_dict(golden) | extra)


def test_missing_key_and_extra_blocks(golden):
    sd = state_dict(golden)
    model = ViT(tiny_config(golden), rngs=nnx.Rngs(0))
    partial = {k: v for k, v in sd.items() if k != "blocks.1.attn.q_bias"}
    with pytest.raises(ConversionError, match=r"missing \(1\):\n    encoder/layers/1/attn/query"):
        assign(model, from_eva_vit(partial))
    # a file with one block more (as eva_vit_g.pth has for ViT-g), under a model prefix
    extra = {f"visual_encoder.{k}": v for k, v in sd.items()}
    extra |= {k.replace("blocks.1.", "visual_encoder.blocks.2."): v for k, v in sd.items()
              if k.startswith("blocks.1.")}  # fmt: skip
    with pytest.raises(ConversionError, match="unexpected"):
        assign(model, from_eva_vit(extra))
    assign(model, from_eva_vit(extra, depth=2))
    assert_close(forward(model, golden["in/image"]), golden["out/tokens"], TOL)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(init_values=0.1), "init_values=0.1 is not supported"),
        (dict(use_rel_pos_bias=True), "use_rel_pos_bias"),
        (dict(drop_rate=0.1), "drop_rate"),
        (dict(embed_dims=8), r"unknown VisionTransformer arguments \['embed_dims'\]"),
    ],
)
def test_bad_original_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        vit_config(args)


def test_bad_qkv_bias_mode():
    with pytest.raises(ValueError, match="qkv_bias 'qk'"):
        dataclasses.replace(vit_config(), qkv_bias="qk")


def test_paper_tower_shapes_and_parameter_count(golden):
    paper = json.loads(str(golden["meta/paper_config"]))
    assert {k: paper[k] for k in EVA_VIT_G} == EVA_VIT_G  # what the original's factory passes
    cfg = vit_config()
    assert cfg == vit_config(paper)  # the same ViT from the original's own arguments
    assert (cfg.depth, cfg.width, cfg.num_heads, cfg.width // cfg.num_heads) == (39, 1408, 16, 88)
    assert cfg.mlp_dim == int(golden["meta/paper_mlp_dim"]) == 6144
    assert cfg.layer_norm_eps == 1e-6 and cfg.grid == (16, 16, 1)
    # the Rngs as an argument: tracing the constructor is 3x faster than with it inside
    model = nnx.eval_shape(lambda rngs: ViT(cfg, rngs=rngs), nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    assert count == int(golden["meta/paper_param_count"]) == PAPER_PARAMS
    assert len(model.encoder.layers) == 39
    assert model.pos_embed.embedding.shape == (257, 1408)
    assert model.encoder.layers[38].attn.key.bias is None
    image = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(functools.partial(_apply, nnx.graphdef(model)), nnx.state(model), image)
    assert out.shape == (2, 257, 1408)
