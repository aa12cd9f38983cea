"""Mesh construction, the logical rules table and activation constraints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import radjax  # noqa: F401
from radjax import sharding


def test_mesh_axes_sizes_and_auto_types():
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "shape, message",
    [
        ({"data": 3}, "needs 3 devices"),
        ({"model": 2}, "unknown axes"),
        ({"data": -1, "fsdp": -1}, "at most one"),
    ],
)
def test_bad_mesh_is_a_clear_error(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(shape)


def test_rules_have_one_entry_per_name():
    names = [n for n, _ in sharding.LOGICAL_RULES]
    assert len(names) == len(set(names))


def test_logical_to_spec_uses_each_mesh_axis_once():
    assert sharding.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("act_batch", "embed")) == P(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("nonsense",))


def test_state_shardings_follow_metadata_and_fit_small_dims():
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    model = nnx.eval_shape(
        lambda: nnx.Linear(
            6, 8, rngs=nnx.Rngs(0), kernel_metadata={"out_sharding": ("embed", "mlp")}
        )
    )
    state = nnx.state(model)
    shardings = sharding.state_shardings(state, mesh)
    kernel = shardings["kernel"].get_value()
    assert kernel.spec == P("fsdp", "tensor")
    # the bias names no axis: the ZeRO-3 fallback splits it over fsdp
    assert shardings["bias"].get_value().spec == P("fsdp")
    # 6 is not divisible by fsdp=4 on a (4, 2) mesh: fsdp leaves dim 0, not an error, and the
    # fallback puts it on dim 1 after tensor (8 = 2 x 4); the bias's 8 takes fsdp alone
    mesh2 = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    shardings2 = sharding.state_shardings(state, mesh2)
    assert shardings2["kernel"].get_value().spec == P(None, ("tensor", "fsdp"))
    assert shardings2["bias"].get_value().spec == P("fsdp")


@pytest.mark.parametrize(
    "shape, spec, want",
    [
        ((2048, 5569), P("tensor", None), P(("tensor", "fsdp"), None)),  # RP3D head kernel
        ((5569,), P(None), P(None)),  # fsdp divides no dimension: stays replicated
        ((), P(), P()),  # a scalar (step count, RNG counter)
        ((16, 64), P(), P(None, "fsdp")),  # the largest dimension fsdp divides
        ((64, 16), P("fsdp"), P("fsdp")),  # already on fsdp: unchanged
        ((12, 8), P(), P(None, "fsdp")),  # 12 % 8: the next dimension
    ],
)
def test_fsdp_fallback_puts_arrays_off_fsdp_on_it(shape, spec, want):
    mesh = sharding.make_mesh({"fsdp": 8})
    assert sharding._fsdp_fallback(spec, shape, mesh) == want
    assert sharding._fsdp_fallback(spec, shape, sharding.make_mesh({"data": 8})) == spec


def test_shard_act_constrains_inside_mesh_and_is_noop_outside():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    x = jnp.ones((8, 3))
    assert sharding.shard_act(x, ("act_batch", None)) is x
    with jax.set_mesh(mesh):
        y = jax.jit(lambda v: sharding.shard_act(v * 2, ("act_batch", None)))(x)
    assert y.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((8, 3)))
