"""Text-generation metrics, each named after the paper whose evaluation code it follows.

Libraries do the work where one exists (nltk BLEU/METEOR, rouge-score, sacrebleu, bert-score);
only the paper-specific glue (tokenisation, normalisation, averaging) and the metrics no library
has (AutoRG's unigram-set recall, LLaVA-Med/Uni-Med token F1 and VQA accuracy, RadFM-style
medical-entity precision/recall) are written here.

| paper     | metric (function)                                                                      |
|-----------|----------------------------------------------------------------------------------------|
| M3D       | ``m3d_report_metrics``: BLEU-1 (13a tokens, no smoothing), ROUGE-1 F, METEOR, BERTScore F1 |
| AutoRG    | ``autorg_report_metrics``: BLEU-1 (lower-cased whitespace tokens), unigram-set recall, BERTScore F1 |
| LLaVA-Med | ``llava_med_vqa``: closed/open accuracy, token F1/precision/recall, exact match, BLEU    |
| Uni-Med   | ``uni_med_vqa``: closed accuracy, cumulative BLEU-1..4, token F1; ``uni_med_report_metrics`` |
| RadFM     | ``radfm_entity_scores`` (entity precision/recall), ``entity_token_weights`` (loss weights) |

Offline deviations (no hub, no Java, no licensed UMLS) are listed in each docstring.
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
    """``text.lower().split()``: the tokenisation of AutoRG, LLaVA-Med and Uni-Med."""
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


def autorg_bleu1(prediction: str, reference: str) -> float:
    """AutoRG-Brain BLEU-1: nltk, weights (1,0,0,0), lower-cased whitespace tokens."""
    return sentence_bleu(
        whitespace_tokens(prediction), [whitespace_tokens(reference)], (1, 0, 0, 0)
    )


def m3d_bleu1(prediction: str, reference: str) -> float:
    """M3D BLEU-1: HF ``evaluate`` ``bleu`` with ``max_order=1``, one sample at a time.

    For one reference and order 1 that is exactly nltk BLEU-1 on 13a tokens (case kept):
    clipped unigram precision times the brevity penalty exp(1 - r/c) when c < r.
    """
    return sentence_bleu(tokens_13a(prediction), [tokens_13a(reference)], (1, 0, 0, 0))


def llava_med_bleu(prediction: str, reference: str, normalize: bool = True) -> dict[str, float]:
    """LLaVA-Med VQA BLEU on normalised answers: nltk default (uniform 4-gram) and the
    single-order variants ``weights=(1,0,0,0)``, ``(0,1,0,0)``, ``(0,0,1,0)``; no smoothing."""
    if normalize:
        prediction, reference = (
            normalize_answer(prediction.lower()),
            normalize_answer(reference.lower()),
        )
    hyp, ref = prediction.lower().split(), reference.lower().split()
    return {
        "bleu": sentence_bleu(hyp, [ref]),
        "bleu_1": sentence_bleu(hyp, [ref], (1, 0, 0, 0)),
        "bleu_2": sentence_bleu(hyp, [ref], (0, 1, 0, 0)),
        "bleu_3": sentence_bleu(hyp, [ref], (0, 0, 1, 0)),
    }


def uni_med_bleu(prediction: str, reference: str) -> dict[str, float]:
    """Uni-Med VQA BLEU-1..4: nltk cumulative weights (1), (1/2,1/2), (1/3,)*3, (1/4,)*4 on
    normalised whitespace tokens; no smoothing."""
    hyp, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    return {f"bleu{n}": sentence_bleu(hyp, [ref], (1.0 / n,) * n) for n in (1, 2, 3, 4)}


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], **kwargs) -> float:
    """Corpus BLEU-4 from sacrebleu (13a tokens, exp smoothing by default), in [0, 1]."""
    import sacrebleu

    _check_pairs(predictions, references)
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


def autorg_rouge1(prediction: str, reference: str) -> float:
    """AutoRG-Brain "ROUGE-1": recall of the reference's unigram *set*,
    |set(pred) ∩ set(ref)| / |set(ref)| on lower-cased whitespace tokens (0 for an empty ref)."""
    ref = set(whitespace_tokens(reference))
    if not ref:
        return 0.0
    return len(ref & set(whitespace_tokens(prediction))) / len(ref)


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
    _check_pairs(predictions, references)
    out = {k: np.zeros(len(predictions), np.float32) for k in ("precision", "recall", "f1")}
    scored = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    if scored:
        scorer = _bert_scorer(model_dir or default_bertscore_model(), num_layers, batch_size)
        values = scorer.score([predictions[i] for i in scored], [references[i] for i in scored])
        for key, value in zip(("precision", "recall", "f1"), values):
            out[key][scored] = value.numpy()
    return out


# --------------------------------------------------------------------------------------------
# Token F1, exact match, VQA accuracy (LLaVA-Med / Uni-Med)
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


def llava_med_exact_match(prediction: str, reference: str) -> float:
    """LLaVA-Med ``calculate_exactmatch``: distinct reference words found in the prediction,
    divided by the prediction's word count (not a true exact match; kept as published)."""
    pred = Counter(whitespace_tokens(normalize_answer(prediction)))
    ref = Counter(whitespace_tokens(normalize_answer(reference)))
    total = sum(pred.values())
    return sum(1 for w in ref if w in pred) / total if total else 0.0


def vqa_hit(prediction: str, reference: str) -> float:
    """1.0 iff the normalised reference is a substring of the normalised prediction."""
    return float(normalize_answer(reference.lower()) in normalize_answer(prediction.lower()))


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else 0.0


def llava_med_vqa(
    predictions: Sequence[str], references: Sequence[str], answer_types: Sequence[str]
) -> dict[str, float]:
    """LLaVA-Med ``run_eval_batch.evaluate`` (after PR #35: every item counts).

    ``answer_types`` are ``"OPEN"``/``"CLOSED"``. CLOSED: ``closed_acc`` (gt substring of pred)
    and ``recall_closed``. OPEN: ``open_acc`` (substring hit), ``open_recall`` (the paper's
    open metric), ``f1``, ``precision``, ``exact_match``, ``bleu``, ``bleu_1..3``. Fractions in
    [0, 1]; an empty group gives 0 as the original does for accuracies.
    """
    _check_pairs(predictions, references)
    if len(answer_types) != len(predictions):
        raise ValueError(
            f"answer_types has {len(answer_types)} items, predictions {len(predictions)}"
        )
    rows = {"open": [], "closed": []}
    for p, g, t in zip(predictions, references, answer_types):
        t = t.upper()
        if t not in ("OPEN", "CLOSED"):
            raise ValueError(f"answer_type must be OPEN or CLOSED, got {t!r}")
        p, g = normalize_answer(p.lower()), normalize_answer(g.lower())
        rows[t.lower()].append((p, g))
    out = {"num_open": float(len(rows["open"])), "num_closed": float(len(rows["closed"]))}
    op = rows["open"]
    # as in the original, F1 and exact match normalise the already-normalised strings again
    f1s = [token_f1(p, g) for p, g in op]
    bleus = [llava_med_bleu(p, g, normalize=False) for p, g in op]
    out.update(
        open_acc=_mean(float(g in p) for p, g in op),
        exact_match=_mean(llava_med_exact_match(p, g) for p, g in op),
        f1=_mean(f[0] for f in f1s),
        precision=_mean(f[1] for f in f1s),
        open_recall=_mean(f[2] for f in f1s),
        **{k: _mean(b[k] for b in bleus) for k in ("bleu", "bleu_1", "bleu_2", "bleu_3")},
        closed_acc=_mean(float(g in p) for p, g in rows["closed"]),
        recall_closed=_mean(token_f1(p, g)[2] for p, g in rows["closed"]),
    )
    return out


def uni_med_vqa(
    predictions: Sequence[str], references: Sequence[str], answer_types: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Uni-Med ``eval_vqa.evaluate_open_and_closed``: per subset (open/closed/all) mean
    BLEU-1..4 and token F1; closed accuracy (normalised gt substring of normalised pred).
    Predictions are lower-cased and stripped first, as its generation loop does."""
    _check_pairs(predictions, references)
    items = [
        (p.lower().strip(), g, t.upper()) for p, g, t in zip(predictions, references, answer_types)
    ]

    def block(sub):
        bl = [uni_med_bleu(p, g) for p, g, _ in sub]
        res = {k: _mean(b[k] for b in bl) for k in ("bleu1", "bleu2", "bleu3", "bleu4")}
        res["f1"] = _mean(token_f1(p, g)[0] for p, g, _ in sub)
        return res

    closed = [x for x in items if x[2] == "CLOSED"]
    out = {
        "open": block([x for x in items if x[2] == "OPEN"]),
        "closed": block(closed),
        "all": block(items),
    }
    out["closed"]["acc"] = _mean(vqa_hit(p, g) for p, g, _ in closed)
    return out


# --------------------------------------------------------------------------------------------
# Report-level bundles
# --------------------------------------------------------------------------------------------


def m3d_report_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | None = None,
    num_layers: int = 6,
    with_meteor: bool = True,
) -> dict[str, float]:
    """M3D ``eval_caption.py``: per-sample BLEU-1, ROUGE-1 F (no stemmer), METEOR and
    BERTScore F1, averaged. Deviation: BERTScore model is local (MiniLM by default)."""
    _check_pairs(predictions, references)
    out = {
        "bleu1": _mean(m3d_bleu1(p, r) for p, r in zip(predictions, references)),
        "rouge1": _mean(
            rouge(p, r, ("rouge1",))["rouge1"]["fmeasure"] for p, r in zip(predictions, references)
        ),
        "bertscore_f1": float(
            np.mean(bertscore(predictions, references, bertscore_model, num_layers)["f1"])
        ),
    }
    if with_meteor:
        out["meteor"] = _mean(meteor(p, r) for p, r in zip(predictions, references))
    return out


def autorg_report_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | None = None,
    num_layers: int = 6,
) -> dict[str, float]:
    """AutoRG-Brain ``llm_metric``: BLEU-1, unigram-set recall ("ROUGE-1"), BERTScore F1, averaged."""
    _check_pairs(predictions, references)
    return {
        "bleu1": _mean(autorg_bleu1(p, r) for p, r in zip(predictions, references)),
        "rouge1": _mean(autorg_rouge1(p, r) for p, r in zip(predictions, references)),
        "bertscore_f1": float(
            np.mean(bertscore(predictions, references, bertscore_model, num_layers)["f1"])
        ),
    }


def uni_med_report_metrics(
    predictions: Sequence[str], references: Sequence[str], with_meteor: bool = True
) -> dict[str, float]:
    """Uni-Med report metrics. Deviations (offline, no Java): corpus BLEU-4 from sacrebleu
    instead of pycocoevalcap ``Bleu(4)``; nltk METEOR instead of the Java METEOR 1.5;
    rouge-score instead of the ``rouge`` package for ROUGE-1/2/L F; token F1 as for VQA."""
    _check_pairs(predictions, references)
    rs = [rouge(p, r) for p, r in zip(predictions, references)]
    out = {
        "bleu4": corpus_bleu(predictions, references),
        **{k: _mean(x[k]["fmeasure"] for x in rs) for k in ("rouge1", "rouge2", "rougeL")},
        "f1": _mean(token_f1(p, r)[0] for p, r in zip(predictions, references)),
    }
    if with_meteor:
        out["meteor"] = _mean(meteor(p, r) for p, r in zip(predictions, references))
    return out


# --------------------------------------------------------------------------------------------
# Medical entities (RadFM's UMLS precision/recall and weighted loss, offline lexicon)
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
# ICD-10-CM heads that are not findings.
_GENERIC_HEADS = frozenset(
    """other unspecified certain personal family encounter history
    status contact exposure underdosing poisoning adverse presence absence problems problem
    observation screening follow-up""".split()
)


def _norm_token(tok: str) -> str:
    """Lower-case singular-ish form: ``nodules``→``nodule``, ``opacities``→``opacity``."""
    if len(tok) > 4 and tok.endswith("ies"):
        return tok[:-3] + "y"
    if len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def _word_spans(text: str) -> list[tuple[str, int, int]]:
    return [(_norm_token(m.group()), m.start(), m.end()) for m in _WORD.finditer(text.lower())]


def radiology_terms() -> list[str]:
    """The radiology term list shipped with radjax (``radiology_terms.txt``)."""
    lines = (Path(__file__).with_name("radiology_terms.txt")).read_text().splitlines()
    return [ln.strip().lower() for ln in lines if ln.strip() and not ln.startswith("#")]


@functools.lru_cache(maxsize=1)
def icd10cm_terms(max_words: int = 4) -> tuple[str, ...]:
    """Disease terms from ICD-10-CM descriptions (simple-icd-10-cm): the part before the first
    comma, parentheses removed, 1..``max_words`` words, not starting with a generic word
    (``Other``, ``Unspecified``, ``Encounter``, ...)."""
    import simple_icd_10_cm as icd

    terms = set()
    for code in icd.get_all_codes(with_dots=False):
        head = re.sub(r"\([^)]*\)", " ", icd.get_description(code)).split(",")[0]
        words = _WORD.findall(head.lower())
        if 1 <= len(words) <= max_words and words[0] not in _GENERIC_HEADS:
            terms.add(" ".join(words))
    return tuple(sorted(terms))


class EntityMatcher:
    """Greedy longest-match lexicon matcher over normalised word tokens.

    ``EntityMatcher.default()`` uses ICD-10-CM descriptions + the radjax radiology term list.
    """

    def __init__(self, terms: Iterable[str]):
        self._terms: set[tuple[str, ...]] = set()
        for t in terms:
            key = tuple(w for w, _, _ in _word_spans(t))
            if key:
                self._terms.add(key)
        if not self._terms:
            raise ValueError("EntityMatcher needs at least one non-empty term")
        self._max_len = max(len(k) for k in self._terms)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "EntityMatcher":
        return cls(list(icd10cm_terms()) + radiology_terms())

    def __len__(self) -> int:
        return len(self._terms)

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping ``(char_start, char_end, normalised_entity)``, left to right,
        longest match first."""
        words = _word_spans(text)
        out, i = [], 0
        while i < len(words):
            for n in range(min(self._max_len, len(words) - i), 0, -1):
                key = tuple(w for w, _, _ in words[i : i + n])
                if key in self._terms:
                    out.append((words[i][1], words[i + n - 1][2], " ".join(key)))
                    i += n
                    break
            else:
                i += 1
        return out

    def entities(self, text: str) -> set[str]:
        return {e for _, _, e in self.spans(text)}


def radfm_entity_scores(
    prediction: str, reference: str, matcher: EntityMatcher | None = None
) -> dict[str, float]:
    """RadFM-style UMLS precision/recall with an offline lexicon: entity *sets* of prediction
    and reference; precision = |P∩R|/|P|, recall = |P∩R|/|R|, f1 their harmonic mean
    (0 when the denominator set is empty). RadFM used scispaCy + the UMLS linker instead."""
    m = matcher or EntityMatcher.default()
    p, r = m.entities(prediction), m.entities(reference)
    both = len(p & r)
    prec = both / len(p) if p else 0.0
    rec = both / len(r) if r else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1}


def entity_token_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int, str]]) -> np.ndarray:
    """bool (N,): tokens whose character span overlaps an entity span (zero-width tokens such
    as specials never do). ``offsets``: (N, 2) char offsets."""
    offsets = np.asarray(offsets).reshape(-1, 2)
    mask = np.zeros(len(offsets), bool)
    for s, e, _ in spans:
        mask |= (offsets[:, 0] < e) & (offsets[:, 1] > s) & (offsets[:, 1] > offsets[:, 0])
    return mask


def token_weights_from_offsets(
    offsets: np.ndarray, spans: Sequence[tuple[int, int, str]], entity_weight: float = 3.0
) -> np.ndarray:
    """f32 (N,) per-token weights: ``entity_weight`` on ``entity_token_mask``, 1 elsewhere."""
    return np.where(entity_token_mask(offsets, spans), entity_weight, 1.0).astype(np.float32)


def entity_token_weights(
    text: str,
    tokenizer,
    matcher: EntityMatcher | None = None,
    entity_weight: float = 3.0,
    add_special_tokens: bool = False,
):
    """RadFM's paper loss weights for one answer: token ids and weights (3 on medical-entity
    tokens, 1 elsewhere). ``tokenizer`` must be a fast HF tokenizer (offset mapping)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    spans = (matcher or EntityMatcher.default()).spans(text)
    return np.asarray(enc["input_ids"]), token_weights_from_offsets(
        np.asarray(enc["offset_mapping"]), spans, entity_weight
    )


def _check_pairs(predictions, references):
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not len(predictions):
        raise ValueError("no predictions to score")
