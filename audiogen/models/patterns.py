"""The delay pattern: how K codebook streams interleave into one sequence the LM reads, and back.

Codebook ``k`` lags ``k`` steps, so pattern position ``p`` holds codebook ``k``'s token of
frame ``p - k`` (AudioCraft's ``DelayedPatternProvider``, without its pattern hierarchy).
Positions a codebook has not reached yet, or has already left, hold the special token
``cardinality``, which is also the BOS token the LM reads first. Training builds the
pattern from whole segments; decoding writes it one position at a time and reverts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DelayPattern:
    """The delay pattern of ``num_codebooks`` codebooks whose special (and BOS) token is ``special``."""

    num_codebooks: int
    special: int

    def positions(self, frames: int) -> int:
        """Pattern positions that hold ``frames`` frames of every codebook."""
        return frames + self.num_codebooks - 1

    def frames(self, positions: int) -> int:
        """Frames a pattern of ``positions`` positions holds completely (the inverse of :meth:`positions`)."""
        return positions - self.num_codebooks + 1

    def delays(self, device=None) -> torch.Tensor:
        """``LongTensor[K]``: how many positions each codebook lags (codebook ``k``: ``k``)."""
        return torch.arange(self.num_codebooks, device=device)

    def frame_at(self, position, delays: torch.Tensor) -> torch.Tensor:
        """``LongTensor[K]``: the frame each codebook holds at pattern ``position`` (negative: not reached yet).

        ``delays`` is :meth:`delays` made once by the caller (a decode step allocates nothing).
        """
        return position - delays

    def build(self, codes: torch.Tensor, fill=None) -> torch.Tensor:
        """``codes: [B, K, T] -> [B, K, T + K - 1]``, codebook k shifted right by k.

        The positions no frame reaches hold ``fill`` (default: the special token); a padding
        mask passes ``fill=0`` to get the mask of the pattern.
        """
        B, K, T = codes.shape
        fill = self.special if fill is None else fill
        out = torch.full((B, K, self.positions(T)), fill, dtype=codes.dtype, device=codes.device)
        for k in range(K):
            out[:, k, k : k + T] = codes[:, k]
        return out

    def revert(self, pattern: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """``pattern: [B, K, S] -> [B, K, frames]`` (default ``S - K + 1``), the exact inverse of :meth:`build`."""
        T = self.frames(pattern.shape[-1]) if frames is None else frames
        return torch.stack([pattern[:, k, k : k + T] for k in range(self.num_codebooks)], dim=1)

    def inputs(self, pattern: torch.Tensor) -> torch.Tensor:
        """``pattern: [B, K, S] -> [B, K, S]``: what the LM reads at each position, BOS then ``pattern[:-1]``.

        The LM predicts position ``p`` from the positions before it, so its input is the
        pattern shifted right by one with the special token as BOS.
        """
        bos = torch.full_like(pattern[:, :, :1], self.special)
        return torch.cat([bos, pattern[:, :, :-1]], dim=2)
