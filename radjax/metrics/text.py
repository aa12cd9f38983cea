"""Text-generation metrics: thin wrappers over the well-kept libraries, shared by papers.

Libraries do the work where one exists (nltk BLEU/METEOR, rouge-score, sacrebleu, bert-score);
only glue (tokenisation, the VQA answer normalisation, averaging) and what no library has
(token F1, substring VQA hits) are written here. A paper's evaluation protocol -- which of
these, on which tokens, averaged how -- lives in its package (``radjax/papers/<paper>/
metrics.py``); the medical-entity lexicon is ``radjax.metrics.entities``.

Offline deviations (no hub, no Java) are listed in each docstring.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------
# Tokenisation and normalisation
# --------------------------------------------------------------------------------------------


def whitespace_tokens(text: str, lower: bool = True) -> list[str]:
    """``text.lower().split()`` (AutoRG-Brain's, LLaVA-Med's and Uni-Med's tokenisation)."""
    return (text.lower() if lower else text).split()


def tokens_13a(text: str) -> list[str]:
    """sacrebleu's ``13a`` tokenisation (what HF ``evaluate``'s ``bleu`` uses; case kept)."""
    return _tok13a()(text).split()


@functools.lru_cache(maxsize=1)
def _tok13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


# LLaVA-Med / Uni-Med ``normalize_word`` (the VQA-v2 evaluation normalisation). The contraction
# table maps apostrophe-less spellings to the spelling with apostrophes.
_CONTRACTIONS = dict(
    pair.split("=")
    for pair in """aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't
    couldn'tve=couldn't've couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't
    hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd
    hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've
    I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
    let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've
    mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
    oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
    shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
    somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
    someonell=someone'll someones=someone's somethingd=something'd
    somethingd've=something'd've something'dve=something'd've somethingll=something'll
    thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
    theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've
    weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've
    whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
    who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's
    wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
    yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've
    y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've youll=you'll
    youre=you're youve=you've""".split()
)
_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# The original pattern is ``(?!<=\d)(\.)(?!\d)`` (a look-ahead, not a look-behind: every period
# not followed by a digit goes) and it is applied with ``sub(..., re.UNICODE)``, which passes
# re.UNICODE (= 32) as ``count``: only the first 32 such periods are removed. Both kept.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(\,)(\d)")


def normalize_answer(text: str) -> str:
    """LLaVA-Med's (and Uni-Med's) ``normalize_word``: punctuation, number words, articles,
    contractions, commas; lower-cased."""
    original = text
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(original) is not None
    for p in _PUNCT:
        if (p + " " in original) or (" " + p in original) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out, count=int(re.UNICODE))
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


# --------------------------------------------------------------------------------------------
# BLEU
# --------------------------------------------------------------------------------------------


def sentence_bleu(
    hypothesis: Sequence[str],
    references: Sequence[Sequence[str]],
    weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
) -> float:
    """nltk ``sentence_bleu`` without smoothing on pre-tokenised input (its warnings silenced)."""
    from nltk.translate.bleu_score import sentence_bleu as _nltk_sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            _nltk_sentence_bleu(
                [list(r) for r in references], list(hypothesis), weights=tuple(weights)
            )
        )


def cumulative_bleu(prediction: str, reference: str) -> dict[str, float]:
    """``bleu1``..``bleu4``: nltk cumulative weights (1), (1/2,1/2), (1/3,)*3, (1/4,)*4 on
    ``normalize_answer``-ed whitespace tokens; no smoothing (Uni-Med's VQA BLEU, RadFM's)."""
    hyp, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    return {f"bleu{n}": sentence_bleu(hyp, [ref], (1.0 / n,) * n) for n in (1, 2, 3, 4)}


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], **kwargs) -> float:
    """Corpus BLEU-4 from sacrebleu (13a tokens, exp smoothing by default), in [0, 1]."""
    import sacrebleu

    check_pairs(predictions, references)
    return (
        float(sacrebleu.corpus_bleu(list(predictions), [list(references)], **kwargs).score) / 100.0
    )


# --------------------------------------------------------------------------------------------
# ROUGE
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _rouge_scorer(types: tuple[str, ...], use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)


def rouge(
    prediction: str,
    reference: str,
    types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = False,
) -> dict[str, dict[str, float]]:
    """rouge-score: ``{type: {"precision", "recall", "fmeasure"}}`` (target = reference)."""
    scores = _rouge_scorer(tuple(types), use_stemmer).score(reference, prediction)
    return {
        k: {"precision": v.precision, "recall": v.recall, "fmeasure": v.fmeasure}
        for k, v in scores.items()
    }


# --------------------------------------------------------------------------------------------
# METEOR (nltk + WordNet)
# --------------------------------------------------------------------------------------------

# The 45 WordNet 3.0 lexicographer files (lexnames(5WN)); not shipped in Debian's .debs.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

WORDNET_INSTALL_HINT = (
    "METEOR needs the WordNet 3.0 database for nltk and it was not found. Install it with "
    "`make wordnet` (runs `apt-get download wordnet-base wordnet-sense-index`, unpacks them with "
    "`dpkg -x` and copies usr/share/wordnet/* plus a generated `lexnames` file into "
    "<venv>/nltk_data/corpora/wordnet/), or put that folder under a directory named in "
    "NLTK_DATA. Looked in: {paths}"
)


class WordNetMissingError(LookupError):
    """WordNet is not installed where nltk looks; the message says how to install it."""


def write_lexnames(wordnet_dir: str | os.PathLike) -> Path:
    """Write WordNet's ``lexnames`` file (``NN<TAB>name<TAB>pos-number``) into ``wordnet_dir``."""
    path = Path(wordnet_dir) / "lexnames"
    lines = [
        f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def nltk_data_dirs() -> list[str]:
    """Where nltk looks for data: its own path list, which includes ``NLTK_DATA`` entries and
    ``<sys.prefix>/nltk_data`` (the venv), with the venv path added if missing."""
    import nltk

    venv = os.path.join(sys.prefix, "nltk_data")
    if venv not in nltk.data.path:
        nltk.data.path.append(venv)
    return list(nltk.data.path)


def require_wordnet():
    """Return nltk's WordNet reader, or raise :class:`WordNetMissingError` with the install
    command. Never lets METEOR fall back to exact/stem matching silently."""
    import nltk

    dirs = nltk_data_dirs()
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        raise WordNetMissingError(WORDNET_INSTALL_HINT.format(paths=dirs)) from None
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except (LookupError, OSError) as e:  # e.g. a folder without lexnames
        raise WordNetMissingError(WORDNET_INSTALL_HINT.format(paths=dirs) + f" ({e})") from None
    return wordnet


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def meteor_tokens(text: str) -> list[str]:
    """``nltk.word_tokenize`` without its punkt data: sentences split at ``.!?`` + whitespace
    (instead of punkt), then nltk's Treebank word tokenizer on each, as ``word_tokenize`` does."""
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    return [t for s in _SENTENCE_END.split(text.strip()) if s for t in tok.tokenize(s)]


def meteor(
    prediction: str,
    references: str | Sequence[str],
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """nltk METEOR (exact, Porter stem and WordNet synonym stages), HF ``evaluate`` defaults.

    M3D calls ``evaluate.load('meteor')`` per sample, which tokenises with
    ``nltk.word_tokenize``; offline its punkt model is absent, so :func:`meteor_tokens` is used.
    """
    from nltk.translate.meteor_score import meteor_score

    wn = require_wordnet()
    refs = [references] if isinstance(references, str) else list(references)
    return float(
        meteor_score(
            [meteor_tokens(r) for r in refs],
            meteor_tokens(prediction),
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            wordnet=wn,
        )
    )


# --------------------------------------------------------------------------------------------
# BERTScore
# --------------------------------------------------------------------------------------------


def default_bertscore_model() -> str:
    """The local all-MiniLM-L6-v2 folder (offline stand-in for roberta-large / bert-base)."""
    from radjax.assets import minilm_path

    return minilm_path()


@functools.lru_cache(maxsize=2)
def _bert_scorer(model_dir: str, num_layers: int, batch_size: int):
    from bert_score import BERTScorer

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(
            f"BERTScore model directory not found: {model_dir!r} "
            "(a local folder with config.json and tokenizer files)"
        )
    return BERTScorer(
        model_type=model_dir, num_layers=num_layers, batch_size=batch_size, device="cpu", lang="en"
    )


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model_dir: str | None = None,
    num_layers: int = 6,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """bert-score P/R/F1 per pair with a local model (no idf, no baseline rescaling).

    Default model: MiniLM-L6 (6 layers). M3D used roberta-large (layer 17) and AutoRG
    bert-base-uncased (layer 9); pass those folders to reproduce them exactly. A pair with an
    empty (or blank) side scores 0, as bert-score sets it (its own empty-string path breaks
    on transformers 5 tokenizers, so those pairs are not passed to it).
    """
    check_pairs(predictions, references)
    out = {k: np.zeros(len(predictions), np.float32) for k in ("precision", "recall", "f1")}
    scored = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    if scored:
        scorer = _bert_scorer(model_dir or default_bertscore_model(), num_layers, batch_size)
        values = scorer.score([predictions[i] for i in scored], [references[i] for i in scored])
        for key, value in zip(("precision", "recall", "f1"), values):
            out[key][scored] = value.numpy()
    return out


# --------------------------------------------------------------------------------------------
# Token F1, VQA hits, averaging
# --------------------------------------------------------------------------------------------


def token_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """LLaVA-Med / Uni-Med ``calculate_f1score``: (f1, precision, recall) over normalised
    lower-cased whitespace tokens with multiplicity; (0, 0, 0) if either side is empty or no
    token is shared."""
    pred = Counter(whitespace_tokens(normalize_answer(prediction)))
    ref = Counter(whitespace_tokens(normalize_answer(reference)))
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    tp = sum(c for w, c in pred.items() if w in ref)
    if tp == 0:
        return 0.0, 0.0, 0.0
    fp = sum(c for w, c in pred.items() if w not in ref)
    fn = sum(c for w, c in ref.items() if w not in pred)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def vqa_hit(prediction: str, reference: str) -> float:
    """1.0 iff the normalised reference is a substring of the normalised prediction."""
    return float(normalize_answer(reference.lower()) in normalize_answer(prediction.lower()))


def mean(xs: Iterable[float]) -> float:
    """The mean of ``xs``; 0 for none (as the papers' evaluation scripts average)."""
    xs = list(xs)
    return float(np.mean(xs)) if xs else 0.0


def check_pairs(predictions, references):
    """Raises unless predictions and references are equally long, non-empty string lists."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not len(predictions):
        raise ValueError("no predictions to score")
