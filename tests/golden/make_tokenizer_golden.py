"""Golden token ids of the ORIGINAL RadFM text procedure, for radjax's tokenizer parity test.

Run by hand (pytest does not collect this file) with the versions RadFM pins, in an
environment of its own (tests/golden/README.md)::

    /tmp/radfm_tok_env/bin/python tests/golden/make_tokenizer_golden.py \
        --radfm_repo /tmp/radfm --sp_model /path/to/mistral_common/data/tokenizer.model.v1 \
        --out tests/golden/data/radfm_tokenizer.json

``--radfm_repo``: a checkout (or ``git archive``) of chaoyi-wu/RadFM at commit
9efba84cced9ffdcbce00d6005f255414ffa8c36 with ``src/`` and ``Quick_demo/Language_files/``.
``--sp_model``: a LLaMA-format SentencePiece model (the one mistral-common ships).

A folder laid out like the released ``Quick_demo/Language_files`` is made in a temporary
directory: ``--sp_model`` as ``tokenizer.model`` beside the released ``tokenizer_config.json``
and ``special_tokens_map.json`` (empty-string bos / eos / unk). The ORIGINAL
``multi_dataset`` (``src/Dataset/multi_dataset.py``) is imported from the checkout and built
on that folder, so its own ``__init__`` sets the tokenizer up (``LlamaTokenizer``, the image
tokens, pad / bos / eos ids), and each sample goes through its own ``__getitem__``
(``text_add_image``, tokenisation, EOS, labels, ``find_position``). Replaced, because they
are heavy or need data that is not here: spaCy / scispaCy (the UMLS extractor returns each
sample's listed entities), torchvision (imported, unused on this path),
and the task datasets of ``src/Dataset/dataset`` (empty; the samples are given here).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import sentencepiece
import tokenizers
import torch
import transformers

RADFM_COMMIT = "9efba84cced9ffdcbce00d6005f255414ffa8c36"
MAX_SEQ = 192
MAX_IMG_SIZE = 10  # the ids do not depend on it (image n's tokens are <image{32n+j}>)
IMAGE_NUM = 32
VOC_SIZE = 32000


def _sample(name, question, answer, positions, entities=()):
    return dict(
        name=name, question=question, answer=answer, positions=list(positions),
        entities=list(entities),
    )  # fmt: skip


# positions: character positions in the question, as the original's {"question": p}.
SAMPLES = [
    _sample("start", "What modality is used to take this image?", "CT", [0], ["CT"]),
    _sample(
        "end",
        "Please caption this scan.",
        "Axial CT of the chest shows a right pleural effusion.",
        [25],
        ["CT", "pleural effusion"],
    ),
    _sample("space_after_image", "Is there a lesion in the liver?", "Yes, in segment 4.", [9]),
    _sample("space_before_image", "Is there a lesion in the liver?", "No.", [10]),
    _sample("mid_word", "Describe the abnormality seen.", "A hepatic cyst.", [17], ["cyst"]),
    _sample(
        "several",
        "Compare the first scan with the second scan and the third.",
        "The mass grew between the scans.",
        [0, 21, 58],
        ["mass"],
    ),
    _sample("same_place", "Which of these two images is T2-weighted?", "The second.", [0, 0]),
    _sample("same_place_mid", "Which of these is abnormal?", "Image 2.", [6, 6, 16]),
    _sample(
        "double_spaces",
        "Where  is the  mass located?",
        "Left  kidney,  lower pole  mass.",
        [6, 14],
        ["kidney", "mass"],
    ),
    _sample(
        "newline_tab",
        "Findings:\n\tdescribe them.",
        "1. Edema\n2. (MRI) shows infarct\n• Hemorrhage",
        [10, 11],
        ["Edema", "MRI", "infarct", "Hemorrhage"],
    ),
    _sample("leading_space", " What is shown here?", "A fracture.", [20], ["fracture"]),
    _sample("leading_space_image", " Is this normal?", "No", [0, 1]),
    _sample(
        "unicode",
        "Measure the lesion (in cm × cm).",
        "≈ 3 cm × 2 cm nodule, Ødème périlésionnel, ≥ 5 mm.",
        [19],
        ["nodule"],
    ),
    _sample(
        "entity_repeats",
        "Describe the findings.",
        "Mass in the liver; another mass near the liver hilum. Masses are benign.",
        [22],
        ["Mass", "mass", "liver"],
    ),
]


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _NoData:
    """Stand-in for the original's task datasets (they read CSVs on the authors' disks)."""

    def __init__(self, *args, **kwargs):
        pass

    def __len__(self):
        return 0


class _Doc:
    def __init__(self, ents):
        self.ents = ents


def _install_stubs(entities_by_answer: dict[str, list[str]]) -> None:
    """The modules ``multi_dataset.py`` imports that this path does not use (or, spaCy,
    cannot run here): the UMLS extractor returns the sample's listed entity strings."""

    class _Nlp:
        def add_pipe(self, *args, **kwargs):
            pass

        def __call__(self, text):
            return _Doc(entities_by_answer[text])

    _stub("spacy", load=lambda name: _Nlp())
    _stub("spacy.tokens", Span=object)
    _stub("scispacy")
    _stub("scispacy.abbreviation", AbbreviationDetector=object)
    _stub("scispacy.umls_linking", UmlsEntityLinker=object)
    _stub("torchvision")
    names = """MedPix_Multi_Dataset MedPix_Single_Dataset MedPix_QA_Dataset ChestXray_Dataset
        Binary_Dataset VQA_Dataset CaseReport_dataset RadioVQA_Dataset Radio_Modality_Dataset
        RadioCaption_Dataset Radiofeatures_Dataset PMCOA_Dataset Paper_Inline_dataset"""
    _stub("Dataset.dataset", **{n: _NoData for n in names.split()}, __all__=names.split())


def _language_files(repo: Path, sp_model: Path, out: Path) -> dict[str, str]:
    """``out`` laid out like the released Language_files, with ``sp_model`` as its model."""
    released = repo / "Quick_demo" / "Language_files"
    files = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(released / name, out / name)
        files[name] = (released / name).read_text()
    shutil.copy(sp_model, out / "tokenizer.model")
    return files


def _commit(repo: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


def _run_original(repo: Path, folder: Path) -> tuple[object, list[dict]]:
    _install_stubs({s["answer"].replace("•", ""): s["entities"] for s in SAMPLES})
    sys.path.insert(0, str(repo / "src"))
    original = importlib.import_module("Dataset.multi_dataset")
    ds = original.multi_dataset(
        str(folder), max_seq=MAX_SEQ, max_img_size=MAX_IMG_SIZE, image_num=IMAGE_NUM,
        voc_size=VOC_SIZE,
    )  # fmt: skip
    ds.dataset_reflect = {"golden": []}
    for s in SAMPLES:
        images = [
            {"image": torch.zeros(3, 8, 8, 4), "position": {"question": p}} for p in s["positions"]
        ]
        ds.dataset_reflect["golden"].append(
            {"image_dict": images, "question": s["question"], "answer": s["answer"]}
        )
    ds.data_whole = [{"golden": i} for i in range(len(SAMPLES))]
    tok = ds.text_tokenizer
    rows = []
    for i, s in enumerate(SAMPLES):
        out = ds[i]
        images = ds.dataset_reflect["golden"][i]["image_dict"]
        _, question, answer = ds.text_add_image(images, s["question"], s["answer"])
        # question_length is local to __getitem__; this is its statement, on its question
        q = tok(question, max_length=MAX_SEQ, truncation=True, padding="max_length")
        rows.append(
            dict(
                s,
                text=question + " " + answer,
                key_words_query=list(out["key_words_query"]),
                question_length=int(sum(q["attention_mask"])),
                input_ids=out["lang_x"].tolist(),
                attention_mask=out["attention_mask"].tolist(),
                labels=out["labels"].tolist(),
                loss_reweight=[int(w) for w in out["loss_reweight"].tolist()],
                pieces=tok.convert_ids_to_tokens(
                    [t for t in out["lang_x"].tolist() if t < VOC_SIZE and t != 0]
                ),
            )
        )
    return tok, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--radfm_repo", required=True, type=Path)
    parser.add_argument("--sp_model", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = _language_files(args.radfm_repo, args.sp_model, Path(tmp))
        tok, rows = _run_original(args.radfm_repo, Path(tmp))
    meta = dict(
        repo="chaoyi-wu/RadFM",
        commit=_commit(args.radfm_repo) or RADFM_COMMIT,
        procedure="src/Dataset/multi_dataset.py: multi_dataset.__init__ + __getitem__",
        versions=dict(
            python=sys.version.split()[0],
            transformers=transformers.__version__,
            sentencepiece=sentencepiece.__version__,
            tokenizers=tokenizers.__version__,
            torch=torch.__version__,
            numpy=np.__version__,
        ),  # fmt: skip
        sp_model=args.sp_model.name,
        sp_model_sha256=hashlib.sha256(args.sp_model.read_bytes()).hexdigest(),
        language_files=files,
        max_seq=MAX_SEQ,
        max_img_size=MAX_IMG_SIZE,
        image_num=IMAGE_NUM,
        voc_size=VOC_SIZE,
        special_ids=dict(
            pad=tok.pad_token_id,
            bos=tok.bos_token_id,
            eos=tok.eos_token_id,
            unk=tok.unk_token_id,
        ),  # fmt: skip
        tokenizer_length=len(tok),
    )
    lines = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in rows)
    head = json.dumps(meta, ensure_ascii=False, indent=1)[:-2]
    args.out.write_text(f'{head},\n "samples": [\n{lines}\n ]\n}}\n')
    json.loads(args.out.read_text())  # well-formed
    print(f"wrote {args.out}: {len(rows)} samples")


if __name__ == "__main__":
    main()
