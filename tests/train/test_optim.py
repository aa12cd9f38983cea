"""radjax.train.optim: LAVIS' linear_warmup_cosine_lr schedule against values of the original
scheduler, and the weight-decay mask (LAVIS' ndim < 2 / bias / ln / bn rule) on a small tree."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from radjax.train import optim

# Learning rates set by the ORIGINAL LinearWarmupCosineLRScheduler (MSIIP/Uni-Med @ 5c902a5,
# uni_med/common/optims.py, a copy of LAVIS'): its optims.py + registry.py run with a stub
# optimizer, `step(cur_epoch=s // iters_per_epoch, cur_step=s % iters_per_epoch)` before
# update s, as base_task.py:226 calls it; the LR read from param_groups[0].
# Uni-Med's train config: init_lr 1e-5, warmup_lr 1e-6, min_lr 1e-7, 5000 warm-up steps,
# max_epoch 1 x iters_per_epoch 50000.
UNI_MED = {
    0: 1e-06,
    1: 1.0017999999999999e-06,
    2500: 5.5e-06,
    4999: 9.998200000000002e-06,
    5000: 9.757729755661012e-06,  # the cosine over all steps: the LR drops after warm-up
    5001: 9.75763363662197e-06,
    25000: 5.05e-06,
    49999: 1.0000000977090852e-07,
}
# max_epoch 3 x iters_per_epoch 10, 15 warm-up steps, init 1e-3, warmup 1e-4, min 1e-5: the
# warm-up reads the step within the epoch, so it restarts at step 10
EPOCHS = [
    0.0001, 0.00016, 0.00022, 0.00028000000000000003, 0.00034, 0.00039999999999999996,
    0.00046, 0.0005200000000000001, 0.00058, 0.00064, 0.0001, 0.00016, 0.00022,
    0.00028000000000000003, 0.00034, 0.0005050000000000001, 0.00045325841068251166,
    0.0004020837130452091, 0.0003520365877844011, 0.000303665361677479,
    0.00025750000000000013, 0.00021404630011522585, 0.00017378034985236535,
    0.00013714331138868995, 0.00010453658778440107, 7.631742512670284e-05,
    5.279499846691251e-05, 3.4227024433899005e-05, 2.0816937636766185e-05,
    1.2711661792704668e-05,
]  # fmt: skip
# no warm-up, warmup_lr -1 (= init_lr), min_lr 0, 100 steps
PLAIN = {0: 0.001, 1: 0.0009997532801828658, 50: 0.0005, 99: 2.467198171342e-07}


def _optim(**kw):
    return ml_collections.ConfigDict(
        dict(name="adamw", lr=1e-3, weight_decay=0.0, schedule="cosine", warmup_ratio=0.0) | kw
    )


def _lr(schedule, steps):
    return np.array([float(schedule(jnp.int32(s))) for s in steps])


def test_linear_warmup_cosine_lr_matches_the_original():
    uni_med = _optim(
        schedule="linear_warmup_cosine_lr", warmup_steps=5000, warmup_lr=1e-6, min_lr=1e-7
    )
    uni_med.lr = 1e-5
    got = _lr(optim.learning_rate_schedule(uni_med, 50_000), UNI_MED)
    np.testing.assert_allclose(got, list(UNI_MED.values()), rtol=2e-6)
    # warmup_steps wins over warmup_ratio; past the end the LR stays at min_lr
    uni_med.warmup_ratio = 0.5
    np.testing.assert_allclose(
        _lr(optim.learning_rate_schedule(uni_med, 50_000), [5000, 50_000, 60_000]),
        [UNI_MED[5000], 1e-7, 1e-7],
        rtol=2e-6,
    )

    epochs = _optim(
        schedule="linear_warmup_cosine_lr",
        warmup_steps=15,
        warmup_lr=1e-4,
        min_lr=1e-5,
        iters_per_epoch=10,
    )
    np.testing.assert_allclose(
        _lr(optim.learning_rate_schedule(epochs, 30), range(30)), EPOCHS, rtol=2e-6
    )
    plain = _optim(schedule="linear_warmup_cosine_lr", warmup_lr=-1.0)
    np.testing.assert_allclose(
        _lr(optim.learning_rate_schedule(plain, 100), PLAIN), list(PLAIN.values()), rtol=1e-5
    )
    # the default schedule is unchanged: warm-up from 0, cosine to 0 after the warm-up
    default = _optim(warmup_ratio=0.1)
    np.testing.assert_allclose(
        _lr(optim.learning_rate_schedule(default, 100), [0, 5, 10, 55, 100]),
        [0.0, 5e-4, 1e-3, 5e-4, 0.0],
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="unknown 'warmup_cosine'"):
        optim.learning_rate_schedule(_optim(schedule="warmup_cosine"), 10)


class Tiny(nnx.Module):
    """A norm, a linear with bias, an expert stack (bias (E, D)), stacked per-layer norms
    (L, D) and a 2-D table: one PyTorch module's view of each decides LAVIS' ndim rule."""

    def __init__(self, rngs):
        self.ln_1 = nnx.LayerNorm(4, rngs=rngs)
        self.proj = nnx.Linear(4, 4, rngs=rngs)
        self.experts_kernel = nnx.Param(jnp.ones((3, 4, 4)), out_sharding=("expert", None, None))
        self.experts_bias = nnx.Param(jnp.ones((3, 4)), out_sharding=("expert", None))
        self.layer_scale = nnx.Param(jnp.ones((2, 4)), out_sharding=("layers", "norm"))
        self.table = nnx.Param(jnp.ones((5, 4)), out_sharding=(None, "embed"))
        self.bn_stat = nnx.Param(jnp.ones((2, 2)))


def _decayed(optim_cfg):
    """Which parameters the optimizer shrinks when the gradient is 0."""
    state = jax.tree.map(jnp.ones_like, nnx.state(Tiny(nnx.Rngs(0)), nnx.Param))
    tx, _ = optim.make_optimizer(optim_cfg, 10, state)
    grads = jax.tree.map(jnp.zeros_like, state)
    updates, _ = tx.update(grads, tx.init(state), state)
    new = optax.apply_updates(state, updates)
    flat_old = dict((optim.path_str(p), v[...]) for p, v in nnx.to_flat_state(state))
    return {
        optim.path_str(p): bool(
            np.any(np.asarray(v[...]) != np.asarray(flat_old[optim.path_str(p)]))
        )
        for p, v in nnx.to_flat_state(new)
    }


def test_weight_decay_mask():
    cfg = _optim(weight_decay=0.5, schedule="constant")
    everything = _decayed(cfg)
    assert all(everything.values()) and len(everything) == 9  # default: all decay
    cfg.no_decay, cfg.no_decay_ndim = ("bias", "ln", "bn"), 2  # LAVIS' rule
    assert _decayed(cfg) == {
        "bn_stat": False,  # "bn" in the name
        "experts_bias": False,  # "bias"; (E, D) is a stack of 1-D biases
        "experts_kernel": True,  # a stack of 2-D kernels
        "layer_scale": False,  # (L, D): one layer's scale is 1-D
        "ln_1/bias": False,
        "ln_1/scale": False,  # "ln" in the name, and 1-D
        "proj/bias": False,
        "proj/kernel": True,
        "table": True,
    }
    cfg.no_decay = ()
    ndim_only = _decayed(cfg)
    assert not ndim_only["proj/bias"] and not ndim_only["layer_scale"]
    assert ndim_only["bn_stat"] and ndim_only["experts_kernel"] and ndim_only["table"]
