"""RadFM's vision path against golden outputs of the original code.

``tests/golden/data/radfm_vision.npz`` comes from ``tests/golden/make_golden.py``: the
original ``my_embedding_layer.MyEmbedding`` ('Text' mode; ``vit_3d.ViT``,
``helpers.PerceiverResampler``, ``fc``) at a pinned commit, on a small config. Its state dict,
under ``embedding_layer.``, is converted with ``convert.vision_from_radfm`` and
``RadFMVision`` must reproduce the patch embedding, position table, every ViT layer's input
and attention probabilities, the perceiver's per-layer latents and output, and the vision
tokens, on a volume and on a 2D image. Needs numpy and jax only; the last test also checks the
benchmark's torch stand-in (tests/references/radfm_torch.py) against the same golden outputs.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.torch_io import assign
from radjax.papers.radfm.convert import vision_from_radfm
from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig
from tests.parity import rel_err

GOLDEN = pathlib.Path(__file__).parents[2] / "golden" / "data" / "radfm_vision.npz"
TOL = 1e-5


def to_radjax(images: np.ndarray) -> np.ndarray:
    """The original's (B, S, C, H, W, D) -> radjax (B, S, D, H, W, C)."""
    return np.ascontiguousarray(images.transpose(0, 1, 5, 3, 4, 2))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def state_dict(golden: dict) -> dict[str, np.ndarray]:
    """The original MyEmbedding's keys as they sit in a RadFM checkpoint."""
    return {
        f"embedding_layer.{k[len('sd/') :]}": v for k, v in golden.items() if k.startswith("sd/")
    }


def vision_config(golden: dict) -> RadFMVisionConfig:
    cfg = json.loads(str(golden["meta/config"]))
    emb, vit, per = cfg["embedding"], cfg["vit"], cfg["perceiver"]
    return RadFMVisionConfig(
        image_size=vit["image_size"],
        frames=vit["frames"],
        patch_size=emb["patch_size"],
        frame_patch_size=emb["frame_patch_size"],
        dim=emb["vis_dim"],
        depth=vit["depth"],
        heads=vit["heads"],
        dim_head=vit["dim_head"],
        mlp_dim=vit["mlp_dim"],
        num_latents=emb["perceiver_num"],
        perceiver_depth=per["depth"],
        perceiver_heads=per["heads"],
        perceiver_dim_head=per["dim_head"],
        llm_dim=emb["embedding_dim"],
    )


@pytest.fixture(scope="module")
def vision(golden) -> RadFMVision:
    model = RadFMVision(vision_config(golden), rngs=nnx.Rngs(0))
    assign(model, vision_from_radfm(state_dict(golden)), strict=True)
    model.eval()
    return model


def jit_call(module: nnx.Module, fn, *args):
    """fn(module, *args) compiled as one program."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)


def test_golden_file_records_the_original_commit(golden):
    assert str(golden["meta/repo"]) == "chaoyi-wu/RadFM"
    assert str(golden["meta/commit"]) == "9efba84cced9ffdcbce00d6005f255414ffa8c36"


def _vit_parts(vit, volumes):
    """(N, D, H, W, C) -> patch embedding, position table, encoder output, per-layer probs."""
    embedded, grid = vit.patch_embed_3d(volumes)
    pos = vit.pos_embed(grid)
    out, probs, _ = vit.encoder(embedded + pos)
    return embedded, pos, out, probs


def test_vit_patch_embedding_positions_and_layers(golden, vision):
    images = to_radjax(golden["in/vision_x"])
    volumes = images.reshape(-1, *images.shape[2:])
    embedded, pos, out, probs = jit_call(vision.vision_encoder, _vit_parts, volumes)
    assert rel_err(embedded, golden["mid/vit/patch_embed/out"]) < TOL
    assert rel_err(jnp.broadcast_to(pos, embedded.shape), golden["mid/vit/pos"]) < TOL
    assert rel_err(out, golden["mid/vit/out"]) < TOL
    for i, p in enumerate(probs):
        assert rel_err(p, golden[f"mid/vit/layers/{i}/attn/probs"]) < TOL, i
    # each layer's input: the previous layer's output, layer by layer
    x = golden["mid/vit/layers/0/in"]
    for i, layer in enumerate(vision.vision_encoder.encoder.layers):
        assert rel_err(x, golden[f"mid/vit/layers/{i}/in"]) < TOL, i
        x = jit_call(layer, lambda m, a: m(a)[0], x)
    assert rel_err(x, golden["mid/vit/out"]) < TOL


def test_perceiver_layers(golden, vision):
    perceiver = vision.perceiver
    tokens = golden["mid/perceiver/in"].reshape(-1, *golden["mid/perceiver/in"].shape[-2:])
    latents_shape = golden["mid/perceiver/layers/0/latents_in"].shape
    latents = np.broadcast_to(
        np.asarray(perceiver.latents[...]), (tokens.shape[0],) + latents_shape[-2:]
    )
    for i, layer in enumerate(perceiver.layers):
        want = golden[f"mid/perceiver/layers/{i}/latents_in"]
        assert rel_err(np.reshape(latents, want.shape), want) < TOL, i
        latents = jit_call(layer, lambda m, t, l: m(t, l), tokens, latents)
    out = jit_call(perceiver, lambda m, t: m(t), tokens)
    want = golden["mid/perceiver/out"]
    assert rel_err(np.reshape(out, want.shape), want) < TOL


def _vision_tokens(vision, images: np.ndarray) -> np.ndarray:
    """(B, S, D, H, W, C) -> (B, S * num_latents, llm_dim), the original's token order."""
    tokens = jit_call(vision, lambda m, x: m(x), images)
    return np.asarray(tokens).reshape(tokens.shape[0], -1, tokens.shape[-1])


@pytest.mark.parametrize("prefix, image_key", [("", "in/vision_x"), ("2d/", "in/image_2d")])
def test_vision_tokens(golden, vision, prefix, image_key):
    """Volumes, and 2D images (depth 1) that the original sees resized to depth 4."""
    tokens = _vision_tokens(vision, to_radjax(golden[image_key]))
    assert rel_err(tokens, golden[f"out/{prefix}vision_tokens"]) < TOL
    # MyEmbedding's output: id V+2+j is vision token j; ids V, V+1 the figure tokens
    ids = golden["in/text_input"]
    v = golden["sd/weight"].shape[0]
    embeddings = golden[f"out/{prefix}embeddings"]
    image = ids >= v + 2
    assert image.any()
    got = np.take_along_axis(tokens, np.where(image, ids - v - 2, 0)[..., None], axis=1)
    assert rel_err(got[image], embeddings[image]) < TOL
    figure = (ids >= v) & ~image
    if figure.any():
        rows = golden["sd/figure_token_weight"][ids[figure] - v]
        np.testing.assert_allclose(embeddings[figure], rows, rtol=1e-6)


def test_torch_reference_reproduces_the_original(golden):
    """The benchmark's torch stand-in, loaded with the original's weights, gives the
    original's vision tokens (so benchmarks/radfm.py times a faithful torch side)."""
    torch = pytest.importorskip("torch")
    ref_lib = pytest.importorskip("tests.references.radfm_torch")
    reference = ref_lib.VisionEmbedding(vision_config(golden))
    sd = {k[len("sd/") :]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("sd/")}
    own = reference.state_dict()
    reference.load_state_dict({k: sd[k] for k in own})
    reference.eval()
    for prefix, image_key in (("", "in/vision_x"), ("2d/", "in/image_2d")):
        images = torch.from_numpy(golden[image_key])
        if prefix:  # the original's nearest resize of a 2D image to depth frame_patch_size
            flat = images.flatten(0, 1)
            images = torch.nn.functional.interpolate(flat, size=(*flat.shape[2:4], 4))[None]
        with torch.no_grad():
            tokens = reference(images).numpy()
        want = golden[f"out/{prefix}vision_tokens"]
        assert rel_err(tokens.reshape(want.shape), want) < TOL, prefix
