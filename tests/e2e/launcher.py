"""Runs the absl launchers on a tiny config (default RP3D-Diag's) in fresh processes."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_launcher(module: str, workdir, *overrides, devices: int = 1, check=True,
                 config: str = "configs/rp3d_diag.py:tiny", **kwargs):
    """Runs ``python -m <module>`` on ``config`` in a fresh process."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", module, "--config", config,
           "--workdir", str(workdir), *overrides]
    if not check:  # a background run; its output goes to kwargs["log"] or <workdir>.log
        log = open(kwargs.pop("log", f"{workdir}.log"), "w")
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                **kwargs)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def in_process_losses(config, workdir, mesh, steps: int):
    """Trains ``config`` for ``steps`` steps in this process on ``mesh`` (logging every
    step, no evaluation) and returns the per-step training losses."""
    import json

    import numpy as np

    from radjax.train import loop

    config.train.steps = steps
    config.train.log_every = 1
    config.train.eval_every = 0
    config.checkpoint.every = steps
    loop.train_and_evaluate(config, str(workdir), mesh=mesh)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return np.array([r["train/loss"] for r in rows if "train/loss" in r])
