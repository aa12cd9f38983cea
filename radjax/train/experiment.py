"""Builds everything a run needs from a config: paper and format modules, mesh, compiled steps.

A paper plugs in through two modules of its package ``radjax.papers.<config.paper>`` (see
WORKSPACE.md, CONTRACT): ``model`` and ``data``. Papers are found by name, never imported by
shared code. The model module may also define ``pretrained_params(config) -> {'/'-joined param path:
array}``: a fresh run (no checkpoint in the workdir) starts from those weights.

Stages (``radjax.train.stages``, documented there): ``config.model.lora`` is applied to the
paper's model right after ``build_model`` (so the abstract state, shardings, optimizer and
checkpoints all include the adapters) and, with ``freeze_base``, extends ``optim.groups`` so
only the adapters (and what the groups name) train; ``config.init_from`` fills a fresh state
with an earlier stage's parameters after ``pretrained_params`` (``Experiment.init``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from radjax import registry, sharding
from radjax.train import optim, stages
from radjax.train import step as step_lib


def paper_module(config: ml_collections.ConfigDict) -> ModuleType:
    """``radjax.papers.<config.paper>.model``: build_model, loss_fn, predict_fn, evaluate."""
    return registry.module(config.paper, "model")


def format_module(config: ml_collections.ConfigDict) -> ModuleType:
    """``radjax.papers.<config.paper>.data``: ensure_data, make_source, load_example, ..."""
    return registry.module(config.paper, "data")


def prepare_config(config: ml_collections.ConfigDict) -> ModuleType:
    """Lets the format check its data (``ensure_data``: phantoms are written only with
    ``data.phantoms.enabled``, into a missing or empty ``data.root``; a root without the files
    the run reads raises FileNotFoundError naming it and the file), then fill data-derived
    model fields (``complete_config``, e.g. the number of classes); returns the format module.
    Raises before anything is trained."""
    fmt = format_module(config)
    fmt.ensure_data(config.data)
    if hasattr(fmt, "complete_config"):
        with config.unlocked():
            fmt.complete_config(config)
    return fmt


@dataclasses.dataclass
class Experiment:
    """The compiled pieces of one run on one mesh."""

    config: ml_collections.ConfigDict
    paper: ModuleType
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    abstract_state: Any
    state_shardings: Any
    schedule: optax.Schedule
    init: Callable[[], dict]
    train_step: Callable[[dict, dict], tuple[dict, dict]]
    predict_step: Callable[[dict, dict], dict]

    def restore_target(self) -> Any:
        return sharding.with_shardings(self.abstract_state, self.state_shardings)


def with_pretrained(
    state: dict, values: Mapping[str, np.ndarray], parts: tuple[str, ...] = ("trainable", "frozen")
) -> dict:
    """``state`` with the parameters at ``values``' paths (trainable or frozen, '/'-joined
    NNX paths as the converters write them) replaced, each cast to the parameter's dtype and
    laid out with its sharding (every process reads only its own shards). ``parts``: the
    train-state parts searched (``("rest",)`` for BatchNorm statistics).

    Raises:
      ValueError: naming paths that are no parameter and shapes that differ.
    """
    remaining = dict(values)
    wrong = []

    def place(path, leaf):
        key = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        if key not in remaining:
            return leaf
        value = np.asarray(remaining.pop(key))
        if value.shape != leaf.shape:
            wrong.append(f"{key}: pretrained {value.shape} != model {leaf.shape}")
            return leaf
        value = value.astype(leaf.dtype, copy=False)
        return jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda i: value[i])

    out = dict(state)
    for part in parts:
        out[part] = jax.tree_util.tree_map_with_path(place, state[part])
    if remaining or wrong:
        raise ValueError(
            "pretrained weights do not fit the model:"
            + "".join(f"\n  not a parameter: {k}" for k in sorted(remaining))
            + "".join(f"\n  {w}" for w in wrong)
        )
    return out


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Experiment:
    """Abstract init → shardings → jitted init / train / predict steps (not yet compiled)."""
    paper = paper_module(config)
    mesh = mesh or sharding.make_mesh(dict(config.mesh))
    groups = stages.optim_groups(config)
    total_steps = int(config.train.steps)

    def make_model():
        return stages.apply_lora(paper.build_model(config, rngs=nnx.Rngs(config.seed)), config)

    abstract_model = nnx.eval_shape(make_model)
    _, parts = step_lib.split_model(abstract_model, groups)
    tx, schedule = optim.make_optimizer(config.optim, total_steps, parts["trainable"])

    def init() -> dict:
        return step_lib.init_train_state(make_model(), groups, tx)[1]

    graphdef = step_lib.split_model(abstract_model, groups)[0]
    abstract_state = jax.eval_shape(init)
    state_sh = sharding.state_shardings(abstract_state, mesh)
    train_step = step_lib.make_train_step(graphdef, paper.loss_fn, tx, schedule, config)
    predict_step = step_lib.make_predict_step(graphdef, paper.predict_fn, config)
    random_init = jax.jit(init, out_shardings=state_sh)

    def init_state() -> dict:
        state = random_init()
        values = paper.pretrained_params(config) if hasattr(paper, "pretrained_params") else {}
        state = with_pretrained(state, values) if values else state
        return stages.apply_init_from(config, state, with_pretrained)

    return Experiment(
        config=config,
        paper=paper,
        mesh=mesh,
        graphdef=graphdef,
        abstract_state=abstract_state,
        state_shardings=state_sh,
        schedule=schedule,
        init=init_state,
        train_step=jax.jit(
            train_step,
            in_shardings=(state_sh, None),
            out_shardings=(state_sh, None),
            donate_argnums=0,
        ),
        predict_step=jax.jit(predict_step, in_shardings=(state_sh, None)),
    )
