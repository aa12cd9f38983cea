"""Per-device memory of a config's train step, read from the compiled program.

``memory_table(config, counts)`` compiles the run's own train step (``experiment.build``:
the state sharded by its rules, donated) for a mesh ``fsdp=N`` of the first N CPU devices,
for each N in ``counts``, from ``ShapeDtypeStruct`` inputs carrying their ``NamedSharding``
(nothing is allocated), and reads XLA's memory analysis of each program
(``jax.jit(...).lower(...).compile().memory_analysis()``), which sizes one device's buffers:

- ``state``: the donated train state (parameters, optimizer state, other state), the
  argument bytes XLA aliases to the new state's outputs;
- ``batch``: the other argument bytes, this device's shard of the batch (inputs the step
  never reads are pruned by ``jax.jit`` and not counted);
- ``temporaries``: XLA's temporary buffers: the gradients, the activations kept for the
  backward pass and the parameters FSDP gathers for a layer (XLA does not tell them apart;
  the gathered parameters and unreduced gradients do not shrink with N, so on a small model
  with a small batch per device temporaries scale worse than 1/N);
- ``new outputs``: outputs that alias no argument (the step's metrics);
- ``peak``: arguments + temporaries + new outputs, what the step holds at once.

The batch is abstract too: the format's ``batch_spec(config)`` (global shapes and dtypes from
config fields; formats whose batches vary in shape state the largest, see theirs), on the
config ``abstract_batch`` prepares: a config with phantoms enabled, or whose ``data.root``
holds every file of the format's ``data_files``, goes through ``experiment.prepare_config`` as
a run does (phantoms written into an empty ``data.root``, data-derived fields such as the
number of classes from the data); any other config (the released sizes without their data)
is completed as far as it can be without its data: the format's ``complete_config`` runs on a
copy and fills only the fields the config leaves unset (0, -1, '' or empty: LLaVA-Med's token
ids from ``data.tokenizer``; RadFM keeps its stated vocabulary of 32000), and where it fails
for want of the data (RP3D's label dict) the config's own fields stand (an unset one the batch
needs, such as ``model.num_classes`` 0, is a ValueError naming it). The simulated devices must exist
before JAX starts its backends (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` or
``jax_num_cpu_devices``; ``experiments.launch.start`` sets the latter for ``--memory_table``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import jax
import ml_collections

from radjax import sharding
from radjax.data.errors import BadRecordError
from radjax.train import experiment

GIB = 2**30
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """XLA's memory analysis of one compiled train step: bytes on one of ``devices``."""

    devices: int  # mesh fsdp=devices
    argument_bytes: int  # state + batch shard
    output_bytes: int  # new state + metrics
    alias_bytes: int  # outputs written into argument buffers: the donated state
    temp_bytes: int  # gradients + activations + gathered parameters

    @property
    def state_bytes(self) -> int:
        return self.alias_bytes

    @property
    def batch_bytes(self) -> int:
        return self.argument_bytes - self.alias_bytes

    @property
    def new_output_bytes(self) -> int:
        return self.output_bytes - self.alias_bytes

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.new_output_bytes


def _has_data(fmt: ModuleType, data_cfg: ml_collections.ConfigDict) -> bool:
    """Whether ``data.root`` holds every file (or folder) of the format's ``data_files``."""
    files = fmt.data_files(data_cfg)
    return bool(files) and all((Path(data_cfg.root) / f).exists() for f in files)


def _unset(value) -> bool:
    """The placeholders configs leave for ``complete_config``: 0, -1, '', None, empty."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value in (0, -1)
    if isinstance(value, str | tuple | list | Mapping | ml_collections.ConfigDict):
        return len(value) == 0
    return value is None


def _fill_unset(config: ml_collections.ConfigDict, completed: ml_collections.ConfigDict) -> None:
    """Copies into ``config`` every field of ``completed`` that ``config`` lacks or leaves
    unset (``_unset``), recursing into sub-configs; fields ``config`` sets stay."""
    for key, value in completed.items():
        mine = config.get(key)
        if isinstance(mine, ml_collections.ConfigDict) and len(mine):
            if isinstance(value, ml_collections.ConfigDict):
                _fill_unset(mine, value)
        elif key not in config or _unset(mine):
            config[key] = value


def abstract_batch(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Prepares ``config`` in place (``prepare_abstract``) and returns the format's
    ``batch_spec(config)``: the global shapes and dtypes of a training batch.

    Raises:
      ValueError: the format has no ``batch_spec``; a field the batch needs is unset.
    """
    fmt = experiment.format_module(config)
    if not hasattr(fmt, "batch_spec"):
        raise ValueError(f"the {config.paper} data format has no batch_spec(config)")
    prepare_abstract(config)
    return fmt.batch_spec(config)


def prepare_abstract(config: ml_collections.ConfigDict) -> None:
    """Completes ``config`` in place for an abstract build (module docstring): as a run does
    where the data (or phantoms) are there, else as far as the format can without its data."""
    fmt = experiment.format_module(config)
    if config.data.get("phantoms", {}).get("enabled", False) or _has_data(fmt, config.data):
        experiment.prepare_config(config)
    elif hasattr(fmt, "complete_config"):
        completed = copy.deepcopy(config)
        try:
            with completed.unlocked():
                fmt.complete_config(completed)
        except (FileNotFoundError, BadRecordError):
            pass  # completed from the data only: the config's own fields stand
        else:
            with config.unlocked():
                _fill_unset(config, completed)


def sharded_batch(
    batch: Mapping[str, jax.ShapeDtypeStruct], mesh: jax.sharding.Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
    """``batch`` with the training batch's sharding on ``mesh`` (leading axis over data x fsdp).

    Raises:
      ValueError: the mesh's data x fsdp size does not divide a leading dimension.
    """
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    for key, x in batch.items():
        if x.shape[0] % ways:
            raise ValueError(
                f"{ways} devices do not divide the batch's leading dimension "
                f"({key}: {x.shape}); set --config.train.batch_size to a multiple of {ways}"
            )
    return {
        k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.ndim))
        for k, x in batch.items()
    }


def fsdp_mesh(n: int) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor, expert) = (1, n, 1, 1) mesh of the first ``n`` CPU devices.

    Raises:
      ValueError: fewer than ``n`` CPU devices exist.
    """
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ValueError(
            f"fsdp={n} needs {n} devices, this process has {len(devices)} CPU devices; set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts"
        )
    return sharding.make_mesh({"fsdp": n}, devices=devices[:n])


def step_memory(
    config: ml_collections.ConfigDict, batch: Mapping[str, jax.ShapeDtypeStruct], n: int
) -> StepMemory:
    """Compiles ``config``'s train step for ``fsdp_mesh(n)`` and reads its memory analysis."""
    mesh = fsdp_mesh(n)
    exp = experiment.build(config, mesh)
    state = sharding.with_shardings(exp.abstract_state, exp.state_shardings)
    with jax.set_mesh(mesh):
        compiled = exp.train_step.lower(state, sharded_batch(batch, mesh)).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        raise ValueError(f"the {jax.devices('cpu')[0].platform} backend has no memory analysis")
    return StepMemory(
        devices=n,
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
    )


def memory_table(config: ml_collections.ConfigDict, counts: Sequence[int]) -> list[StepMemory]:
    """``step_memory`` for each device count, on the config's abstract batch
    (``abstract_batch``)."""
    batch = abstract_batch(config)
    return [step_memory(config, batch, int(n)) for n in counts]


# column -> its label in the ratio columns (bytes x N / the first row's, 1.00 = scales as 1/N)
_RATIOS = {"state": "state", "temporaries": "temp", "peak": "peak"}


def _values(row: StepMemory) -> dict[str, int]:
    """The table's columns of ``row`` in order: column name -> bytes."""
    return {
        "state": row.state_bytes,
        "batch": row.batch_bytes,
        "temporaries": row.temp_bytes,
        "new outputs": row.new_output_bytes,
        "peak": row.peak_bytes,
    }


def scaling(rows: Sequence[StepMemory], column: str) -> list[float]:
    """``column``'s bytes x N / the first row's bytes x its N per row: 1.0 = scales as 1/N."""
    first = _values(rows[0])[column] * rows[0].devices
    return [_values(r)[column] * r.devices / first for r in rows]


def table_lines(rows: Sequence[StepMemory]) -> list[str]:
    """The rows as a table: per-device sizes (MiB, or GiB when the largest peak exceeds
    a GiB) and, per ratio column, bytes x N / the first row's (1.00 = scales as 1/N)."""
    unit, name = (GIB, "GiB") if max(r.peak_bytes for r in rows) > GIB else (MIB, "MiB")
    ratios = {c: scaling(rows, c) for c in _RATIOS}
    base = rows[0].devices
    header = f"{'N':>5}" + "".join(f"{c:>13}" for c in _values(rows[0]))
    header += "".join(f"{f'{label} ratio':>13}" for label in _RATIOS.values())
    out = [
        f"train step memory per device, {name}, from XLA's analysis of the program compiled "
        "for fsdp=N CPU devices",
        "  state = parameters + optimizer + other state (donated); temporaries = gradients + "
        "activations + gathered parameters; peak = state + batch + temporaries + new outputs",
        f"  ratio = bytes x N / (bytes x N at N={base}): 1.00 when they scale as 1/N",
        header,
    ]
    for i, row in enumerate(rows):
        line = f"{row.devices:>5}" + "".join(f"{v / unit:>13.3f}" for v in _values(row).values())
        out.append(line + "".join(f"{ratios[c][i]:>13.2f}" for c in _RATIOS))
    return out
