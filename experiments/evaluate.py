"""Evaluates the newest checkpoint in a workdir: writes ``W/eval/<step>.json``.

``python -m experiments.evaluate --config configs/<paper>.py:tiny --workdir W [--split test]``
(without ``--split``: every named evaluation ``config.evals.<name>``, else ``train.eval_split``)
"""

from absl import app, flags

from experiments import launch

SPLIT = flags.DEFINE_string(
    "split",
    None,
    "Split to evaluate (default: every config.evals.<name>, else config.train.eval_split).",
)


def main(argv):
    del argv
    launch.start()
    from radjax.train import loop

    loop.evaluate_checkpoint(launch.CONFIG.value, launch.WORKDIR.value, SPLIT.value)


if __name__ == "__main__":
    app.run(main)
