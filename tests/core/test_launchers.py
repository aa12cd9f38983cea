"""The absl launchers (``experiments/launch.py`` via ``experiments.train``) run as a user does:
``--help`` lists the launch flags, ``--compilation_cache`` keeps the compiled programs, a bad
config argument or a misspelled override ends in one line before anything is written, and
``--config <paper>:<arg>`` names a shipped config from another folder (here with a dry run
that lists the parameters a mesh axis cannot split)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH_FLAGS = (
    "--config",
    "--workdir",
    "--compilation_cache",
    "--dry_run",
    "--coordinator_address",
    "--num_processes",
    "--process_id",
    "--multiprocess",
)


def _train(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_the_launch_flags():
    out = _train("--help")  # absl exits 1 after printing the help
    missing = [
        f for f in LAUNCH_FLAGS if f"  {f}" not in out.stdout and f"[no]{f[2:]}" not in out.stdout
    ]
    assert not missing, out.stdout


def test_the_compilation_cache_keeps_the_compiled_train_step(tmp_path):
    cache = tmp_path / "cache"
    out = _train(
        "--config=configs/rp3d_diag.py:tiny",
        f"--workdir={tmp_path / 'run'}",
        f"--compilation_cache={cache}",
        f"--config.data.root={tmp_path / 'data'}",
        "--config.train.steps=2",
        "--config.train.eval_every=0",
        "--config.checkpoint.every=2",
    )
    assert out.returncode == 0, out.stderr
    assert any(p.name.startswith("jit_train_step") for p in cache.iterdir()), list(cache.iterdir())


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_a_bad_config_argument_fails_before_the_workdir_is_written(tmp_path):
    workdir, data = tmp_path / "run", tmp_path / "data"
    out = _train(
        "--config",
        "configs/rp3d_diag.py:tiny,fusion=erly",
        f"--workdir={workdir}",
        f"--config.data.root={data}",
    )
    line = _one_line_error(out)
    assert "configs/rp3d_diag.py" in line and "fusion='erly'" in line and "late, early" in line
    assert not workdir.exists() and not data.exists()


def test_a_misspelled_override_names_the_closest_field(tmp_path):
    out = _train(
        "--config=configs/rp3d_diag.py:tiny", f"--workdir={tmp_path}/run", "--config.train.stesp=5"
    )
    line = _one_line_error(out)
    assert "--config.train.stesp" in line and "did you mean train.steps?" in line
    assert not (tmp_path / "run").exists()


def test_a_config_by_name_from_another_folder_and_the_dry_run_fallbacks(tmp_path):
    out = _train(
        "--config", "rp3d_diag:tiny", f"--workdir={tmp_path}/run", "--dry_run=fsdp=7", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "mesh: data=1 x fsdp=7" in out.stdout
    assert "replicated instead of sharded" in out.stdout
    assert "trunk/layer4/*/conv3/kernel (1, 1, 64, 256): fsdp=7 does not divide dim 3" in out.stdout
    assert not (tmp_path / "run").exists()
