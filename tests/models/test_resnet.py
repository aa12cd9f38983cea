"""radjax.models.resnet: shapes, presets, remat, sharded forward, jitted train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert.torch_io import assign
from radjax.models import resnet
from tests.sharded import assert_sharded_equals_unsharded


def _concrete(ctor, seed=0):
    """``ctor()`` built abstractly and filled from numpy: eager NNX init compiles one RNG
    kernel per parameter shape, which dominates tiny CPU tests."""
    model = nnx.eval_shape(ctor)
    rng = np.random.default_rng(seed)
    values = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, (nnx.Param, nnx.BatchStat)):
            shape = var.get_value().shape
            if path[-1] == "kernel":
                value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
            elif path[-1] in ("scale", "var"):
                value = rng.uniform(0.5, 1.5, size=shape)
            else:
                value = rng.normal(size=shape) * 0.1
            values["/".join(map(str, path))] = value
    assign(model, values)
    return model


def _images(b=2, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, 3)), jnp.float32)


def _shape(build, method, *shape):
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: method(build(), x), spec).shape


@pytest.mark.parametrize("block, features", [("basic", 64), ("bottleneck", 256)])
def test_tiny_shapes(block, features):
    build = lambda: resnet.ResNet(block=block, layers=(1, 1, 1, 1), width=8, rngs=nnx.Rngs(0))
    assert nnx.eval_shape(build).out_features == features
    assert _shape(build, resnet.ResNet.__call__, 2, 32, 32, 3) == (2, features)
    assert _shape(build, resnet.ResNet.features, 2, 32, 32, 3) == (2, 1, 1, features)
    assert _shape(build, resnet.ResNet.features, 2, 64, 48, 3) == (2, 2, 2, features)


@pytest.mark.parametrize(
    "name, params", [("resnet18", 11_176_512), ("resnet34", 21_284_672), ("resnet50", 23_508_032)]
)
def test_presets_match_torchvision_param_counts(name, params):
    """torchvision's counts (11,689,512 / 21,797,672 / 25,557,032) minus the 1000-way fc."""
    model = nnx.eval_shape(lambda: getattr(resnet, name)(rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(p.shape)) for p in leaves) == params
    assert model.out_features == (2048 if name == "resnet50" else 512)


def test_logical_axes():
    model = nnx.eval_shape(
        lambda: resnet.ResNet(block="bottleneck", layers=(1, 1, 1, 1), width=8, rngs=nnx.Rngs(0))
    )
    kernel_axes = model.layer2[0].conv2.kernel.get_metadata()["out_sharding"]
    assert kernel_axes == (None, None, "conv_in", "conv_out")
    assert model.layer2[0].downsample.bn.scale.get_metadata()["out_sharding"] == ("norm",)
    assert model.layer1[0].downsample is not None and model.layer2[0].conv2.strides == 2


def test_bf16_compute_keeps_f32_params_and_norms():
    build = lambda: resnet.ResNet(
        block="basic", layers=(1, 1, 1, 1), width=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )
    params = jax.tree.leaves(nnx.state(nnx.eval_shape(build), nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    jaxpr = jax.make_jaxpr(lambda x: build()(x))(jnp.zeros((1, 32, 32, 3)))
    # the convs (as matmuls on the CPU: radjax.nn.conv), inside remat sub-programs too
    products = [
        e
        for e in _equations(jaxpr.jaxpr)
        if e.primitive.name in ("conv_general_dilated", "dot_general")
    ]
    assert len(products) >= 5 and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in products)
    assert jaxpr.out_avals[0].dtype == jnp.float32


def _equations(jaxpr):
    """Every equation of a jaxpr and of the sub-jaxprs its equations hold."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_bad_block_name():
    with pytest.raises(ValueError, match="unknown"):
        resnet.ResNet(block="wide", layers=(1,), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("depth", [16, 32])
def test_resnet3d_shapes(depth):
    """The paper sizes: (B, D, 512, 512, 3) -> (B, 16, 16, 512)."""
    build = lambda: resnet.ResNet3D(depth=depth, rngs=nnx.Rngs(0))
    assert _shape(build, resnet.ResNet3D.__call__, 1, depth, 512, 512, 3) == (1, 16, 16, 512)
    assert _shape(build, resnet.ResNet3D.features, 1, depth, 512, 512, 3) == (1, 1, 16, 16, 512)


def test_resnet3d_wrong_depth_is_a_clear_error():
    build = lambda: resnet.ResNet3D(depth=16, width=4, layers=(1, 1, 1, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth=16.*32 slices"):
        _shape(build, resnet.ResNet3D.__call__, 1, 32, 32, 32, 3)
    with pytest.raises(ValueError, match="unsupported"):
        resnet.ResNet3D(depth=12, rngs=nnx.Rngs(0))


def test_resnet_fuse_shapes():
    build = lambda: resnet.ResNetFuse(
        layers=(1, 1, 1, 1), in_channels=16, width=8, vis_dim=32, rngs=nnx.Rngs(0)
    )
    assert _shape(build, resnet.ResNetFuse.features, 2, 4, 4, 16) == (2, 2, 2, 32)
    assert _shape(build, resnet.ResNetFuse.__call__, 2, 4, 4, 16) == (2, 32)
    model = nnx.eval_shape(build)
    assert model.out_features == 32
    assert model.layer1[0].downsample is not None  # 16 -> 8 channels
    assert model.layer2[0].downsample is None


def test_remat_matches_plain_in_train_mode():
    """A rematerialised block gives the same output, gradients and BatchNorm statistics."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 8)), jnp.float32)

    def run(remat):
        block = resnet.BasicBlock(8, 8, remat=remat, rngs=nnx.Rngs(0))
        block.train()
        graphdef, params, stats = nnx.split(block, nnx.Param, nnx.BatchStat)

        def loss(params, stats):
            m = nnx.merge(graphdef, params, stats, copy=True)
            return jnp.sum(m(x) ** 2), nnx.state(m, nnx.BatchStat)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params, stats)

    plain, remat = run(False), run(True)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    jax.tree.map(close, plain, remat)
    assert not np.allclose(remat[0][1]["bn1"]["mean"].get_value(), 0.0)  # stats were updated


def test_sharded_forward_equals_unsharded():
    model = _concrete(
        lambda: resnet.ResNet(block="basic", layers=(1, 1, 1, 1), width=8, rngs=nnx.Rngs(0))
    )
    model.eval()
    run = assert_sharded_equals_unsharded(
        model, _images(b=8, seed=1), mesh_shape={"data": 2, "fsdp": 4}, atol=1e-5
    )
    spec = run.shardings["layer2"][0]["conv2"]["kernel"].get_value().spec
    assert spec == P(None, None, None, "fsdp")


class _Classifier(nnx.Module):
    def __init__(self, *, rngs):
        self.backbone = resnet.ResNet(block="basic", layers=(1, 1, 1, 1), width=8, rngs=rngs)
        self.head = nnx.Linear(self.backbone.out_features, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.backbone(x))


def test_jitted_train_step_loss_falls():
    model = _concrete(lambda: _Classifier(rngs=nnx.Rngs(0)))
    model.train()
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    x, y = _images(b=8, seed=2), jnp.arange(8) % 3

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(params, stats):
            m = nnx.merge(graphdef, params, stats, copy=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    stats0 = stats
    losses = []
    for _ in range(8):
        params, stats, opt_state, loss = step(params, stats, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    mean0 = stats0["backbone"]["bn1"]["mean"].get_value()
    assert not np.allclose(stats["backbone"]["bn1"]["mean"].get_value(), mean0)
