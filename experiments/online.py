"""Streams a dataset through a paper's online learner:
``python -m experiments.online --config configs/<paper>.py:tiny --workdir W``.

The paper's ``online`` module (``radjax.papers.<paper>.online.run(config, workdir)``) does
the work; this launcher parses the config, takes the workdir's lock and turns the errors a
user can fix (a locked workdir, a checkpoint of another config, a bad image or mask) into one
line. Re-running the same command resumes mid-stream from the newest checkpoint.
"""

import json
import sys

from absl import flags

from experiments import launch

flags.adopt_module_key_flags(launch)  # --help lists --config, --workdir, ...
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    launch.start()
    from radjax import registry
    from radjax.checkpoint import CheckpointMismatchError
    from radjax.data.errors import BadRecordError
    from radjax.train.workdir import WorkdirLockedError

    config = launch.CONFIG.value
    try:
        online = registry.module(config.paper, "online")
    except ValueError as e:  # a paper without an online learner
        sys.exit(f"experiments.online: {e}")
    try:
        results = online.run(config, launch.WORKDIR.value)
    except (CheckpointMismatchError, WorkdirLockedError, BadRecordError) as e:
        sys.exit(f"experiments.online: {e}")
    print(json.dumps(results.get("parts", results), indent=2))


if __name__ == "__main__":
    launch.run(main)
