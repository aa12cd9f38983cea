"""RadFM (Wu et al. 2023): 3D ViT + Perceiver resampler + LLaMA, images interleaved in text.

The released ``MultiLLaMAForCausalLM`` (chaoyi-wu/RadFM) as one NNX module whose attributes
mirror its state dict: ``vision`` (ViT -> Perceiver -> fc, ``radjax.papers.radfm.vision``),
``figure_token_weight`` (2, llm_dim) for ``<image>`` / ``</image>``, and ``lang_model`` (a
``radjax.models.llama.Decoder``).

Token ids (``radjax.papers.radfm.text.ImageTokenLayout``, V = the LLaMA vocabulary): text
< V; ``<image>`` = V, ``</image>`` = V + 1; ``<imageK>`` = V + 2 + K is the K-th resampled
visual token of the sample (K = tokens_per_image * n + j for image n). The original builds
one extended embedding table per sample and multiplies it with one-hot ids
(B x L x (V + 2 + 32 S) floats); here each position gathers from the table it belongs to. The
LM head keeps V outputs: image ids are never predicted (their labels are ignored).

Loss (``loss_fn``): ``sum(w * CE) / sum(w)`` over next-token targets, w = the batch's
answer-token weights: ``loss.entity_weight`` on the batch's ``entity_mask`` tokens (medical
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
from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig
from radjax.sharding import shard_act
from radjax.train import generation, lm_loss


class RadFM(nnx.Module):
    """Images (B, S, D, H, W, C) + token ids (B, L) -> next-token logits (B, L, V)."""

    def __init__(
        self, vision_cfg: RadFMVisionConfig, decoder_cfg: DecoderConfig, *, rngs: nnx.Rngs
    ):
        if vision_cfg.llm_dim != decoder_cfg.hidden_size:
            raise ValueError(
                f"RadFM: vision llm_dim {vision_cfg.llm_dim} != LLaMA hidden_size "
                f"{decoder_cfg.hidden_size}"
            )
        self.vision = RadFMVision(vision_cfg, rngs=rngs)
        self.figure_token_weight = nnx.Param(
            jax.random.normal(rngs.params(), (2, decoder_cfg.hidden_size), jnp.float32),
            out_sharding=(None, "embed"),
        )
        self.lang_model = Decoder(decoder_cfg, rngs=rngs)
        self.text_vocab = decoder_cfg.vocab_size
        self.tokens_per_image = vision_cfg.num_latents

    def embed(self, input_ids: jax.Array, images: jax.Array) -> jax.Array:
        """Token embeddings with the image blocks filled in.

        Args:
          input_ids: (B, L) int in [0, V + 2 + S * tokens_per_image).
          images: (B, S, D, H, W, C) channels-last, S image slots per sample (zeros for
            absent images; their tokens are never referenced).
        Returns:
          (B, L, llm_dim) in the decoder's compute dtype.
        """
        v = self.text_vocab
        visual = self.vision(images)  # (B, S, T, llm_dim)
        b, s, t, d = visual.shape
        visual = visual.reshape(b, s * t, d).astype(self.lang_model.cfg.dtype)
        text = self.lang_model.embed(jnp.clip(input_ids, 0, v - 1))
        figure = jnp.take(self.figure_token_weight[...], jnp.clip(input_ids - v, 0, 1), axis=0)
        index = jnp.clip(input_ids - v - 2, 0, s * t - 1)
        image = jnp.take_along_axis(visual, index[..., None], axis=1)
        ids = input_ids[..., None]
        out = jnp.where(ids < v, text, jnp.where(ids < v + 2, figure.astype(text.dtype), image))
        return shard_act(out, ("act_batch", "act_length", "act_embed"))

    def __call__(
        self, input_ids: jax.Array, images: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """(B, L) ids, (B, S, D, H, W, C) images, (B, L) mask -> (B, L, V) f32 logits."""
        return self.lang_model(
            inputs_embeds=self.embed(input_ids, images), attention_mask=attention_mask
        )


# ----------------------------------------------------------------------------- paper module


def vision_config(m: ml_collections.ConfigDict) -> RadFMVisionConfig:
    return RadFMVisionConfig(**m.vision.to_dict())


def decoder_config(m: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**m.llm.to_dict())


def build_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> RadFM:
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
    """Weighted next-token cross-entropy (``radjax.train.lm_loss``) over the answer tokens.

    batch: ``input_ids``/``attention_mask``/``labels`` (B, L) (labels -100 = ignored),
    ``entity_mask`` bool (B, L) aligned with labels, ``images`` (B, S, D, H, W, C).
    """
    ids, labels = batch["input_ids"], batch["labels"]
    embeds = model.embed(ids, batch["images"])
    hidden = model.lang_model.hidden_states(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"]
    )
    entity_weight = float(config.get("loss", {}).get("entity_weight", 1.0))
    weights = jnp.where(labels >= 0, jnp.where(batch["entity_mask"], entity_weight, 1.0), 0.0)
    targets, weights = lm_loss.next_token_targets(jnp.maximum(labels, 0), weights)
    d = hidden.shape[-1]
    loss = lm_loss.fused_head_cross_entropy(
        hidden.reshape(-1, d),
        model.lang_model.head_kernel(),
        targets.reshape(-1),
        weights.reshape(-1),
        num_chunks=int(config.model.get("loss_chunks", 1)),
    )
    return loss, {"answer_tokens": jnp.sum(weights > 0).astype(jnp.float32)}


def left_aligned_prompt(
    input_ids: jax.Array, prompt_length: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The first ``prompt_length[b]`` ids of each right-padded row, moved to the right end
    (left padding, as generation wants): (B, L), (B,) -> ids (B, L), mask (B, L) bool."""
    length = input_ids.shape[1]
    source = jnp.arange(length)[None, :] - (length - prompt_length)[:, None]
    mask = source >= 0
    ids = jnp.take_along_axis(input_ids, jnp.maximum(source, 0), axis=1)
    return jnp.where(mask, ids, 0), mask


def predict_fn(
    model: RadFM, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """Greedy answers (as the released ``generate(max_new_tokens=200)``) to each row's
    question: ``generated`` (B, eval.max_new_tokens) ids, plus ``labels`` and ``task``."""
    prompt, mask = left_aligned_prompt(batch["input_ids"], batch["question_length"])
    embeds = model.embed(prompt, batch["images"])
    tokens = generation.generate(
        *nnx.split(model.lang_model),
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=int(config.eval.max_new_tokens),
        eos_token_id=int(config.model.eos_token_id),
        pad_token_id=int(config.model.pad_token_id),
    )
    return {"generated": tokens, "labels": batch["labels"], "task": batch["task"]}


def evaluate(outputs: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The paper's metrics per task on decoded answers (``radjax.papers.radfm.metrics``)."""
    from radjax.papers.radfm import data as fmt
    from radjax.papers.radfm import metrics

    tokenizer, _ = fmt.text_tools(config.data)
    predictions = metrics.decode(outputs["generated"], tokenizer, config.model.eos_token_id)
    references = metrics.decode_labels(outputs["labels"], tokenizer, config.model.eos_token_id)
    tasks = [fmt.TASKS[int(t)] for t in outputs["task"]]
    baseline = fmt.most_frequent_answers(config.data, "train")
    return metrics.radfm_report(
        predictions,
        references,
        tasks,
        baseline=baseline,
        bertscore=bool(config.eval.get("bertscore", False)),
    )
