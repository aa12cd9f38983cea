"""The demo: trains each paper's tiny config on the embedded phantoms and writes a report.

``python -m experiments.demo --workdir runs/demo`` (what ``make demo`` runs). For every section a
paper declares (``radjax.papers.<paper>.demo.SECTIONS``) it trains through the same loop as ``experiments.train``, evaluates the trained and an
untrained model on the held-out split, and writes ``<workdir>/report.md`` with PNG figures.
Re-running resumes finished parts from their checkpoints.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from absl import app, flags

from experiments import report
from experiments.sections import Demo, demos

WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where runs, data and the report go.")
PAPERS = flags.DEFINE_list("papers", [], "Papers to demo (default: every paper with a demo).")


def _samples(evaluation: dict, tasks: tuple[str, ...]) -> list[str]:
    """Markdown: generated answers next to their references."""
    lines = []
    for task in tasks:
        lines += [f"**{task}** (generated / reference):", ""]
        for pair in evaluation.get(f"samples/{task}", []):
            lines += [f"- generated: {pair['prediction']}", f"  reference: {pair['reference']}"]
        lines.append("")
    return lines


def _run_paper(demo: Demo, workdir: str) -> str:
    from radjax.train import loop

    name = demo.name
    config = importlib.import_module(demo.module).get_config(demo.arg)
    config.data.root = os.path.join(workdir, "data", config.paper)
    run_dir = os.path.join(workdir, name)
    t0 = time.time()
    logging.info("[%s] training %s:%s in %s", name, demo.module, demo.arg, run_dir)
    loop.train_and_evaluate(config, run_dir)
    trained = report.latest_eval(run_dir)
    train_minutes = (time.time() - t0) / 60
    logging.info("[%s] evaluating the untrained model", name)
    untrained = loop.evaluate_checkpoint(
        config, os.path.join(workdir, f"{name}_untrained"), config.train.eval_split
    )

    rows = report.read_metrics(run_dir)
    curve = f"{name}_loss.png"
    report.plot_curve(rows, "train/loss", os.path.join(workdir, curve), f"{name}: train loss")
    results = {"untrained": untrained, "trained": trained}
    if demo.baseline:
        results["most frequent answer"] = {
            k[len("baseline/") :]: v for k, v in trained.items() if k.startswith("baseline/")
        }
    header, table = report.split_table(
        results, demo.splits, demo.metrics, "task" if demo.baseline else "split"
    )
    table_png = f"{name}_metrics.png"
    report.plot_table(
        header,
        table,
        os.path.join(workdir, table_png),
        f"{name}: held-out {config.train.eval_split} split",
    )
    return "\n".join(
        [
            f"## {name}",
            f"`{demo.module}:{demo.arg}` — {config.train.steps} steps, "
            f"{train_minutes:.1f} min (training + eval). Run dir: `{run_dir}`.",
            "",
            f"![loss]({curve})",
            "",
            report.markdown_table(header, table),
            "",
            f"![metrics]({table_png})",
            "",
            *_samples(trained, demo.samples),
        ]
    )


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    sections = [
        "# radjax demo report",
        "",
        "Tiny configs trained on the embedded synthetic phantoms (original on-disk "
        "formats), evaluated on held-out phantoms.",
        "",
    ]
    for demo in demos(tuple(PAPERS.value)):
        sections.append(_run_paper(demo, workdir))
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(sections))
    logging.info("report written to %s", path)
    print(open(path).read())


if __name__ == "__main__":
    app.run(main)
