"""MusicGen-shaped decoder-only transformer over K codebook streams, with a static KV cache.

Shape follows transformers' MusicgenDecoder so real MusicGen weights map onto it:
K token embeddings (vocab = cardinality + 1; id ``cardinality`` is the special/BOS
token) summed, sinusoidal positions added, pre-norm layers (causal self-attention ->
cross-attention to the condition states -> FFN fc1/GELU/fc2), final LayerNorm, K
bias-free heads. ``cond_proj`` (with bias) maps condition states to ``dim``.

Decoding API (as gpt-fast's ``prefill`` / ``decode_one_token``)::

    cache = lm.init_cache(batch, max_len, device, dtype)           # KVCache: static K/V per layer
    lm.fill_cross_cache(cond, cond_mask, cache)                      # conditions' cross K/V, fused weights
    cross_mask = lm.cross_masks(cond_mask)
    lm.prefill(tokens[B, K, S0], cache, cross_mask, start=0)         # a prompt's positions, no logits
    logits = lm.decode_step(tok[B, K, 1], pos, cache, cross_mask, kv_len)   # -> [B, K, card]

Training and scoring call ``lm(tokens[B, K, S], cond[B, L, D_cond], cond_mask[B, L])`` ->
``logits: FloatTensor[B, K, S, cardinality]`` without a cache. A row whose ``cond_mask``
is all False gets exactly zero cross-attention output (unconditional, for CFG).
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
    #: residual dropout in training (after self-attention, cross-attention and the FFN, before each
    #: add; as AudioCraft's transformer layers): a regulariser that may change when fine-tuning
    dropout: float = 0.0
    #: the beat grid (0 = none): each position also reads where its frame falls in the beat, as
    #: cos/sin of the phase at this many harmonics (1, 2, 4, ...: beat, half beat, quarter beat),
    #: through ``beat_proj``. Training takes the phase from the tracked beats of the data
    #: (prep's ``beats`` column), generation from the requested tempo (:func:`beat_features`)
    beat_harmonics: int = 0

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


def beat_features(phase: torch.Tensor, harmonics: int) -> torch.Tensor:
    """``phase: FloatTensor[..., S]`` in [0, 1) (NaN: no beat grid there) -> ``[..., S, 2 * harmonics]``,
    cos and sin of ``2 pi 2^h phase`` for h < harmonics; zeros where the phase is NaN (an
    unconditioned position reads exactly what a model without a grid would)."""
    known = torch.isfinite(phase)
    ang = 2 * math.pi * torch.where(known, phase, 0.0).float()[..., None] * (
        2.0 ** torch.arange(harmonics, device=phase.device, dtype=torch.float32))
    return torch.cat([ang.cos(), ang.sin()], dim=-1) * known[..., None]


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


@dataclass
class LayerCache:
    """One layer's decoding state: self-attention K/V by position, the conditions' cross-attention K/V,
    and the fused Q/K/V weight :meth:`Layer.decode_step` reads."""

    k: torch.Tensor  # [B, H, max_len, D/H], written at each prefilled or decoded position
    v: torch.Tensor
    cross_k: torch.Tensor | None = None  # [B, H, L, D/H], from LM.fill_cross_cache (or set by the caller)
    cross_v: torch.Tensor | None = None
    qkv_weight: torch.Tensor | None = None  # [3D, D], from LM.fuse_decode_weights


@dataclass
class KVCache:
    """A static KV cache for ``max_len`` positions: one :class:`LayerCache` per layer, plus the K output
    heads fused into one ``[K * card, D]`` weight for :meth:`LM.decode_step`."""

    layers: list[LayerCache]
    heads_weight: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.layers[0].k.shape[2]


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg  # shared with the LM: a fine-tuning run may change ``dropout``
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

    def _dropped_residual(self, x: torch.Tensor, h: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        """``x + dropout(linear(h))``: the training path's residual add."""
        return x + F.dropout(linear(h), self.cfg.dropout, self.training)

    def _self_attention(self, x, q, k, v, start: int, residual=None) -> torch.Tensor:
        """Causal self-attention of the queries at positions ``[start, start + S)`` over keys from 0, added to ``x``."""
        S = q.shape[2]
        if start == 0 and k.shape[2] == S:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif S == 1:  # one position: the newest query sees every key, no mask needed
            o = F.scaled_dot_product_attention(q, k, v)
        else:  # query i at absolute position start+i sees keys <= start+i
            qpos = torch.arange(start, start + S, device=x.device)[:, None]
            kpos = torch.arange(k.shape[2], device=x.device)[None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=kpos <= qpos)
        a = self.self_attn
        return (residual or _residual_add)(x, a.merge(o), a.out_proj)

    def forward(self, x, mem, cross_mask):
        """Training and scoring, no cache: ``x: [B, S, D]`` at positions from 0, ``mem: [B, L, D]``
        the projected conditions, ``cross_mask: [B, 1, 1, L]`` from :meth:`LM.cross_masks`."""
        residual = self._dropped_residual if self.training and self.cfg.dropout > 0 else None
        q, k, v = self.self_qkv(x)
        x = self._self_attention(x, q, k, v, 0, residual)
        return self.cross_and_ffn(x, *self.cross_kv(mem), cross_mask, residual)

    def prefill(self, x, layer_cache: LayerCache, cross_mask, start: int):
        """``x: [B, S, D]`` at positions ``[start, start + S)``: writes their self-attention K/V into
        ``layer_cache`` and attends to every cached key up to them and to the cached cross K/V."""
        S = x.shape[1]
        q, k, v = self.self_qkv(x)
        layer_cache.k[:, :, start : start + S] = k.to(layer_cache.k.dtype)
        layer_cache.v[:, :, start : start + S] = v.to(layer_cache.v.dtype)
        x = self._self_attention(x, q, layer_cache.k[:, :, : start + S], layer_cache.v[:, :, : start + S], start)
        return self.cross_and_ffn(x, layer_cache.cross_k, layer_cache.cross_v, cross_mask)

    def decode_step(self, x, pos: torch.Tensor, layer_cache: LayerCache, cross_mask, self_mask, kv_len: int):
        """One position per row, ``x: [B, 1, D]`` at ``pos: LongTensor[1]``, attending to cached keys ``< kv_len``.

        Eager decoding passes ``kv_len = pos + 1`` and no mask. A fixed-shape step (CUDA
        graph, ``torch.compile``) passes a constant ``kv_len`` at or past ``pos`` and
        ``self_mask: [1, 1, 1, kv_len]`` hiding the keys after ``pos`` (boolean, or additive 0 / -inf).
        """
        a = self.self_attn
        qkv = F.linear(self.self_attn_layer_norm(x), layer_cache.qkv_weight)
        q, k, v = (a.split(t) for t in qkv.chunk(3, dim=-1))
        ks, vs = layer_cache.k, layer_cache.v
        ks.index_copy_(2, pos, k.to(ks.dtype))
        vs.index_copy_(2, pos, v.to(vs.dtype))
        o = F.scaled_dot_product_attention(q, ks[:, :, :kv_len], vs[:, :, :kv_len], attn_mask=self_mask)
        x = residual_linear(x, a.merge(o), a.out_proj)
        return self.cross_and_ffn(x, layer_cache.cross_k, layer_cache.cross_v, cross_mask, residual_linear)


class LM(nn.Module):
    """``forward(tokens[B, K, S], cond[B, L, Dc], cond_mask[B, L]) -> logits[B, K, S, card]``; decoding
    through :meth:`prefill` and :meth:`decode_step` on a :class:`KVCache`."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.ModuleList(nn.Embedding(cfg.cardinality + 1, cfg.dim) for _ in range(cfg.num_codebooks))
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.dim, bias=True)
        if cfg.beat_harmonics:
            self.beat_proj = nn.Linear(2 * cfg.beat_harmonics, cfg.dim, bias=False)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.layer_norm = nn.LayerNorm(cfg.dim)
        self.lm_heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.cardinality, bias=False) for _ in range(cfg.num_codebooks))
        self.apply(self._init)
        if cfg.beat_harmonics:  # the grid starts at the scale of the positions it is added to
            nn.init.normal_(self.beat_proj.weight, std=1.0 / math.sqrt(cfg.beat_harmonics))
        # Each head starts as its codebook's embeddings / sqrt(dim): a fresh LM favours the code it
        # just read for that codebook (the delay pattern puts the codebook's previous frame in the
        # input), the most common event in music tokens, and learns the departures. Without this
        # prior a 256 x 6 LM sat on a plateau near the uniform loss for hundreds of steps on melvq
        # tokens; with it, the first codebook's held-out loss was 5.0 after 100 steps
        # (docs/codec_training.md, "An LM on these tokens").
        with torch.no_grad():
            for emb, head in zip(self.embed_tokens, self.lm_heads):
                head.weight.copy_(emb.weight[: cfg.cardinality] / math.sqrt(cfg.dim))

    @staticmethod
    def _init(m):
        # Token embeddings start at unit scale, like the sinusoidal positions they are added to
        # (at std 0.02 the positions drowned them; docs/codec_training.md, "An LM on these tokens").
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1.0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def init_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        """Zeroed self-attention K/V buffers ``[B, H, max_len, D/H]`` per layer; no cross K/V yet."""
        H = self.cfg.num_heads
        shape = (batch, H, max_len, self.cfg.dim // H)
        return KVCache([LayerCache(torch.zeros(shape, device=device, dtype=dtype),
                                   torch.zeros(shape, device=device, dtype=dtype)) for _ in self.layers])

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor,
                beat: torch.Tensor | None = None) -> torch.Tensor:
        """Training and scoring: every position of ``tokens: LongTensor[B, K, S]`` at positions from 0, no cache.
        ``beat: FloatTensor[B, S]``: the beat phase of each position's frame (NaN or None: no grid)."""
        B, K, S = tokens.shape
        if K != self.cfg.num_codebooks:
            raise ValueError(f"expected {self.cfg.num_codebooks} codebooks, got {K}")
        x = self.embed(tokens, torch.arange(S, device=tokens.device), beat)
        cond_mask = cond_mask.bool()
        mem = self.project_conditions(cond, cond_mask)
        cross_mask = self.cross_masks(cond_mask)
        for layer in self.layers:
            x = layer(x, mem, cross_mask)
        return self.heads(self.layer_norm(x))

    def prefill(self, tokens: torch.Tensor, cache: KVCache, cross_mask: torch.Tensor, start: int = 0,
                beat: torch.Tensor | None = None) -> None:
        """Run ``tokens: LongTensor[B, K, S]`` at positions ``[start, start + S)`` through the layers, writing
        their self-attention K/V into ``cache``; no logits (the next :meth:`decode_step` samples).

        ``cache`` must hold the cross K/V (:meth:`fill_cross_cache`); ``cross_mask`` is
        :meth:`cross_masks` of the condition mask they were computed from. ``beat: FloatTensor[B, S]``
        as in :meth:`forward`.
        """
        x = self.embed(tokens, torch.arange(start, start + tokens.shape[2], device=tokens.device), beat)
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.prefill(x, layer_cache, cross_mask, start)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor, beat: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens: LongTensor[B, K, S]`` at ``positions: LongTensor[S]`` -> ``[B, S, D]``: the sum of
        the K codebooks' embeddings plus the sinusoidal positions, plus the beat grid of ``beat:
        FloatTensor[B, S]`` (phases, see :func:`beat_features`) on a model that has one."""
        x = sum(self.embed_tokens[k](tokens[:, k]) for k in range(self.cfg.num_codebooks))
        x = x + sinusoidal_positions(positions, self.cfg.dim).to(x.dtype)[None]
        if beat is not None and self.cfg.beat_harmonics:
            x = x + self.beat_proj(beat_features(beat, self.cfg.beat_harmonics).to(x.dtype))
        return x

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, D] -> [B, K, S, card]`` (or ``[B, D] -> [B, K, card]``)."""
        return torch.stack([head(x) for head in self.lm_heads], dim=1)

    def project_conditions(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        return self.cond_proj(cond) * cond_mask.bool()[..., None].to(cond.dtype)

    def fill_cross_cache(self, cond: torch.Tensor, cond_mask: torch.Tensor, cache: KVCache) -> None:
        """Compute every layer's cross-attention K/V of ``cond: [B, L, Dc]`` once, into ``cache``,
        and the fused weights :meth:`decode_step` reads (:meth:`fuse_decode_weights`)."""
        mem = self.project_conditions(cond, cond_mask)
        for layer, layer_cache in zip(self.layers, cache.layers):
            layer_cache.cross_k, layer_cache.cross_v = layer.cross_kv(mem)
        self.fuse_decode_weights(cache)

    def fuse_decode_weights(self, cache: KVCache) -> None:
        """Store in ``cache`` what :meth:`decode_step` reads: each layer's fused ``[3D, D]`` Q/K/V
        weight and the K heads as one ``[K * card, D]`` weight, so a step runs one matrix product
        for each instead of three or K (copies per cache: they cannot go stale)."""
        for layer, layer_cache in zip(self.layers, cache.layers):
            a = layer.self_attn
            layer_cache.qkv_weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        cache.heads_weight = torch.cat([head.weight for head in self.lm_heads])

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache, cross_mask, kv_len: int,
                    self_mask: torch.Tensor | None = None, beat: torch.Tensor | None = None) -> torch.Tensor:
        """One decode position: ``tokens: LongTensor[B, K, 1]`` at ``pos: LongTensor[1]`` -> ``logits[B, K, card]``.

        Needs a cache prepared by :meth:`fill_cross_cache` (or cross K/V set by the caller and
        :meth:`fuse_decode_weights`). ``kv_len = pos + 1`` for eager decoding; a constant
        ``kv_len`` plus ``self_mask`` for a fixed-shape step (see :meth:`Layer.decode_step`). ``beat:
        FloatTensor[B, 1]``: the beat phase of this position's frame, as in :meth:`forward`.
        """
        K = self.cfg.num_codebooks
        x = self.embed(tokens, pos, beat)
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.decode_step(x, pos, layer_cache, cross_mask, self_mask, kv_len)
        return F.linear(self.layer_norm(x)[:, 0], cache.heads_weight).view(x.shape[0], K, -1)

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
