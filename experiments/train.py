"""Trains a paper's model: ``python -m experiments.train --config configs/<paper>.py:tiny --workdir W``.

Writes ``W/config.json``, ``W/metrics.jsonl``, ``W/checkpoints/`` and ``W/eval/<step>.json``.
Running the same command again resumes from the newest checkpoint.
"""
from absl import app

from experiments import launch


def main(argv):
    del argv
    launch.start()
    from radjax.train import loop
    loop.train_and_evaluate(launch.CONFIG.value, launch.WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
