"""LLaVA-Med: a CLIP ViT tower (hidden states of layer -2, CLS dropped) -> projector -> LLaMA /
Mistral, as a configuration of the shared ``radjax.models.vlm.VisionLanguageModel``.

Parts (parameter paths): ``vision`` (``ClipTower``: the shared ``models.vit.ViT`` in CLIP form,
``radjax.convert.clip``), ``projector`` (``vlm.build_projector``: v1.0 ``linear``, v1.5
``mlp2x_gelu``), ``lang_model`` (``models.llama.Decoder``) and, for v1.0 with start / end
tokens, ``image_markers`` (2, D).

Image positions (``ImageTokens(placeholder_id=model.patch_id)``): v1.0 the 256 ``<im_patch>``
ids between ``<im_start>`` and ``<im_end>``, v1.5 the -200 of ``<image>`` expanded to 576
positions by the data format; both take the projected features in order, which is what v1.0's
``LlavaLlamaModel.forward`` (``embeds[p+1:p+257] = features``) and v1.5's
``prepare_inputs_labels_for_multimodal`` (features in place of the -200) compute.

``image_markers`` (how stage 1 trains only two rows): the original trains the projector and
the ``<im_start>`` / ``<im_end>`` rows of the input embedding by marking the whole
``embed_tokens`` trainable and detaching every other position of image samples in the splice
(llava.py:244-245; the restore of the other rows is commented out, they stay put because
their gradient is 0 and weight decay 0). Here those two rows live in their own (2, D) table:
the embedding of id ``start_id`` / ``end_id`` is ``image_markers[0]`` / ``[1]`` (the
``embed_tokens`` rows of these ids are never read), so stage 1 is ``optim.groups`` =
projector + ``image_markers`` and nothing else, with no gradient for the 32004-row table.
Converting: the checkpoint's ``model.embed_tokens.weight[start_id]`` / ``[end_id]`` become
the markers (``convert.from_llava_state_dict``). Deviation: in the original a text-only
sample in a stage-1 batch is not detached and would move every embedding row; here it does
not (LLaVA-Med's alignment data has an image in every record).

Loss (``loss_fn``): the released ``CrossEntropyLoss()`` over the micro-batch's non-ignored
next-token targets (``vlm_steps.lm_loss_fn``, weights 1). ``predict_fn``: greedy answers to
each VQA prompt. ``evaluate``: ``metrics.vqa_report`` (``run_eval_batch``: the paper's
numbers, plus ``run_eval.py``'s closed accuracy after and before PR #35), scores per question
kind (``eval.question_kinds``), and the most-frequent-answer baseline.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from radjax.convert.clip import vit_config
from radjax.models.llama import Decoder, DecoderConfig
from radjax.models.vit import ViT, ViTConfig
from radjax.models.vlm import ImageTokens, VisionLanguageModel, build_projector
from radjax.train import vlm_steps


class ClipTower(ViT):
    """CLIP ViT at ``select_layer`` (-2: the hidden states before the last block, no post
    norm), ``select_feature='patch'``: (B, H, W, 3) images -> (B, N, width) patch features,
    the CLS token dropped."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x)[:, 1:]


class LlavaMed(VisionLanguageModel):
    """Images (B, H, W, 3) + ids (B, L) -> next-token logits (B, L, V) (module docstring)."""

    def __init__(
        self,
        vision_cfg: ViTConfig,
        decoder_cfg: DecoderConfig,
        *,
        projector: str,
        patch_id: int,
        start_id: int | None = None,
        end_id: int | None = None,
        rngs: nnx.Rngs,
    ):
        if (start_id is None) != (end_id is None):
            raise ValueError("LlavaMed: give both start_id and end_id, or neither")
        vision = ClipTower(vision_cfg, rngs=rngs)
        proj = build_projector(
            projector,
            vision_cfg.width,
            decoder_cfg.hidden_size,
            dtype=jnp.dtype(decoder_cfg.dtype),
            rngs=rngs,
        )
        lang_model = Decoder(decoder_cfg, rngs=rngs)
        self.start_id, self.end_id = start_id, end_id
        # new start / end rows: the mean of the rows before them (llava.py:380-390)
        mean = jnp.mean(lang_model.embed_tokens[...], axis=0, keepdims=True)
        self.image_markers = (
            nnx.Param(jnp.concatenate([mean, mean]), out_sharding=(None, "embed"))
            if start_id is not None
            else None
        )
        super().__init__(
            vision=vision,
            projector=proj,
            lang_model=lang_model,
            image_tokens=ImageTokens(placeholder_id=patch_id),
        )

    def token_embeddings(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) ids -> (B, L, D): ``embed_tokens`` rows, ``image_markers`` for the start /
        end ids (placeholders embed id 0; the splice replaces them)."""
        x = super().token_embeddings(input_ids)
        if self.image_markers is None:
            return x
        markers = self.image_markers[...].astype(x.dtype)
        x = jnp.where((input_ids == self.start_id)[..., None], markers[0], x)
        return jnp.where((input_ids == self.end_id)[..., None], markers[1], x)


# ----------------------------------------------------------------------------- configs


def vision_config(m: ml_collections.ConfigDict) -> ViTConfig:
    """``model.vision`` (transformers ``CLIPVisionConfig`` names + ``select_layer``, ``dtype``)
    -> the CLIP ``ViTConfig`` (``radjax.convert.clip.vit_config``)."""
    v = m.vision.to_dict()
    overrides = dict(select_layer=v.pop("select_layer", -2), dtype=v.pop("dtype", "float32"))
    return vit_config(v, **overrides)


def decoder_config(m: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**m.llm.to_dict())


def _optional_id(value) -> int | None:
    value = int(value)
    return None if value < 0 else value


def build_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> LlavaMed:
    """The configured LLaVA-Med.

    Raises:
      ValueError: the token ids or the vocabulary size are not set yet (the data format's
        ``complete_config`` sets them: ``radjax.train.experiment.prepare_config``).
    """
    m = config.model
    if int(m.llm.vocab_size) <= 0 or int(m.get("patch_id", -1)) == -1:
        raise ValueError(
            "model.llm.vocab_size / model.patch_id are not set: run radjax.train.experiment."
            "prepare_config(config) (the data format's complete_config) before building"
        )
    start, end = _optional_id(m.start_id), _optional_id(m.end_id)
    if bool(m.get("use_im_start_end", False)) != (start is not None):
        raise ValueError(
            f"model.use_im_start_end={m.use_im_start_end} but start_id={m.start_id}, "
            f"end_id={m.end_id}"
        )
    return LlavaMed(
        vision_config(m),
        decoder_config(m),
        projector=str(m.projector),
        patch_id=int(m.patch_id),
        start_id=start,
        end_id=end,
        rngs=rngs,
    )


def pretrained_params(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The weights a fresh run starts from ('/'-joined paths; ``convert.pretrained``):
    ``model.clip_dir`` (the tower), ``model.llm_dir`` (the LLM, its vocabulary grown to the
    tokenizer's as the original does) and ``model.checkpoint`` (a LLaVA-Med checkpoint:
    projector, LLM, markers and, if it holds them, the tower; with
    ``model.checkpoint_is_delta`` added onto ``llm_dir``). None set: {}."""
    from radjax.papers.llava_med import convert

    m = config.model
    return convert.pretrained(
        config, decoder_config(m), _optional_id(m.start_id), _optional_id(m.end_id)
    )


# ----------------------------------------------------------------------------- steps


def loss_fn(
    model: LlavaMed, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy over the batch's non-ignored labels (the original's
    ``CrossEntropyLoss()`` on the micro-batch). batch: ``input_ids`` / ``attention_mask`` /
    ``labels`` (B, L), ``images`` (B, H, W, 3), ``image_mask`` (B, 1)."""
    return vlm_steps.lm_loss_fn(
        model,
        {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "images", "image_mask")},
        num_chunks=int(config.model.get("loss_chunks", 1)),
    )


def predict_fn(
    model: LlavaMed, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """Greedy answers to each VQA prompt: ``generated`` (B, eval.max_new_tokens) ids, and the
    batch's ``answer_type``, ``question_bytes``, ``answer_bytes`` passed through."""
    tokens = vlm_steps.generate_answers(
        model,
        batch["input_ids"],
        batch["images"],
        batch["prompt_length"],
        image_mask=batch["image_mask"],
        max_new_tokens=int(config.eval.max_new_tokens),
        eos_token_id=int(config.model.eos_token_id),
        pad_token_id=int(config.model.pad_token_id),
    )
    keep = ("answer_type", "question_bytes", "answer_bytes")
    return {"generated": tokens, **{k: batch[k] for k in keep}}


# ----------------------------------------------------------------------------- evaluation


def evaluate(outputs: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Decoded answers scored as the paper (``metrics.vqa_report``) and per question kind
    (``metrics.by_question_kind`` over ``eval.question_kinds``: ``"<kind>/accuracy"``, ...),
    the same for the most-frequent-answer baseline (each question's most frequent answer in
    ``data.baseline_file``) as ``"baseline/..."``, ``"distinct"`` (distinct answers over
    items), and ``"samples/closed"`` /
    ``"samples/open"``: ``eval.samples`` (question, prediction, reference, row) spread over
    the answer type's items (``row``: the position among them, in evaluation order)."""
    from radjax.metrics.samples import sample_rows
    from radjax.papers.llava_med import data as fmt
    from radjax.papers.llava_med import metrics

    d = config.data
    eos = int(config.model.eos_token_id)
    predictions = [fmt.decode_answer(row, d, eos) for row in outputs["generated"]]
    references = [fmt.decode_bytes(row) for row in outputs["answer_bytes"]]
    questions = [fmt.decode_bytes(row) for row in outputs["question_bytes"]]
    closed = [bool(t) for t in outputs["answer_type"]]
    kinds = tuple(tuple(k) for k in config.eval.get("question_kinds", ()))

    def report(answers: list[str]) -> dict[str, float]:
        scores = metrics.vqa_report(answers, references, closed)
        scores.update(metrics.by_question_kind(answers, references, questions, closed, kinds))
        return scores

    out: dict[str, Any] = report(predictions)
    best, overall = fmt.most_frequent_answers(d)
    if best or overall:
        constant = [best.get(fmt.question_key(q), overall) for q in questions]
        out.update({f"baseline/{k}": v for k, v in report(constant).items()})
    n = int(config.eval.get("samples", 4))
    for group, want in (("closed", True), ("open", False)):
        items = [i for i, c in enumerate(closed) if c == want]
        out[f"samples/{group}"] = [
            dict(
                question=questions[items[k]].replace("<image>", "").strip(),
                prediction=predictions[items[k]],
                reference=references[items[k]],
                row=k,
            )
            for k in sample_rows(len(items), n)
        ]
    out["distinct"] = len(set(predictions)) / max(1, len(predictions))
    return out
