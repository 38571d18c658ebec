"""Sampling from the LM: KV-cached decoding, classifier-free guidance, long-form continuation.

Tokens are generated in the delay-pattern domain (codebook k lags k steps), one
pattern position per forward pass after a single prefill:

- the conditional and unconditional rows for classifier-free guidance run in one
  batch of 2B: ``logits = uncond + cfg * (cond - uncond)``;
- temperature, top-k and top-p filter the guided distribution; a ``torch.Generator``
  seeded by the caller makes a run reproducible;
- an audio prompt (``prompt: LongTensor[B, K, T0]``) is teacher-forced: its pattern
  positions are prefilled in one pass, and the delayed codebooks keep their known
  tokens until the pattern leaves the prompt;
- tracks longer than the model's window are produced by windowed continuation: each
  new window is prompted with the last ``context_s`` seconds of tokens and a fresh
  cache, so memory is bounded by the window, not the track length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audiogen.errors import AudiogenError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_scale: float = 3.0

    def validate(self, cardinality: int) -> None:
        if not self.temperature >= 0:
            raise AudiogenError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise AudiogenError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise AudiogenError(f"top-p must be in [0, 1] (0 = off), got {self.top_p}")
        if self.cfg_scale < 0:
            raise AudiogenError(f"guidance scale must be >= 0, got {self.cfg_scale}")


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """``logits: FloatTensor[B, K, V] -> LongTensor[B, K]``: greedy at temperature 0, else filtered sampling."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > params.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


@torch.inference_mode()
def generate_window(lm, cond: torch.Tensor, cond_mask: torch.Tensor, num_frames: int, params: SamplingParams,
                    generator: torch.Generator | None, prompt: torch.Tensor | None = None, on_frame=None) -> torch.Tensor:
    """Generate one window of codes with a fresh KV cache.

    ``cond: [B2, L, D]``, ``cond_mask: [B2, L]`` where ``B2 = 2B`` (conditional rows then
    unconditional rows) when ``params.cfg_scale != 1``, else ``B``. ``prompt:
    LongTensor[B, K, T0]`` (T0 < num_frames) is kept as the first T0 frames.
    Returns ``LongTensor[B, K, num_frames]``.
    """
    K, special = lm.cfg.num_codebooks, lm.cfg.cardinality
    guided = params.cfg_scale != 1.0
    B = cond.shape[0] // 2 if guided else cond.shape[0]
    device = cond.device
    t0 = 0 if prompt is None else prompt.shape[-1]
    if t0 >= num_frames:
        raise AudiogenError(f"the prompt ({t0} frames) must be shorter than the window ({num_frames} frames)")
    S = num_frames + K - 1  # pattern positions
    # inputs[:, :, j] is the token fed at position j: BOS at 0, then pattern[j - 1]
    inputs = torch.full((B, K, S + 1), special, dtype=torch.long, device=device)
    known = torch.full((B, K, S), -1, dtype=torch.long, device=device)
    for k in range(K):
        if t0:
            known[:, k, k : k + t0] = prompt[:, k].to(device)
    inputs[:, :, 1 : t0 + 1] = torch.where(known[:, :, :t0] >= 0, known[:, :, :t0], special)
    cache = lm.init_cache(cond.shape[0], S + 1, device, next(lm.parameters()).dtype)

    def step(tokens: torch.Tensor, start: int) -> torch.Tensor:
        x = torch.cat([tokens, tokens]) if guided else tokens
        logits = lm(x, cond, cond_mask, cache=cache, start=start)[:, :, -1]
        if guided:
            c, u = logits[:B], logits[B:]
            logits = u + params.cfg_scale * (c - u)
        return logits

    logits = step(inputs[:, :, : t0 + 1], 0)  # prefill: BOS + the fully known prompt positions
    k_idx = torch.arange(K, device=device)
    for s in range(t0, S):
        tokens = sample_tokens(logits, params, generator)
        frame = s - k_idx  # the frame each codebook is at in pattern position s
        outside = (frame < 0) | (frame >= num_frames)
        tokens = torch.where(outside[None], special, tokens)
        tokens = torch.where(known[:, :, s] >= 0, known[:, :, s], tokens)
        inputs[:, :, s + 1] = tokens
        if on_frame is not None and s < num_frames:  # codebook 0 just produced a new frame
            on_frame()
        if s + 1 < S:
            logits = step(tokens[:, :, None], s + 1)
    pattern = inputs[:, :, 1:]
    codes = torch.stack([pattern[:, k, k : k + num_frames] for k in range(K)], dim=1)
    return codes


def generate_codes(lm, cond: torch.Tensor, cond_mask: torch.Tensor, num_frames: int, params: SamplingParams,
                   generator: torch.Generator | None, window_frames: int, context_frames: int,
                   prompt: torch.Tensor | None = None, on_frame=None) -> torch.Tensor:
    """Any number of frames by windowed continuation. Returns ``LongTensor[B, K, num_frames]``.

    The first window may carry a user ``prompt``; every later window is prompted with the
    last ``context_frames`` frames generated so far. Only one window's KV cache exists at
    a time.
    """
    if not 0 < context_frames < window_frames:
        raise AudiogenError(f"context ({context_frames}) must be between 0 and the window ({window_frames}) frames")
    if prompt is not None and prompt.shape[-1] > context_frames:
        prompt = prompt[..., -context_frames:]  # the model only ever sees one window
    first = min(window_frames, num_frames + (0 if prompt is None else prompt.shape[-1]))
    codes = generate_window(lm, cond, cond_mask, first, params, generator, prompt, on_frame)
    if prompt is not None:
        codes = codes[..., prompt.shape[-1] :]
    pieces = [codes]
    have = codes.shape[-1]
    tail = codes[..., -context_frames:]
    while have < num_frames:
        ctx = tail
        new = min(window_frames - ctx.shape[-1], num_frames - have)
        out = generate_window(lm, cond, cond_mask, ctx.shape[-1] + new, params, generator, ctx, on_frame)
        pieces.append(out[..., ctx.shape[-1] :])
        have += new
        tail = torch.cat([tail, out[..., ctx.shape[-1] :]], dim=-1)[..., -context_frames:]
    return torch.cat(pieces, dim=-1)[..., :num_frames]


def frames_for(seconds: float, frame_rate: float) -> int:
    return max(1, math.ceil(seconds * frame_rate))
