"""RP3D-Diag (RadDiag): multi-scan, long-tailed multi-label diagnosis (specs/vision.md §1).

Paper module (WORKSPACE.md CONTRACT): ``build_model``, ``loss_fn``, ``predict_fn``,
``evaluate``. A batch holds ``images`` (B, N, D, H, W, 1) in [0, 1], ``marks`` (B, N, D),
``mods`` (B, N), ``keys`` (B, N) and ``labels`` (B, C); late fusion has N = 1.

Two architectures (``config.model.arch``):

``released`` (NatComm code, ``src/Train/Model/modelRadNet.py``; default)
  every slice, grey repeated to 3 channels, goes through a 2D ResNet (ResNet-50,
  2048-d pooled) -> ``SliceAttention`` (the original's Attention1D: CLS + learned
  positions, 1-head encoder attending on its un-normalised input (``encoder.py``), key
  padding from ``marks``) -> one vector per scan. Early fusion: ``ScanFusion`` (vitFuse: modality embeddings, CLS, 2 layers
  of 4 heads, padding scans ``mods == 0`` masked) -> one vector per case. Head: ``fc``
  Linear(d, d) -> GELU -> Linear(d, C).
``v1`` (arXiv-v1 code, commit 6674fed ``src/Model``)
  per scan, a 2D ResNet-18 on the first slice (scans with fewer than 3 real slices,
  the original's "2D" test) or a MedicalNet 3D ResNet-18 on the volume, then the
  shared ``ResNetFuse`` -> vis_dim; or (``v1.encoder='vit'``) the 3D ViT with
  separate 2D / 3D patch embeddings, mean-pooled. Early fusion: post-norm torch
  encoder (6 x 8 heads, dropout 0.1) over scans with modality embeddings and CLS.
  Heads: late ResNet Linear(vis, C), late ViT MLP(dim, dim, C), early MLP(vis, vis, C).

Knowledge enhancement (``config.model.ke.enabled``): class texts are embedded once by
a frozen text encoder into ``LabelEmbeddings`` (C, T), a non-trainable variable.
Released: logits = feat @ fcke(E).T with ``fcke`` Linear(T, d) replacing ``fc``;
v1: the head ends in T instead of C and logits = head(feat) @ E.T.

Losses: BCE-with-logits on logits clamped to ±60; early fusion adds
``key_slice_loss_weight`` x the symmetric KL between the CLS->slice attention and a
Gaussian at the key slice (late fusion reports it without adding it, as the original).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from radjax.models.resnet import MEDICALNET_LAYERS, ResNet, ResNet3D, ResNetFuse
from radjax.models.vit import ViT, ViTConfig
from radjax.nn.attention import key_padding_mask
from radjax.nn.transformer import Encoder, Mlp, gelu_exact, torch_encoder
from radjax.papers.rp3d_diag import knowledge
from radjax.papers.rp3d_diag.encoder import annotated_encoder
from radjax.papers.rp3d_diag.losses import symmetric_kl_gaussian_key_slice
from radjax.papers.rp3d_diag.metrics import rp3d_metrics
from radjax.sharding import shard_act
from radjax.train.losses import sigmoid_bce_clamped

# NatComm modality index (CT 1-3, MRI 4-6, X-ray 7-8, US 9, annotated 10, fluoroscopy 11,
# mammography 12, DSA 13, nuclear medicine 14, barium 15) -> arXiv-v1 index (CT 1-3,
# MRI 4-6, US 7, X-ray 8, annotated 9, fluoroscopy 10, ..., barium 14); 0 = padding.
NATCOMM_TO_V1_MODALITY = np.array([0, 1, 2, 3, 4, 5, 6, 8, 8, 7, 9, 10, 11, 12, 13, 14], np.int32)
V1_MIN_SLICES_3D = 3  # v1 treats scans with fewer slices as 2D images

_normal = nnx.initializers.normal(1.0)  # torch.randn


class LabelEmbeddings(nnx.Variable):
    """Frozen (C, T) class-text embeddings. Not an ``nnx.Param``: optimizers never see it."""


def _token_param(rngs: nnx.Rngs, shape: tuple[int, ...]) -> nnx.Param:
    """A randn-initialised learned token table (..., dim), sharded on its last axis."""
    return nnx.Param(
        _normal(rngs.params(), shape), out_sharding=(None,) * (len(shape) - 1) + ("embed",)
    )


def _prepend_cls(cls: jax.Array, x: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(dim,), (B, L, dim), (B, L) -> (B, 1+L, dim) and validity with the CLS always valid."""
    b = x.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, x.shape[-1])), x], axis=1)
    return x, jnp.concatenate([jnp.ones((b, 1), bool), valid != 0], axis=1)


class SliceAttention(nnx.Module):
    """Released ``Attention1D``: (S, D, dim) slice features, (S, D) marks -> (S, dim) scan feature.

    Also returns the CLS row of the last layer's raw attention scores, averaged over
    heads, without the CLS column: (S, D) (padding slices at -1e9), for the key-slice loss.
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        heads: int,
        layers: int,
        mlp_dim: int,
        dtype=None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.cls_token = _token_param(rngs, (dim,))
        self.pos_embed = _token_param(rngs, (1 + depth, dim))
        self.encoder = annotated_encoder(
            dim, heads=heads, mlp_dim=mlp_dim, layers=layers, dtype=dtype, remat=remat, rngs=rngs
        )

    def __call__(self, x: jax.Array, marks: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, valid = _prepend_cls(self.cls_token[...], x, marks)
        x = x + self.pos_embed[...].astype(x.dtype)
        x = shard_act(x, ("act_batch", "act_length", "act_embed"))
        y, _, scores = self.encoder(x, key_padding_mask(valid))
        return y[:, 0], scores[-1].mean(axis=1)[:, 0, 1:]


class ScanFusion(nnx.Module):
    """vitFuse: (B, N, dim) scan features + (B, N) modality ids -> (B, dim) case feature.

    Adds ``mod_embed[mods]``, prepends a CLS, masks padding scans (``mods == 0``), runs
    ``encoder`` and returns the CLS output. No positional embedding.
    """

    def __init__(self, dim: int, *, num_modalities: int, encoder: Encoder, rngs: nnx.Rngs):
        self.mod_embed = _token_param(rngs, (num_modalities, dim))
        self.cls_token = _token_param(rngs, (dim,))
        self.encoder = encoder

    def __call__(self, x: jax.Array, mods: jax.Array) -> jax.Array:
        x = x + self.mod_embed[...][mods].astype(x.dtype)
        x, valid = _prepend_cls(self.cls_token[...], x, mods != 0)
        x = shard_act(x, ("act_batch", "act_length", "act_embed"))
        return self.encoder(x, key_padding_mask(valid))[0][:, 0]


class LabelHead(nnx.Module):
    """(B, in_dim) features -> (B, C) logits.

    Without label embeddings: ``fc`` = Linear(in_dim, C) (``hidden=None``) or
    Linear(in_dim, hidden) -> GELU -> Linear(hidden, C).
    With label embeddings E (C, T), ``project`` picks the original's form:
      'labels' (released): logits = feat @ fcke(E).T, ``fcke`` Linear(T, in_dim);
      'features' (v1): logits = fcke(feat) @ E.T, ``fcke`` shaped like ``fc`` but ending in T.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        hidden: int | None = None,
        label_embeddings: np.ndarray | None = None,
        project: str = "labels",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if project not in ("labels", "features"):
            raise ValueError(f"LabelHead: project {project!r} not in ('labels', 'features')")
        self.project = project
        self.knowledge = label_embeddings is not None
        if not self.knowledge:
            self.fc = self._classifier(in_dim, hidden, num_classes, "classes", dtype, rngs)
            return
        emb = np.asarray(label_embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] != num_classes:
            raise ValueError(
                f"LabelHead: label embeddings {emb.shape} do not match "
                f"{num_classes} classes; expected (C, T)"
            )
        self.label_embeddings = LabelEmbeddings(jnp.asarray(emb))
        text_dim = emb.shape[1]
        if project == "labels":
            self.fcke = nnx.Linear(
                text_dim,
                in_dim,
                dtype=dtype,
                rngs=rngs,
                kernel_metadata={"out_sharding": (None, "embed")},
                bias_metadata={"out_sharding": ("embed",)},
            )
        else:
            self.fcke = self._classifier(in_dim, hidden, text_dim, None, dtype, rngs)

    @staticmethod
    def _classifier(in_dim, hidden, out_dim, out_axis, dtype, rngs) -> nnx.Module:
        if hidden is None:
            return nnx.Linear(
                in_dim,
                out_dim,
                dtype=dtype,
                rngs=rngs,
                kernel_metadata={"out_sharding": ("embed", out_axis)},
                bias_metadata={"out_sharding": (out_axis,)},
            )
        return Mlp(
            in_dim,
            hidden,
            out_dim,
            activation=gelu_exact,
            out_axis=out_axis,
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, feat: jax.Array) -> jax.Array:
        if not self.knowledge:
            logits = self.fc(feat)
        elif self.project == "labels":
            logits = feat @ self.fcke(self.label_embeddings[...].astype(feat.dtype)).T
        else:
            logits = self.fcke(feat) @ self.label_embeddings[...].astype(feat.dtype).T
        return shard_act(logits.astype(jnp.float32), ("act_batch", "act_classes"))


def _dtype(m: ml_collections.ConfigDict):
    return jnp.dtype(m.dtype)


def _grey_to_rgb(x: jax.Array) -> jax.Array:
    """Repeats a single grey channel to 3 (the originals' ``repeat(1, 3, ...)``)."""
    return jnp.broadcast_to(x, (*x.shape[:-1], 3))


class RadNet(nnx.Module):
    """Released RadDiag: per-slice ResNet -> SliceAttention -> [ScanFusion] -> LabelHead."""

    def __init__(
        self, m: ml_collections.ConfigDict, *, label_embeddings: np.ndarray | None, rngs: nnx.Rngs
    ):
        dtype = _dtype(m)
        self.early = m.fusion == "early"
        self.trunk = ResNet(
            block=m.resnet.block,
            layers=tuple(m.resnet.layers),
            width=m.resnet.width,
            in_channels=3,
            remat=m.remat,
            dtype=dtype,
            rngs=rngs,
        )
        dim = self.trunk.out_features
        s = m.slice_attn
        self.slice_attn = SliceAttention(
            dim,
            depth=m.depth,
            heads=s.heads,
            layers=s.layers,
            mlp_dim=s.mlp_dim,
            dtype=dtype,
            remat=m.remat,
            rngs=rngs,
        )
        if self.early:
            f = m.scan_fuse
            self.scan_fuse = ScanFusion(
                dim,
                num_modalities=m.num_modalities,
                rngs=rngs,
                encoder=annotated_encoder(
                    dim,
                    heads=f.heads,
                    mlp_dim=f.mlp_dim,
                    layers=f.layers,
                    dtype=dtype,
                    remat=m.remat,
                    rngs=rngs,
                ),
            )
        self.head = LabelHead(
            dim,
            m.num_classes,
            hidden=dim,
            label_embeddings=label_embeddings,
            project="labels",
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(
        self, images: jax.Array, marks: jax.Array, mods: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(B, N, D, H, W, 1), (B, N, D), (B, N) -> logits (B, C), CLS->slice scores (B, N, D)."""
        b, n, d, h, w, _ = images.shape
        if not self.early and n != 1:
            raise ValueError(f"late fusion takes one scan per case, got images {images.shape}")
        slices = _grey_to_rgb(images.reshape(b * n * d, h, w, 1))
        slices = shard_act(slices, ("act_batch", "act_spatial", "act_spatial", "act_channels"))
        feats = self.trunk(slices).reshape(b * n, d, -1)
        feats = shard_act(feats, ("act_batch", "act_length", "act_embed"))
        scans, scores = self.slice_attn(feats, marks.reshape(b * n, d))
        scans = scans.reshape(b, n, -1)
        case = self.scan_fuse(scans, mods) if self.early else scans[:, 0]
        return self.head(case), scores.reshape(b, n, d)


def _medicalnet_depth(depth: int) -> int:
    """The smallest 3D-ResNet input depth that holds ``depth`` slices."""
    fits = [k for k in sorted(MEDICALNET_LAYERS) if k >= depth]
    if not fits:
        raise ValueError(f"v1: depth {depth} exceeds the 3D ResNet's {max(MEDICALNET_LAYERS)}")
    return fits[0]


class RadNetV1(nnx.Module):
    """arXiv-v1 RadNet: 2D/3D ResNet-18 + ResNetFuse (or 3D ViT) -> [fusion] -> head."""

    def __init__(
        self, m: ml_collections.ConfigDict, *, label_embeddings: np.ndarray | None, rngs: nnx.Rngs
    ):
        dtype, v = _dtype(m), m.v1
        self.early = m.fusion == "early"
        self.encoder_kind = v.encoder
        common = dict(remat=m.remat, dtype=dtype, rngs=rngs)
        if v.encoder == "resnet":
            self.resnet2d = ResNet(
                block="basic", layers=tuple(v.layers2d), width=v.width, in_channels=3, **common
            )
            self.depth3d = _medicalnet_depth(m.depth)
            self.resnet3d = ResNet3D(
                depth=self.depth3d,
                layers=tuple(v.layers3d),
                block="basic",
                width=v.width,
                in_channels=3,
                **common,
            )
            maps = self.resnet2d.out_features
            self.resnet_fuse = ResNetFuse(
                layers=tuple(v.fuse_blocks),
                in_channels=maps,
                width=maps,
                vis_dim=v.vis_dim,
                **common,
            )
            feat_dim, hidden = v.vis_dim, (v.vis_dim if self.early else None)
        elif v.encoder == "vit":
            c = v.vit
            self.vit = ViT(
                ViTConfig(
                    image_size=c.image_size,
                    patch_size=c.patch_size,
                    frames=m.depth,
                    frame_patch_size=c.frame_patch_size,
                    width=c.dim,
                    depth=c.depth,
                    num_heads=c.heads,
                    head_dim=c.dim_head,
                    mlp_dim=c.mlp_dim,
                    inputs=("3d", "2d"),
                    patch_norm=True,
                    posemb="axial3",
                    final_norm=False,
                    qkv_bias=False,
                    dropout=c.dropout,
                    emb_dropout=c.dropout,
                    dtype=jnp.dtype(dtype).name,
                    remat=m.remat,
                ),
                rngs=rngs,
            )
            if self.early:  # the original's shapes do not compose here; project to vis_dim
                self.vit_proj = Mlp(
                    c.dim, c.dim, v.vis_dim, activation=gelu_exact, dtype=dtype, rngs=rngs
                )
            feat_dim = v.vis_dim if self.early else c.dim
            hidden = feat_dim
        else:
            raise ValueError(f"model.v1.encoder {v.encoder!r} not in ('resnet', 'vit')")
        if self.early:
            self.scan_fuse = ScanFusion(
                v.vis_dim,
                num_modalities=v.num_modalities,
                rngs=rngs,
                encoder=torch_encoder(
                    v.vis_dim,
                    heads=v.fuse_heads,
                    mlp_dim=v.fuse_mlp_dim,
                    layers=v.fuse_layers,
                    dropout=v.dropout,
                    dtype=dtype,
                    remat=m.remat,
                    rngs=rngs,
                ),
            )
        self.head = LabelHead(
            feat_dim,
            m.num_classes,
            hidden=hidden,
            label_embeddings=label_embeddings,
            project="features",
            dtype=dtype,
            rngs=rngs,
        )

    def _encode_resnet(self, x: jax.Array, is_2d: jax.Array) -> jax.Array:
        """(S, D, H, W, 3), (S,) -> (S, vis_dim); both modules run, the scan's kind selects."""
        maps2d = self.resnet2d.features(x[:, 0])
        pad = self.depth3d - x.shape[1]
        maps3d = self.resnet3d(jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0))))
        return self.resnet_fuse(jnp.where(is_2d[:, None, None, None], maps2d, maps3d))

    def _encode_vit(self, x: jax.Array, is_2d: jax.Array) -> jax.Array:
        """(S, D, H, W, 3), (S,) -> (S, dim) mean-pooled tokens (vis_dim when early)."""
        feat = jnp.where(is_2d[:, None], self.vit(x[:, 0]).mean(axis=1), self.vit(x).mean(axis=1))
        return self.vit_proj(feat) if self.early else feat

    def __call__(
        self, images: jax.Array, marks: jax.Array, mods: jax.Array
    ) -> tuple[jax.Array, None]:
        """(B, N, D, H, W, 1), (B, N, D), (B, N) -> logits (B, C), None (no slice attention)."""
        b, n, d, h, w, _ = images.shape
        if not self.early and n != 1:
            raise ValueError(f"late fusion takes one scan per case, got images {images.shape}")
        scans = _grey_to_rgb(images.reshape(b * n, d, h, w, 1))
        scans = shard_act(
            scans, ("act_batch", "act_depth", "act_spatial", "act_spatial", "act_channels")
        )
        is_2d = jnp.sum(marks.reshape(b * n, d) != 0, axis=-1) < V1_MIN_SLICES_3D
        encode = self._encode_resnet if self.encoder_kind == "resnet" else self._encode_vit
        feats = shard_act(encode(scans, is_2d), ("act_batch", "act_embed")).reshape(b, n, -1)
        if self.early:
            case = self.scan_fuse(feats, jnp.asarray(NATCOMM_TO_V1_MODALITY)[mods])
        else:
            case = feats[:, 0]
        return self.head(case), None


_ARCHS = {"released": RadNet, "v1": RadNetV1}


def label_texts(config: ml_collections.ConfigDict) -> list[str]:
    """Class texts of the configured label level, in label-index order."""
    d, ke = config.data, config.model.ke
    if d.label_level == "icd10s":
        return knowledge.label_texts(
            os.path.join(d.root, d.icd10_label_dict),
            "icd10",
            os.path.join(d.root, ke.icd10_descriptions),
        )
    return knowledge.label_texts(os.path.join(d.root, d.label_dict), "articles")


@functools.lru_cache(maxsize=4)
def _text_embeddings(ke_items: tuple, texts: tuple[str, ...]) -> np.ndarray:
    with jax.ensure_compile_time_eval():  # build_model may run under jit / eval_shape
        return knowledge.label_embeddings(dict(ke_items), list(texts))


def class_text_embeddings(config: ml_collections.ConfigDict) -> np.ndarray:
    """(C, T) frozen embeddings of the class texts by ``config.model.ke``'s text encoder,
    computed once per process and configuration."""
    return _text_embeddings(tuple(sorted(config.model.ke.items())), tuple(label_texts(config)))


def build_model(
    config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, label_embeddings: np.ndarray | None = None
) -> nnx.Module:
    """The configured RadNet. With ``model.ke.enabled`` the (C, T) label embeddings are
    ``label_embeddings`` when given, else ``class_text_embeddings(config)``."""
    m = config.model
    if m.arch not in _ARCHS:
        raise ValueError(f"model.arch {m.arch!r} not in {sorted(_ARCHS)}")
    if m.fusion not in ("late", "early"):
        raise ValueError(f"model.fusion {m.fusion!r} not in ('late', 'early')")
    emb = None
    if m.ke.enabled:
        emb = class_text_embeddings(config) if label_embeddings is None else label_embeddings
    return _ARCHS[m.arch](m, label_embeddings=emb, rngs=rngs)


def loss_fn(
    model: nnx.Module, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BCE (+ weighted key-slice KL in early fusion). Metrics: ``bce``, ``key_slice_kl``
    (released architecture only; v1 has no slice attention)."""
    m = config.model
    logits, scores = model(batch["images"], batch["marks"], batch["mods"])
    bce = sigmoid_bce_clamped(logits, batch["labels"], m.logit_clamp)
    if scores is None:
        return bce, {"bce": bce}
    d = scores.shape[-1]
    early = m.fusion == "early"
    kl = symmetric_kl_gaussian_key_slice(
        scores.reshape(-1, d),
        batch["keys"].reshape(-1),
        batch["marks"].reshape(-1, d),
        d,
        m.key_slice_std_fraction * d,
        valid=batch["mods"].reshape(-1) != 0 if early else None,
    )
    loss = bce + m.key_slice_loss_weight * kl if early else bce
    return loss, {"bce": bce, "key_slice_kl": kl}


def predict_fn(
    model: nnx.Module, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """{'scores': sigmoid(clamped logits) (B, C), 'labels': (B, C)}."""
    logits, _ = model(batch["images"], batch["marks"], batch["mods"])
    clamp = config.model.logit_clamp
    return {"scores": jax.nn.sigmoid(jnp.clip(logits, -clamp, clamp)), "labels": batch["labels"]}


def evaluate(outputs: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """RP3D metrics (AUC, AP, max-F1, MCC, recall@FPR; all / head / medium / tail)."""
    return rp3d_metrics(
        outputs["labels"], outputs["scores"], config.eval.head_cut, config.eval.medium_cut
    )
