"""Tokenizers: local Hugging Face tokenizer directories and the small phantom tokenizer.

Paper configs point ``AutoTokenizer`` at a local directory (no hub access at run time). The
tiny configs use a byte-level BPE tokenizer trained on the phantom corpus (report, caption
and QA texts of the synthetic datasets plus disorder names), shipped as package data in
``radjax/data/tokenizer_phantom/`` and rebuilt deterministically by
``python -m radjax.papers.rp3d_diag.tokenizer_corpus``.

A directory with a SentencePiece ``tokenizer.model`` and no ``tokenizer.json`` (LLaMA's
released layout, e.g. RadFM's ``Language_files``) loads as the LLaMA tokenizer of
transformers 4.28 did: BOS in front, no EOS, ``legacy`` SentencePiece behaviour (each text
piece between added tokens gets the dummy-prefix ``▁``), special tokens that the config
leaves empty taken from the model's own unk / bos / eos ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

PHANTOM_TOKENIZER_DIR = Path(__file__).parent / "tokenizer_phantom"
PHANTOM_VOCAB_SIZE = 1024
SPECIAL_TOKENS = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
IMAGE_TOKENS = ("<image>", "</image>")


LLAMA_CLASSES = (None, "LlamaTokenizer", "LlamaTokenizerFast")


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local directory; a clear error if it is not one.

    ``tokenizer.json`` present: ``AutoTokenizer``. Only a SentencePiece ``tokenizer.model``
    (bare, or with a LLaMA ``tokenizer_config.json``): ``load_sentencepiece_llama``.
    """
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
    if "tokenizer.model" in names and "tokenizer.json" not in names:
        config = _read_config(path / "tokenizer_config.json")
        if config.get("tokenizer_class") in LLAMA_CLASSES:
            return load_sentencepiece_llama(path, config)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _read_config(file: Path) -> dict:
    if not file.exists():
        return {}
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return config


def _special_token_text(value) -> str:
    """The text of a special-token entry (a string or an AddedToken dict)."""
    return value.get("content", "") if isinstance(value, dict) else str(value or "")


def load_sentencepiece_llama(path: Path, config: dict):
    """A LLaMA tokenizer from ``path/tokenizer.model`` (SentencePiece BPE) that encodes as
    transformers 4.28.1's (slow, SentencePiece) ``LlamaTokenizer`` did.

    ``add_bos_token`` True, ``add_eos_token`` False and ``legacy`` True unless ``config``
    (``tokenizer_config.json``) says otherwise. Each of unk / bos / eos that ``config``
    leaves empty or absent is the model's own piece at its ``unk_id`` / ``bos_id`` /
    ``eos_id`` (LLaMA: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2). Two fixes to transformers'
    conversion make the ids SentencePiece's: the BPE merges are ranked by the SentencePiece
    score of the merged piece (the whitespace-run pieces ``▁▁``… score -1e9 and merge last;
    converted, they merged first: ``"Left  kidney"`` gave ``▁▁ k id ney`` for ``▁ ▁kid ney``),
    and (legacy) every text piece gets the dummy prefix ``▁`` even when it starts with a space
    (``" What"`` is ``▁ ▁What``).

    Raises ImportError (install sentencepiece) when sentencepiece is missing, ValueError
    naming the file when the model declares no such id.
    """
    try:
        import sentencepiece
    except ImportError as err:
        raise ImportError(
            f"{path / 'tokenizer.model'} is a SentencePiece model: install sentencepiece "
            "(pip install sentencepiece) to load it"
        ) from err
    from tokenizers import models, normalizers
    from transformers import LlamaTokenizer

    model = sentencepiece.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    specials = {}
    for name, piece_id in (
        ("unk", model.unk_id()),
        ("bos", model.bos_id()),
        ("eos", model.eos_id()),
    ):
        text = _special_token_text(config.get(f"{name}_token"))
        if not text:
            if piece_id < 0:
                raise ValueError(
                    f"{path / 'tokenizer_config.json'}: {name}_token is empty and "
                    f"{path / 'tokenizer.model'} declares no {name} id"
                )
            text = model.id_to_piece(piece_id)
        specials[f"{name}_token"] = text
    legacy = bool(config.get("legacy", True))
    tok = LlamaTokenizer.from_pretrained(
        str(path),
        local_files_only=True,
        legacy=legacy,
        add_bos_token=bool(config.get("add_bos_token", True)),
        add_eos_token=bool(config.get("add_eos_token", False)),
        **specials,
    )
    backend = tok.backend_tokenizer
    bpe = json.loads(backend.to_str())["model"]
    merges = [tuple(m) for m in bpe["merges"]]
    score = {m: model.get_score(model.piece_to_id("".join(m))) for m in merges}
    backend.model = models.BPE(
        vocab=bpe["vocab"],
        merges=sorted(merges, key=lambda m: -score[m]),  # stable: ties keep their order
        unk_token=bpe["unk_token"],
        fuse_unk=bpe["fuse_unk"],
        byte_fallback=bpe["byte_fallback"],
    )
    if legacy:
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        backend.pre_tokenizer = None
    return tok


def phantom_tokenizer():
    """The shipped phantom tokenizer (byte-level BPE, at most 1024 tokens, ``<image>`` atomic)."""
    return load_tokenizer(PHANTOM_TOKENIZER_DIR)


def add_special_tokens(
    tokenizer, tokens: Sequence[str], *, strip_whitespace: bool = False
) -> list[int]:
    """Adds ``tokens`` as atomic special tokens; returns their ids (existing ones reused).

    ``strip_whitespace``: each token takes the whitespace on both its sides with it, so the
    text next to it is tokenised stripped, as transformers 4.28's slow tokenizers did with
    special tokens added as strings (RadFM's image tokens).
    Grow the model's embedding table to ``len(tokenizer)`` afterwards
    (``radjax.models.embeddings.resize_vocab``).
    """
    from tokenizers import AddedToken

    added = [
        AddedToken(t, lstrip=True, rstrip=True, normalized=False, special=True)
        if strip_whitespace
        else t
        for t in tokens
    ]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": added}, replace_extra_special_tokens=False
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
