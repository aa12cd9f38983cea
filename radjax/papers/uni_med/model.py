"""Uni-Med (MSIIP/Uni-Med @ 5c902a5, ``uni_med/models/uni_med.py``): EVA ViT-g -> ln_vision ->
CLS dropped -> Connector-MoE (routed per task) -> LLaMA-2 with LoRA on every linear layer.

``UniMed`` is a ``radjax.models.vlm.VisionLanguageModel`` whose image features depend on the
task: ``vision`` = ``UniMedVision`` (the shared ``models.vit.ViT`` as EVA,
``radjax.convert.eva_vit.vit_config``, then the fresh ``ln_vision`` (eps 1e-5) on all 1 + N
tokens, then the CLS token dropped), ``connector`` = ``papers.uni_med.connector.ConnectorMoE``
(resampling, task tokens, router, experts; no separate projector), ``lang_model`` = llama
``Decoder``. Image positions of ``input_ids`` hold ``data.IMAGE_PLACEHOLDER`` and take the
connector's T tokens in order (``ImageTokens(placeholder_id=...)``).

Freezing (the original's ``requires_grad``): the tower and ``ln_vision`` never train (unless
``model.train_vision``, a tiny-config switch); with ``model.lora`` the base LLM is frozen and
the adapters train; ``optim.groups`` names the connector (task tokens, router, experts) so
it trains too (``configs/uni_med.py``).

Loss (``loss_fn``): the token-mean cross-entropy over every answer token and its EOS in the
batch (``CrossEntropyLoss(reduction='mean')`` of modeling_llama.py) plus the connector's
optional load-balancing loss (``model.connector.aux_loss_weight``, 0 = released). Metrics:
``ce``, ``aux_loss``, ``routing_e<k>`` (the batch's mean routing weight of expert k, as the
original logs per step).

Prediction (``predict_fn``): greedy generation from each row's left-aligned prompt (the
original's ``generate(num_beams=1, do_sample=False)``), plus the per-sample mean routing
weights. ``evaluate``: ``papers.uni_med.metrics.uni_med_report`` per task, the baselines,
and the mean routing weight per expert per task.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from radjax.convert import eva_vit
from radjax.models.llama import Decoder, DecoderConfig
from radjax.models.vit import ViT, ViTConfig
from radjax.models.vlm import ImageOutputs, ImageTokens, VisionLanguageModel
from radjax.papers.uni_med.connector import ConnectorConfig, ConnectorMoE, ConnectorOutput
from radjax.papers.uni_med.data import IMAGE_PLACEHOLDER
from radjax.papers.uni_med.sizes import connector_config, decoder_config, vit_config
from radjax.train import vlm_steps


class UniMedVision(nnx.Module):
    """``ln_vision(visual_encoder(image))[:, 1:]``: images (B, H, W, 3) -> (B, N, C) patch
    tokens in raster order (CLS dropped after the norm, as ``encode_img``)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.vit = ViT(cfg, rngs=rngs)
        self.ln_vision = eva_vit.ln_vision(cfg.width, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.ln_vision(self.vit(images))[:, 1:]


class UniMed(VisionLanguageModel):
    """Images (B, H, W, 3) + task ids (B,) + token ids (B, L) -> logits (B, L, V); the task
    routes the connector (``conditioning_fields``: the batch's ``task`` and ``valid``)."""

    conditioning_fields = ("task", "valid")

    def __init__(
        self,
        vit_cfg: ViTConfig,
        connector_cfg: ConnectorConfig,
        decoder_cfg: DecoderConfig,
        *,
        rngs: nnx.Rngs,
    ):
        if connector_cfg.vision_dim != vit_cfg.width:
            raise ValueError(
                f"Uni-Med: connector vision_dim {connector_cfg.vision_dim} != ViT width "
                f"{vit_cfg.width}"
            )
        if connector_cfg.llm_dim != decoder_cfg.hidden_size:
            raise ValueError(
                f"Uni-Med: connector llm_dim {connector_cfg.llm_dim} != LLaMA hidden_size "
                f"{decoder_cfg.hidden_size}"
            )
        vision = UniMedVision(vit_cfg, rngs=rngs)
        self.connector = ConnectorMoE(connector_cfg, rngs=rngs)
        super().__init__(
            vision=vision,
            projector=None,
            lang_model=Decoder(decoder_cfg, rngs=rngs),
            image_tokens=ImageTokens(placeholder_id=IMAGE_PLACEHOLDER),
        )

    def encode_img(
        self, images: jax.Array, task_id: jax.Array, valid: jax.Array | None = None
    ) -> ConnectorOutput:
        """``encode_img(image, task)``: (B, H, W, 3), (B,) -> tokens (B, T, D) in the decoder's
        compute dtype, routing weights (B, T, E), aux loss ()."""
        out = self.connector(self.vision(images), task_id, valid=valid)
        return out._replace(tokens=out.tokens.astype(self.lang_model.cfg.dtype))

    def encode_images(
        self, images: jax.Array, task: jax.Array, valid: jax.Array | None = None
    ) -> ImageOutputs:
        """``encode_img`` as ``ImageOutputs``: the connector's tokens (B, T, D), its auxiliary
        loss, ``routing_e<k>`` (the mean routing weight of expert k over the valid rows, as
        the original logs per step) and per row ``routing`` (B, E) (the token mean)."""
        out = self.encode_img(images, task, valid)
        per_row = out.routing_weights.mean(axis=1)
        rows = jnp.ones(per_row.shape[:1]) if valid is None else valid.astype(jnp.float32)
        per_expert = jnp.einsum("b,be->e", rows, per_row) / jnp.maximum(rows.sum(), 1.0)
        return ImageOutputs(
            out.tokens,
            aux_loss=out.aux_loss,
            metrics={f"routing_e{k}": per_expert[k] for k in range(per_expert.shape[0])},
            per_row={"routing": per_row},
        )


def build_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> UniMed:
    """The configured Uni-Med.

    Raises:
      ValueError: ``model.llm.vocab_size`` not set yet (the data format's ``complete_config``
        sets it from the tokenizer), or widths that do not fit together.
    """
    if int(config.model.llm.vocab_size) <= 0:
        raise ValueError(
            f"model.llm.vocab_size is {config.model.llm.vocab_size}: the tokenizer sets it; run "
            "radjax.train.experiment.prepare_config(config) first, or set model.llm.vocab_size"
        )
    m = config.model
    return UniMed(vit_config(m), connector_config(m), decoder_config(m), rngs=rngs)


# ----------------------------------------------------------------------------- weights

_PEFT = re.compile(
    r"llm_model\.base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_([AB])(?:\.default)?\.weight"
)


def from_uni_med_lora(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """peft LoRA tensors of a Uni-Med checkpoint (``llm_model.base_model.model.model.layers.
    <i>.<self_attn|mlp>.<proj>.lora_<A|B>[.default].weight``, (r, in) / (out, r)) ->
    ``lang_model/layers/<i>/<self_attn|mlp>/<proj>/lora_<a|b>`` ((in, r) / (r, out))."""
    out = {}
    for key, value in sd.items():
        m = _PEFT.fullmatch(key)
        if m is None:
            raise ValueError(f"Uni-Med checkpoint: {key!r} is no LoRA tensor of the LLM")
        layer, block, proj, ab = m.groups()
        out[f"lang_model/layers/{layer}/{block}/{proj}/lora_{ab.lower()}"] = np.asarray(
            value, np.float32
        ).T
    return out


def pretrained_params(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The weights a fresh run starts from, '/'-joined paths (each optional, combined):

    ``model.eva_checkpoint``: BLIP-2's ``eva_vit_g.pth`` (or a Uni-Med / BLIP-2 state dict with
      ``visual_encoder.*``): the tower (``radjax.convert.eva_vit``; blocks beyond
      ``model.vision.depth`` dropped, as the original's strict=False load). ``ln_vision``
      stays fresh (gain 1, bias 0), as in the original.
    ``model.llm_dir``: a local transformers LLaMA directory (Llama-2-7b-chat-hf): the LLM.
    ``model.checkpoint``: a Uni-Med ``checkpoint_*.pth`` (its ``model`` entry holds the
      trainable tensors): the connector (``papers.uni_med.convert``: task tokens, router,
      experts; the duplicate ``moe_layers`` copy checked and dropped) and, with
      ``model.lora`` on, the LoRA adapters.
    """
    from radjax.convert.llama import from_hf_llama
    from radjax.convert.torch_io import load_state_dict, stack_layers
    from radjax.papers.uni_med.convert import from_uni_med_connector, split_checkpoint

    m, out = config.model, {}
    if m.get("eva_checkpoint", ""):
        sd = load_state_dict(m.eva_checkpoint)
        sd = {k: v for k, v in sd.items() if not k.startswith("ln_vision.")}
        vit = eva_vit.from_eva_vit(sd, depth=int(m.vision.depth))
        out.update({f"vision/vit/{k}": v for k, v in vit.items()})
    if m.get("llm_dir", ""):
        values = from_hf_llama(load_state_dict(m.llm_dir), decoder_config(m))
        out.update({f"lang_model/{k}": v for k, v in values.items()})
    if m.get("checkpoint", ""):
        connector, rest = split_checkpoint(load_state_dict(m.checkpoint))
        values = from_uni_med_connector(connector, connector_config(m))
        out.update({f"connector/{k}": v for k, v in values.items()})
        lora = {k: v for k, v in rest.items() if ".lora_" in k}
        if lora and int(m.get("lora", {}).get("rank", 0)) > 0:
            adapters = from_uni_med_lora(lora)
            if decoder_config(m).scan_layers:  # one stacked adapter per projection
                adapters = stack_layers(
                    adapters, "lang_model/layers", int(m.llm.num_layers), caller=m.checkpoint
                )
            out.update(adapters)
    return out


# ----------------------------------------------------------------------------- steps


def loss_fn(
    model: UniMed, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean cross-entropy over the batch's answer + EOS tokens
    (``vlm_steps.lm_loss_fn``, weights 1), plus the connector's weighted auxiliary loss.
    batch: ``images`` (B, H, W, 3), ``input_ids`` / ``attention_mask`` / ``labels`` (B, L)
    (labels -100 = ignored), ``task`` (B,), optional ``valid`` (B,). Metrics: ``ce``,
    ``aux_loss``, ``answer_tokens``, ``routing_e<k>``."""
    return vlm_steps.lm_loss_fn(model, batch, num_chunks=int(config.model.get("loss_chunks", 1)))


def predict_fn(
    model: UniMed, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """Greedy answers to each row's prompt (``eval.max_new_tokens``, the original's 100;
    ``eval.min_new_tokens``, the original's ``min_length=1``):
    ``generated`` (B, max_new_tokens), ``routing`` (B, E) (the token-mean routing weights),
    and the batch's ``labels``, ``task``, ``closed``, ``box``, ``image_wh``, ``index``."""
    tokens, image_outputs = vlm_steps.generate_answers(
        model,
        batch["input_ids"],
        batch["images"],
        batch["prompt_length"],
        conditioning={"task": batch["task"]},
        with_image_outputs=True,
        max_new_tokens=int(config.eval.max_new_tokens),
        min_new_tokens=int(config.eval.get("min_new_tokens", 0)),
        eos_token_id=int(config.model.eos_token_id),
        pad_token_id=int(config.model.pad_token_id),
    )
    keep = ("labels", "task", "closed", "box", "image_wh", "index")
    return {"generated": tokens, **image_outputs.per_row, **{k: batch[k] for k in keep}}


def evaluate(outputs: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Per-task metrics on the decoded answers (``papers.uni_med.metrics.uni_med_report``):
    VQA (closed accuracy, BLEU-1..4, token F1 per OPEN / CLOSED / all), REC (mIoU, acc@0.5
    in pixel space), REG (BLEU, F1, exact match), caption (report metrics), cls (accuracy),
    with the most-frequent-answer (and centre-box) baselines; ``routing/<task>/e<k>``."""
    from radjax.data.prompt_answer import answer_texts
    from radjax.papers.uni_med import data as fmt
    from radjax.papers.uni_med import metrics

    tok = fmt.tokenizer(config.data)
    eos = int(config.model.eos_token_id)
    predictions = metrics.decode_generated(outputs["generated"], tok, eos)
    references = answer_texts(outputs["labels"], tok, eos)
    return metrics.uni_med_report(
        predictions,
        references,
        tasks=[fmt.TASKS[int(t)] for t in outputs["task"]],
        closed=np.asarray(outputs["closed"], bool),
        boxes=np.asarray(outputs["box"], np.float64),
        image_wh=np.asarray(outputs["image_wh"], np.float64),
        routing=np.asarray(outputs["routing"], np.float64),
        baseline=fmt.most_frequent_answers(config.data, "train"),
        meteor=bool(config.eval.get("meteor", False)),
    )
