"""Flags and start-up shared by the absl launchers."""

from __future__ import annotations

import logging

import jax
from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/<paper>.py:tiny.", lock_config=True
)
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; re-running resumes).")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0. Set together with --num_processes/--process_id to run on several "
    "processes; on TPU pods and SLURM/GKE clusters use --multiprocess to auto-detect them.",
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", False, "Call jax.distributed.initialize() with cluster auto-detection."
)
DRY_RUN = flags.DEFINE_string(
    "dry_run",
    None,
    "Mesh shape such as 'fsdp=64,tensor=8': print the parameter count and the per-device "
    "memory of the training state on that mesh, allocate nothing, and exit.",
)
flags.mark_flags_as_required(["config", "workdir"])


def parse_mesh(text: str) -> dict[str, int]:
    """'fsdp=8,tensor=4' -> {'fsdp': 8, 'tensor': 4}."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        axis, sep, size = item.partition("=")
        if not sep or not size.strip().isdigit():
            raise ValueError(f"--dry_run: {item!r} is not axis=size (e.g. fsdp=8,tensor=4)")
        out[axis.strip()] = int(size)
    return out


def start() -> None:
    """Initialises logging and, when asked, the multi-process JAX runtime."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if COORDINATOR.value or NUM_PROCESSES.value:
        jax.distributed.initialize(
            coordinator_address=COORDINATOR.value,
            num_processes=NUM_PROCESSES.value,
            process_id=PROCESS_ID.value,
        )
    elif MULTIPROCESS.value:
        jax.distributed.initialize()
    logging.info(
        "JAX process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
