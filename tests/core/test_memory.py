"""radjax.train.memory: abstract parameter counts and per-device bytes on an AbstractMesh."""

import jax
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401
from configs import rp3d_diag
from radjax.papers.rp3d_diag import model as paper
from radjax.train import memory


def test_counts_match_the_built_model_and_sharding_divides_bytes():
    config = rp3d_diag.get_config()  # the released sizes (ResNet-50), never allocated
    model = nnx.eval_shape(lambda: paper.build_model(config, rngs=nnx.Rngs(0)))
    want = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    one = memory.state_memory(config, {"data": 1})
    assert one.num_params == one.num_trainable == want
    assert one.per_device_bytes["trainable"] == 4 * want  # f32, one device holds everything
    assert one.per_device_bytes["optimizer"] >= 2 * 4 * want  # AdamW mu and nu
    eight = memory.state_memory(config, {"fsdp": 8})
    assert eight.num_params == want
    # fsdp shards the 'embed' / 'conv_out' axes: most bytes split 8 ways, never more
    ratio = eight.per_device_bytes["trainable"] / one.per_device_bytes["trainable"]
    assert 1 / 8 <= ratio < 0.35
    assert "total" in "\n".join(eight.lines())


def test_bad_mesh_shapes():
    config = rp3d_diag.get_config("tiny")
    with pytest.raises(ValueError, match="mesh axes \\['pipeline'\\] unknown"):
        memory.state_memory(config, {"pipeline": 2})
    with pytest.raises(ValueError, match="must be >= 1"):
        memory.state_memory(config, {"fsdp": 0})


def test_radfm_paper_config_is_sized_without_allocating():
    """The released RadFM (LLaMA-13B + ViT + Perceiver) on a 128-device fsdp x tensor mesh."""
    from configs import radfm
    from experiments.launch import parse_mesh

    report = memory.state_memory(radfm.get_config(), parse_mesh("fsdp=16,tensor=8"))
    # LLaMA-13B: 40 x (4 x 5120^2 + 3 x 5120 x 13824 + 2 x 5120) + 2 x 32000 x 5120 + 5120
    llama = 40 * (4 * 5120**2 + 3 * 5120 * 13824 + 2 * 5120) + 2 * 32000 * 5120 + 5120
    assert llama < report.num_params < llama + 150_000_000  # + vision path, figure tokens
    full = 4 * report.num_params
    assert report.per_device_bytes["trainable"] < 1.1 * full / 128  # sharded ~128 ways
    with pytest.raises(ValueError, match="not axis=size"):
        parse_mesh("fsdp:16")


def test_dry_run_lists_the_parameters_a_mesh_axis_cannot_split():
    """fsdp=7 divides no width of the tiny RP3D model: those parameters stay replicated over
    fsdp and the report names them (path, shape, the axis and dimension); fsdp=8 splits all."""
    config = rp3d_diag.get_config("tiny")
    seven = memory.state_memory(config, {"fsdp": 7})
    assert seven.fallbacks
    for f in seven.fallbacks:
        assert all(axes == ("fsdp",) and f.shape[d] % 7 for d, axes in f.dropped), f
    paths = {f.path for f in seven.fallbacks}
    assert "trunk/layer4/0/conv3/kernel" in paths and "head/fc/fc1/kernel" in paths
    text = "\n".join(seven.lines())
    assert "trunk/layer4/*/conv3/kernel (1, 1, 64, 256): fsdp=7 does not divide dim 3 (256)" in text
    listed = [line for line in seven.lines() if line.startswith("  ") and "not divide" in line]
    assert len(listed) <= memory.MAX_LISTED and "more groups" in text
    assert memory.state_memory(config, {"fsdp": 8}).fallbacks == ()


def test_an_incomplete_config_is_named_not_sized():
    """The tiny RadFM's vocabulary comes from its tokenizer (complete_config): a dry run
    before it says so instead of sizing a model with an empty vocabulary."""
    from configs import radfm

    with pytest.raises(ValueError, match=r"model\.llm\.vocab_size is 0"):
        memory.state_memory(radfm.get_config("tiny"), {"fsdp": 2})
