"""radjax.convert.radfm: a whole RadFM state dict (vision, figure tokens, LLaMA, the tied
embedding copy and the unused branches) onto radjax paths, and its errors."""
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert import radfm
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.llama import DecoderConfig
from radjax.models.radfm import RadFM
from radjax.models.radfm_vision import RadFMVision, RadFMVisionConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ref_lib = pytest.importorskip("tests.models.radfm_torch_reference")

VISION = RadFMVisionConfig.tiny()
LLAMA = {"vocab_size": 32, "hidden_size": VISION.llm_dim, "intermediate_size": 96,
         "num_hidden_layers": 1, "num_attention_heads": 4, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def checkpoint():
    """(state dict in the released model's key layout, decoder config)."""
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
    assign(model, values, strict=True)   # raises on any missing / extra / mis-shaped entry
    np.testing.assert_array_equal(model.figure_token_weight[...],
                                  sd["embedding_layer.figure_token_weight"])
    np.testing.assert_array_equal(model.lang_model.embed_tokens[...],
                                  sd["lang_model.model.embed_tokens.weight"])
    qkv = sd["embedding_layer.vision_encoder.transformer.layers.1.0.fn.to_qkv.weight"]
    inner = VISION.heads * VISION.dim_head
    attn = model.vision.vision_encoder.encoder.layers[1].attn
    for i, proj in enumerate((attn.query, attn.key, attn.value)):
        np.testing.assert_array_equal(proj.kernel[...], qkv[i * inner:(i + 1) * inner].T)
    np.testing.assert_array_equal(model.vision.perceiver.layers[0].ff.fc2.kernel[...],
                                  sd["embedding_layer.perceiver.layers.0.1.3.weight"].T)


def test_vision_part_alone(checkpoint):
    sd, _ = checkpoint
    values = radfm.vision_from_radfm(sd)
    assert not any(k.startswith(("lang_model", "figure")) for k in values)
    model = nnx.eval_shape(lambda: RadFMVision(VISION, rngs=nnx.Rngs(0)))
    assign(model, values, strict=True)
    np.testing.assert_array_equal(model.perceiver.latents[...],
                                  sd["embedding_layer.perceiver.latents"])


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
