"""Runs the absl launchers on a tiny config (default RP3D-Diag's) in fresh processes."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_launcher(
    module: str,
    workdir,
    *overrides,
    devices: int = 1,
    check=True,
    config: str = "configs/rp3d_diag.py:tiny",
    **kwargs,
):
    """Runs ``python -m <module>`` on ``config`` in a fresh process."""
    env = dict(
        os.environ,
        JAX_NUM_CPU_DEVICES=str(devices),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    cmd = [sys.executable, "-m", module, "--config", config, "--workdir", str(workdir), *overrides]
    if not check:  # a background run; its output goes to kwargs["log"] or <workdir>.log
        log = open(kwargs.pop("log", f"{workdir}.log"), "w")
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, **kwargs
        )
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def metrics_rows(workdir) -> list[dict]:
    """The rows of ``<workdir>/metrics.jsonl``."""
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir) -> list[float]:
    return [r["train/loss"] for r in metrics_rows(workdir) if "train/loss" in r]


def train_and_evaluate_untrained(tmp_path, data_root, config: str) -> tuple[str, dict, dict]:
    """Trains ``config`` on ``data_root`` in ``tmp_path/run`` and evaluates the untrained
    model in ``tmp_path/untrained``, both through the launchers. Returns (run dir, the
    trained evaluation at the last step, the untrained evaluation)."""
    import json

    workdir, untrained_dir = tmp_path / "run", tmp_path / "untrained"
    run_launcher("experiments.train", workdir, f"--config.data.root={data_root}", config=config)
    run_launcher(
        "experiments.evaluate",
        untrained_dir,
        f"--config.data.root={data_root}",
        "--untrained",
        config=config,
    )
    with open(workdir / "config.json") as f:
        steps = json.load(f)["train"]["steps"]
    with open(workdir / "eval" / f"{steps}.json") as f:
        trained = json.load(f)
    with open(untrained_dir / "eval" / "0.json") as f:
        untrained = json.load(f)
    return workdir, trained, untrained


def in_process_losses(config, workdir, mesh, steps: int):
    """Trains ``config`` for ``steps`` steps in this process on ``mesh`` (logging every
    step, no evaluation) and returns the per-step training losses."""
    import numpy as np

    from radjax.train import loop

    config.train.steps = steps
    config.train.log_every = 1
    config.train.eval_every = 0
    config.checkpoint.every = steps
    loop.train_and_evaluate(config, str(workdir), mesh=mesh)
    return np.array(train_losses(workdir))


def one_and_many_device_losses(
    get_config, data_root, tmp_path, mesh_shape: dict, steps: int, arg: str = "tiny"
):
    """Per-step losses of ``get_config(arg)`` on ``data_root`` trained in this process on
    one device and on a ``mesh_shape`` mesh of the simulated devices: (single, sharded)."""
    import jax

    from radjax import sharding

    def losses(name, mesh):
        config = get_config(arg)
        config.data.root = data_root
        return in_process_losses(config, tmp_path / name, mesh, steps)

    return (
        losses("one", sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])),
        losses("many", sharding.make_mesh(mesh_shape)),
    )
