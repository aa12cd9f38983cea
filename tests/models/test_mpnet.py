"""radjax.models.mpnet and radjax.convert.mpnet: transformers parity, loading, dispatch."""

import functools
import json
import string

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert import bert as convert_bert
from radjax.convert import mpnet as convert
from radjax.convert.text_encoder import load_text_encoder
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.mpnet import MPNetConfig, MPNetModel, relative_position_buckets
from radjax.papers.rp3d_diag import knowledge
from tests.parity import assert_close
from tests.sharded import assert_sharded_equals_unsharded, jit_build

# An MPNet WordPiece vocabulary (MPNet's special tokens at MPNet's ids: <s> 0, <pad> 1,
# </s> 2) that spells any lower-case text from single letters.
VOCAB = (
    ["<s>", "<pad>", "</s>", "[UNK]"]
    + list(string.ascii_lowercase)
    + ["##" + c for c in string.ascii_lowercase]
    + list(",.-()")
    + [
        "pleural",
        "effusion",
        "fracture",
        "of",
        "the",
        "distal",
        "radius",
        "glio",
        "##blastoma",
        "normal",
        "<mask>",
    ]
)
TINY_HF = dict(
    vocab_size=len(VOCAB),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    relative_attention_num_buckets=32,
    layer_norm_eps=1e-5,
)
TEXTS = [
    "Pleural effusion",
    "Glioblastoma of the distal radius, Colles type",
    "Normal",
    "Fracture of the distal radius with dorsal angulation of the distal fragment",
]


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, *inputs):
    return nnx.merge(graphdef, state)(*inputs)


def _numpy_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def tiny(torch, transformers):
    """A random transformers MPNet (LayerNorms and the relative bias perturbed away from
    their initial values so that their conversion matters) and the radjax copy."""
    torch.manual_seed(0)
    reference = transformers.MPNetModel(transformers.MPNetConfig(**TINY_HF)).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
        reference.encoder.relative_attention_bias.weight.normal_()
    model = MPNetModel(MPNetConfig.from_hf_config(reference.config.to_dict()), rngs=nnx.Rngs(1))
    assign(model, convert.from_hf_mpnet(_numpy_sd(reference)))
    model.eval()
    return model, reference


@pytest.fixture(scope="module")
def radjax_tiny():
    """The tiny configuration, randomly initialised by radjax (no torch needed)."""
    model = jit_build(lambda: MPNetModel(MPNetConfig.from_hf_config(TINY_HF), rngs=nnx.Rngs(1)))
    model.eval()
    return model


def _tiny_batch(b=4, length=20, seed=0):
    """Random ids, padded with MPNet's pad id 1 (so positions depend on the padding);
    lengths reach past 16 tokens, into the log-spaced relative buckets."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, len(VOCAB), (b, length)).astype(np.int32)
    lengths = np.array([length, 3, 11, 17])[:b]
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 1).astype(np.int32), mask


def test_tiny_random_parity_with_transformers(torch, tiny):
    model, reference = tiny
    ids, mask = _tiny_batch()
    with torch.no_grad():
        want = reference(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        )
    hidden, pooled = _forward(*nnx.split(model), ids, mask)
    assert_close(hidden, want.last_hidden_state.numpy(), 1e-5)
    assert_close(pooled, want.pooler_output.numpy(), 1e-5)


def test_buckets_equal_transformers(torch, transformers):
    want = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(
        torch.arange(300)[None, :] - torch.arange(300)[:, None]
    ).numpy()
    np.testing.assert_array_equal(relative_position_buckets(300), want)


def test_shapes_axes_and_config_errors(radjax_tiny):
    model = radjax_tiny
    assert model.position_bias(20).shape == (1, 4, 20, 20)
    axes = lambda v: v.get_metadata().get("out_sharding")
    assert axes(model.relative_attention_bias.embedding) == (None, "heads")
    assert axes(model.embeddings.word.embedding) == ("vocab", "embed")
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert all(axes(v) is not None for _, v in params)
    assert model.cfg.max_length == 38
    with pytest.raises(ValueError, match="length 39 exceeds 38"):
        model(np.full((1, 39), 5, np.int32), np.ones((1, 39), np.int32))
    with pytest.raises(ValueError, match="'mpnet' is not a BERT model"):
        convert_bert.BertConfig.from_hf_config(dict(TINY_HF, model_type="mpnet"))
    with pytest.raises(ValueError, match="relative_attention_num_buckets 16"):
        MPNetConfig.from_hf_config(dict(TINY_HF, relative_attention_num_buckets=16))


def test_sharded_forward_equals_unsharded(radjax_tiny):
    run = assert_sharded_equals_unsharded(radjax_tiny, *_tiny_batch())
    spec = run.shardings["relative_attention_bias"]["embedding"].get_value().spec
    # heads on tensor by its rule; the bucket axis (32) takes fsdp by the ZeRO-3 fallback
    assert spec == P("fsdp", "tensor")


def test_prefixed_checkpoint_and_conversion_errors(tiny):
    _, reference = tiny
    sd = _numpy_sd(reference)
    values = convert.from_hf_mpnet(sd)
    prefixed = {"mpnet." + k: v for k, v in sd.items()}
    prefixed["mpnet.embeddings.position_ids"] = np.arange(40)[None]
    prefixed["lm_head.bias"] = np.zeros(len(VOCAB), np.float32)
    got = convert.from_hf_mpnet(prefixed)
    assert got.keys() == values.keys()
    assert all(np.array_equal(got[k], values[k]) for k in values)
    np.testing.assert_array_equal(
        values["layers/1/attention/query/kernel"], sd["encoder.layer.1.attention.attn.q.weight"].T
    )
    with pytest.raises(ConversionError, match="token_type_embeddings"):
        convert.from_hf_mpnet(
            dict(sd, **{"embeddings.token_type_embeddings.weight": np.zeros((2, 32), np.float32)})
        )


@pytest.fixture(scope="module")
def saved(transformers, tiny, tmp_path_factory):
    """The tiny reference saved as a transformers directory with an MPNet tokenizer."""
    path = tmp_path_factory.mktemp("tiny-mpnet")
    tiny[1].save_pretrained(path)
    tokenizer = transformers.MPNetTokenizer(vocab={t: i for i, t in enumerate(VOCAB)})
    tokenizer.save_pretrained(path)
    return path


def test_directory_loads_and_mean_pools_like_sentence_transformers(torch, tiny, saved):
    model, tokenizer = load_text_encoder(saved)
    assert isinstance(model, MPNetModel) and tokenizer.pad_token_id == 1
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0  # the batch is padded
    with torch.no_grad():
        hidden = tiny[1](**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    want = torch.nn.functional.normalize(mean, dim=1).numpy()
    got = knowledge.encode_texts(model, tokenizer, TEXTS, pooling="mean", batch_size=2)
    assert np.abs(got - want).max() < 1e-5
    config = {"text_encoder": str(saved), "pooling": "mean", "batch_size": 2}
    np.testing.assert_allclose(knowledge.label_embeddings(config, TEXTS), got, atol=1e-6)


def test_load_text_encoder_errors_name_the_file(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        load_text_encoder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path)
    config = json.loads((saved / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="roberta")))
    with pytest.raises(
        ValueError,
        match=r"config\.json: model_type 'roberta' is not a "
        r"supported text encoder",
    ):
        load_text_encoder(tmp_path)
