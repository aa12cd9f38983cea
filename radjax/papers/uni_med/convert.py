"""Uni-Med checkpoints (``checkpoint_*.pth`` ``'model'`` state dicts) -> radjax connector paths.

The original ``UniMed`` (``uni_med/models/uni_med.py``) registers, for the connector:

  task_tokens.<tag>            (1, 1, C_task), one per tag of ``tasks``
                                      -> task_tokens (num_tasks, C_task), rows in ``cfg.tasks`` order
  router.fc1.{weight,bias}     Linear(C_in, 4 C_in)       -> router/fc1/{kernel,bias}
  router.fc2.{weight,bias}     Linear(4 C_in, E)          -> router/fc2/{kernel,bias}
  llm_proj.<e>.0.{weight,bias} expert e's Linear(C', D)   -> llm_proj/fc1/{kernel[e],bias[e]}
  llm_proj.<e>.2.{weight,bias} expert e's Linear(D, D)    -> llm_proj/fc2/{kernel[e],bias[e]}
                                      (moe_mlp; ``.1`` is the parameter-free GELU)
  moe_layers.<e>.*             the same module registered a second time (``self.llm_proj =
                               self.moe_layers``), so ``state_dict()`` and the saved
                               checkpoints hold every expert tensor twice

Kernels are transposed to (in, out) and the experts stacked on a leading axis. A
``moe_layers`` copy must equal its ``llm_proj`` twin (or stands in for it when that is absent)
and is dropped. The original builds the router for every ``router_type`` and the task tokens
whatever reads them; radjax builds them only when the forward uses them, so ``router.*`` is
dropped for hard / constant routing and ``task_tokens.*`` when nothing reads it
(``ConnectorConfig.uses_router`` / ``uses_task_tokens``).

A full checkpoint also holds the LLM's LoRA tensors (``llm_model.*``) and, in a state dict of a
live model, the frozen tower (``visual_encoder.*``, ``ln_vision.*``) and LLM; ``split_checkpoint``
separates the connector's keys from those for their own converters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from radjax.convert.torch_io import ConversionError, linear_kernel
from radjax.papers.uni_med.connector import EXPERT_TYPES, ConnectorConfig

CONNECTOR_PREFIXES = ("task_tokens.", "router.", "llm_proj.", "moe_layers.")
_EXPERT = re.compile(r"(llm_proj|moe_layers)\.(\d+)\.(\d+)\.(weight|bias)")
_ROUTER = re.compile(r"router\.(fc1|fc2)\.(weight|bias)")
_TASK = re.compile(r"task_tokens\.(\w+)")
# torch Sequential index of an expert -> radjax layer, per expert_type
_EXPERT_LAYERS = {"mlp": {0: "fc1", 2: "fc2"}, "linear": {0: "fc1"}}
_LEAF = {"weight": "kernel", "bias": "bias"}


def split_checkpoint(sd: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """-> (the connector's entries, everything else), keys unchanged."""
    connector = {k: v for k, v in sd.items() if k.startswith(CONNECTOR_PREFIXES)}
    return connector, {k: v for k, v in sd.items() if k not in connector}


def _experts(sd: Mapping[str, np.ndarray], cfg: ConnectorConfig) -> dict[str, np.ndarray]:
    """``llm_proj.<e>.<i>.*`` (or their ``moe_layers`` twins) -> stacked ``llm_proj/...``."""
    found: dict[str, dict[tuple[int, int, str], np.ndarray]] = {"llm_proj": {}, "moe_layers": {}}
    for key, value in sd.items():
        m = _EXPERT.fullmatch(key)
        found[m[1]][int(m[2]), int(m[3]), m[4]] = np.asarray(value, np.float32)
    main, twin = found["llm_proj"], found["moe_layers"]
    for idx in sorted(set(main) & set(twin)):
        a, b = main[idx], twin[idx]
        if a.shape != b.shape or not np.array_equal(a, b):
            e, i, leaf = idx
            raise ConversionError(
                f"uni_med connector: llm_proj.{e}.{i}.{leaf} differs from moe_layers.{e}.{i}."
                f"{leaf}; in the original they are one module"
            )
    entries = {**twin, **main}
    layers = _EXPERT_LAYERS[cfg.expert_type]
    wrong = sorted({i for _, i, _ in entries} - set(layers))
    if wrong:
        raise ConversionError(
            f"uni_med connector: expert layer indices {wrong} are no Linear of a "
            f"{EXPERT_TYPES[cfg.expert_type]} expert (expected {sorted(layers)}); is "
            "ConnectorConfig.expert_type right?"
        )
    out = {}
    for index, name in layers.items():
        for leaf, radjax_leaf in _LEAF.items():
            per_expert = {e: v for (e, i, lf), v in entries.items() if i == index and lf == leaf}
            if sorted(per_expert) != list(range(cfg.num_experts)):
                raise ConversionError(
                    f"uni_med connector: llm_proj.<e>.{index}.{leaf} found for experts "
                    f"{sorted(per_expert)}, the config has num_experts={cfg.num_experts}"
                )
            values = [per_expert[e] for e in range(cfg.num_experts)]
            if leaf == "weight":
                values = [linear_kernel(v) for v in values]
            if len({v.shape for v in values}) != 1:
                raise ConversionError(
                    f"uni_med connector: llm_proj.<e>.{index}.{leaf} shapes differ between "
                    f"experts: {[v.shape for v in values]}"
                )
            out[f"llm_proj/{name}/{radjax_leaf}"] = np.stack(values)
    return out


def _task_tokens(sd: Mapping[str, np.ndarray], cfg: ConnectorConfig) -> np.ndarray:
    tokens = {_TASK.fullmatch(k)[1]: np.asarray(v, np.float32) for k, v in sd.items()}
    if sorted(tokens) != sorted(cfg.tasks):
        raise ConversionError(
            f"uni_med connector: checkpoint task tokens {sorted(tokens)} != config tasks "
            f"{sorted(cfg.tasks)}"
        )
    rows = []
    for tag in cfg.tasks:
        value = tokens[tag]
        if value.ndim != 3 or value.shape[:2] != (1, 1):
            raise ConversionError(
                f"uni_med connector: task_tokens.{tag} has shape {value.shape}; expected "
                "(1, 1, task_token_c) (num_task_tokens = 1)"
            )
        rows.append(value[0, 0])
    return np.stack(rows)


def from_uni_med_connector(
    sd: Mapping[str, np.ndarray], cfg: ConnectorConfig
) -> dict[str, np.ndarray]:
    """The connector's entries of a Uni-Med state dict -> ``{ConnectorMoE path: f32 array}``
    for ``radjax.convert.torch_io.assign`` (which checks the shapes against the model).

    Raises:
      ConversionError: a key that is none of the connector's (pass ``split_checkpoint(sd)[0]``
        for a whole checkpoint), experts missing or of the wrong kind, task tags that differ
        from ``cfg.tasks``, or a ``moe_layers`` twin that differs from its ``llm_proj`` copy.
    """
    unknown = sorted(
        k for k in sd if not (_EXPERT.fullmatch(k) or _ROUTER.fullmatch(k) or _TASK.fullmatch(k))
    )
    if unknown:
        raise ConversionError(
            f"uni_med connector: {len(unknown)} keys are none of the connector's "
            f"(task_tokens.<tag>, router.fc{{1,2}}.*, llm_proj.<e>.<i>.*, moe_layers.<e>.<i>.*; "
            f"split_checkpoint separates them): {unknown[:20]}"
        )
    out = _experts({k: v for k, v in sd.items() if _EXPERT.fullmatch(k)}, cfg)
    if cfg.uses_router:
        router = {k: v for k, v in sd.items() if _ROUTER.fullmatch(k)}
        for layer in ("fc1", "fc2"):
            for leaf, radjax_leaf in _LEAF.items():
                key = f"router.{layer}.{leaf}"
                if key not in router:
                    raise ConversionError(
                        f"uni_med connector: {key} missing; router_type {cfg.router_type!r} "
                        "needs the router"
                    )
                value = np.asarray(router[key], np.float32)
                out[f"router/{layer}/{radjax_leaf}"] = (
                    linear_kernel(value) if leaf == "weight" else value
                )
    if cfg.uses_task_tokens:
        out["task_tokens"] = _task_tokens({k: v for k, v in sd.items() if _TASK.fullmatch(k)}, cfg)
    return out
