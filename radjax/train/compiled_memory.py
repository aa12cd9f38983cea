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

The batch's shapes and dtypes are those of the first training batch the config's own data
pipeline yields (``example_batch``): no format declares its batch abstractly, and formats that
batch themselves vary the shapes (the table sizes the first one). ``experiment.prepare_config``
runs first, so a config with phantoms enabled writes them into an empty ``data.root``, and one
without data under ``data.root`` ends in its FileNotFoundError. The simulated devices must exist before JAX starts
its backends (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` or ``jax_num_cpu_devices``;
``experiments.launch.start`` sets the latter for ``--memory_table``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from radjax import sharding
from radjax.data import pipeline
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


def example_batch(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes and dtypes of the first training batch ``config``'s pipeline yields (one
    process, the whole ``train.batch_size``); prepares the config first (phantoms, derived
    fields such as the number of classes)."""
    fmt = experiment.prepare_config(config)
    data, _ = pipeline.train_dataset(
        fmt,
        config.data,
        global_batch=int(config.train.batch_size),
        seed=int(config.seed),
        process_index=0,
        process_count=1,
    )
    batch = next(iter(data))
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in batch.items()}


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
    """``step_memory`` for each device count, on the config's first training batch."""
    batch = example_batch(config)
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
