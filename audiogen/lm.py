"""MusicGen-shaped decoder-only transformer over K codebook streams, with a static KV cache.

Shape follows transformers' MusicgenDecoder so real MusicGen weights map onto it:
K token embeddings (vocab = cardinality + 1; id ``cardinality`` is the special/BOS
token) summed, sinusoidal positions added, pre-norm layers (causal self-attention ->
cross-attention to the condition states -> FFN fc1/GELU/fc2), final LayerNorm, K
bias-free heads. ``cond_proj`` (with bias) maps condition states to ``dim``.

Generation API::

    cache = lm.init_cache(batch, max_len, device, dtype)
    logits = lm(tokens, cond, cond_mask, cache=cache, start=0)   # prefill
    logits = lm(next_tokens, cond, cond_mask, cache=cache, start=S0)  # one step
    logits = lm.decode_step(tok[B, K, 1], pos, cache, lm.cross_masks(cond_mask), ...)  # fixed-shape step

``tokens: LongTensor[B, K, S]``, ``cond: FloatTensor[B, L, D_cond]``,
``cond_mask: BoolTensor[B, L]`` -> ``logits: FloatTensor[B, K, S, cardinality]``.
With a cache, cross-attention K/V are computed on the first call and self-attention
K/V are written at positions ``[start, start + S)``. A row whose ``cond_mask`` is all
False gets exactly zero cross-attention output (unconditional, for CFG).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiogen.errors import AudiogenError, check_fields


@dataclass
class LMConfig:
    num_codebooks: int = 4
    cardinality: int = 64
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 256
    cond_dim: int = 64
    max_positions: int = 4096
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        check_fields(cls, d, "LM settings")
        return cls(**d)


NAMED_CONFIGS = {
    "tiny": dict(dim=64, num_layers=2, num_heads=4, ffn_dim=256),
    "small": dict(dim=1024, num_layers=24, num_heads=16, ffn_dim=4096),
    "medium": dict(dim=1536, num_layers=48, num_heads=24, ffn_dim=6144),
}


def named_config(name: str, **overrides) -> LMConfig:
    if name not in NAMED_CONFIGS:
        raise AudiogenError(f"unknown LM config {name!r}; valid: {', '.join(NAMED_CONFIGS)}")
    return LMConfig(**{**NAMED_CONFIGS[name], **overrides})


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``positions: LongTensor[S] -> FloatTensor[S, dim]``, MusicgenSinusoidalPositionalEmbedding's formula (cos then sin)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device) * -(math.log(10000) / (half - 1)))
    ang = positions.float()[:, None] * freq[None]
    emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, D] -> [B, H, S, D/H]
        B, S, D = x.shape
        return x.view(B, S, self.heads, D // self.heads).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        B, H, S, d = x.shape
        return x.transpose(1, 2).reshape(B, S, H * d)


def _residual_add(x: torch.Tensor, h: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return x + linear(h)


def residual_linear(x: torch.Tensor, h: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``x + linear(h)`` (bias-free) as one ``addmm``: the residual add rides in the matmul.

    For inference only: under autocast ``addmm`` would round the residual stream to the
    autocast dtype, which training must not do.
    """
    return torch.addmm(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1]), linear.weight.t()).view(x.shape)


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(cfg.dim)
        self.self_attn = Attention(cfg.dim, cfg.num_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.dim)
        self.encoder_attn = Attention(cfg.dim, cfg.num_heads)
        self.final_layer_norm = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def self_qkv(self, x: torch.Tensor):
        a = self.self_attn
        h = self.self_attn_layer_norm(x)
        return a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h))

    def cross_kv(self, mem: torch.Tensor):
        c = self.encoder_attn
        return c.split(c.k_proj(mem)), c.split(c.v_proj(mem))

    def cross_and_ffn(self, x, ck, cv, cross_mask, residual=None):
        """Cross-attention to the condition K/V, then the FFN, each added to ``x``.

        ``residual(x, h, linear)`` computes ``x + linear(h)``; decoding passes
        :func:`residual_linear`, one matmul instead of a matmul and an add.
        """
        residual = residual or _residual_add
        c = self.encoder_attn
        q = c.split(c.q_proj(self.encoder_attn_layer_norm(x)))
        o = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cross_mask)
        x = residual(x, c.merge(o), c.out_proj)
        return residual(x, F.gelu(self.fc1(self.final_layer_norm(x))), self.fc2)

    def forward(self, x, mem, cross_mask, layer_cache, start: int):
        """``cross_mask``: ``[B, 1, 1, L]`` from :meth:`LM.cross_masks`."""
        S = x.shape[1]
        a = self.self_attn
        q, k, v = self.self_qkv(x)
        if layer_cache is not None:
            layer_cache["k"][:, :, start : start + S] = k.to(layer_cache["k"].dtype)
            layer_cache["v"][:, :, start : start + S] = v.to(layer_cache["v"].dtype)
            k = layer_cache["k"][:, :, : start + S]
            v = layer_cache["v"][:, :, : start + S]
        if start == 0 and k.shape[2] == S:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif S == 1:  # one decode step: the newest query sees every cached key, no mask needed
            o = F.scaled_dot_product_attention(q, k, v)
        else:  # query i at absolute position start+i sees keys <= start+i
            qpos = torch.arange(start, start + S, device=x.device)[:, None]
            kpos = torch.arange(k.shape[2], device=x.device)[None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=kpos <= qpos)
        x = x + a.out_proj(a.merge(o))
        if layer_cache is not None:
            ck, cv = layer_cache["ck"], layer_cache["cv"]
        else:
            ck, cv = self.cross_kv(mem)
        return self.cross_and_ffn(x, ck, cv, cross_mask)

    def decode_step(self, x, pos: torch.Tensor, layer_cache: dict, cross_mask, self_mask, kv_len: int):
        """One position per row, ``x: [B, 1, D]`` at ``pos: LongTensor[1]``, attending to cached keys ``< kv_len``.

        Eager decoding passes ``kv_len = pos + 1`` and no mask. A fixed-shape step (CUDA
        graph, ``torch.compile``) passes a constant ``kv_len`` at or past ``pos`` and
        ``self_mask: [1, 1, 1, kv_len]`` hiding the keys after ``pos`` (boolean, or additive 0 / -inf).
        """
        a = self.self_attn
        q, k, v = (a.split(t) for t in F.linear(self.self_attn_layer_norm(x), layer_cache["qkv"]).chunk(3, dim=-1))
        ks, vs = layer_cache["k"], layer_cache["v"]
        ks.index_copy_(2, pos, k.to(ks.dtype))
        vs.index_copy_(2, pos, v.to(vs.dtype))
        o = F.scaled_dot_product_attention(q, ks[:, :, :kv_len], vs[:, :, :kv_len], attn_mask=self_mask)
        x = residual_linear(x, a.merge(o), a.out_proj)
        return self.cross_and_ffn(x, layer_cache["ck"], layer_cache["cv"], cross_mask, residual_linear)


class LM(nn.Module):
    """``forward(tokens[B, K, S], cond[B, L, Dc], cond_mask[B, L], cache=None, start=0) -> logits[B, K, S, card]``."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.ModuleList(nn.Embedding(cfg.cardinality + 1, cfg.dim) for _ in range(cfg.num_codebooks))
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.dim, bias=True)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.layer_norm = nn.LayerNorm(cfg.dim)
        self.lm_heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.cardinality, bias=False) for _ in range(cfg.num_codebooks))
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def init_cache(self, batch: int, max_len: int, device, dtype) -> list[dict]:
        """Static self-attention K/V buffers ``[B, H, max_len, D/H]`` per layer; cross K/V filled on first use."""
        H = self.cfg.num_heads
        shape = (batch, H, max_len, self.cfg.dim // H)
        return [{"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype)}
                for _ in self.layers]

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor, cache=None, start: int = 0,
                logits: bool = True):
        """``logits=False`` only fills the cache (a prompt's prefill) and returns None."""
        B, K, S = tokens.shape
        if K != self.cfg.num_codebooks:
            raise ValueError(f"expected {self.cfg.num_codebooks} codebooks, got {K}")
        x = self.embed(tokens, torch.arange(start, start + S, device=tokens.device))
        cond_mask = cond_mask.bool()
        mem = None
        if cache is None:
            mem = self.project_conditions(cond, cond_mask)
        elif "ck" not in cache[0]:
            self.fill_cross_cache(cond, cond_mask, cache)
        cross_mask = self.cross_masks(cond_mask)
        for i, layer in enumerate(self.layers):
            x = layer(x, mem, cross_mask, None if cache is None else cache[i], start)
        return self.heads(self.layer_norm(x)) if logits else None

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``tokens: LongTensor[B, K, S]`` at ``positions: LongTensor[S]`` -> ``[B, S, D]``: the sum of
        the K codebooks' embeddings plus the sinusoidal positions."""
        x = sum(self.embed_tokens[k](tokens[:, k]) for k in range(self.cfg.num_codebooks))
        return x + sinusoidal_positions(positions, self.cfg.dim).to(x.dtype)[None]

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, D] -> [B, K, S, card]`` (or ``[B, D] -> [B, K, card]``)."""
        return torch.stack([head(x) for head in self.lm_heads], dim=1)

    def project_conditions(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        return self.cond_proj(cond) * cond_mask.bool()[..., None].to(cond.dtype)

    def fill_cross_cache(self, cond: torch.Tensor, cond_mask: torch.Tensor, cache: list[dict]) -> None:
        """Compute every layer's cross-attention K/V of the conditions once, into ``cache``.

        Also stores each layer's fused ``[3D, D]`` self-attention Q/K/V weight and the K
        output heads as one ``[K * card, D]`` weight, so a decode step runs one matrix
        product for each instead of three or K (copies per cache: they cannot go stale).
        """
        mem = self.project_conditions(cond, cond_mask)
        for layer, layer_cache in zip(self.layers, cache):
            layer_cache["ck"], layer_cache["cv"] = layer.cross_kv(mem)
        self.fuse_decode_weights(cache)

    def fuse_decode_weights(self, cache: list[dict]) -> None:
        """Store in ``cache`` what :meth:`decode_step` reads: each layer's fused ``[3D, D]`` Q/K/V
        weight and the K heads as one ``[K * card, D]`` weight (one matmul each)."""
        for layer, layer_cache in zip(self.layers, cache):
            a = layer.self_attn
            layer_cache["qkv"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        cache[0]["heads"] = torch.cat([head.weight for head in self.lm_heads])

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: list[dict], cross_mask, kv_len: int,
                    self_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One decode position: ``tokens: LongTensor[B, K, 1]`` at ``pos: LongTensor[1]`` -> ``logits[B, K, card]``.

        Needs a cache prepared by :meth:`fill_cross_cache`. ``kv_len = pos + 1`` for eager
        decoding; a constant ``kv_len`` plus ``self_mask`` for a fixed-shape step (see
        :meth:`Layer.decode_step`).
        """
        K = self.cfg.num_codebooks
        x = self.embed(tokens, pos)
        for layer, layer_cache in zip(self.layers, cache):
            x = layer.decode_step(x, pos, layer_cache, cross_mask, self_mask, kv_len)
        return F.linear(self.layer_norm(x)[:, 0], cache[0]["heads"]).view(x.shape[0], K, -1)

    @staticmethod
    def cross_masks(cond_mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Cross-attention mask ``[B, 1, 1, L]``, computed once per forward (or once per generation).

        Boolean, or with ``dtype`` additive (0 / -inf), which attention need not convert
        at every layer. A row with an all-False ``cond_mask`` would softmax over nothing
        (NaN), so it attends everywhere instead: its condition states are zeroed by
        :meth:`project_conditions` and the K/V projections have no bias, so every value it
        attends to is 0 and its cross-attention output is exactly 0.
        """
        cond_mask = cond_mask.bool()
        safe = cond_mask | ~cond_mask.any(dim=1, keepdim=True)
        safe = safe[:, None, None, :]
        if dtype is None:
            return safe
        return torch.zeros(safe.shape, dtype=dtype, device=safe.device).masked_fill_(~safe, float("-inf"))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
