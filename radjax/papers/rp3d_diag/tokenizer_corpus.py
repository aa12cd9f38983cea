"""The corpus the shipped phantom tokenizer (``radjax.data.tokenizers.phantom_tokenizer``) was
trained on: the texts of the RP3D phantoms, whose sentences every phantom writer shares
(``radjax.data.phantoms.anatomy``). Rebuild it with
``python -m radjax.papers.rp3d_diag.tokenizer_corpus``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from radjax.data.phantoms.anatomy import DISORDERS
from radjax.data.tokenizers import PHANTOM_TOKENIZER_DIR, train_tokenizer
from radjax.papers.rp3d_diag.phantoms import write_rp3d_phantoms


def phantom_corpus(num_cases: int = 300) -> list[str]:
    """Texts of the synthetic datasets, in a fixed order (deterministic)."""
    texts = [d.name for d in DISORDERS] + [d.icd10_description for d in DISORDERS]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_rp3d_phantoms(tmp, num_cases, 0, size=16, seed=0)
        cases = json.loads((Path(root) / "train.json").read_text())
    for case in cases.values():
        for sample in case["Samples"]:
            texts += [
                sample["finding"],
                sample["impression"],
                sample["image_caption"],
                sample["title"],
            ]
            texts += [t for qa in sample["qa_list"] for t in (qa["question"], qa["answer"])]
    return texts


def build_phantom_tokenizer(out_dir: str | os.PathLike = PHANTOM_TOKENIZER_DIR) -> None:
    """Rebuilds the shipped phantom tokenizer (``python -m radjax.papers.rp3d_diag.tokenizer_corpus``)."""
    train_tokenizer(phantom_corpus(), out_dir)


if __name__ == "__main__":
    build_phantom_tokenizer()
    print(f"wrote {PHANTOM_TOKENIZER_DIR}")
