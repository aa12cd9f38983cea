"""RadFM's text layout: image tokens, their ids, insertion into text, labels and loss weights.

Ids relative to the text vocabulary size V (RadFM: LLaMA, V = 32000), exactly as the original
(``src/Dataset/multi_dataset.py``; spec mllm.md §1.3):

  ``<image>``  = V        ``</image>`` = V + 1        ``<imageK>`` = V + 2 + K

with K = T·n + j for token j of image n of a sample (T = ``tokens_per_image`` = 32, the
Perceiver latents). Image n is written as ``<image><image{Tn}>…<image{Tn+T-1}></image>``,
a block of T + 2 ids. The LM head has V outputs, so every id >= V is masked out of the labels.

The image tokens are added as the original's transformers 4.28 did with special tokens given
as strings: each strips the whitespace on both its sides from the text next to it
(``"is <image>…</image> shown"`` tokenises as ``"is"``, the block, ``"shown"``).
``load_radfm_tokenizer`` loads the released ``Language_files`` folder (or any LLaMA
SentencePiece folder) and checks the special ids the released checkpoint was trained with.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from radjax.data.prompt_answer import IGNORE, pack, tokenize_prompt_answer
from radjax.data.tokenizers import add_special_tokens, load_tokenizer
from radjax.metrics.entities import EntityMatcher

IMAGE_START = "<image>"
IMAGE_END = "</image>"
# The special ids of the released checkpoint: LLaMA's (V = 32000) with pad 0, as the original
# sets them after loading (``pad_token_id = 0``, ``bos_token_id = 1``, ``eos_token_id = 2``).
RADFM_VOCAB_SIZE = 32000
RADFM_SPECIAL_IDS = dict(pad=0, bos=1, eos=2)


@dataclasses.dataclass(frozen=True)
class ImageTokenLayout:
    """Ids of RadFM's image tokens for a text vocabulary of ``text_vocab_size`` tokens."""

    text_vocab_size: int
    max_images: int
    tokens_per_image: int = 32

    @property
    def start_id(self) -> int:
        return self.text_vocab_size

    @property
    def end_id(self) -> int:
        return self.text_vocab_size + 1

    @property
    def total_vocab_size(self) -> int:
        """V + 2 + max_images·T: the size of the tokenizer once the image tokens are added."""
        return self.text_vocab_size + 2 + self.max_images * self.tokens_per_image

    def image_token_id(self, image: int, token: int) -> int:
        """Id of ``<image{T·image + token}>``."""
        return self.text_vocab_size + 2 + self.tokens_per_image * image + token

    def block_ids(self, image: int) -> np.ndarray:
        """i32 (T + 2,): the ids of image ``image``'s block, ``<image>`` … ``</image>``."""
        first = self.image_token_id(image, 0)
        inner = np.arange(first, first + self.tokens_per_image)
        return np.concatenate([[self.start_id], inner, [self.end_id]]).astype(np.int32)

    def special_tokens(self) -> list[str]:
        """The added token strings in id order: ``<image>``, ``</image>``, ``<image0>``, …"""
        count = self.max_images * self.tokens_per_image
        return [IMAGE_START, IMAGE_END] + [f"<image{k}>" for k in range(count)]

    def image_token_text(self, image: int) -> str:
        """``<image><image{Tn}>…<image{Tn+T-1}></image>`` for image n = ``image``."""
        if not 0 <= image < self.max_images:
            raise ValueError(
                f"image index {image} outside 0..{self.max_images - 1} "
                f"(max_images={self.max_images})"
            )
        first = self.tokens_per_image * image
        inner = "".join(f"<image{first + j}>" for j in range(self.tokens_per_image))
        return IMAGE_START + inner + IMAGE_END


def _rename_tokens(tokenizer, renames: dict[str, str]):
    """A fast tokenizer identical to ``tokenizer`` but with some token strings renamed.

    Frees strings such as ``<image>`` that a tokenizer already holds inside its text vocabulary
    (the phantom tokenizer does) while keeping every id, so V is unchanged.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for added in spec["added_tokens"]:
        added["content"] = renames.get(added["content"], added["content"])
    vocab = spec["model"]["vocab"]
    if isinstance(vocab, dict):
        for old, new in renames.items():
            if old in vocab:
                vocab[new] = vocab.pop(old)
    specials = {
        k: getattr(tokenizer, k)
        for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(tokenizer, k)
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **specials
    )


def check_special_ids(tokenizer, expected: dict[str, int], where: str) -> None:
    """Raises ValueError naming ``where`` unless the tokenizer's ``{name}_token_id`` equals
    ``expected[name]`` for every name and it puts the BOS in front of a text."""
    wrong = {
        name: getattr(tokenizer, f"{name}_token_id")
        for name, want in expected.items()
        if getattr(tokenizer, f"{name}_token_id") != want
    }
    if wrong:
        raise ValueError(f"{where}: special token ids {wrong}, expected {expected}")
    first = tokenizer("a")["input_ids"][:1]
    if first != [tokenizer.bos_token_id]:
        raise ValueError(
            f"{where}: the tokenizer does not put its BOS (id {tokenizer.bos_token_id}) in "
            f"front of a text (got {first}); set add_bos_token in tokenizer_config.json"
        )


def load_radfm_tokenizer(path):
    """The text tokenizer of a RadFM checkpoint from a local folder, set up as the original.

    The released ``Quick_demo/Language_files`` (``tokenizer.model`` + a config with empty
    bos / eos / unk) or any LLaMA folder (``radjax.data.tokenizers.load_tokenizer``); pad is
    id 0. Raises ValueError naming the folder unless it has V = 32000 text tokens with
    ``RADFM_SPECIAL_IDS`` and puts the BOS in front, as the checkpoint was trained.
    """
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    if len(tokenizer) != RADFM_VOCAB_SIZE:
        raise ValueError(
            f"{path}: {len(tokenizer)} text tokens, the RadFM checkpoint has V={RADFM_VOCAB_SIZE}"
        )
    check_special_ids(tokenizer, RADFM_SPECIAL_IDS, str(path))
    return tokenizer


def register_image_tokens(tokenizer, layout: ImageTokenLayout):
    """A copy of ``tokenizer`` with the layout's image tokens at exactly the layout's ids.

    ``tokenizer`` is a fast HF tokenizer with ``len(tokenizer) == layout.text_vocab_size``
    (LLaMA: 32000; ``phantom_tokenizer()``: 708). If ``<image>``/``</image>`` already exist
    below V (the phantom tokenizer), they are renamed ``<reserved_{id}>`` so their ids stay
    unused text ids. A tokenizer without a pad token (LLaMA) pads with id 0, as the original
    sets ``pad_token_id = 0``. The image tokens strip the whitespace next to them, as the
    original's. Raises ValueError if V differs or the ids do not come out as the layout's.
    """
    if len(tokenizer) != layout.text_vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the image-token layout "
            f"expects a text vocabulary of V={layout.text_vocab_size}"
        )
    vocab = tokenizer.get_vocab()
    clashes = {t: f"<reserved_{vocab[t]}>" for t in (IMAGE_START, IMAGE_END) if t in vocab}
    tokenizer = _rename_tokens(tokenizer, clashes) if clashes else copy.deepcopy(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    tokens = layout.special_tokens()
    ids = add_special_tokens(tokenizer, tokens, strip_whitespace=True)
    if ids != list(range(layout.text_vocab_size, layout.text_vocab_size + len(tokens))):
        raise ValueError(
            "image tokens did not receive consecutive ids from "
            f"V={layout.text_vocab_size}; does the tokenizer already hold some "
            "<imageK> tokens?"
        )
    return tokenizer


def insert_images(
    text: str,
    positions: Sequence[int],
    layout: ImageTokenLayout,
    *,
    faithful_position_quirk: bool = True,
) -> str:
    """Inserts the token text of image n = 0, 1, … at character ``positions[n]`` of ``text``.

    Faithful (RadFM's ``text_add_image``): image blocks go before character ``max(p - 1, 0)``,
    so ``p = len(text)`` lands before the last character (``"…imag<image>…</image>e"``); an
    empty text becomes the blocks alone (the original crashes there). Clean: the block goes before character ``p`` (``p = len``
    appends). Several images at one place keep their order. Positions outside 0..len(text)
    raise ValueError.
    """
    if len(positions) > layout.max_images:
        raise ValueError(f"{len(positions)} images but max_images={layout.max_images}")
    slots: dict[int, list[int]] = {}
    for n, p in enumerate(positions):
        if not 0 <= p <= len(text):
            raise ValueError(f"image {n} position {p} outside 0..{len(text)}")
        slots.setdefault(max(p - 1, 0) if faithful_position_quirk else p, []).append(n)
    pieces = []
    for i in range(len(text) + 1):
        pieces += [layout.image_token_text(n) for n in slots.get(i, ())]
        pieces.append(text[i : i + 1])
    return "".join(pieces)


def check_image_tokens(ids: np.ndarray, num_images: int, layout: ImageTokenLayout) -> None:
    """Raises ValueError unless ``ids`` (L,) holds exactly ``num_images`` complete blocks.

    Block n (``layout.block_ids(n)``, T + 2 ids) must appear once for each n < num_images,
    in any order (the original draws each image's position on its own, so image 1 may come
    first), and no image id (>= V) may appear outside a block.
    """
    ids = np.asarray(ids)
    starts = np.flatnonzero(ids == layout.start_id)
    if len(starts) != num_images:
        raise ValueError(
            f"expected {num_images} image blocks, found {len(starts)} '{IMAGE_START}' tokens"
        )
    in_block = np.zeros(len(ids), bool)
    width = layout.tokens_per_image + 2
    seen = set()
    for s in starts:
        block = ids[s : s + width]
        n = (
            (int(block[1]) - layout.image_token_id(0, 0)) // layout.tokens_per_image
            if len(block) > 1
            else -1
        )
        if (
            len(block) != width
            or not 0 <= n < num_images
            or n in seen
            or not np.array_equal(block, layout.block_ids(n))
        ):
            raise ValueError(
                f"image block at token {s} is incomplete, mis-numbered or "
                f"repeated: {block.tolist()}"
            )
        seen.add(n)
        in_block[s : s + width] = True
    stray = np.flatnonzero((ids >= layout.text_vocab_size) & ~in_block)
    if len(stray):
        raise ValueError(f"image token ids outside any image block at tokens {stray.tolist()}")


def _word_ids(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` as a word after a space: those of ``"a " + text`` after ``"a"``'s.

    With SentencePiece's dummy prefix these are the stand-alone ids the original takes
    (``tokenizer(entity)[1:]``); a byte-level BPE (phantom) marks the word start the same way.
    """
    head = tokenizer("a", add_special_tokens=False)["input_ids"]
    return list(tokenizer("a " + text, add_special_tokens=False)["input_ids"][len(head) :])


def entity_mask(labels: np.ndarray, entities: Sequence[str], tokenizer) -> np.ndarray:
    """bool (L,): every run of ``labels`` (L,) equal to an entity's word ids (``_word_ids``),
    as the original's ``find_position`` (weight 3 there, its loss weight is 1 elsewhere and
    0 on IGNORE). Runs that are parts of longer words count (``Cyst`` in ``Cysts``); an
    entity glued to what precedes it (``(MRI)``) tokenises otherwise and does not."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), bool)
    for key in {tuple(_word_ids(tokenizer, e)) for e in entities}:
        n = len(key)
        if not n or n > len(labels):
            continue
        windows = np.lib.stride_tricks.sliding_window_view(labels, n)
        for i in np.flatnonzero((windows == np.asarray(key)).all(axis=1)):
            mask[i : i + n] = True
    return mask


def encode_sample(
    question: str,
    answer: str,
    positions: Sequence[int],
    tokenizer,
    layout: ImageTokenLayout,
    max_length: int,
    *,
    matcher: EntityMatcher | None = None,
    faithful_position_quirk: bool = True,
    name: str | None = None,
) -> dict[str, np.ndarray]:
    """One RadFM training sequence, right-padded to ``max_length`` (L), as the original's
    ``multi_dataset.__getitem__``.

    ``positions[n]``: character position of image n in ``question`` (see ``insert_images``).
    ``tokenizer``: a fast tokenizer from ``register_image_tokens``. The text is ``question +
    ' ' + answer`` (bullets ``•`` removed from the answer, as the original), tokenised with
    BOS, then EOS, and packed by ``radjax.data.prompt_answer``; the prompt masked out is the
    original's: as many tokens as the question (with its image blocks) tokenises to alone,
    its BOS included.

    Returns:
      input_ids i32 (L,), pad id after the EOS.
      attention_mask i32 (L,): 1 on the BOS and the text tokens, 0 on the EOS and the
        padding (the original writes the EOS over the first pad after the mask is made; no
        loss depends on it, the EOS's own output predicts a padding label).
      labels i32 (L,): ``input_ids`` with the question prefix, pad-id and image ids (>= V)
        set to -100 (so is a text token with the pad id, as the original).
      entity_mask bool (L,): ``entity_mask`` of the answer's medical entities (``matcher``,
        default the RadFM lexicon; their surface text, as the original's scispaCy spans);
        the loss weights them ``loss.entity_weight`` (paper: 3; released code: 1, i.e.
        plain mean CE).
      question_length i32 (): the number of prefix tokens masked out of the labels.
    Raises ValueError (prefixed with ``name`` when given) if the sequence is longer than
    ``max_length``, there are more than ``max_images`` images, or the image blocks come out
    wrong.
    """
    try:
        prompt = insert_images(
            question, positions, layout, faithful_position_quirk=faithful_position_quirk
        )
        answer = answer.replace("•", "")
        pair = tokenize_prompt_answer(prompt, answer, tokenizer)
        question_length = 1 + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        packed = pack(pair.ids, question_length, max_length, tokenizer.pad_token_id)
        check_image_tokens(pair.ids, len(positions), layout)
    except ValueError as err:
        raise ValueError(f"{name}: {err}" if name else str(err)) from err
    labels = packed["labels"]
    # as the original: pad-id and image-id (>= V) labels are ignored wherever they appear
    labels[(labels == tokenizer.pad_token_id) | (labels >= layout.text_vocab_size)] = IGNORE
    packed["attention_mask"][len(pair.ids) - 1] = 0  # the EOS, as the original
    surfaces = [answer[s:e] for s, e, _ in (matcher or EntityMatcher.default()).spans(answer)]
    entities = entity_mask(labels, surfaces, tokenizer)
    return dict(
        input_ids=packed["input_ids"],
        attention_mask=packed["attention_mask"],
        labels=labels,
        entity_mask=entities,
        question_length=packed["prompt_length"],
    )
