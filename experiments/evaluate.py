"""Evaluates the newest checkpoint in a workdir: writes ``W/eval/<step>.json``.

``python -m experiments.evaluate --config configs/<paper>.py:tiny --workdir W [--split test]``
"""

from absl import app, flags

from experiments import launch

SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: config.train.eval_split).")


def main(argv):
    del argv
    launch.start()
    from radjax.train import loop

    config = launch.CONFIG.value
    loop.evaluate_checkpoint(
        config, launch.WORKDIR.value, SPLIT.value or config.train.get("eval_split", "test")
    )


if __name__ == "__main__":
    app.run(main)
