"""The demo's sections, gathered from every paper's ``radjax.papers.<paper>.demo.SECTIONS``
(kept apart from ``experiments.demo``, which defines absl flags)."""

from __future__ import annotations

import dataclasses

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
