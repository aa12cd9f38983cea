"""SAM's image encoder (``radjax.models.sam.image_encoder``) and its converter
(``radjax.convert.sam_image_encoder``).

Parity: against golden outputs of the ORIGINAL segment-anything ``ImageEncoderViT`` and
``get_rel_pos`` (``tests/golden/data/sam_image_encoder.npz``, written by
``tests/golden/make_sam_encoder_golden.py``: numpy only), and against transformers'
``SamModel`` vision encoder on a tiny random config (skipped without torch / transformers).
The golden file also holds the original ViT-B / L / H state-dict shapes and parameter counts
(built on torch's meta device), which the config, inference and size-check tests read.
"""

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.sam_image_encoder import (
    check_vision_config,
    from_sam_image_encoder,
    infer_vision_config,
    load_image_encoder,
)
from radjax.convert.torch_io import ConversionError
from radjax.models.sam.image_encoder import (
    SamImageEncoder,
    SamVisionConfig,
    get_rel_pos,
    vision_config,
    window_partition,
    window_unpartition,
)
from tests.parity import assert_close, rel_err
from tests.sharded import assert_sharded_equals_unsharded, jit_build

GOLDEN = pathlib.Path(__file__).parents[1] / "golden" / "data" / "sam_image_encoder.npz"
TOL = 1e-5  # vs the original (f32)
HF_TOL = 1e-4  # vs transformers
NAMES = ("vit_b", "vit_l", "vit_h")
TINY = SamVisionConfig(
    image_size=64,
    patch_size=8,
    width=32,
    depth=4,
    num_heads=4,
    out_channels=16,
    window_size=3,  # the 8 x 8 map pads to 9 x 9
    global_attn_indexes=(1, 3),
)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def state_dict(golden: dict, case: str) -> dict[str, np.ndarray]:
    prefix = f"{case}/sd/"
    return {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}


def case_config(golden: dict, case: str, **overrides) -> SamVisionConfig:
    """The radjax config of a golden case, from the original's constructor arguments."""
    a = json.loads(str(golden["meta/config"]))[case]
    fields = dict(
        image_size=a["img_size"],
        patch_size=a["patch_size"],
        width=a["embed_dim"],
        depth=a["depth"],
        num_heads=a["num_heads"],
        mlp_ratio=a["mlp_ratio"],
        out_channels=a["out_chans"],
        qkv_bias=a["qkv_bias"],
        use_rel_pos=a["use_rel_pos"],
        window_size=a["window_size"],
        global_attn_indexes=tuple(a["global_attn_indexes"]),
    )
    return SamVisionConfig(**(fields | overrides))


def meta_state_dict(golden: dict, name: str) -> dict[str, np.ndarray]:
    """The original ViT-B / L / H encoder keys and shapes as zero-strided arrays (no memory)."""
    shapes = json.loads(str(golden[f"meta/{name}/shapes"]))
    return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


def run(model: SamImageEncoder, pixels: np.ndarray) -> dict[str, jax.Array]:
    """(B, 3, H, W) original layout -> the patch embedding, each block's output and the
    embeddings (channels-first, as the original), jitted."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def stages(state, x):
        m = nnx.merge(graphdef, state)
        out = {"patch_embed": m.patch_embed(x)}
        h = m.embed(x)
        for i, block in enumerate(m.blocks):
            h = out[f"blocks/{i}"] = block(h)
        out["embeddings"] = m.neck(h).transpose(0, 3, 1, 2)
        return out

    return stages(state, jnp.asarray(pixels.transpose(0, 2, 3, 1)))


def converted(golden: dict, case: str, sd: dict | None = None, **overrides) -> dict:
    model = load_image_encoder(
        state_dict(golden, case) if sd is None else sd, case_config(golden, case, **overrides)
    )
    return run(model, golden[f"{case}/in/pixels"])


# ----------------------------------------------------------------------------- the original


@pytest.mark.parametrize("case", ["pad", "plain"])
def test_parity_with_the_original(golden, case):
    """Every stage against the original's forward hooks: windowed blocks (padded in 'pad'),
    global blocks, relative positions ('pad'), no q/k/v bias ('plain')."""
    cfg = case_config(golden, case)
    got = run(load_image_encoder(state_dict(golden, case), cfg), golden[f"{case}/in/pixels"])
    assert got["embeddings"].shape == golden[f"{case}/out/embeddings"].shape
    assert got["embeddings"].shape == (2, cfg.out_channels, cfg.grid, cfg.grid)
    assert_close(got["patch_embed"], golden[f"{case}/mid/patch_embed"], TOL, "patch embed")
    for i in range(cfg.depth):
        kind = "windowed" if cfg.block_window(i) else "global"
        assert_close(got[f"blocks/{i}"], golden[f"{case}/mid/blocks/{i}"], TOL, f"{kind} {i}")
    err = assert_close(got["embeddings"], golden[f"{case}/out/embeddings"], TOL, "embeddings")
    print(f"SAM encoder '{case}' vs the original: rel err {err:.2e}")


def test_golden_configs_are_what_inference_reads(golden):
    pad = case_config(golden, "pad")
    assert infer_vision_config(state_dict(golden, "pad")) == pad
    assert pad.grid % pad.window_size != 0  # windows need padding
    assert pad.block_window(0) == 3 and pad.block_window(1) == 0
    plain = case_config(golden, "plain")
    with pytest.raises(ConversionError, match=r"does not hold \['num_heads', 'window_size'"):
        infer_vision_config(state_dict(golden, "plain"))
    given = dict(num_heads=3, window_size=4, global_attn_indexes=(1,))
    assert infer_vision_config(state_dict(golden, "plain"), **given) == plain
    assert plain.mlp_dim == 60 and not plain.qkv_bias


def test_get_rel_pos_matches_the_original(golden):
    """Fitting tables, tables the original resizes by linear interpolation (shorter and
    longer than 2 max(q, k) - 1), and q != k sizes (scaled, truncated coordinates)."""
    cases = [k.split("/")[1] for k in golden if k.startswith("relpos/") and k.endswith("/out")]
    assert len(cases) == 7
    for case in cases:
        q, k, length = map(int, case.split("_"))
        got = get_rel_pos(q, k, jnp.asarray(golden[f"relpos/{case}/table"]))
        assert got.shape == (q, k, 4)
        assert_close(got, golden[f"relpos/{case}/out"], TOL, case)
    # an interpolated table is not the plain lookup of a fitting one
    table = jnp.asarray(golden["relpos/3_3_9/table"])
    assert rel_err(get_rel_pos(3, 3, table), get_rel_pos(5, 5, table)[:3, :3]) > 1e-2


def test_window_partition_pads_and_round_trips():
    x = jnp.arange(2 * 8 * 7 * 3, dtype=jnp.float32).reshape(2, 8, 7, 3) + 1
    windows, padded = window_partition(x, 3)
    assert padded == (9, 9) and windows.shape == (2 * 3 * 3, 3, 3, 3)
    np.testing.assert_array_equal(windows[1], x[0, 0:3, 3:6])  # row-major windows
    np.testing.assert_array_equal(windows[8, 2, :], 0)  # bottom-right padding is zeros
    np.testing.assert_array_equal(window_unpartition(windows, 3, padded, (8, 7)), x)


def test_swapped_weights_break_parity(golden):
    """A swapped norm, a swapped relative-position axis, or global attention where the
    original windows, each moves the output far beyond the tolerance."""
    want = golden["pad/out/embeddings"]
    sd = state_dict(golden, "pad")
    norms = dict(sd)
    for leaf in ("weight", "bias"):
        a, b = f"blocks.2.norm1.{leaf}", f"blocks.2.norm2.{leaf}"
        norms[a], norms[b] = sd[b], sd[a]
    assert rel_err(converted(golden, "pad", norms)["embeddings"], want) > 1e-3
    axes = dict(sd)
    axes["blocks.0.attn.rel_pos_h"] = sd["blocks.0.attn.rel_pos_w"]
    axes["blocks.0.attn.rel_pos_w"] = sd["blocks.0.attn.rel_pos_h"]
    assert rel_err(converted(golden, "pad", axes)["embeddings"], want) > 1e-3
    plain = converted(golden, "plain", global_attn_indexes=(0, 1))["embeddings"]
    assert rel_err(plain, golden["plain/out/embeddings"]) > 1e-3


# ----------------------------------------------------------------------------- transformers


def _randomised(torch, module) -> None:
    """Non-trivial values everywhere. transformers initialises SAM's linear and conv weights
    N(0, 1e-10) (``initializer_range``), which leaves only biases and norms in the output:
    weights are drawn N(0, 1 / fan_in), norms and biases get N(0, 0.1) noise, position
    tables N(0, 0.5)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("pos_embed") or "rel_pos" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)


def test_parity_with_transformers_sam_model(torch, transformers):
    vision = transformers.SamVisionConfig(
        hidden_size=TINY.width,
        output_channels=TINY.out_channels,
        num_hidden_layers=TINY.depth,
        num_attention_heads=TINY.num_heads,
        image_size=TINY.image_size,
        patch_size=TINY.patch_size,
        window_size=TINY.window_size,
        global_attn_indexes=list(TINY.global_attn_indexes),
        num_pos_feats=8,
    )
    config = transformers.SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2),
    )
    torch.manual_seed(0)
    ref = transformers.SamModel(config).eval()
    _randomised(torch, ref.vision_encoder)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = ref.vision_encoder(torch.tensor(x)).last_hidden_state.numpy()
    # the whole SamModel state dict: only the vision_encoder keys are read
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert any(k.startswith("prompt_encoder.") for k in sd)
    model = load_image_encoder(sd)
    assert model.cfg == TINY
    got = run(model, x)["embeddings"]
    assert want.std() > 0.5  # the weights, not only the last norm's bias, shape the output
    err = assert_close(got, want, HF_TOL, "vs transformers")
    print(f"SAM encoder vs transformers SamModel.vision_encoder: rel err {err:.2e}")


def test_both_key_layouts_give_the_same_paths(golden):
    sd = state_dict(golden, "pad")
    paths = from_sam_image_encoder(sd)
    prefixed = from_sam_image_encoder({f"image_encoder.{k}": v for k, v in sd.items()}
                                      | {"mask_decoder.iou_token.weight": np.zeros((1, 16))})  # fmt: skip
    assert paths.keys() == prefixed.keys()
    assert paths["patch_embed/proj/kernel"].shape == (8, 8, 3, 32)  # (O, I, kh, kw) -> HWIO
    assert paths["blocks/0/attn/qkv/kernel"].shape == (32, 96)
    np.testing.assert_array_equal(
        paths["blocks/0/attn/qkv/kernel"], sd["blocks.0.attn.qkv.weight"].T
    )
    assert paths["neck/norm2/scale"] is not None and "neck/conv2/bias" not in paths


# ----------------------------------------------------------------------------- sizes and errors


@pytest.mark.parametrize("name", NAMES)
def test_paper_configs_match_the_original(golden, name):
    """vision_config(name) is what infer_vision_config reads from the original encoder's
    shapes (build_sam on the meta device), with the original's parameter count."""
    sd = meta_state_dict(golden, name)
    cfg = vision_config(name)
    assert infer_vision_config(sd) == cfg
    check_vision_config(sd, cfg)
    model = nnx.eval_shape(lambda rngs: SamImageEncoder(cfg, rngs=rngs), nnx.Rngs(0))
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == int(golden[f"meta/{name}/param_count"])
    assert model.blocks[0].attn.rel_pos_h.shape == (27, cfg.head_dim)  # window 14
    g = cfg.global_attn_indexes[0]
    assert model.blocks[g].attn.rel_pos_h.shape == (127, cfg.head_dim)  # the 64 x 64 map
    graphdef, state = nnx.split(model)
    pixels = jax.ShapeDtypeStruct((1, 1024, 1024, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, pixels)
    assert out.shape == (1, 64, 64, 256)  # the 64 x 64 map pads to 70 x 70 windows of 14


def test_paper_parameter_counts(golden):
    counts = {name: int(golden[f"meta/{name}/param_count"]) for name in NAMES}
    assert counts == {"vit_b": 89_670_912, "vit_l": 308_278_272, "vit_h": 637_026_048}


def test_size_mismatch_names_the_key(golden):
    vit_l = meta_state_dict(golden, "vit_l")
    message = (
        r"image_encoder\.patch_embed\.proj\.weight: checkpoint \(1024, 3, 16, 16\) "
        r"!= config \(768, 3, 16, 16\)"
    )
    with pytest.raises(ConversionError, match=message) as info:
        check_vision_config(vit_l, vision_config("vit_b"))
    text = str(info.value)
    assert "config (vit_b)" in text and "(the checkpoint is vit_l)" in text
    assert "keys beyond the config (" in text and "image_encoder.blocks.12." in text
    with pytest.raises(ConversionError, match=message):
        load_image_encoder(vit_l, vision_config("vit_b"))
    # a smaller checkpoint: the blocks it lacks are named
    with pytest.raises(ConversionError, match=r"missing \(\d+\):\n    blocks/12/"):
        check_vision_config(meta_state_dict(golden, "vit_b"), vision_config("vit_l"))


def test_unknown_keys_are_named(golden):
    sd = state_dict(golden, "pad") | {"blocks.1.attn.relative_position_bias_table": np.ones(3)}
    with pytest.raises(ConversionError, match=r"\['blocks\.1\.attn\.relative_position_bias_"):
        from_sam_image_encoder(sd)
    # neither prefix: a bare encoder state dict, so another part's key is unknown
    with pytest.raises(ConversionError, match=r"1 keys .*\['mask_decoder\.iou_token\.weight'\]"):
        from_sam_image_encoder({"mask_decoder.iou_token.weight": np.ones((1, 4))})
    with pytest.raises(ConversionError, match="no image-encoder keys"):
        from_sam_image_encoder({})


def test_bad_inputs_and_configs_are_clear_errors():
    model = nnx.eval_shape(lambda rngs: SamImageEncoder(TINY, rngs=rngs), nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected pixels \(B, 64, 64, 3\).*got \(2, 3, 64, 64\)"):
        model(jnp.ones((2, 3, 64, 64)))
    with pytest.raises(ValueError, match="global_attn_indexes outside"):
        dataclasses.replace(TINY, global_attn_indexes=(4,))
    with pytest.raises(ValueError, match="not in"):
        vision_config("vit_g")


# ----------------------------------------------------------------------------- compute


def _pixels(b: int = 4, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, 64, 64, 3)), jnp.float32)


def test_bf16_compute_keeps_f32_parameters():
    model = jit_build(lambda: SamImageEncoder(TINY, rngs=nnx.Rngs(0)))
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    abstract = nnx.eval_shape(lambda rngs: SamImageEncoder(cfg, rngs=rngs), nnx.Rngs(0))
    bf16 = nnx.merge(nnx.graphdef(abstract), nnx.state(model))
    dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(abstract, nnx.Param))}
    assert dtypes == {jnp.dtype("float32")}
    x = _pixels()
    want = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(model), s)(x))(nnx.state(model), x)
    got = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(bf16), s)(x))(nnx.state(bf16), x)
    assert got.dtype == jnp.bfloat16 and got.shape == (4, 8, 8, 16)
    assert rel_err(got, want) < 5e-2


def test_sharded_forward_equals_unsharded():
    run_ = assert_sharded_equals_unsharded(
        lambda: SamImageEncoder(TINY, rngs=nnx.Rngs(0)), _pixels(), atol=1e-5
    )
    qkv = run_.state["blocks"][0]["attn"]["qkv"]["kernel"].get_value()
    assert not qkv.sharding.is_fully_replicated


def test_jitted_train_step_loss_falls():
    """A few Adam steps toward a fixed target map (remat on: the blocks rematerialise)."""
    cfg = dataclasses.replace(TINY, remat=True)
    model = jit_build(lambda: SamImageEncoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)
    x = _pixels(2, seed=1)
    target = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 16)), jnp.float32)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(params):
            return jnp.mean((nnx.merge(graphdef, params)(x) - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    losses = []
    for _ in range(10):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    rel = grads["blocks"][0]["attn"]["rel_pos_h"].get_value()
    assert float(jnp.abs(rel).max()) > 0  # the relative-position tables learn
