"""The demo's sections, gathered from every paper's ``radjax.papers.<paper>.demo.SECTIONS``
and the report blocks of one section (kept apart from ``experiments.demo``, which defines absl
flags, so tests and other tools can import them)."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping

import ml_collections

from experiments import report
from radjax import registry


@dataclasses.dataclass(frozen=True)
class Demo:
    """One report section: a config to train, the metrics and splits (or tasks) tabled.

    Papers declare theirs as dicts in ``radjax.papers.<paper>.demo.SECTIONS``; a demo module
    may also define ``sample_images(config, split, task, rows)`` -> the input images (f32
    (D, H, W)) of a task's samples (their ``row`` positions), drawn beside the generations.
    ``stages`` = ((name, arg), ...): configs trained first, in order, each starting from the
    previous one's workdir (``init_from``); the section's own ``arg`` is the last stage."""

    paper: str
    name: str
    module: str
    arg: str
    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    baseline: bool = False  # also table the eval's "baseline/..." entries
    samples: tuple[str, ...] = ()  # tasks whose "samples/<task>" generations are shown
    stages: tuple[tuple[str, str], ...] = ()  # (name, arg) of the stages trained before
    minutes: float = 1.0  # its time on 2 cores, measured: the demo starts the longest first
    # a function of the paper's demo module, ``runner(arg, workdir) -> report blocks``, for a
    # section that is no train-and-evaluate run (its figures written into ``workdir``)
    runner: str = ""


def config_label(demo: Demo, name: str) -> str:
    """``configs.<paper>:<arg>`` of the run ``name`` (a stage or the section itself)."""
    arg = dict(demo.stages).get(name, demo.arg)
    return f"{demo.module}:{arg}"


def stage_runs(demo: Demo, workdir: str) -> list[tuple[str, str, ml_collections.ConfigDict]]:
    """[(name, run_dir, config)] the demo trains, in order: ``demo.stages`` and then the
    section's own config, every one on the paper's data under ``<workdir>/data/<paper>`` and
    each after the first starting from the previous run's workdir (``init_from.workdir``)."""
    module = importlib.import_module(demo.module)
    runs, previous = [], ""
    for name, arg in (*demo.stages, (demo.name, demo.arg)):
        config = module.get_config(arg)
        config.data.root = os.path.join(workdir, "data", config.paper)
        if previous:
            config.init_from.workdir = previous
        previous = os.path.join(workdir, name)
        runs.append((name, previous, config))
    return runs


def demos(only: tuple[str, ...] = ()) -> list[Demo]:
    """Every paper's demo sections (papers with a ``demo`` module), or those of ``only``."""
    out = []
    for paper in only or registry.names():
        spec = registry.optional_module(paper, "demo")
        for section in spec.SECTIONS if spec else ():
            out.append(Demo(paper=paper, module=f"configs.{paper}", **section))
    return out


def by_paper(all_demos: list[Demo]) -> list[list[Demo]]:
    """Sections grouped by paper (a paper's sections share runs), in report order."""
    groups: dict[str, list[Demo]] = {}
    for demo in all_demos:
        groups.setdefault(demo.paper, []).append(demo)
    return list(groups.values())


def longest_first(groups: list[list[Demo]]) -> list[int]:
    """Indices of ``groups`` by their measured minutes, longest first (so that the longest
    paper does not start last when papers run side by side)."""
    return sorted(range(len(groups)), key=lambda i: -sum(d.minutes for d in groups[i]))


def core_groups(cores: list[int], jobs: int) -> list[list[int]]:
    """``cores`` split into ``jobs`` disjoint runs of neighbouring cores of near-equal size,
    one per worker process (``jobs`` above the core count: one core each, round-robin)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cores = sorted(cores)
    if jobs >= len(cores):
        return [[cores[i % len(cores)]] for i in range(jobs)]
    bounds = [round(i * len(cores) / jobs) for i in range(jobs + 1)]
    return [cores[bounds[i] : bounds[i + 1]] for i in range(jobs)]


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
    images: Callable[[str, list[int]], list] | None = None,
) -> list[tuple]:
    """Report blocks of one section, its figures written to ``out_dir`` as ``<name>_*.png``.

    rows: the run's metrics.jsonl; trained / untrained: eval dicts; images(task, rows): the
    inputs of a task's samples at those ``row`` positions (``sample_images`` of the paper's
    demo module; a sample without ``row`` is at its own position)."""
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
        positions = [s.get("row", i) for i, s in enumerate(samples)]
        inputs = images(task, positions) if images else [None] * len(samples)
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
