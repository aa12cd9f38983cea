"""Training stages as config: LoRA, starting from an earlier stage, named evaluations.

Multi-stage recipes (M3D: 3 stages, LLaVA-Med: 2, Uni-Med: 2) are one config per stage; each
stage's run starts from the previous stage's parameters. Three config sections, all optional
(absent = off, today's behaviour):

``config.model.lora`` (applied by ``experiment.build`` after the paper's ``build_model``, before
the state is split into trainable / frozen):
  ``rank``     int, 0 = LoRA off.
  ``alpha``    float; the adapter output is scaled by alpha / rank.
  ``dropout``  float in [0, 1) on the LoRA branch input, train mode only (must be 0 on scanned
               layers: ``radjax.nn.lora.LoRALinear``).
  ``targets``  regex, full match on '/'-joined *module* paths of ``nnx.Linear`` layers
               (``radjax.nn.lora.LLAMA_QV``, ``LLAMA_ALL_LINEAR``); scanned layers
               (``layers/self_attn/q_proj``, stacked kernels) get per-layer stacked adapters.
  ``freeze_base`` bool, default True: only what ``optim.groups`` names, then the LoRA
               parameters (``lora_a`` / ``lora_b``, multiplier 1), train; every other
               parameter is frozen, i.e. the groups become
               ``(*optim.groups, *radjax.nn.lora.lora_only_groups())``: ``optim.groups``
               entries come first (first full match wins), so they can unfreeze a projector
               (``('mm_projector/.*', 1.0)``), scale the adapters' LR or freeze some adapters.
               False: ``optim.groups`` as given (unmatched parameters train, LoRA included).
  ``seed``     int, default ``config.seed + 1``: the adapters' init / dropout stream.

``config.init_from`` (a fresh run only: a run that finds a checkpoint in its own workdir
resumes from it and ignores init_from; the optimizer always starts fresh):
  ``workdir``     an earlier stage's workdir: its newest checkpoint (``checkpoints/<step>``).
  ``checkpoint``  or the path of one step directory (``.../checkpoints/<step>``).
  ``include``     regex, full match on '/'-joined model parameter paths to take (default
                  ``.*``); the others keep their fresh / pretrained values.
  ``renames``     ``((regex, replacement), ...)`` applied in order to the *source* paths
                  (each a full match, ``re`` replacement syntax: ``(r'llm/(.*)',
                  r'decoder/\\1')``).
  ``strict``      bool, default True: every included model parameter must be found in the
                  source; LoRA adapters that ``config.model.lora`` adds and the source lacks
                  are exempt (they are new in this stage). False: missing ones stay as
                  initialised.
  Parameters (trainable and frozen, whatever the two stages' ``optim.groups``) and BatchNorm
  statistics (``nnx.BatchStat``) are copied, on top of the paper's ``pretrained_params``;
  RNG streams, step and optimizer state are not. Source entries no model path asks for are
  ignored. A missing checkpoint or a shape mismatch raises naming the path.

``config.evals.<name>`` (named evaluations, replacing the single ``train.eval_split``
evaluation when present and non-empty):
  ``split``       the split ``make_source`` reads ('test', 'val', ...), required.
  ``every``       steps between evaluations (default ``train.eval_every``; 0 = only at the
                  last step); each also runs at the last step.
  ``data``        optional ConfigDict of ``config.data`` fields to override (another task
                  file, ...); ``eval`` likewise overrides ``config.eval`` fields (the paper's
                  ``evaluate`` sees both); ``batch_size`` overrides ``eval.batch_size``.
  Metrics are written as ``"<name>/<metric>"`` into ``metrics.jsonl`` and ``eval/<step>.json``
  (one file a step holding every evaluation that ran then, plus ``"<name>/split"``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections.abc import Mapping

import ml_collections
import numpy as np
from flax import nnx

from radjax.nn import lora as lora_lib

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- LoRA


def lora_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """``config.model.lora`` when LoRA is on (rank > 0), else None."""
    cfg = config.get("model", {}).get("lora", None)
    if cfg is None or int(cfg.get("rank", 0)) <= 0:
        return None
    if not cfg.get("targets"):
        raise ValueError("config.model.lora.rank > 0 needs config.model.lora.targets (a regex)")
    return cfg


def apply_lora(model: nnx.Module, config: ml_collections.ConfigDict) -> nnx.Module:
    """``model`` with ``config.model.lora`` applied (in place), unchanged when LoRA is off."""
    cfg = lora_config(config)
    if cfg is None:
        return model
    seed = cfg.get("seed", None)
    seed = int(config.seed) + 1 if seed is None else int(seed)
    lora_lib.apply_lora(
        model,
        rank=int(cfg.rank),
        alpha=float(cfg.alpha),
        dropout=float(cfg.get("dropout", 0.0)),
        targets=str(cfg.targets),
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )
    return model


def optim_groups(config: ml_collections.ConfigDict) -> tuple:
    """The effective ``optim.groups``: as configured, then (LoRA on and ``freeze_base``) the
    LoRA parameters trainable and everything else frozen."""
    groups = tuple(tuple(g) for g in config.optim.get("groups", ()))
    cfg = lora_config(config)
    if cfg is not None and bool(cfg.get("freeze_base", True)):
        groups = (*groups, *lora_lib.lora_only_groups())
    return groups


# ----------------------------------------------------------------------------- init_from


def _enabled(init_from) -> bool:
    return init_from is not None and bool(
        init_from.get("workdir", "") or init_from.get("checkpoint", "")
    )


def init_from_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """``config.init_from`` when it names a source, else None."""
    init_from = config.get("init_from", None)
    if not _enabled(init_from):
        return None
    if init_from.get("workdir", "") and init_from.get("checkpoint", ""):
        raise ValueError("config.init_from: set workdir or checkpoint, not both")
    return init_from


def source_state_dir(init_from: Mapping) -> str:
    """The orbax ``state`` directory ``init_from`` points at.

    Raises:
      FileNotFoundError: naming the path when it holds no checkpoint.
    """
    if init_from.get("workdir", ""):
        root = os.path.join(str(init_from["workdir"]), "checkpoints")
        steps = (
            sorted(
                int(n)
                for n in os.listdir(root)
                if n.isdigit() and os.path.isdir(os.path.join(root, n, "state"))
            )
            if os.path.isdir(root)
            else []
        )
        if not steps:
            raise FileNotFoundError(
                f"config.init_from.workdir={init_from['workdir']!r}: no checkpoint under {root} "
                "(has that stage been trained?)"
            )
        step_dir = os.path.join(root, str(steps[-1]))
    else:
        step_dir = str(init_from["checkpoint"])
    state_dir = os.path.join(step_dir, "state")
    if os.path.isdir(state_dir):
        return state_dir
    if os.path.isfile(os.path.join(step_dir, "_METADATA")):  # the state directory itself
        return step_dir
    raise FileNotFoundError(
        f"config.init_from: {step_dir!r} is no checkpoint step directory (no {state_dir})"
    )


def _flat(tree, prefix=()) -> dict[tuple, object]:
    """Nested dict -> {key tuple: leaf}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _unflat(flat: Mapping[tuple, object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _model_paths(state: dict) -> tuple[set[str], set[str]]:
    """'/'-joined paths of the parameters (trainable + frozen) and BatchNorm statistics."""
    params = {
        "/".join(map(str, p))
        for part in ("trainable", "frozen")
        for p, _ in nnx.to_flat_state(state[part])
    }
    stats = {
        "/".join(map(str, p))
        for p, v in nnx.to_flat_state(state["rest"])
        if isinstance(v, nnx.BatchStat)
    }
    return params, stats


def read_source(init_from: Mapping, wanted: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Reads the source checkpoint's arrays: ``wanted`` maps model path -> source path
    (after renames, '/'-joined without the state part); returns {model path: array} for
    those found (as numpy, read on every process)."""
    import orbax.checkpoint as ocp
    from etils import epath

    state_dir = source_state_dir(init_from)
    checkpointer = ocp.PyTreeCheckpointer()
    # the handler reads the item's own metadata (the checkpointer would also look for a
    # step-level _CHECKPOINT_METADATA inside ``state`` and warn that it is missing)
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    # Every source leaf under trainable / frozen / rest, keyed by its path without the part
    # and the Variable's trailing 'value' key.
    index = {}
    for part in ("trainable", "frozen", "rest"):
        for path in _flat(tree.get(part, {}) or {}):
            key = path[:-1] if path and path[-1] == "value" else path
            index.setdefault("/".join(map(str, key)), (part, *path))
    renames = [(re.compile(rx), repl) for rx, repl in init_from.get("renames", ()) or ()]
    renamed: dict[str, str] = {}
    for src in index:
        dst = src
        for rx, repl in renames:
            m = rx.fullmatch(dst)
            if m is not None:
                dst = m.expand(repl)
        if dst in renamed:
            raise ValueError(
                f"config.init_from.renames: source paths {renamed[dst]!r} and {src!r} both "
                f"become {dst!r}"
            )
        renamed[dst] = src
    chosen = {
        model: index[renamed[model]] for model in wanted if wanted[model] in renamed
    }  # model path -> full source key tuple
    if not chosen:
        return {}
    meta = _flat(tree)
    item = _unflat({p: np.zeros(meta[p].shape, meta[p].dtype) for p in chosen.values()})
    args = _unflat({p: ocp.RestoreArgs(restore_type=np.ndarray) for p in chosen.values()})
    restored = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
    )
    flat = _flat(restored)
    log.info("init_from %s: %d arrays", state_dir, len(chosen))
    return {model: np.asarray(flat[key]) for model, key in chosen.items()}


@dataclasses.dataclass
class InitFromPlan:
    """Which model paths init_from fills (params and BatchNorm statistics)."""

    params: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]


def init_from_values(config: ml_collections.ConfigDict, state: dict) -> InitFromPlan:
    """The arrays ``config.init_from`` puts into ``state`` (a fresh train state).

    Raises:
      ValueError: (strict) naming the model parameters the source lacks.
    """
    init_from = init_from_config(config)
    assert init_from is not None
    include = re.compile(str(init_from.get("include", ".*") or ".*"))
    params, stats = _model_paths(state)
    wanted = {p: p for p in (params | stats) if include.fullmatch(p)}
    values = read_source(init_from, wanted)
    missing = sorted(p for p in wanted if p in params and p not in values)
    if lora_config(config) is not None:  # adapters new in this stage
        missing = [p for p in missing if not re.fullmatch(lora_lib.LORA_PARAMS, p)]
    where = init_from.get("workdir", "") or init_from.get("checkpoint", "")
    if missing and bool(init_from.get("strict", True)):
        shown = "".join(f"\n  {p}" for p in missing[:20])
        more = f"\n  ... ({len(missing)} in all)" if len(missing) > 20 else ""
        raise ValueError(
            f"config.init_from ({where}): the source checkpoint lacks these model parameters "
            f"(exclude them with init_from.include, map them with init_from.renames, or set "
            f"init_from.strict=False):{shown}{more}"
        )
    if missing:
        log.warning(
            "init_from %s: %d parameters not in the source keep their init", where, len(missing)
        )
    return InitFromPlan(
        params={p: v for p, v in values.items() if p in params},
        stats={p: v for p, v in values.items() if p in stats},
    )


def apply_init_from(config: ml_collections.ConfigDict, state: dict, place) -> dict:
    """``state`` (a fresh train state, laid out on the mesh) with ``config.init_from``'s
    parameters and BatchNorm statistics in place; unchanged when init_from is off.
    ``place(state, {path: array}, parts=...)`` lays the arrays out
    (``radjax.train.experiment.with_pretrained``)."""
    if init_from_config(config) is None:
        return state
    plan = init_from_values(config, state)
    where = config.init_from.get("workdir", "") or config.init_from.get("checkpoint", "")
    try:
        state = place(state, plan.params)
        if plan.stats:
            state = place(state, plan.stats, parts=("rest",))
    except ValueError as e:
        raise ValueError(f"config.init_from ({where}): {e}") from None
    return state


# ----------------------------------------------------------------------------- evaluations


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One evaluation: metrics prefix ``name``, ``split``, period ``every`` (0 = last step
    only) and the config the pipeline and the paper's ``evaluate`` see."""

    name: str
    split: str
    every: int
    config: ml_collections.ConfigDict


def eval_specs(config: ml_collections.ConfigDict) -> list[EvalSpec]:
    """``config.evals`` as EvalSpecs in config order, or today's single evaluation
    (``eval`` on ``train.eval_split`` every ``train.eval_every``) when absent or empty.
    With no ``evals`` and ``train.eval_every`` 0 there is none."""
    default_every = int(config.train.get("eval_every", 0))
    evals = config.get("evals", None)
    if not evals:
        if not default_every:
            return []
        split = config.train.get("eval_split", "test")
        return [EvalSpec("eval", split, default_every, config)]
    specs = []
    for name, e in evals.items():
        if "split" not in e:
            raise ValueError(f"config.evals.{name} needs a 'split'")
        cfg = copy.deepcopy(config)
        with cfg.unlocked():
            for section in ("data", "eval"):
                overrides = e.get(section, None)
                if overrides:
                    cfg[section].update(dict(overrides))
            if e.get("batch_size", None):
                cfg.eval.batch_size = int(e.batch_size)
        every = e.get("every", None)
        specs.append(
            EvalSpec(str(name), str(e.split), default_every if every is None else int(every), cfg)
        )
    return specs


def due(spec: EvalSpec, step: int, total: int) -> bool:
    """Whether ``spec`` runs after ``step`` of ``total``: every ``every`` steps and at the
    last step (named evaluations with ``every`` 0 run at the last step only)."""
    return step == total or bool(spec.every and step % spec.every == 0)
