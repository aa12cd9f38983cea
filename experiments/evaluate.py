"""Evaluates the newest checkpoint in a workdir: writes ``W/eval/<step>.json``.

``python -m experiments.evaluate --config configs/<paper>.py:tiny --workdir W [--split test]``
(without ``--split``: every named evaluation ``config.evals.<name>``, else ``train.eval_split``).
A workdir without a checkpoint is an error; ``--untrained`` evaluates the freshly initialised
model instead (step 0).
"""

import sys

from absl import flags

from experiments import launch

flags.adopt_module_key_flags(launch)  # --help lists --config, --workdir, ...

SPLIT = flags.DEFINE_string(
    "split",
    None,
    "Split to evaluate (default: every config.evals.<name>, else config.train.eval_split).",
)
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    launch.start()
    from radjax.checkpoint import CheckpointMismatchError
    from radjax.train import loop
    from radjax.train.workdir import WorkdirLockedError

    try:
        loop.evaluate_checkpoint(
            launch.CONFIG.value, launch.WORKDIR.value, SPLIT.value, untrained=launch.UNTRAINED.value
        )
    except (loop.NoCheckpointError, CheckpointMismatchError, WorkdirLockedError) as e:
        sys.exit(f"experiments.evaluate: {e}")


if __name__ == "__main__":
    launch.run(main)
