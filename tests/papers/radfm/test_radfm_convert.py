"""radjax.papers.radfm.convert: a whole RadFM state dict (vision, figure tokens, LLaMA, the tied
embedding copy and the unused branches) onto radjax paths, and its errors."""

import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.llama import DecoderConfig
from radjax.papers.radfm import convert as radfm
from radjax.papers.radfm.model import RadFM
from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig

VISION = RadFMVisionConfig.tiny()
LLAMA = {
    "vocab_size": 32,
    "hidden_size": VISION.llm_dim,
    "intermediate_size": 96,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def checkpoint(torch, transformers):
    """(state dict in the released model's key layout, decoder config)."""
    from tests.references import radfm_torch as ref_lib

    torch.manual_seed(0)
    embedding = ref_lib.VisionEmbedding(VISION)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    sd = {f"embedding_layer.{k}": v for k, v in embedding.state_dict().items()}
    sd |= {f"embedding_layer.{k}": v for k, v in ref_lib.unused_branches(VISION.dim).items()}
    sd |= {f"lang_model.{k}": v for k, v in llama.state_dict().items()}
    sd["embedding_layer.weight"] = sd["lang_model.model.embed_tokens.weight"]
    sd = {k: v.detach().numpy() for k, v in sd.items()}
    return sd, DecoderConfig.from_hf_config(llama.config.to_dict())


def _abstract_model(decoder_cfg):
    return nnx.eval_shape(lambda: RadFM(VISION, decoder_cfg, rngs=nnx.Rngs(0)))


def test_whole_checkpoint_fills_every_parameter(checkpoint):
    sd, decoder_cfg = checkpoint
    values = radfm.from_radfm_state_dict(sd, decoder_cfg)
    model = _abstract_model(decoder_cfg)
    assign(model, values, strict=True)  # raises on any missing / extra / mis-shaped entry
    np.testing.assert_array_equal(
        model.figure_token_weight[...], sd["embedding_layer.figure_token_weight"]
    )
    np.testing.assert_array_equal(
        model.lang_model.embed_tokens[...], sd["lang_model.model.embed_tokens.weight"]
    )
    qkv = sd["embedding_layer.vision_encoder.transformer.layers.1.0.fn.to_qkv.weight"]
    inner = VISION.heads * VISION.dim_head
    attn = model.vision.vision_encoder.encoder.layers[1].attn
    for i, proj in enumerate((attn.query, attn.key, attn.value)):
        np.testing.assert_array_equal(proj.kernel[...], qkv[i * inner : (i + 1) * inner].T)
    np.testing.assert_array_equal(
        model.vision.perceiver.layers[0].ff.fc2.kernel[...],
        sd["embedding_layer.perceiver.layers.0.1.3.weight"].T,
    )


def test_vision_part_alone(checkpoint):
    sd, _ = checkpoint
    values = radfm.vision_from_radfm(sd)
    assert not any(k.startswith(("lang_model", "figure")) for k in values)
    model = nnx.eval_shape(lambda: RadFMVision(VISION, rngs=nnx.Rngs(0)))
    assign(model, values, strict=True)
    np.testing.assert_array_equal(
        model.perceiver.latents[...], sd["embedding_layer.perceiver.latents"]
    )


def test_unknown_key_is_named(checkpoint):
    sd, decoder_cfg = checkpoint
    extra = dict(sd, **{"embedding_layer.extra_head.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match="extra_head"):
        radfm.from_radfm_state_dict(extra, decoder_cfg)
    with pytest.raises(ConversionError, match="extra_head"):
        radfm.vision_from_radfm(extra)


def test_missing_and_mis_shaped_keys_are_named(checkpoint):
    sd, decoder_cfg = checkpoint
    key = "embedding_layer.perceiver.layers.1.0.to_kv.weight"
    values = radfm.from_radfm_state_dict({k: v for k, v in sd.items() if k != key}, decoder_cfg)
    with pytest.raises(ConversionError, match=r"missing[\s\S]*perceiver/layers/1/attn/to_kv"):
        assign(_abstract_model(decoder_cfg), values, strict=True)
    values = radfm.from_radfm_state_dict(dict(sd, **{key: sd[key][:-2]}), decoder_cfg)
    with pytest.raises(ConversionError, match="shape mismatch[\\s\\S]*to_kv"):
        assign(_abstract_model(decoder_cfg), values, strict=True)


def test_malformed_fused_qkv_and_untied_embedding_copy_raise(checkpoint):
    sd, decoder_cfg = checkpoint
    key = "embedding_layer.vision_encoder.transformer.layers.0.0.fn.to_qkv.weight"
    with pytest.raises(ConversionError, match="to_qkv"):
        radfm.from_radfm_state_dict(dict(sd, **{key: sd[key][:-1]}), decoder_cfg)
    untied = dict(sd, **{"embedding_layer.weight": sd["embedding_layer.weight"] + 1})
    with pytest.raises(ConversionError, match="embedding_layer.weight"):
        radfm.from_radfm_state_dict(untied, decoder_cfg)


def _run_config(decoder_cfg, **model):
    """configs/radfm.py:tiny with this file's vision and LLaMA sizes (no data needed)."""
    import dataclasses

    import ml_collections

    from configs.radfm import get_config

    config = get_config("tiny")
    config.model.vision = ml_collections.ConfigDict(dataclasses.asdict(VISION))
    config.model.llm = ml_collections.ConfigDict(dataclasses.asdict(decoder_cfg))
    config.model.update(model)
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=4, expert=1))
    return config


def _initial_params(config):
    """'/'-joined path -> array of a fresh run's parameters (``experiment.build(...).init``),
    laid out over fsdp 2 x tensor 4 simulated devices."""
    import jax

    from radjax.train import experiment

    exp = experiment.build(config)
    with jax.set_mesh(exp.mesh):
        state = exp.init()
    out = {}
    for part in ("trainable", "frozen"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(state[part])[0]:
            keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
            out["/".join(keys)] = np.asarray(leaf)
    return out


def test_a_fresh_run_starts_from_the_released_checkpoint(torch, checkpoint, tmp_path):
    sd, decoder_cfg = checkpoint
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    params = _initial_params(
        _run_config(decoder_cfg, checkpoint=str(tmp_path / "pytorch_model.bin"))
    )
    values = radfm.from_radfm_state_dict(sd, decoder_cfg)
    assert sorted(params) == sorted(values)
    for key, value in values.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


def test_a_fresh_run_starts_from_a_local_llama(transformers, checkpoint, tmp_path):
    sd, decoder_cfg = checkpoint
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    llama.save_pretrained(tmp_path / "llama")
    scratch = _initial_params(_run_config(decoder_cfg))
    params = _initial_params(_run_config(decoder_cfg, llm_dir=str(tmp_path / "llama")))
    embed = llama.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(params["lang_model/embed_tokens"], embed)
    np.testing.assert_array_equal(
        params["lang_model/layers/0/mlp/down_proj/kernel"],
        llama.model.layers[0].mlp.down_proj.weight.detach().numpy().T,
    )
    for key in scratch:  # the vision path and image markers: initialisation
        if not key.startswith("lang_model/"):
            np.testing.assert_array_equal(params[key], scratch[key], err_msg=key)
    with pytest.raises(ValueError, match="not both"):
        _initial_params(_run_config(decoder_cfg, llm_dir="x", checkpoint="y"))


def test_pretrained_weights_that_do_not_fit_are_named(transformers, checkpoint, tmp_path):
    sd, decoder_cfg = checkpoint
    wider = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**dict(LLAMA, intermediate_size=LLAMA["intermediate_size"] * 2))
    )
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(
        ValueError,
        match=r"lang_model/layers/0/mlp/down_proj/kernel: "
        r"pretrained \(192, 64\) != model \(96, 64\)",
    ):
        _initial_params(_run_config(decoder_cfg, llm_dir=str(tmp_path / "wider")))
