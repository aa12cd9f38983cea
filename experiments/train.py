"""Trains a paper's model: ``python -m experiments.train --config configs/<paper>.py:tiny --workdir W``.

Writes ``W/config.json``, ``W/metrics.jsonl``, ``W/checkpoints/`` and ``W/eval/<step>.json``.
Running the same command again resumes from the newest checkpoint. ``--dry_run=fsdp=8,tensor=4``
prints the parameter count and per-device memory of the training state on that mesh instead
(abstract: nothing is allocated, any model size works on a laptop), and the parameters a mesh
axis cannot split (a bad mesh or an incomplete config is a one-line error).
``--memory_table=1,2,4,8`` compiles the train step for a mesh fsdp=N of N simulated CPU devices
per count and prints the per-device bytes XLA's analysis of each compiled program gives (state,
batch, temporaries = gradients + activations + parameters FSDP gathers, peak) with their scaling
against 1/N (``radjax.train.compiled_memory``): the devices are set in this process before JAX
starts (``launch.start``), the batch is the data format's abstract ``batch_spec(config)`` (no
data needed: paper configs are tabled on a laptop; a field only the data can fill, such as
RP3D's ``model.num_classes``, is a one-line error naming it), nothing is allocated or written
in the workdir. ``--config <paper>:<arg>``
names a config by name (``radjax.registry.config_file``) where no such file is.
"""

import sys

from absl import flags

from experiments import launch

flags.adopt_module_key_flags(launch)  # --help lists --config, --workdir, --dry_run, ...
flags.mark_flag_as_required("workdir")


def dry_run(mesh_text: str) -> None:
    """Prints the abstract state's parameter count and per-device bytes on a mesh (the config
    completed as ``--memory_table`` completes it: released configs need no data)."""
    from radjax.train import compiled_memory, memory

    try:
        config = launch.CONFIG.value
        compiled_memory.prepare_abstract(config)
        report = memory.state_memory(config, launch.parse_mesh(mesh_text))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"experiments.train --dry_run: {e}")
    print("\n".join(report.lines()))


def memory_table(counts_text: str) -> None:
    """Prints the compiled train step's per-device memory for each device count."""
    from radjax.train import compiled_memory

    try:
        rows = compiled_memory.memory_table(launch.CONFIG.value, launch.parse_counts(counts_text))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"experiments.train --memory_table: {e}")
    print("\n".join(compiled_memory.table_lines(rows)))


def main(argv):
    del argv
    launch.start()
    if launch.DRY_RUN.value is not None or launch.MEMORY_TABLE.value:
        if launch.DRY_RUN.value is not None:
            dry_run(launch.DRY_RUN.value)
        if launch.MEMORY_TABLE.value:
            memory_table(launch.MEMORY_TABLE.value)
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
