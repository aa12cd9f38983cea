"""Predicts on a researcher's own scans with a trained or imported model.

``python -m experiments.predict --config configs/<paper>.py[:args]
(--workdir W | --checkpoint W/checkpoints/<step> | --untrained) --input scan.nii.gz
[--input dicom_dir/ --input image.png ...] [--prompt "..."] [--modality MRI] --out DIR``

Inputs: NIfTI (``.nii``, ``.nii.gz``), a DICOM series (a directory, or one single- or
multi-frame file) or a PNG/JPEG, read by ``radjax.data.readers`` (``read_scan``). Weights:
``--workdir`` = the newest readable checkpoint of a training run, ``--checkpoint`` = one step
directory, ``--untrained`` = the weights a fresh run starts from (the config's imported
weights, else random; recorded in the JSON). One of the three is required.

For each input ``DIR/<name>.json`` holds the paper's result, the input's geometry and how it
was preprocessed, and the weights used; ``DIR/<name>.png`` shows the image the model saw (three
orthogonal mid-slices of a volume) beside the result's summary. Every input is read and
preprocessed before the model is built, so a bad file fails at once, naming the file.

The paper side is its ``predict`` module (``radjax.registry.module(config.paper, "predict")``):

  ``load_input(scan, config, *, prompt=None, modality=None) -> inputs``
      ``scan``: ``read_scan``'s dict (``path``, ``reader``, ``volume`` | ``image``,
      ``modality``). ``inputs``: ``batch`` (one example as the paper's ``predict_fn`` reads
      it, leading batch axis 1, made by the paper's own data format), ``view`` (f32
      (D, H, W) in [0, 1], the image the model sees), ``info`` (JSON-able). Bad input or an
      option the paper does not take raises BadRecordError naming the file and the field.
  ``result(outputs, inputs, config) -> dict``
      ``outputs``: ``predict_fn``'s arrays of that example (batch axis dropped). Returns the
      JSON-able prediction; its ``summary`` (list of str) is printed in the figure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from experiments import launch
from radjax.data.errors import BadRecordError

flags.adopt_module_key_flags(launch)  # --help lists --config, --workdir, ...
log = logging.getLogger(__name__)

INPUT = flags.DEFINE_multi_string(
    "input", None, "A NIfTI file, a DICOM directory or file, or a PNG/JPEG (repeatable)."
)
OUT = flags.DEFINE_string("out", None, "Output directory for <name>.json and <name>.png.")
CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "One checkpoint step directory (.../checkpoints/<step>) instead of --workdir.",
)
PROMPT = flags.DEFINE_string("prompt", None, "Question or instruction (generative papers).")
MODALITY = flags.DEFINE_string(
    "modality",
    None,
    "Imaging modality of inputs whose header names none (NIfTI, PNG/JPEG; DICOM's Modality "
    "tag wins), for papers that take one.",
)
flags.mark_flags_as_required(["input", "out"])  # weights: --workdir | --checkpoint | --untrained

_NIFTI = (".nii", ".nii.gz")
_IMAGES = (".png", ".jpg", ".jpeg")


def read_scan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads one input: ``{path, reader, volume, image, modality}``.

    ``volume``: a ``radjax.data.readers.Volume`` (NIfTI, DICOM) else None; ``image``: PNG/JPEG
    pixels (H, W[, C]) else None; ``modality``: the DICOM ``Modality`` tag (else None).
    Raises BadRecordError naming the file when it is missing, unreadable or of no known type.
    """
    import pydicom

    from radjax.data import readers

    path = Path(path)
    name = path.name.lower()
    scan = dict(path=str(path), volume=None, image=None, modality=None)
    if not path.exists():
        raise BadRecordError(path, None, "file not found")
    if name.endswith(_NIFTI):
        return scan | dict(reader="nifti", volume=readers.read_nifti(path))
    if name.endswith(_IMAGES):
        return scan | dict(reader="image", image=readers.read_image(path))
    if path.is_dir() or name.endswith(".dcm") or not path.suffix:
        volume = readers.read_dicom_series(path)
        # the series' first file (read_dicom_series has read them all)
        first = (
            min(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if path.is_dir()
            else path
        )
        modality = pydicom.dcmread(first, stop_before_pixels=True).get("Modality") or None
        return scan | dict(reader="dicom", volume=volume, modality=modality)
    raise BadRecordError(
        path, None, f"unknown input type; expected {', '.join(_NIFTI + _IMAGES)}, .dcm or a folder"
    )


def output_names(paths: list[str]) -> list[str]:
    """One file stem per input: its name without the image suffix, made unique."""
    names: list[str] = []
    for p in paths:
        stem = Path(p.rstrip("/")).name
        for suffix in (*_NIFTI, *_IMAGES, ".dcm"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        name, n = stem or "input", 2
        while name in names:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def weights_source(workdir: str, checkpoint: str, untrained: bool) -> tuple[str, Path | None]:
    """Checks the weight flags before anything is built: ``("untrained", None)``,
    ``("workdir", <workdir>/checkpoints)`` or ``("checkpoint", <step dir>)``.

    Raises:
      app.UsageError: not exactly one source, or a path that holds no checkpoint (predicting
        with untrained weights happens only with --untrained).
    """
    if sum(map(bool, (workdir, checkpoint, untrained))) != 1:
        raise app.UsageError("give exactly one of --workdir, --checkpoint, --untrained")
    if untrained:
        return "untrained", None
    if workdir:
        directory = Path(workdir).resolve() / "checkpoints"
        if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
            raise app.UsageError(
                f"--workdir {workdir}: no checkpoint under {directory} (--untrained predicts "
                "with a fresh run's weights)"
            )
        return "workdir", directory
    step_dir = Path(checkpoint).resolve()
    if not step_dir.name.isdigit() or not (step_dir / "state").is_dir():
        raise app.UsageError(
            f"--checkpoint {checkpoint}: not a checkpoint step directory "
            "(.../checkpoints/<step> holding state/)"
        )
    return "checkpoint", step_dir


def restore(exp, kind: str, path: Path | None) -> tuple[dict, dict]:
    """The state of ``weights_source``'s choice and a JSON record of where it came from."""
    import jax

    from radjax.checkpoint import Checkpointer

    with jax.set_mesh(exp.mesh):  # restore_latest: as a resumed run (unreadable steps aside)
        if kind == "untrained":
            log.warning("--untrained: predicting with a fresh run's initial weights")
            return exp.init(), dict(source="untrained")
        ckpt = Checkpointer(str(path if kind == "workdir" else path.parent))
        if kind == "workdir":  # the newest readable step
            restored = ckpt.restore_latest(exp.restore_target())
            if restored is None:
                raise app.UsageError(f"no checkpoint step under {path}")
            step, state, _ = restored
            path = path / str(step)
        else:
            step = int(path.name)
            state, _ = ckpt.restore(step, exp.restore_target())
        ckpt.close()
    return state, dict(source="checkpoint", path=str(path), step=step)


def run_model(exp, state: dict, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The paper's jitted ``predict_step`` on one example (repeated to fill the mesh's batch
    shards); returns row 0 of every output, as numpy."""
    import jax

    from radjax.data import pipeline

    rows = int(exp.mesh.shape["data"]) * int(exp.mesh.shape["fsdp"])
    batch = {k: np.repeat(np.asarray(v), rows, axis=0) for k, v in batch.items()}
    with jax.set_mesh(exp.mesh):
        out = exp.predict_step(state, pipeline.to_global(batch, exp.mesh))
    return {k: np.asarray(v)[0] for k, v in jax.device_get(out).items()}


def draw_figure(view: np.ndarray, title: str, summary: list[str], path: str) -> None:
    """PNG: ``view`` f32 (D, H, W) (one slice if D = 1, else the mid-slices across D, H and
    W) and a text panel with ``title`` and the ``summary`` lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, h, w = view.shape
    panels = (
        [(view[0], "model input")]
        if d == 1
        else [
            (view[d // 2], f"slice {d // 2} of {d}"),
            (view[:, h // 2, :], f"row {h // 2} of {h}"),
            (view[:, :, w // 2], f"column {w // 2} of {w}"),
        ]
    )
    fig, axes = plt.subplots(
        1, len(panels) + 1, figsize=(3 * len(panels) + 6, 3.6), width_ratios=[1] * len(panels) + [2]
    )
    for ax, (image, label) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    text = axes[-1]
    text.set_axis_off()
    lines = [wrapped for line in summary for wrapped in textwrap.wrap(line, 60) or [""]]
    text.text(0, 1, "\n".join(lines[:24]), va="top", ha="left", family="monospace", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def predict_files(
    config,
    inputs: list[str],
    out_dir: str,
    *,
    workdir: str = "",
    checkpoint: str = "",
    untrained: bool = False,
    prompt: str | None = None,
    modality: str | None = None,
) -> list[dict]:
    """Predicts every input and writes ``out_dir/<name>.{json,png}``; returns the JSON dicts."""
    from radjax import registry
    from radjax.train import experiment

    source = weights_source(workdir, checkpoint, untrained)
    experiment.prepare_config(config)
    hook = registry.module(config.paper, "predict")
    prepared = [
        hook.load_input(read_scan(p), config, prompt=prompt, modality=modality) for p in inputs
    ]
    exp = experiment.build(config)
    state, weights = restore(exp, *source)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, inp in zip(output_names(inputs), prepared):
        result = hook.result(run_model(exp, state, inp["batch"]), inp, config)
        record = dict(paper=config.paper, input=inp["info"], weights=weights, **result)
        base = os.path.join(out_dir, name)
        with open(base + ".json", "w") as f:
            json.dump(record, f, indent=2, default=_jsonable)
        draw_figure(
            np.asarray(inp["view"], np.float32),
            f"{Path(inp['info']['file']).name} — {config.paper}",
            result["summary"],
            base + ".png",
        )
        log.info("%s -> %s.json, %s.png", inp["info"]["file"], base, base)
        written.append(record)
    return written


def main(argv):
    del argv
    launch.start()
    from radjax.checkpoint import CheckpointMismatchError

    try:
        predict_files(
            launch.CONFIG.value,
            INPUT.value,
            OUT.value,
            workdir=launch.WORKDIR.value,
            checkpoint=CHECKPOINT.value or "",
            untrained=launch.UNTRAINED.value,
            prompt=PROMPT.value,
            modality=MODALITY.value,
        )
    except BadRecordError as err:
        sys.exit(f"experiments.predict: bad input: {err}")
    except CheckpointMismatchError as err:
        sys.exit(f"experiments.predict: {err}")


if __name__ == "__main__":
    launch.run(main)
