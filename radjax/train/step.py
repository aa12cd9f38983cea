"""Pure train and predict steps over split NNX state.

The train state is a plain dict pytree (what orbax saves):
  ``step``       i32[]   optimizer steps taken (skipped updates included)
  ``trainable``  nnx.State of the Params the optimizer updates
  ``frozen``     nnx.State of Params frozen by ``optim.groups`` (no grads, no optimizer state)
  ``rest``       nnx.State of everything else: BatchNorm statistics, RNG streams, constants
  ``opt``        optax state for ``trainable``
  ``skipped``    i32[]   updates skipped because the loss or a gradient was not finite
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from radjax.train.optim import trainable_filter

LossFn = Callable[[nnx.Module, dict, ml_collections.ConfigDict], tuple[jax.Array, dict]]
PredictFn = Callable[[nnx.Module, dict, ml_collections.ConfigDict], dict]


def state_filters(groups: Sequence[tuple[str, float | None]]) -> tuple:
    """The nnx.split filters giving (trainable, frozen, rest)."""
    return trainable_filter(groups), nnx.Param, ...


def split_model(model: nnx.Module, groups) -> tuple[nnx.GraphDef, dict]:
    """Splits a model into its graphdef and the (trainable, frozen, rest) states."""
    graphdef, trainable, frozen, rest = nnx.split(model, *state_filters(groups))
    return graphdef, dict(trainable=trainable, frozen=frozen, rest=rest)


def merge_model(graphdef: nnx.GraphDef, state: dict) -> nnx.Module:
    return nnx.merge(graphdef, state["trainable"], state["frozen"], state["rest"], copy=True)


def init_train_state(
    model: nnx.Module, groups, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, dict]:
    graphdef, parts = split_model(model, groups)
    return graphdef, dict(
        step=jnp.zeros((), jnp.int32),
        opt=tx.init(parts["trainable"]),
        skipped=jnp.zeros((), jnp.int32),
        **parts,
    )


def _remat(fn: Callable, policy: str) -> Callable:
    """Wraps ``fn`` in jax.checkpoint with a named policy ('' = no rematerialisation)."""
    if not policy:
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, policy))


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """Returns ``train_step(state, batch) -> (state, metrics)`` (pure; jit it).

    ``config.train.grad_accum`` splits the batch's leading axis into that many microbatches
    whose gradients are averaged inside the step (BatchNorm statistics flow through them in
    order). ``config.train.remat_policy`` rematerialises the forward pass.
    """
    filters = state_filters(tuple(tuple(g) for g in config.optim.get("groups", ())))
    accum = int(config.train.get("grad_accum", 1))

    def forward(trainable, frozen, rest, batch):
        model = nnx.merge(graphdef, trainable, frozen, rest, copy=True)
        model.train()
        loss, metrics = loss_fn(model, batch, config)
        new_rest = nnx.split(model, *filters)[3]
        return loss, (metrics, new_rest)

    grad_fn = jax.value_and_grad(
        _remat(forward, config.train.get("remat_policy", "")), has_aux=True
    )

    def accumulate(trainable, frozen, rest, batch):
        micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)
        first = jax.tree.map(lambda x: x[0], micro)
        (_, (metrics_shape, _)), _ = jax.eval_shape(grad_fn, trainable, frozen, rest, first)

        def body(carry, mb):
            grads, loss, metrics, rest = carry
            (l, (m, rest)), g = grad_fn(trainable, frozen, rest, mb)
            add = lambda a, b: jax.tree.map(jnp.add, a, b)
            return (add(grads, g), loss + l, add(metrics, m), rest), None

        zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)
        init = (zeros(trainable), jnp.zeros((), jnp.float32), zeros(metrics_shape), rest)
        (grads, loss, metrics, rest), _ = jax.lax.scan(body, init, micro)
        mean = lambda t: jax.tree.map(lambda x: x / accum, t)
        return (loss / accum, (mean(metrics), rest)), mean(grads)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        args = (state["trainable"], state["frozen"], state["rest"], batch)
        (loss, (metrics, rest)), grads = grad_fn(*args) if accum == 1 else accumulate(*args)
        grad_norm = optax.global_norm(grads)
        # A NaN/Inf anywhere in the gradients makes their norm non-finite: one pass decides.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt = tx.update(grads, state["opt"], state["trainable"])
            return optax.apply_updates(state["trainable"], updates), opt, rest

        def skip(_):
            return state["trainable"], state["opt"], state["rest"]

        # cond, not a select: the skipped branch costs nothing and the update branch writes
        # the donated buffers in place.
        trainable, opt, rest = jax.lax.cond(finite, update, skip, None)
        skipped = state["skipped"] + (~finite).astype(jnp.int32)
        new_state = dict(
            step=state["step"] + 1,
            frozen=state["frozen"],
            skipped=skipped,
            trainable=trainable,
            rest=rest,
            opt=opt,
        )
        out = dict(
            loss=loss,
            grad_norm=grad_norm,
            lr=schedule(state["step"]),
            skipped_updates=skipped,
            **metrics,
        )
        return new_state, out

    return train_step


def make_predict_step(
    graphdef: nnx.GraphDef, predict_fn: PredictFn, config: ml_collections.ConfigDict
) -> Callable[[dict, dict], dict]:
    """Returns ``predict_step(state, batch) -> outputs`` in eval mode (pure; jit it)."""

    def predict_step(state: dict, batch: dict) -> dict:
        model = merge_model(graphdef, state)
        model.eval()
        return predict_fn(model, batch, config)

    return predict_step
