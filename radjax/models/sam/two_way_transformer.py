"""SAM's two-way transformer (segment_anything/modeling/transformer.py), for any spatial rank.

Sparse tokens (B, N, dim) and the image embedding (B, *grid, dim) (channels-last; grid (h, w)
in 2D, three axes in 3D) attend to each other. The grid is flattened row-major, the order
of the original's ``flatten(2)`` on its (B, dim, *grid) tensors, so the same code serves 2D
SAM / MedSAM and 3D SegVol (whose copy differs only in unpacking five axes).

Each ``TwoWayAttentionBlock`` runs, post-norm:

1. token self-attention, ``q = k = tokens + token_pe``, ``v = tokens``; the first block
   (``skip_first_layer_pe``) attends without the PE and *replaces* the tokens by the
   attention output (no residual), as the original does;
2. tokens -> image cross-attention (``q = tokens + token_pe``, ``k = image + image_pe``,
   ``v = image``), then the MLP (ReLU by default, SAM's ``TwoWayTransformer`` default);
3. image -> tokens cross-attention, updating the image embedding.

After the blocks one more tokens -> image attention and ``norm_final_attn``. The token PE
is the initial tokens themselves (``point_embedding`` is passed as ``query_pe`` to every
block). The cross-attentions project to ``dim // attention_downsample_rate`` channels; the
self-attention keeps ``dim``. Norms are ``nn.LayerNorm`` (eps 1e-5; transformers'
``SamTwoWayAttentionBlock`` uses its config's 1e-6 for norm1-4).

Parameters: ``layers/<i>/{self_attn,cross_attn_token_to_image,cross_attn_image_to_token}/
{query,key,value,out}``, ``layers/<i>/norm{1,2,3,4}``, ``layers/<i>/mlp/{fc1,fc2}``,
``final_attn_token_to_image/...``, ``norm_final_attn``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.attention import dot_product_attention
from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.transformer import Mlp, gelu_exact
from radjax.sharding import shard_act

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": gelu_exact}


@dataclasses.dataclass(frozen=True)
class TwoWayTransformerConfig:
    """``TwoWayTransformer(depth, embedding_dim, num_heads, mlp_dim, activation,
    attention_downsample_rate)``; SAM and SegVol build depth 2, 8 heads, mlp 2048."""

    dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    activation: str = "relu"  # the MLPBlock's
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype; parameters are f32

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TwoWayTransformerConfig: activation {self.activation!r} unknown")
        inner = self.dim // self.attention_downsample_rate
        if self.dim % self.num_heads or inner % self.num_heads:
            raise ValueError(
                f"TwoWayTransformerConfig: num_heads {self.num_heads} must divide dim "
                f"{self.dim} and dim // attention_downsample_rate = {inner}"
            )


class Attention(nnx.Module):
    """SAM's ``Attention``: q, k, v projected to ``dim // downsample_rate`` channels split
    over ``heads``, softmax(q k^T / sqrt(head_dim)) v, projected back to ``dim``.

    q (B, Lq, dim), k and v (B, Lk, dim) -> (B, Lq, dim).
    """

    def __init__(self, dim: int, heads: int, *, downsample_rate: int = 1, dtype, rngs: nnx.Rngs):
        inner = dim // downsample_rate
        self.heads = heads

        def proj(d_in, d_out, axes):
            return linear(d_in, d_out, axes, init=torch_linear_init, dtype=dtype, rngs=rngs)

        self.query = proj(dim, inner, ("embed", "heads"))
        self.key = proj(dim, inner, ("embed", "heads"))
        self.value = proj(dim, inner, ("embed", "heads"))
        self.out = proj(inner, dim, ("heads", "embed"))

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        def heads(x):
            return x.reshape(*x.shape[:-1], self.heads, -1)

        out, _, _ = dot_product_attention(
            heads(self.query(q)), heads(self.key(k)), heads(self.value(v))
        )
        return self.out(out.reshape(*out.shape[:-2], -1))


class TwoWayAttentionBlock(nnx.Module):
    """One block (see the module docstring): (tokens (B, N, dim), image (B, L, dim),
    token_pe (B, N, dim), image_pe (B or 1, L, dim)) -> (tokens, image)."""

    def __init__(self, cfg: TwoWayTransformerConfig, *, skip_first_layer_pe: bool, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        attention = functools.partial(Attention, cfg.dim, cfg.num_heads, dtype=dtype, rngs=rngs)
        norm = functools.partial(
            layer_norm, cfg.dim, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs
        )
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = attention()
        self.norm1 = norm()
        self.cross_attn_token_to_image = attention(downsample_rate=cfg.attention_downsample_rate)
        self.norm2 = norm()
        self.mlp = Mlp(
            cfg.dim,
            cfg.mlp_dim,
            activation=ACTIVATIONS[cfg.activation],
            kernel_init=torch_linear_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm3 = norm()
        self.norm4 = norm()
        self.cross_attn_image_to_token = attention(downsample_rate=cfg.attention_downsample_rate)

    def __call__(
        self, queries: jax.Array, keys: jax.Array, query_pe: jax.Array, key_pe: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    """image_embedding (B, *grid, dim), image_pe (B or 1, *grid, dim), point_embedding
    (B, N, dim) -> (tokens (B, N, dim), image tokens (B, prod(grid), dim), row-major)."""

    def __init__(self, cfg: TwoWayTransformerConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.layers = nnx.List(
            [
                TwoWayAttentionBlock(cfg, skip_first_layer_pe=i == 0, rngs=rngs)
                for i in range(cfg.depth)
            ]
        )
        self.final_attn_token_to_image = Attention(
            cfg.dim,
            cfg.num_heads,
            downsample_rate=cfg.attention_downsample_rate,
            dtype=dtype,
            rngs=rngs,
        )
        # nn.LayerNorm(embedding_dim): torch's default eps, whatever the blocks use
        self.norm_final_attn = layer_norm(cfg.dim, eps=1e-5, dtype=dtype, rngs=rngs)

    def __call__(
        self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        dim = image_embedding.shape[-1]
        keys = image_embedding.reshape(image_embedding.shape[0], -1, dim)
        key_pe = image_pe.reshape(image_pe.shape[0], -1, dim)
        keys = shard_act(keys, ("act_batch", "act_length", "act_embed"))
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
