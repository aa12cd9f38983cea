"""radjax.models.llama and radjax.convert.llama: parity with transformers' LLaMA, Mistral
and Phi-3, inputs_embeds, conversion errors, sharding."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert import llama as convert
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.llama import Decoder, DecoderConfig, default_positions
from tests.parity import rel_err
from tests.sharded import assert_sharded_equals_unsharded, jit_build

TINY = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.1,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# original context 64 puts the tiny head's wavelengths (6 .. 2e4) in all three llama3 bands
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    "llama3_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"tie_word_embeddings": True, "rope_parameters": LLAMA3_ROPE},
    ),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4}),
    "phi3_partial": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {"partial_rotary_factor": 0.5, "sliding_window": 5},
    ),
}


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state, copy=True)(ids, attention_mask=mask)


def _batch():
    """Left-padded (2, 12) ids and mask: row 1 has 4 padding tokens."""
    ids = np.random.default_rng(0).integers(1, 128, (2, 12)).astype(np.int32)
    mask = np.ones((2, 12), np.int32)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def _reference(case):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls, extra = CASES[case]
    torch.manual_seed(0)
    hf_cfg = getattr(transformers, config_cls)(**TINY, **extra)
    hf_cfg._attn_implementation = "eager"
    return getattr(transformers, model_cls)(hf_cfg).eval()


def _convert(reference):
    cfg = DecoderConfig.from_hf_config(reference.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    assign(model, convert.from_hf_llama(sd, cfg), strict=True)
    return model, sd


def _radjax(model_type, **extra):
    """A tiny decoder from an HF-style config dict, randomly initialised by radjax."""
    cfg = DecoderConfig.from_hf_config(dict(model_type=model_type, **TINY, **extra))
    return jit_build(lambda: Decoder(cfg, rngs=nnx.Rngs(1)))


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    reference = _reference(request.param)
    model, sd = _convert(reference)
    return request.param, model, reference, sd


def test_logits_match_transformers(torch, pair):
    case, model, reference, _ = pair
    ids, mask = _batch()
    got = np.asarray(_forward(*nnx.split(model), ids, mask))
    with torch.no_grad():
        want = reference(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(np.array(default_positions(mask))).long(),
        ).logits.numpy()
    valid = mask.astype(bool)
    rel = rel_err(got[valid], want[valid])
    print(f"{case}: rel err {rel:.2e}")
    assert got.dtype == np.float32 and got.shape == (2, 12, 128)
    assert rel < 1e-5


def test_config_fields(pair):
    case, model, _, _ = pair
    cfg = model.cfg
    assert cfg.kv_heads == 2 and cfg.dim_per_head == 16
    assert cfg.tie_word_embeddings == (case == "llama3_tied")
    assert (model.lm_head is None) == cfg.tie_word_embeddings
    assert cfg.rope_type == ("llama3" if case == "llama3_tied" else "default")
    assert cfg.rotary_dim == (8 if case == "phi3_partial" else 16)


def test_window_and_llama3_scaling_change_logits():
    """The sliding window and llama3 scaling are active in the parity cases."""
    ids, mask = _batch()
    for case, field, plain in (
        ("mistral_window", "sliding_window", None),
        ("llama3_tied", "rope_type", "default"),
    ):
        model, _ = _convert(_reference(case))
        graphdef, state = nnx.split(model)
        plain_graphdef = nnx.graphdef(
            Decoder(dataclasses.replace(model.cfg, **{field: plain}), rngs=nnx.Rngs(0))
        )
        diff = np.abs(
            np.asarray(_forward(graphdef, state, ids, mask))
            - np.asarray(_forward(plain_graphdef, state, ids, mask))
        ).max()
        assert diff > 1e-3, case


def test_old_style_rope_scaling_config():
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
    cfg = DecoderConfig.from_hf_config(
        dict(
            model_type="llama",
            **TINY,
            rope_theta=500000.0,
            rope_scaling=dict(scaling, type="llama3"),
        )
    )
    assert cfg.rope_type == "llama3" and cfg.rope_theta == 500000.0 and cfg.rope_factor == 8.0
    with pytest.raises(ValueError, match="longrope"):
        DecoderConfig.from_hf_config(
            dict(model_type="phi3", **TINY, rope_scaling={"type": "longrope"})
        )
    with pytest.raises(ValueError, match="hidden_act"):
        DecoderConfig.from_hf_config(dict(model_type="llama", **TINY, hidden_act="gelu"))


def test_inputs_embeds_equal_ids():
    model = _radjax("mistral", sliding_window=4)
    ids, mask = _batch()
    graphdef, state = nnx.split(model)

    @jax.jit
    def both(state):
        m = nnx.merge(graphdef, state, copy=True)
        return m(ids, attention_mask=mask), m(inputs_embeds=m.embed(ids), attention_mask=mask)

    by_ids, by_embeds = both(state)
    np.testing.assert_array_equal(np.asarray(by_ids), np.asarray(by_embeds))
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embed(ids))


@pytest.mark.parametrize("edit", ["missing", "extra", "shape"])
def test_bad_checkpoint_raises(edit):
    reference = _reference("phi3_partial")
    model, sd = _convert(reference)
    cfg = model.cfg
    sd = dict(sd)
    if edit == "missing":
        del sd["model.layers.1.post_attention_layernorm.weight"]
        match = "missing"
    elif edit == "extra":
        sd["model.layers.0.self_attn.extra.weight"] = np.zeros((3, 3), np.float32)
        match = "no parameter of the model"
    else:
        sd["model.layers.0.self_attn.o_proj.weight"] = np.zeros((64, 32), np.float32)
        match = "shape mismatch"
    with pytest.raises(ConversionError, match=match):
        assign(model, convert.from_hf_llama(sd, cfg), strict=True)


def test_fused_and_tied_errors():
    cfg = _convert(_reference("phi3_partial"))[0].cfg
    with pytest.raises(ConversionError, match="fused weight"):
        convert.from_hf_llama(
            {"model.layers.0.self_attn.qkv_proj.weight": np.zeros((65, 64), np.float32)}, cfg
        )
    _, sd = _convert(_reference("llama3_tied"))
    sd = dict(sd, **{"lm_head.weight": np.zeros((128, 64), np.float32)})
    tied_cfg = DecoderConfig.from_hf_config(_reference("llama3_tied").config.to_dict())
    with pytest.raises(ConversionError, match="differs"):
        convert.from_hf_llama(sd, tied_cfg)


def test_load_decoder_from_directory(tmp_path):
    reference = _reference("phi3_partial")
    reference.save_pretrained(tmp_path)
    model = convert.load_decoder(tmp_path)
    want, _ = _convert(reference)
    ids, mask = _batch()
    np.testing.assert_array_equal(
        np.asarray(_forward(*nnx.split(model), ids, mask)),
        np.asarray(_forward(*nnx.split(want), ids, mask)),
    )


def test_sharded_forward_equals_unsharded():
    model = _radjax("llama", tie_word_embeddings=False)
    # f32 sums split over devices reorder: compare relative to the largest logit
    run = assert_sharded_equals_unsharded(
        model,
        *_batch(),
        fn=lambda m, ids, mask: m(ids, attention_mask=mask),
        atol=1e-5,
        atol_relative=True,
    )
    layer = run.shardings["layers"][0]
    assert layer["mlp"]["gate_proj"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert layer["self_attn"]["q_proj"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert run.shardings["embed_tokens"].get_value().spec == P("tensor", "fsdp")
    assert not run.got.sharding.is_fully_replicated
