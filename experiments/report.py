"""Markdown + PNG report of a run directory: loss curve and metric tables.

Reads only what the launchers write (``metrics.jsonl``, ``eval/<step>.json``), so any run can
be reported: ``python -m experiments.report --workdir W``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def latest_eval(workdir: str) -> dict | None:
    folder = os.path.join(workdir, "eval")
    if not os.path.isdir(folder):
        return None
    steps = sorted(int(name[:-5]) for name in os.listdir(folder) if name.endswith(".json"))
    if not steps:
        return None
    with open(os.path.join(folder, f"{steps[-1]}.json")) as f:
        return json.load(f)


def plot_curve(rows: Sequence[dict], key: str, path: str, title: str) -> None:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def split_table(
    results: dict[str, dict],
    splits: Sequence[str],
    metrics: Sequence[str],
    split_name: str = "split",
) -> tuple[list[str], list[list[str]]]:
    """Rows: (model, split); columns: metrics. ``results`` maps a model name to its eval dict,
    whose keys are ``<split>/<metric>`` (``<metric>`` for the split ``all``)."""
    header = ["model", split_name, *metrics]
    rows = []
    for name, values in results.items():
        for split in splits:
            prefix = "" if split == "all" else f"{split}/"
            rows.append([name, split, *[_fmt(values.get(prefix + m)) for m in metrics]])
    return header, rows


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_table(header: Sequence[str], rows: Sequence[Sequence[str]], path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.1 * len(header) + 1, 0.35 * len(rows) + 1.0), dpi=110)
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
