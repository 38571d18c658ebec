"""The codec trainer's objectives (EnCodec, Défossez et al., 2022): the multi-scale log-mel loss,
the discriminator's hinge and feature-matching losses, and the loss balancer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiScaleMelLoss(nn.Module):
    """Sum over window sizes 2**i of L1 + L2 between log-mel spectrograms (EnCodec's L_f).

    ``x, y: FloatTensor[B, C, N]`` -> scalar.
    """

    def __init__(self, sample_rate: int, min_log2: int = 6, max_log2: int = 11, n_mels: int = 64):
        super().__init__()
        import warnings

        import torchaudio

        self.mels = nn.ModuleList()
        for i in range(min_log2, max_log2 + 1):
            n_fft = 2**i
            with warnings.catch_warnings():
                # small windows leave the lowest mel bands empty; they add a constant 0 to the loss
                warnings.filterwarnings("ignore", message="At least one mel filterbank")
                mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=n_fft // 4,
                # small windows have fewer FFT bins than mel bands; keep every band non-empty
                n_mels=min(n_mels, n_fft // 4), power=1.0, normalized=False, center=False,
                window_fn=torch.hann_window,
                )
            self.mels.append(mel)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for mel in self.mels:
            mx = torch.log(mel(x).clamp(min=1e-5))
            my = torch.log(mel(y).clamp(min=1e-5))
            total = total + F.l1_loss(mx, my) + F.mse_loss(mx, my)
        return total / len(self.mels)


def disc_hinge_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator hinge loss, averaged over sub-discriminators."""
    losses = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(losses).mean()


def gen_hinge_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Generator adversarial loss as in EnCodec: mean of max(0, 1 - D(x̂))."""
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def feature_matching_loss(real_fmaps: list[list[torch.Tensor]], fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Relative L1 between discriminator feature maps of real and reconstructed audio."""
    losses = []
    for real, fake in zip(real_fmaps, fake_fmaps):
        for r, f in zip(real, fake):
            r = r.detach()
            losses.append(F.l1_loss(f, r) / (r.abs().mean() + 1e-8))
    return torch.stack(losses).mean()


class Balancer:
    """EnCodec's loss balancer.

    Each loss ``l_i`` gives a gradient ``g_i = dl_i/dy`` w.r.t. the decoder output ``y``;
    the gradient sent back through ``y`` is ``total_norm * sum_i w_i/sum(w) * g_i / ema(|g_i|)``,
    with ``|g_i|`` the per-item L2 norm averaged over the batch and an EMA with bias
    correction. So ``w_i`` is the share of the gradient that loss gets, whatever its scale.
    """

    def __init__(self, weights: dict[str, float], ema_decay: float = 0.999, total_norm: float = 1.0,
                 eps: float = 1e-12):
        self.weights = dict(weights)
        self.ema_decay = ema_decay
        self.total_norm = total_norm
        self.eps = eps
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def _ema(self, name: str, value: float) -> float:
        self.sums[name] = self.sums.get(name, 0.0) * self.ema_decay + value
        self.counts[name] = self.counts.get(name, 0.0) * self.ema_decay + 1.0
        return self.sums[name] / self.counts[name]

    def gradient(self, losses: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``y: FloatTensor[B, ...]`` -> the balanced gradient for ``y`` (same shape) and the gradient norms."""
        total_w = sum(self.weights[k] for k in losses)
        out = torch.zeros_like(y)
        norms = {}
        for name, loss in losses.items():
            (g,) = torch.autograd.grad(loss, [y], retain_graph=True)
            norm = g.flatten(1).norm(dim=1).mean()
            norms[name] = float(norm)
            avg = self._ema(name, float(norm))
            out = out + g * (self.total_norm * self.weights[name] / total_w / (avg + self.eps))
        return out, norms

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = dict(state["sums"])
        self.counts = dict(state["counts"])
