"""RadFM (Wu et al. 2023): 3D ViT + Perceiver resampler + LLaMA, images interleaved in text.

The released ``MultiLLaMAForCausalLM`` (chaoyi-wu/RadFM) as a configuration of the shared
``radjax.models.vlm.VisionLanguageModel``, attributes mirroring its state dict: ``vision``
(ViT -> Perceiver -> fc, ``radjax.papers.radfm.vision``; no separate projector),
``figure_token_weight`` (2, llm_dim) for ``<image>`` / ``</image>``, and ``lang_model`` (a
``radjax.models.llama.Decoder``).

Token ids (``radjax.papers.radfm.text.ImageTokenLayout``, V = the LLaMA vocabulary): text
< V; ``<image>`` = V, ``</image>`` = V + 1; ``<imageK>`` = V + 2 + K is the K-th resampled
visual token of the sample (K = tokens_per_image * n + j for image n). The original builds
one extended embedding table per sample and multiplies it with one-hot ids
(B x L x (V + 2 + 32 S) floats); here ids >= V + 2 are the shared splice's indexed
placeholders (``ImageTokens(first_indexed_id=V + 2)``) and V, V + 1 gather rows of
``figure_token_weight``. The LM head keeps V outputs: image ids are never predicted (their
labels are ignored).

Loss (``loss_fn``, ``radjax.train.vlm_steps.lm_loss_fn``): ``sum(w * CE) / sum(w)`` over
next-token targets, w = ``loss.entity_weight`` on the batch's ``entity_mask`` tokens (medical
entities; 3.0 = the paper, 1.0 = the released code's plain cross-entropy), 1 on the other
answer tokens, 0 on ignored labels; through the fused head loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from radjax.models.llama import Decoder, DecoderConfig
from radjax.models.vlm import ImageTokens, VisionLanguageModel
from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig
from radjax.train import vlm_steps


class RadFM(VisionLanguageModel):
    """Images (B, S, D, H, W, C) + token ids (B, L) -> next-token logits (B, L, V)."""

    def __init__(
        self, vision_cfg: RadFMVisionConfig, decoder_cfg: DecoderConfig, *, rngs: nnx.Rngs
    ):
        if vision_cfg.llm_dim != decoder_cfg.hidden_size:
            raise ValueError(
                f"RadFM: vision llm_dim {vision_cfg.llm_dim} != LLaMA hidden_size "
                f"{decoder_cfg.hidden_size}"
            )
        vision = RadFMVision(vision_cfg, rngs=rngs)  # drawn in the original order
        self.figure_token_weight = nnx.Param(
            jax.random.normal(rngs.params(), (2, decoder_cfg.hidden_size), jnp.float32),
            out_sharding=(None, "embed"),
        )
        super().__init__(
            vision=vision,
            projector=None,
            lang_model=Decoder(decoder_cfg, rngs=rngs),
            image_tokens=ImageTokens(first_indexed_id=decoder_cfg.vocab_size + 2),
        )

    def token_embeddings(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) ids -> (B, L, llm_dim): text rows for ids < V, ``figure_token_weight`` rows
        for V, V + 1 (and, replaced by the splice, for the visual ids)."""
        v = self.lang_model.cfg.vocab_size
        text = self.lang_model.embed(jnp.clip(input_ids, 0, v - 1))
        figure = jnp.take(self.figure_token_weight[...], jnp.clip(input_ids - v, 0, 1), axis=0)
        return jnp.where(input_ids[..., None] < v, text, figure.astype(text.dtype))


# ----------------------------------------------------------------------------- paper module


def vision_config(m: ml_collections.ConfigDict) -> RadFMVisionConfig:
    return RadFMVisionConfig(**m.vision.to_dict())


def decoder_config(m: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**m.llm.to_dict())


def build_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> RadFM:
    """The configured RadFM.

    Raises:
      ValueError: ``model.llm.vocab_size`` is not set yet (the tiny config leaves it 0 for
        the data format's ``complete_config``, run by ``radjax.train.experiment.prepare_config``).
    """
    if int(config.model.llm.vocab_size) <= 0:
        raise ValueError(
            f"model.llm.vocab_size is {config.model.llm.vocab_size}: the tokenizer sets it; run "
            "radjax.train.experiment.prepare_config(config) (the data format's complete_config) "
            "before building the model, or set model.llm.vocab_size"
        )
    return RadFM(vision_config(config.model), decoder_config(config.model), rngs=rngs)


def pretrained_params(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The weights a fresh run starts from (``radjax.train.experiment``), '/'-joined paths:

    ``model.checkpoint``: the released RadFM checkpoint (``pytorch_model.bin``, a
      safetensors file or a directory of shards): every part (``radjax.papers.radfm.convert``).
    ``model.llm_dir``: a local transformers LLaMA directory (the paper starts from
      PMC-LLaMA 13B): the language model only; the vision path and image markers start
      from their initialisation.
    Neither: {} (everything from initialisation). Both set: ValueError.
    """
    from radjax.convert.llama import from_hf_llama
    from radjax.convert.torch_io import load_state_dict
    from radjax.papers.radfm.convert import from_radfm_state_dict

    m = config.model
    checkpoint, llm_dir = m.get("checkpoint", ""), m.get("llm_dir", "")
    if checkpoint and llm_dir:
        raise ValueError(
            "set model.checkpoint (a whole RadFM) or model.llm_dir (its LLaMA alone), not both"
        )
    if checkpoint:
        return from_radfm_state_dict(load_state_dict(checkpoint), decoder_config(m))
    if llm_dir:
        values = from_hf_llama(load_state_dict(llm_dir), decoder_config(m))
        return {f"lang_model/{k}": v for k, v in values.items()}
    return {}


def loss_fn(
    model: RadFM, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Entity-weighted next-token cross-entropy over the answer tokens
    (``vlm_steps.lm_loss_fn``).

    batch: ``input_ids``/``attention_mask``/``labels`` (B, L) (labels -100 = ignored),
    ``entity_mask`` bool (B, L) aligned with labels, ``images`` (B, S, D, H, W, C).
    """
    # no image_mask: RadFM's indexed ids name their images, absent ones are never referenced
    return vlm_steps.lm_loss_fn(
        model,
        {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "entity_mask", "images")},
        entity_weight=float(config.get("loss", {}).get("entity_weight", 1.0)),
        num_chunks=int(config.model.get("loss_chunks", 1)),
    )


def predict_fn(
    model: RadFM, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """Greedy answers (as the released ``generate(max_new_tokens=200)``) to each row's
    question: ``generated`` (B, eval.max_new_tokens) ids, plus ``labels`` and ``task``."""
    tokens = vlm_steps.generate_answers(
        model,
        batch["input_ids"],
        batch["images"],
        batch["question_length"],
        max_new_tokens=int(config.eval.max_new_tokens),
        eos_token_id=int(config.model.eos_token_id),
        pad_token_id=int(config.model.pad_token_id),
    )
    return {"generated": tokens, "labels": batch["labels"], "task": batch["task"]}


def evaluate(outputs: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The paper's metrics per task on decoded answers (``radjax.papers.radfm.metrics``)."""
    from radjax.data.prompt_answer import answer_texts, generated_texts
    from radjax.papers.radfm import data as fmt
    from radjax.papers.radfm import metrics

    tokenizer, _ = fmt.text_tools(config.data)
    predictions = generated_texts(outputs["generated"], tokenizer, config.model.eos_token_id)
    references = answer_texts(outputs["labels"], tokenizer, config.model.eos_token_id)
    tasks = [fmt.TASKS[int(t)] for t in outputs["task"]]
    baseline = fmt.most_frequent_answers(config.data, "train")
    return metrics.radfm_report(
        predictions,
        references,
        tasks,
        baseline=baseline,
        bertscore=bool(config.eval.get("bertscore", False)),
    )
