"""A PyTorch stand-in for RadFM's vision path: the torch side of benchmarks/radfm.py, verified
against the golden outputs of the original RadFM code in tests/papers/radfm/test_radfm_golden.py.

Written from reading ``chaoyi-wu/RadFM`` (``src/Model/RadFM/{vit_3d,helpers,
position_encoding,my_embedding_layer}.py``), not copied from it. Module trees and
therefore state-dict keys are the original's:

  vision_encoder.to_patch_embedding.{1,2,3}            LayerNorm, Linear, LayerNorm
  vision_encoder.pos_embedding.{row,col,dep}_embed      nn.Embedding tables
  vision_encoder.transformer.layers.i.0.{norm,fn.to_qkv,fn.to_out.0}
  vision_encoder.transformer.layers.i.1.{norm,fn.net.0,fn.net.3}
  perceiver.latents, perceiver.layers.i.0.{norm_media,norm_latents,to_q,to_kv,to_out},
  perceiver.layers.i.1.{0,1,3}, perceiver.norm
  fc, figure_token_weight

Inputs are the original's layouts: the ViT takes (N, C, H, W, D), the embedding stand-in
(B, S, C, H, W, D).
"""

from __future__ import annotations

import einops
import torch
from torch import nn


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class ViTAttention(nn.Module):
    """Fused bias-free qkv, softmax(q k^T / sqrt(dh)) with dropout, biased output."""

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.attn_dropout = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x):
        q, k, v = (
            einops.rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in self.to_qkv(x).chunk(3, dim=-1)
        )
        probs = torch.softmax(q @ k.transpose(-1, -2) / self.dim_head**0.5, dim=-1)
        out = self.attn_dropout(probs) @ v
        return self.to_out(einops.rearrange(out, "b h n d -> b n (h d)"))


class ViTFeedForward(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, ViTAttention(dim, heads, dim_head, dropout)),
                    PreNorm(dim, ViTFeedForward(dim, mlp_dim, dropout)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x


class Patchify(nn.Module):
    """(N, C, H, W, D) -> (N, h*w*d, p*p*pf*C), the original's einops pattern."""

    def __init__(self, patch, frame_patch):
        super().__init__()
        self.patch, self.frame_patch = patch, frame_patch

    def forward(self, x):
        return einops.rearrange(
            x,
            "b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)",
            p1=self.patch,
            p2=self.patch,
            pf=self.frame_patch,
        )


class PositionEmbedding3d(nn.Module):
    """Row / column / depth tables; a grid of n of a table of N uses (i+1)*(N//n)-1."""

    def __init__(self, features, rows, cols, deps):
        super().__init__()
        self.row_embed, self.col_embed, self.dep_embed = (
            nn.Embedding(n, features) for n in (rows, cols, deps)
        )
        for table in (self.row_embed, self.col_embed, self.dep_embed):
            nn.init.uniform_(table.weight)

    @staticmethod
    def _strided(table, n):
        return table((torch.arange(n) + 1) * (table.num_embeddings // n) - 1)

    def forward(self, h, w, d):
        rows = self._strided(self.row_embed, h)[:, None, None].expand(h, w, d, -1)
        cols = self._strided(self.col_embed, w)[None, :, None].expand(h, w, d, -1)
        deps = self._strided(self.dep_embed, d)[None, None, :].expand(h, w, d, -1)
        return torch.cat([rows, cols, deps], dim=-1).reshape(h * w * d, -1)


class ViT(nn.Module):
    """(N, C, H, W, D) -> (N, tokens, dim), tokens in (h, w, d) order."""

    def __init__(
        self,
        *,
        image_size,
        frames,
        patch,
        frame_patch,
        dim,
        depth,
        heads,
        dim_head,
        mlp_dim,
        channels=3,
        dropout=0.1,
        emb_dropout=0.1,
    ):
        super().__init__()
        self.patch, self.frame_patch = patch, frame_patch
        patch_dim = channels * patch * patch * frame_patch
        self.to_patch_embedding = nn.Sequential(
            Patchify(patch, frame_patch),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.pos_embedding = PositionEmbedding3d(
            dim // 3, image_size // patch, image_size // patch, frames // frame_patch
        )
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

    def forward(self, x):
        _, _, height, width, depth = x.shape
        tokens = self.to_patch_embedding(x)
        tokens = tokens + self.pos_embedding(
            height // self.patch, width // self.patch, depth // self.frame_patch
        )
        return self.transformer(self.dropout(tokens))


class PerceiverAttention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm_media(x), self.norm_latents(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (
            einops.rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(latents), k, v)
        )
        sim = (q * self.dim_head**-0.5) @ k.transpose(-1, -2)
        out = torch.softmax(sim - sim.amax(dim=-1, keepdim=True), dim=-1) @ v
        return self.to_out(einops.rearrange(out, "b h n d -> b n (h d)"))


class PerceiverResampler(nn.Module):
    """(N, T, dim) -> (N, num_latents, dim)."""

    def __init__(self, dim, depth, num_latents, heads, dim_head, ff_mult=4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, heads, dim_head),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, ff_mult * dim, bias=False),
                        nn.GELU(),
                        nn.Linear(ff_mult * dim, dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        latents = self.latents.expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class VisionEmbedding(nn.Module):
    """The vision part of ``MyEmbedding``: (B, S, C, H, W, D) -> (B, S, num_latents, llm_dim)."""

    def __init__(self, cfg):
        """``cfg``: a ``radjax.papers.radfm.vision.RadFMVisionConfig`` (sizes only)."""
        super().__init__()
        self.vision_encoder = ViT(
            image_size=cfg.image_size,
            frames=cfg.frames,
            patch=cfg.patch_size,
            frame_patch=cfg.frame_patch_size,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            dim_head=cfg.dim_head,
            mlp_dim=cfg.mlp_dim,
            channels=cfg.channels,
            dropout=cfg.dropout,
            emb_dropout=cfg.emb_dropout,
        )
        self.perceiver = PerceiverResampler(
            cfg.dim,
            cfg.perceiver_depth,
            cfg.num_latents,
            cfg.perceiver_heads,
            cfg.perceiver_dim_head,
            cfg.perceiver_ff_mult,
        )
        self.fc = nn.Linear(cfg.dim, cfg.llm_dim)
        self.figure_token_weight = nn.Parameter(torch.randn(2, cfg.llm_dim))

    def forward(self, images):
        b, s = images.shape[:2]
        tokens = self.vision_encoder(images.flatten(0, 1))
        return self.fc(self.perceiver(tokens)).reshape(b, s, -1, self.fc.out_features)


def unused_branches(vis_dim: int) -> dict[str, torch.Tensor]:
    """Representative state-dict entries of ``MyEmbedding``'s branches that RadFM never
    runs (keyword matching with Med-KEBERT, segmentation upscaling), under their names."""
    decoder_layer = nn.ModuleDict(
        {
            "self_attn": nn.MultiheadAttention(vis_dim, 2),
            "linear1": nn.Linear(vis_dim, 8),
            "norm1": nn.LayerNorm(vis_dim),
        }
    )
    parts = {
        "bert_model.embeddings.word_embeddings": nn.Embedding(10, 8),
        "bert_projection_fc": nn.Linear(8, vis_dim),
        "output_upscaling": nn.Sequential(nn.ConvTranspose3d(vis_dim, 4, 2, 2), nn.BatchNorm3d(4)),
        "transformer_decoder.layers.0": decoder_layer,
        "transformer_decoder.norm": nn.LayerNorm(vis_dim),
        "transformer_decoder_mlp": nn.Sequential(nn.Linear(vis_dim, 4)),
        "cls_head": nn.Linear(4, 1),
    }
    return {
        f"{prefix}.{key}": value
        for prefix, module in parts.items()
        for key, value in module.state_dict().items()
    }
