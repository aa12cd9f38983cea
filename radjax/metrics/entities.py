"""The medical-entity lexicon: a longest-match matcher over ICD-10-CM descriptions and
radjax's radiology term list (``radiology_terms.txt`` beside this module), and per-token
entity masks / loss weights from tokenizer offsets.

An offline stand-in for scispaCy + the licensed UMLS linker: imaging modalities and radiology
findings count as entities, as UMLS has them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

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
