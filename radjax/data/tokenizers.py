"""Tokenizers: local Hugging Face tokenizer directories and the small phantom tokenizer.

Paper configs point ``AutoTokenizer`` at a local directory (no hub access at run time). The
tiny configs use a byte-level BPE tokenizer trained on the phantom corpus (report, caption
and QA texts of the synthetic datasets plus disorder names), shipped as package data in
``radjax/data/tokenizer_phantom/`` and rebuilt deterministically by
``python -m radjax.papers.rp3d_diag.tokenizer_corpus``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

PHANTOM_TOKENIZER_DIR = Path(__file__).parent / "tokenizer_phantom"
PHANTOM_VOCAB_SIZE = 1024
SPECIAL_TOKENS = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
IMAGE_TOKENS = ("<image>", "</image>")


def load_tokenizer(path: str | os.PathLike):
    """``AutoTokenizer`` from a local directory; a clear error if it is not one."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    names = {p.name for p in path.iterdir()}
    known = {"tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json"}
    if not names & known:
        raise FileNotFoundError(
            f"{path}: no tokenizer files (expected one of {sorted(known)}; found {sorted(names)})"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def phantom_tokenizer():
    """The shipped phantom tokenizer (byte-level BPE, at most 1024 tokens, ``<image>`` atomic)."""
    return load_tokenizer(PHANTOM_TOKENIZER_DIR)


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Adds ``tokens`` as atomic special tokens; returns their ids (existing ones reused).

    Grow the model's embedding table to ``len(tokenizer)`` afterwards
    (``radjax.models.embeddings.resize_vocab``).
    """
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(tokens)}, replace_extra_special_tokens=False
    )
    return tokenizer.convert_tokens_to_ids(list(tokens))


def train_tokenizer(
    corpus: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = PHANTOM_VOCAB_SIZE
) -> None:
    """Trains a byte-level BPE tokenizer on ``corpus`` and saves it as a transformers dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*SPECIAL_TOKENS.values(), *IMAGE_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **SPECIAL_TOKENS, additional_special_tokens=list(IMAGE_TOKENS)
    )
    fast.save_pretrained(str(out_dir))
