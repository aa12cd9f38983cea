"""Trains a paper's model: ``python -m experiments.train --config configs/<paper>.py:tiny --workdir W``.

Writes ``W/config.json``, ``W/metrics.jsonl``, ``W/checkpoints/`` and ``W/eval/<step>.json``.
Running the same command again resumes from the newest checkpoint. ``--dry_run=fsdp=8,tensor=4``
prints the parameter count and per-device memory of the training state on that mesh instead
(abstract: nothing is allocated, any model size works on a laptop), and the parameters a mesh
axis cannot split (a bad mesh or an incomplete config is a one-line error). ``--config
<paper>:<arg>`` names a config by name (``radjax.registry.config_file``) where no such file is.
"""

import sys

from absl import flags

from experiments import launch

flags.adopt_module_key_flags(launch)  # --help lists --config, --workdir, --dry_run, ...
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    launch.start()
    if launch.DRY_RUN.value is not None:
        from radjax.train import memory

        try:
            mesh = launch.parse_mesh(launch.DRY_RUN.value)
            report = memory.state_memory(launch.CONFIG.value, mesh)
        except ValueError as e:
            sys.exit(f"experiments.train --dry_run: {e}")
        print("\n".join(report.lines()))
        return
    from radjax.checkpoint import CheckpointMismatchError
    from radjax.train import loop
    from radjax.train.workdir import WorkdirLockedError

    try:
        loop.train_and_evaluate(launch.CONFIG.value, launch.WORKDIR.value)
    except (CheckpointMismatchError, WorkdirLockedError) as e:
        sys.exit(f"experiments.train: {e}")


if __name__ == "__main__":
    launch.run(main)
