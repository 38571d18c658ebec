"""Interleaving K codebook streams (delay and parallel patterns) and undoing them exactly.

The special token is ``cardinality``: it fills the positions a delayed codebook has not
reached yet (and has already left).
"""

from __future__ import annotations

import torch


def delay_pattern(codes: torch.Tensor, special: int) -> torch.Tensor:
    """``codes: LongTensor[B, K, T] -> LongTensor[B, K, T + K - 1]``: codebook k lags k steps."""
    B, K, T = codes.shape
    out = torch.full((B, K, T + K - 1), special, dtype=codes.dtype, device=codes.device)
    for k in range(K):
        out[:, k, k : k + T] = codes[:, k]
    return out


def undo_delay_pattern(pattern: torch.Tensor) -> torch.Tensor:
    """``pattern: LongTensor[B, K, S] -> LongTensor[B, K, S - K + 1]``, the exact inverse of ``delay_pattern``."""
    B, K, S = pattern.shape
    T = S - K + 1
    return torch.stack([pattern[:, k, k : k + T] for k in range(K)], dim=1)


def parallel_pattern(codes: torch.Tensor, special: int) -> torch.Tensor:
    """``codes: [B, K, T] -> [B, K, T]``: all codebooks at the same step (no delay)."""
    return codes.clone()


def undo_parallel_pattern(pattern: torch.Tensor) -> torch.Tensor:
    """Inverse of ``parallel_pattern``."""
    return pattern.clone()
