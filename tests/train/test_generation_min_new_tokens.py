"""radjax.train.generation ``min_new_tokens``: token-identical to transformers'
``generate(min_new_tokens=...)`` (MinNewTokensLengthLogitsProcessor) on a tiny LLaMA, greedy and
beam search, left-padded prompts, ids and inputs_embeds prompts."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert import llama as convert
from radjax.convert.torch_io import assign
from radjax.models.llama import Decoder, DecoderConfig
from radjax.train.generation import forbid_eos, generate

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.1,
    rms_norm_eps=1e-6,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
NEW = 12
# transformers' beam search fills finished hypotheses with `pad_token_id or eos[0]` (EOS when
# pad is 0) while radjax pads with pad_token_id: pad 1 (BOS, never generated here)
PAD = 1


@pytest.fixture(scope="module")
def llama():
    """transformers' tiny LlamaForCausalLM and its radjax conversion."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**TINY)
    hf_cfg._attn_implementation = "eager"
    reference = transformers.LlamaForCausalLM(hf_cfg).eval()
    cfg = DecoderConfig.from_hf_config(reference.config.to_dict())
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    sd = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    assign(model, convert.from_hf_llama(sd, cfg), strict=True)
    return reference, model


def _prompts():
    """Left-padded (2, 9) ids and mask: row 1 is a 5-token prompt behind 4 pads."""
    ids = np.random.default_rng(0).integers(3, 128, (2, 9)).astype(np.int32)
    mask = np.ones((2, 9), np.int32)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def _ours(model, ids, mask, eos, **kw):
    out = generate(
        *nnx.split(model),
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        eos_token_id=eos,
        pad_token_id=PAD,
        **kw,
    )
    return np.asarray(out)


def _hf(reference, ids, mask, eos, **kw):
    import torch

    with torch.no_grad():
        out = reference.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=PAD,
            **kw,
        ).numpy()[:, ids.shape[1] :]
    return np.pad(out, ((0, 0), (0, NEW - out.shape[1])), constant_values=PAD)


def _eos_at_the_start(model, ids, mask):
    """EOS ids that make row 0 stop at its first new token and row 1 at its second."""
    free = _ours(model, ids, mask, (2,))
    eos = (int(free[0, 0]), int(free[1, 1]))
    assert eos[0] != eos[1] and eos[1] not in free[1, :1]
    return eos


@pytest.mark.parametrize("num_beams", [1, 2])
def test_min_new_tokens_matches_transformers(llama, num_beams):
    reference, model = llama
    ids, mask = _prompts()
    eos = _eos_at_the_start(model, ids, mask)
    kw = dict(num_beams=num_beams) if num_beams > 1 else {}
    free = _ours(model, ids, mask, eos, **kw)
    np.testing.assert_array_equal(free, _hf(reference, ids, mask, eos, **kw))
    for min_new in (1, 3):
        got = _ours(model, ids, mask, eos, min_new_tokens=min_new, **kw)
        np.testing.assert_array_equal(
            got, _hf(reference, ids, mask, eos, min_new_tokens=min_new, **kw)
        )
        assert not np.isin(got[:, :min_new], eos).any()
        assert min_new == 1 or (got != free).any()  # the constraint changed the search
    if num_beams == 1:
        assert free[0, 0] == eos[0] and (free[0, 1:] == PAD).all()  # without it: stops at once
        # the prompt as inputs_embeds (Uni-Med's case) gives the same tokens
        embeds = _ours_embeds(model, ids, mask, eos, min_new_tokens=3)
        np.testing.assert_array_equal(embeds, _ours(model, ids, mask, eos, min_new_tokens=3))


def _ours_embeds(model, ids, mask, eos, **kw):
    out = generate(
        *nnx.split(model),
        inputs_embeds=model.embed(ids),
        attention_mask=mask,
        max_new_tokens=NEW,
        eos_token_id=eos,
        pad_token_id=PAD,
        **kw,
    )
    return np.asarray(out)


def test_forbid_eos_and_errors():
    logits = jnp.zeros((2, 6))
    out = np.asarray(forbid_eos(logits, jnp.int32(1), (2, 4), 2))
    assert np.isneginf(out[:, [2, 4]]).all() and (out[:, [0, 1, 3, 5]] == 0).all()
    assert (np.asarray(forbid_eos(logits, jnp.int32(2), (2, 4), 2)) == 0).all()
    assert forbid_eos(logits, jnp.int32(0), (2,), 0) is logits
    cfg = DecoderConfig.from_hf_config(dict(model_type="llama", **TINY))
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="min_new_tokens must be >= 0"):
        _ours(model, ids, mask, (2,), min_new_tokens=-1)
