"""Flags and start-up shared by the absl launchers.

A launcher module declares these flags as its own (``flags.adopt_module_key_flags(launch)``,
so ``--help`` lists them) and runs with ``launch.run(main)``: a bad config argument or a
misspelled ``--config.<field>`` override then ends in one line, not a traceback, and
``--config <paper>[:arg]`` names a shipped config (``radjax.registry.config_file``) where no
such file exists.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from radjax import registry, runtime

CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file and argument, e.g. configs/<paper>.py:tiny, or a shipped config by name "
    "(<paper>:tiny).",
    lock_config=True,
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
COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    "",
    "Directory of JAX's persistent compilation cache (off when empty): a rerun or a resumed "
    "run loads its compiled programs instead of compiling them again.",
)
DRY_RUN = flags.DEFINE_string(
    "dry_run",
    None,
    "Mesh shape such as 'fsdp=64,tensor=8': print the parameter count and the per-device "
    "memory of the training state on that mesh, allocate nothing, and exit.",
)
MEMORY_TABLE = flags.DEFINE_string(
    "memory_table",
    None,
    "Device counts such as '1,2,4,8': for each N, compile the train step for a mesh fsdp=N of "
    "N simulated CPU devices (on the config's first training batch), print the per-device "
    "memory XLA's analysis of the compiled program gives (state, batch, temporaries, peak), "
    "allocate nothing, and exit.",
)
UNTRAINED = flags.DEFINE_bool(
    "untrained",
    False,
    "Use the freshly initialised weights (what a fresh run starts from: random, or the config's "
    "imported checkpoint) instead of a trained checkpoint (experiments.evaluate / predict).",
)
flags.mark_flag_as_required("config")  # --workdir: required by the launchers that need it


def parse_mesh(text: str) -> dict[str, int]:
    """'fsdp=8,tensor=4' -> {'fsdp': 8, 'tensor': 4}."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        axis, sep, size = item.partition("=")
        if not sep or not size.strip().isdigit():
            raise ValueError(f"--dry_run: {item!r} is not axis=size (e.g. fsdp=8,tensor=4)")
        out[axis.strip()] = int(size)
    return out


def parse_counts(text: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8): positive device counts."""
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not items or not all(p.isdigit() and int(p) > 0 for p in items):
        raise ValueError(f"--memory_table: {text!r} is not device counts (e.g. 1,2,4,8)")
    return tuple(int(p) for p in items)


def _valid_counts(text: str | None) -> bool:
    try:
        return text is None or bool(parse_counts(text))
    except ValueError:
        return False


flags.register_validator("memory_table", _valid_counts, message="not device counts (e.g. 1,2,4,8)")

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")
_CONFIG = re.compile(r"^--?config(=|$)")


def _config_value(argv: Sequence[str]) -> tuple[int, str, str] | None:
    """(index, prefix, value) of the ``--config`` value in ``argv``: ``--config=X`` is
    (i, '--config=', X), ``--config X`` is (i + 1, '', X); None when absent."""
    for i, arg in enumerate(argv):
        match = _CONFIG.match(arg)
        if match and match.group(1):
            prefix, _, value = arg.partition("=")
            return i, prefix + "=", value
        if match and i + 1 < len(argv):
            return i + 1, "", argv[i + 1]
    return None


def resolve_config_name(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--config <paper>[:arg]`` turned into the shipped config file's path
    when ``<paper>`` is no file (a pip-installed radjax has no ``configs/`` folder here).

    Raises:
      ValueError: the path is neither a file nor a config name.
    """
    argv = list(argv)
    found = _config_value(argv)
    if found is None:
        return argv
    i, prefix, value = found
    path, sep, arg = value.partition(":")
    if not os.path.exists(path):
        names = registry.config_names()
        if path not in names:
            raise ValueError(
                f"--config {value}: {path} is neither a file nor a config name ({', '.join(names)})"
            )
        argv[i] = f"{prefix}{registry.config_file(path)}{sep}{arg}"
    return argv


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted field path of ``config`` (groups included)."""
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out += _fields(value, f"{prefix}{key}.")
    return out


def override_error(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> str | None:
    """For the first override naming no field of ``config``: a line with the closest field."""
    for override in overrides:
        node: object = config
        for part in override.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                close = difflib.get_close_matches(override, _fields(config), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
                return f"--config.{override}: the config has no field {override}{hint}"
            node = node[part]
    return None


def _fatal(message: str) -> NoReturn:
    """Exits as absl does on a flag error, with ``message`` on one line."""
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing with config errors on one line: a config argument that
    ``get_config`` rejects, and an override of a field the config lacks (ml_collections raises
    KeyError / AttributeError there, before the config reaches the launcher)."""
    try:
        argv = resolve_config_name(argv)
        return flags.FLAGS(argv)
    except ValueError as e:
        _fatal(str(e))
    except (KeyError, AttributeError) as e:
        found = _config_value(argv)
        config = flags.FLAGS["config"].parser.parse(found[2]) if found else None
        overrides = [m.group(1) for m in map(_OVERRIDE.match, argv) if m]
        _fatal((config is not None and override_error(config, overrides)) or f"--config: {e}")
    except flags.Error as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        _fatal(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run(main)`` with ``parse_flags``."""
    app.run(main, flags_parser=parse_flags)


def _simulate_cpu_devices(n: int) -> None:
    """Asks JAX for ``n`` CPU devices (``jax_num_cpu_devices``, which overrides
    ``--xla_force_host_platform_device_count``): possible only before JAX starts its
    backends; after that the CPU devices stay as they are (logged)."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        logging.warning("JAX backends already started: keeping the CPU devices there are")


def start() -> None:
    """Initialises logging, the simulated CPU devices ``--memory_table`` needs (as many as its
    largest count, set here before any JAX backend starts) and, when asked, the multi-process
    JAX runtime."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if MEMORY_TABLE.value:
        _simulate_cpu_devices(max(parse_counts(MEMORY_TABLE.value)))
    if COMPILATION_CACHE.value:
        runtime.enable_compilation_cache(COMPILATION_CACHE.value)
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
