"""Deterministic synthetic datasets written in the original on-disk formats.

Each module writes one format (``rp3d``: RP3D-DiagDS case JSON + ``.npy`` scans; ``radfm``:
RadFM task files with 2D PNGs and 3D ``.npy`` volumes) so that the real readers in
``radjax.data.formats`` are what tests, demos and tiny configs exercise. The phantoms are
learnable: labels follow from what is drawn, and the text says what and where.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import ml_collections

log = logging.getLogger(__name__)


def ensure_phantoms(
    data_cfg: ml_collections.ConfigDict,
    write: Callable[[Path, ml_collections.ConfigDict], None],
    what: str,
) -> None:
    """Writes phantoms with ``write(directory, data.phantoms)`` when ``data.root`` is missing
    or empty.

    Writes into a temporary sibling directory and renames it into place, so concurrent
    processes never see a half-written dataset.

    Raises:
      FileNotFoundError: ``data.root`` is empty and ``data.phantoms.enabled`` is off
        (``what`` names the real data the root should hold).
    """
    root = Path(data_cfg.root)
    if root.is_dir() and any(root.iterdir()):
        return
    phantoms = data_cfg.get("phantoms")
    if not phantoms or not phantoms.get("enabled", False):
        raise FileNotFoundError(
            f"data.root {root} is empty and data.phantoms.enabled is off; point data.root at {what}"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    write(staging, phantoms)
    try:
        if root.is_dir():
            root.rmdir()  # empty, else another process won: OSError below
        staging.rename(root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote phantoms to %s", root)
