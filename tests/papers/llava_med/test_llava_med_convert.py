"""radjax.papers.llava_med.convert: the original key names onto radjax paths (v1.0 linear
projector + markers, v1.5 mlp2x_gelu + tower inside the checkpoint), v1.0's delta weights,
vocabulary growth as the original's tokenizer set-up, and a fresh run starting from local
CLIP / LLaMA directories and a LLaVA-Med checkpoint."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs.llava_med import get_config
from radjax.convert.torch_io import ConversionError, assign
from radjax.papers.llava_med import convert as K
from radjax.papers.llava_med import data as D
from radjax.papers.llava_med import model as M
from radjax.train import experiment

CLIP = dict(
    image_size=32,
    patch_size=8,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
)


def _config(root, arg="tiny"):
    config = get_config(arg)
    config.data.root = str(root)
    config.data.phantoms.update(num_train=4, num_test=2)
    config.model.vision.update(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    config.model.llm.update(hidden_size=32, intermediate_size=64, num_heads=2)
    experiment.prepare_config(config)
    return config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_med_convert") / "data"
    _config(root)
    return root


def _random_sd(model: M.LlavaMed, projector: str, rng) -> dict[str, np.ndarray]:
    """A state dict in the original's key layout with the shapes of ``model``."""
    d = model.lang_model.cfg
    sd = {
        "model.embed_tokens.weight": rng.normal(size=(d.vocab_size, d.hidden_size)),
        "model.norm.weight": rng.normal(size=d.hidden_size),
        "lm_head.weight": rng.normal(size=(d.vocab_size, d.hidden_size)),
    }
    for i, layer in enumerate(model.lang_model.layers):
        for name in ("q", "k", "v", "o"):
            kernel = getattr(layer.self_attn, f"{name}_proj").kernel
            sd[f"model.layers.{i}.self_attn.{name}_proj.weight"] = rng.normal(
                size=kernel.shape[::-1]
            )
        for name in ("gate", "up", "down"):
            kernel = getattr(layer.mlp, f"{name}_proj").kernel
            sd[f"model.layers.{i}.mlp.{name}_proj.weight"] = rng.normal(size=kernel.shape[::-1])
        for name in ("input", "post_attention"):
            sd[f"model.layers.{i}.{name}_layernorm.weight"] = rng.normal(size=d.hidden_size)
    width, hidden = model.vision.cfg.width, d.hidden_size
    if projector == "linear":
        sd["model.mm_projector.weight"] = rng.normal(size=(hidden, width))
        sd["model.mm_projector.bias"] = rng.normal(size=hidden)
    else:
        sd["model.mm_projector.0.weight"] = rng.normal(size=(hidden, width))
        sd["model.mm_projector.0.bias"] = rng.normal(size=hidden)
        sd["model.mm_projector.2.weight"] = rng.normal(size=(hidden, hidden))
        sd["model.mm_projector.2.bias"] = rng.normal(size=hidden)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def _abstract(config):
    return nnx.eval_shape(lambda: M.build_model(config, rngs=nnx.Rngs(0)))


def test_v10_checkpoint_fills_everything_but_the_tower(root):
    config = _config(root)
    model = _abstract(config)
    sd = _random_sd(model, "linear", np.random.default_rng(0))
    values = K.from_llava_state_dict(
        sd,
        M.decoder_config(config.model),
        projector="linear",
        start_id=config.model.start_id,
        end_id=config.model.end_id,
    )
    assert not any(k.startswith("vision/") for k in values)  # v1.0 keeps the tower in a list
    assign(model, values, strict=False)
    np.testing.assert_array_equal(model.projector.kernel[...], sd["model.mm_projector.weight"].T)
    table = sd["model.embed_tokens.weight"]
    start, end = config.model.start_id, config.model.end_id
    np.testing.assert_array_equal(model.image_markers[...], table[[start, end]])
    np.testing.assert_array_equal(model.lang_model.lm_head.kernel[...], sd["lm_head.weight"].T)
    with pytest.raises(ConversionError, match=r"belong to no part.*model\.vision_tower\.x"):
        K.from_llava_state_dict(
            {"model.vision_tower.x": np.zeros(1)},
            M.decoder_config(config.model),
            projector="linear",
        )
    with pytest.raises(ConversionError, match=r"model\.mm_projector\.0\.weight: not a key"):
        K.projector_params({"model.mm_projector.0.weight": np.zeros((2, 2))}, "linear")


def test_v15_checkpoint_with_the_tower_fills_every_parameter(root, transformers):
    config = _config(root, "tiny,version=v1.5")
    model = _abstract(config)
    sd = _random_sd(model, "mlp2x_gelu", np.random.default_rng(1))
    vit = config.model.vision
    clip = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(
            image_size=vit.image_size,
            patch_size=vit.patch_size,
            hidden_size=vit.hidden_size,
            intermediate_size=vit.intermediate_size,
            num_hidden_layers=vit.num_hidden_layers,
            num_attention_heads=vit.num_attention_heads,
        )
    )
    # transformers 4.36's CLIPVisionModel keys (vision_model.*) under CLIPVisionTower
    tower = {
        k.removeprefix("vision_model."): v.detach().numpy() for k, v in clip.state_dict().items()
    }
    sd |= {f"{K.TOWER_PREFIX}vision_model.{k}": v for k, v in tower.items()}
    values = K.from_llava_state_dict(sd, M.decoder_config(config.model), projector="mlp2x_gelu")
    assign(model, values, strict=True)  # every parameter, tower included
    np.testing.assert_array_equal(
        model.projector.fc2.kernel[...], sd["model.mm_projector.2.weight"].T
    )
    assert model.image_markers is None


def test_apply_delta_is_base_plus_delta():
    base = {"a": np.ones((2, 3)), "model.embed_tokens.weight": np.ones((3, 2))}
    delta = {
        "a": np.full((2, 3), 2.0),
        "model.embed_tokens.weight": np.full((5, 2), 3.0),  # 2 rows more than the base
        "model.mm_projector.weight": np.full((2, 2), 7.0),
    }
    out = K.apply_delta(base, delta)
    np.testing.assert_array_equal(out["a"], 3.0)
    np.testing.assert_array_equal(out["model.embed_tokens.weight"], [[4, 4]] * 3 + [[3, 3]] * 2)
    np.testing.assert_array_equal(out["model.mm_projector.weight"], 7.0)
    with pytest.raises(ConversionError, match="b is not in the base"):
        K.apply_delta(base, {"b": np.zeros(1)})
    with pytest.raises(ConversionError, match="dimension mismatch"):
        K.apply_delta(base, {"a": np.zeros((3, 3))})


def test_grow_vocab_follows_the_tokenizer_set_up():
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    # [PAD] = mean of the 4 old rows; <im_patch> random; start / end = mean of rows [:6]
    grown = K.grow_vocab(
        table, 8, axis=0, mean_init=(((4,), 4), ((6, 7), 6)), random_init=(5,), std=0.5
    )
    np.testing.assert_array_equal(grown[:4], table)
    np.testing.assert_allclose(grown[4], table.mean(0))
    np.testing.assert_allclose(grown[6], grown[:6].mean(0))
    np.testing.assert_array_equal(grown[6], grown[7])
    assert np.abs(grown[5]).max() > 0
    head = K.grow_vocab(table.T, 8, axis=1, mean_init=(((4,), 4), ((6, 7), 6)), random_init=(5,))
    assert head.shape == (2, 8)
    with pytest.raises(ConversionError, match="no rule"):
        K.grow_vocab(table, 6, axis=0)


def _initial_params(config):
    exp = experiment.build(config)
    with jax.set_mesh(exp.mesh):
        state = exp.init()
    out = {}
    for part in ("trainable", "frozen"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(state[part])[0]:
            keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
            out["/".join(keys)] = np.asarray(leaf)
    return out


def test_a_fresh_run_starts_from_local_clip_and_llama_dirs(root, transformers, tmp_path):
    """The tower from a CLIPVisionModel dir, the LLM from a LLaMA dir of the raw tokenizer's
    vocabulary, grown by the three tokens v1.0 adds (markers: the mean-initialised rows)."""
    config = _config(root)
    m = config.model
    clip = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(**CLIP | dict(hidden_size=m.vision.hidden_size))
    )
    clip.save_pretrained(tmp_path / "clip")
    _, vocab = D.text_tools(config.data)
    raw = vocab.vocab_size - 3  # <im_patch>, <im_start>, <im_end> are new
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=raw,
            hidden_size=m.llm.hidden_size,
            intermediate_size=m.llm.intermediate_size,
            num_hidden_layers=m.llm.num_layers,
            num_attention_heads=m.llm.num_heads,
        )
    )
    llama.save_pretrained(tmp_path / "llama")
    m.clip_dir, m.llm_dir = str(tmp_path / "clip"), str(tmp_path / "llama")
    params = M.pretrained_params(config)
    shapes = {
        "/".join(map(str, p)): v.shape
        for p, v in nnx.to_flat_state(nnx.state(_abstract(config), nnx.Param))
    }
    # every parameter but the projector (a fresh Linear in the original too), fitting
    assert {k: v.shape for k, v in params.items()} == {
        k: v for k, v in shapes.items() if not k.startswith("projector/")
    }
    table = llama.model.embed_tokens.weight.detach().numpy()
    got = params["lang_model/embed_tokens"]
    np.testing.assert_array_equal(got[:raw], table)
    np.testing.assert_allclose(got[m.start_id], got[: m.start_id].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(params["image_markers"], got[[m.start_id, m.end_id]])
    layer = clip.state_dict()
    key = next(k for k in layer if k.endswith("layers.1.mlp.fc1.weight"))
    np.testing.assert_array_equal(
        params["vision/encoder/layers/1/mlp/fc1/kernel"], layer[key].numpy().T
    )
    # a fresh run: the tower from clip_dir, the rest from a LLaVA-Med checkpoint
    sd = _random_sd(_abstract(config), "linear", np.random.default_rng(2))
    from safetensors.numpy import save_file

    save_file(sd, str(tmp_path / "llava.safetensors"))
    m.llm_dir, m.checkpoint = "", str(tmp_path / "llava.safetensors")
    state = _initial_params(config)
    np.testing.assert_array_equal(state["projector/bias"], sd["model.mm_projector.bias"])
    np.testing.assert_array_equal(state["lang_model/embed_tokens"], sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(
        state["vision/encoder/layers/1/mlp/fc1/kernel"], layer[key].numpy().T
    )
