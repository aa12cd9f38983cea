"""The demo's sections, gathered from every paper's ``radjax.papers.<paper>.demo.SECTIONS``
and the report blocks of one section (kept apart from ``experiments.demo``, which defines absl
flags, so tests and other tools can import them)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from experiments import report
from radjax import registry


@dataclasses.dataclass(frozen=True)
class Demo:
    """One report section: a config to train, the metrics and splits (or tasks) tabled.

    Papers declare theirs as dicts in ``radjax.papers.<paper>.demo.SECTIONS``; a demo module
    may also define ``sample_images(config, split, task, count)`` -> the input images (f32
    (D, H, W)) of a task's first ``count`` samples, drawn beside the generations."""

    paper: str
    name: str
    module: str
    arg: str
    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    baseline: bool = False  # also table the eval's "baseline/..." entries
    samples: tuple[str, ...] = ()  # tasks whose "samples/<task>" generations are shown


def demos(only: tuple[str, ...] = ()) -> list[Demo]:
    """Every paper's demo sections (papers with a ``demo`` module), or those of ``only``."""
    out = []
    for paper in only or registry.names():
        spec = registry.optional_module(paper, "demo")
        for section in spec.SECTIONS if spec else ():
            out.append(Demo(paper=paper, module=f"configs.{paper}", **section))
    return out


LOSS_KEYS = ("train/loss", "eval/loss")
BASELINE = "most frequent answer"


def compared(demo: Demo, trained: Mapping, untrained: Mapping) -> dict[str, Mapping]:
    """The models a section compares: untrained, trained and, for ``demo.baseline``, the
    trained eval's ``baseline/...`` entries."""
    results = {"untrained": untrained, "trained": trained}
    if demo.baseline:
        results[BASELINE] = {
            k[len("baseline/") :]: v for k, v in trained.items() if k.startswith("baseline/")
        }
    return results


def section(
    demo: Demo,
    out_dir: str,
    rows: list[dict],
    trained: Mapping,
    untrained: Mapping,
    intro: str,
    images: Callable[[str, int], list] | None = None,
) -> list[tuple]:
    """Report blocks of one section, its figures written to ``out_dir`` as ``<name>_*.png``.

    rows: the run's metrics.jsonl; trained / untrained: eval dicts; images(task, count): the
    inputs of a task's first samples (``sample_images`` of the paper's demo module)."""
    name = demo.name
    results = compared(demo, trained, untrained)
    blocks: list[tuple] = [("heading", 2, name), ("text", intro), ("text", "")]

    curve = f"{name}_loss.png"
    report.plot_curves(rows, LOSS_KEYS, os.path.join(out_dir, curve), f"{name}: loss")
    blocks.append(("figure", curve, f"{name}: loss curves"))

    bars = f"{name}_metrics.png"
    split_name = "task" if demo.baseline else "split"
    report.plot_bars(
        results,
        demo.splits,
        demo.metrics,
        os.path.join(out_dir, bars),
        f"{name}: held-out metrics per {split_name}",
    )
    blocks.append(("figure", bars, f"{name}: {' vs '.join(results)} per metric"))
    if report.has_roc(trained):
        roc = f"{name}_roc.png"
        report.plot_roc(results, os.path.join(out_dir, roc), f"{name}: macro ROC")
        blocks.append(("figure", roc, f"{name}: macro-averaged ROC, head / medium / tail"))
    header, table = report.split_table(results, demo.splits, demo.metrics, split_name)
    blocks.append(("table", header, table))

    for task in demo.samples:
        samples = trained.get(f"samples/{task}", [])
        if not samples:
            continue
        panel = f"{name}_samples_{task}.png"
        inputs = images(task, len(samples)) if images else [None] * len(samples)
        report.plot_samples(
            samples, inputs, os.path.join(out_dir, panel), f"{name} {task}: generated / reference"
        )
        blocks += [("heading", 3, f"{task} samples"), ("figure", panel, f"{name} {task} samples")]
        for pair in samples:
            blocks += [
                ("text", f"- generated: {pair['prediction']}"),
                ("text", f"  reference: {pair['reference']}"),
            ]
        blocks.append(("text", ""))
    return blocks
