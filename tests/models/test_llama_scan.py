"""``DecoderConfig.scan_layers``: the stacked, lax.scan-ned layer gives the unscanned model's
logits, gradients and generated tokens from the same converted checkpoint, with a leading
``layers`` sharding axis."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_llama import _reference  # skips the test where torch / transformers are missing

import radjax  # noqa: F401  (eager sharding off)
from radjax import sharding
from radjax.convert import llama as convert
from radjax.convert.torch_io import ConversionError, assign, stack_layers
from radjax.models.llama import Decoder, DecoderConfig
from radjax.train import lm_loss
from radjax.train.generation import generate


@pytest.fixture(scope="module")
def models():
    """(unscanned, scanned, scanned + remat) Decoders holding one transformers checkpoint."""
    reference = _reference("llama")
    sd = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    cfg = DecoderConfig.from_hf_config(reference.config.to_dict())
    out = []
    for scan, remat in ((False, False), (True, False), (True, True)):
        c = dataclasses.replace(cfg, scan_layers=scan, remat=remat)
        model = Decoder(c, rngs=nnx.Rngs(1))
        assign(model, convert.from_hf_llama(sd, c), strict=True)
        out.append(model)
    return out


def _ids():
    ids = np.random.default_rng(0).integers(1, 128, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    return jnp.asarray(ids), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(graphdef, params, ids, mask):
    def loss(params):
        m = nnx.merge(graphdef, params, copy=True)
        hidden = m.hidden_states(ids, attention_mask=mask)
        targets, weights = lm_loss.next_token_targets(ids, mask)
        return lm_loss.fused_head_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            m.head_kernel(),
            targets.reshape(-1),
            weights.reshape(-1),
        )

    return jax.value_and_grad(loss)(params)


def test_scanned_layers_have_stacked_paths_and_a_layers_axis(models):
    _, scanned, _ = models
    kernel = scanned.layers.self_attn.q_proj.kernel
    assert kernel.shape[0] == scanned.cfg.num_layers
    assert kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    spec = sharding.state_shardings(nnx.state(scanned), mesh)["layers"]["self_attn"]["q_proj"]
    assert spec["kernel"].get_value().spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def test_scanned_logits_loss_and_grads_equal_unscanned(models):
    plain, scanned, scanned_remat = models
    ids, mask = _ids()
    want = np.asarray(plain(ids, attention_mask=mask))
    for model in (scanned, scanned_remat):
        np.testing.assert_allclose(
            np.asarray(model(ids, attention_mask=mask)), want, rtol=1e-5, atol=1e-5
        )
    graphdef, params = nnx.split(plain, nnx.Param)[:2]
    want_loss, want_grads = _loss_and_grads(graphdef, params, ids, mask)
    flat_want = {
        "/".join(map(str, k)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
        for k, v in nnx.to_flat_state(want_grads)
    }
    restacked = stack_layers(flat_want, "layers", plain.cfg.num_layers, caller="test")
    for model in (scanned, scanned_remat):
        graphdef, params = nnx.split(model, nnx.Param)[:2]
        loss, grads = _loss_and_grads(graphdef, params, ids, mask)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
        for k, v in nnx.to_flat_state(grads):
            path = "/".join(map(str, k))
            got = np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            np.testing.assert_allclose(
                got,
                restacked[path],
                rtol=1e-4,
                atol=1e-5 * np.abs(restacked[path]).max(),
                err_msg=path,
            )


def test_scanned_generation_equals_unscanned(models):
    plain, scanned, _ = models
    ids, mask = _ids()
    kwargs = dict(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, eos_token_id=2, pad_token_id=0
    )
    np.testing.assert_array_equal(
        np.asarray(generate(*nnx.split(scanned), **kwargs)),
        np.asarray(generate(*nnx.split(plain), **kwargs)),
    )


def test_scan_config_and_stacking_errors():
    flat = {"layers/0/w": np.zeros(2), "layers/2/w": np.zeros(2), "norm/scale": np.ones(2)}
    with pytest.raises(ConversionError, match=r"layers/<i>/w: layers \[1\] missing, \[2\]"):
        stack_layers(flat, "layers", 2, caller="test")
    ok = stack_layers(
        {"layers/0/w": np.zeros(2), "layers/1/w": np.ones(2), "n": np.ones(1)},
        "layers",
        2,
        caller="test",
    )
    assert ok["layers/w"].shape == (2, 2) and ok["layers/w"][1, 0] == 1 and "n" in ok
