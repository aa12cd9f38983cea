"""The report of run directories: loss curves, metric bars, ROC curves and sample panels as
PNGs, written as ``report.md`` and a self-contained ``report.html`` (PNGs inline as base64).

Reads only what the launchers write (``metrics.jsonl``, ``eval/<step>.json``). A report is a
list of blocks, rendered to both formats by ``write_report``:
``("heading", level, text)``, ``("text", markdown_line)``, ``("figure", png_name, alt)``,
``("table", header, rows)``; png names are relative to the report's folder.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SPLIT_ALL = "all"  # the split whose metrics carry no prefix
ROC_SPLITS = ("all", "head", "medium", "tail")
COLOURS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


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


def metric_value(values: Mapping, split: str, metric: str) -> float | None:
    """``values["<split>/<metric>"]`` (``values[metric]`` for the split ``all``) or None when
    missing or not finite."""
    v = values.get(metric if split == SPLIT_ALL else f"{split}/{metric}")
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


# ---------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------


def split_table(
    results: Mapping[str, Mapping],
    splits: Sequence[str],
    metrics: Sequence[str],
    split_name: str = "split",
) -> tuple[list[str], list[list[str]]]:
    """Rows: (model, split); columns: metrics. ``results`` maps a model name to its eval dict
    (keys as ``metric_value`` reads them)."""
    header = ["model", split_name, *metrics]
    rows = []
    for name, values in results.items():
        for split in splits:
            rows.append([name, split, *[_fmt(metric_value(values, split, m)) for m in metrics]])
    return header, rows


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# ---------------------------------------------------------------------------------------
# Figures. Each writes one PNG to ``path``.
# ---------------------------------------------------------------------------------------


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(rows: Sequence[dict], keys: Sequence[str], path: str, title: str) -> None:
    """metrics.jsonl values of ``keys`` over ``step``, one line each (log scale when all > 0)."""
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    positive = True
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", ms=2, lw=1.2, label=key)
            positive &= min(values) > 0
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_bars(
    results: Mapping[str, Mapping],
    splits: Sequence[str],
    metrics: Sequence[str],
    path: str,
    title: str,
) -> None:
    """Grouped bars, one panel per metric: x = split (or task), one bar per model of
    ``results`` (e.g. untrained / trained / baseline). Metrics without any value are left
    out; missing bars are gaps."""
    shown = [
        m
        for m in metrics
        if any(metric_value(v, s, m) is not None for v in results.values() for s in splits)
    ]
    cols = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.1 * rows), dpi=100, squeeze=False)
    width = 0.8 / max(1, len(results))
    for ax, metric in zip(axes.flat, shown):
        used = [
            s
            for s in splits
            if any(metric_value(v, s, metric) is not None for v in results.values())
        ]
        x = np.arange(len(used))
        for i, (name, values) in enumerate(results.items()):
            ys = [metric_value(values, s, metric) for s in used]
            ax.bar(
                x + (i - (len(results) - 1) / 2) * width,
                [np.nan if y is None else y for y in ys],
                width,
                label=name,
                color=COLOURS[i % len(COLOURS)],
            )
        ax.set_xticks(x, used, rotation=20, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    if shown:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def has_roc(values: Mapping | None) -> bool:
    return bool(values) and "roc/fpr" in values


def plot_roc(results: Mapping[str, Mapping], path: str, title: str) -> None:
    """One panel per split of ``ROC_SPLITS``: the macro-averaged ROC curve (``roc/fpr``,
    ``roc/<split>``) of every model in ``results`` that has it, with the chance diagonal."""
    fig, axes = plt.subplots(1, len(ROC_SPLITS), figsize=(3.2 * len(ROC_SPLITS), 3.3), dpi=100)
    for ax, split in zip(axes, ROC_SPLITS):
        ax.plot([0, 1], [0, 1], ls="--", color="#bbbbbb", lw=1)
        for i, (name, values) in enumerate(results.items()):
            tpr = values.get(f"roc/{split}") if has_roc(values) else None
            if tpr:
                auc = metric_value(values, split, "auc")
                label = name if auc is None else f"{name} (AUC {auc:.3f})"
                ax.plot(values["roc/fpr"], tpr, color=COLOURS[i % len(COLOURS)], label=label)
        ax.set_title(split)
        ax.set_xlabel("false positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("true positive rate")
    fig.suptitle(title)
    _save(fig, path)


def mid_slices(volume: np.ndarray, count: int = 3) -> np.ndarray:
    """(D, H, W) or (H, W) -> (H, k * W): the k <= ``count`` central slices side by side."""
    volume = np.asarray(volume, np.float32)
    if volume.ndim == 2:
        return volume
    depth = volume.shape[0]
    k = min(count, depth)
    first = max(0, depth // 2 - k // 2)
    return np.concatenate(list(volume[first : first + k]), axis=1)


def plot_samples(
    samples: Sequence[Mapping[str, str]],
    images: Sequence[np.ndarray | None],
    path: str,
    title: str,
) -> None:
    """One row per sample: its input image (``mid_slices``; blank when None) beside the
    generated and the reference text."""
    n = max(1, len(samples))
    fig, axes = plt.subplots(
        n, 2, figsize=(11, 2.3 * n), dpi=100, gridspec_kw={"width_ratios": [1, 2.6]}, squeeze=False
    )
    for (ax_img, ax_txt), sample, image in zip(axes, samples, images):
        ax_img.axis("off")
        if image is not None:
            ax_img.imshow(mid_slices(image), cmap="gray", interpolation="nearest")
            if np.ndim(image) == 3:
                ax_img.set_title(f"central slices of {np.shape(image)[0]}", fontsize=8)
        ax_txt.axis("off")
        generated = textwrap.fill("generated: " + sample["prediction"], 95)
        reference = textwrap.fill("reference: " + sample["reference"], 95)
        ax_txt.text(0, 0.98, generated, va="top", fontsize=8, color="#1f4e9e", family="monospace")
        lines = generated.count("\n") + 1
        ax_txt.text(
            0,
            0.98 - 0.13 * lines - 0.05,
            reference,
            va="top",
            fontsize=8,
            color="#333333",
            family="monospace",
        )
    fig.suptitle(title)
    _save(fig, path)


# ---------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(blocks: Sequence[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "heading":
            out += ["#" * block[1] + " " + block[2], ""]
        elif kind == "text":
            out.append(block[1])
        elif kind == "figure":
            out += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "table":
            out += [markdown_table(block[1], block[2]), ""]
        else:
            raise ValueError(f"report block kind {kind!r} is not heading/text/figure/table")
    return "\n".join(out) + "\n"


def _inline(markdown: str) -> str:
    """Escaped HTML of one markdown line: `code` and **bold** only."""
    s = html.escape(markdown)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)


def to_html(blocks: Sequence[tuple], folder: str, title: str) -> str:
    """One self-contained page: figures read from ``folder`` and inlined as data URIs."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "heading":
            body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "text":
            line = block[1]
            if line.startswith("- "):
                body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
            elif line.strip():
                body.append(f"<p>{_inline(line)}</p>")
        elif kind == "figure":
            with open(os.path.join(folder, block[1]), "rb") as f:
                data = base64.b64encode(f.read()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                f"<figcaption>{html.escape(block[2])}</figcaption></figure>"
            )
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                for r in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            raise ValueError(f"report block kind {kind!r} is not heading/text/figure/table")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:12px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "figure{margin:1em 0}figcaption{color:#666;font-size:12px}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(blocks: Sequence[tuple], folder: str, title: str) -> tuple[str, str]:
    """Writes ``folder/report.md`` and ``folder/report.html``; returns both paths."""
    md, page = os.path.join(folder, "report.md"), os.path.join(folder, "report.html")
    with open(md, "w") as f:
        f.write(to_markdown(blocks))
    with open(page, "w") as f:
        f.write(to_html(blocks, folder, title))
    return md, page
