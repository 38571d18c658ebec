"""A codec that trains on a CPU: log-mel encoder, factorized residual VQ, Vocos-style iSTFT decoder.

Why this design (measured in issue 16's rebuild; see docs/codec_training.md): the SEANet codec
works on samples, so most of its compute goes into upsampling convolutions that must first learn
to make a waveform at all; on 2 CPU cores for ~1 hour it never got past the average spectrum.
Here every layer runs at the frame rate (50 Hz), the encoder reads a log-mel spectrogram, and the
decoder predicts an STFT (log-magnitude and phase) that one inverse FFT turns into audio, as
Vocos (Siuzdenko et al., 2023) does. The quantizer is DAC's (Kumar et al., 2023): each codebook
looks up codes by cosine similarity in a low-dimensional projection, which keeps codebooks in
use; k-means initialises them on the first batch and codes left unused are restarted from the
current batch.

Shapes: ``encode(wav: FloatTensor[B, 1, N]) -> codes: LongTensor[B, K, N // hop]`` (N a multiple of
hop; :class:`audiogen.codec.base.Codec` pads and windows) and ``decode(codes) -> FloatTensor[B, 1, T * hop]``.
Frame ``t`` is centred on sample ``t * hop`` on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audiogen.errors import AudiogenError, dataclass_from_dict


@dataclass(frozen=True)
class STFTCodecConfig:
    """Architecture of an :class:`STFTCodecModel`."""

    sample_rate: int = 24_000
    channels: int = 1
    hop: int = 480  #: 50 Hz frames at 24 kHz
    n_fft: int = 1920  #: 4 x hop: the decoder's STFT window (80 ms)
    n_mels: int = 128  #: the encoder's input bands
    dim: int = 256  #: width of both ConvNeXt stacks
    ffn_mult: int = 3
    kernel: int = 7
    encoder_layers: int = 4
    decoder_layers: int = 8
    latent_dim: int = 128
    code_dim: int = 8  #: each codebook's lookup space (factorized codes)
    n_q: int = 8
    bins: int = 1024
    target_bandwidths: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)  #: 2, 4, 6, 8 codebooks at 50 Hz
    kmeans_init: bool = True
    #: phase used when decoding codes: ``predicted`` (the decoder's) or ``codes`` (pseudo-random,
    #: drawn from each frame's codes). A time-invariant network predicts the same phase for a steady
    #: input in every frame, which makes the output periodic at the frame rate (a comb at multiples
    #: of 50 Hz: 92 % of the shipped codec's 20 Hz-4 kHz energy); phases drawn from the codes keep the
    #: magnitudes and lose the comb (see docs/codec_training.md).
    decode_phase: str = "predicted"

    @property
    def hop_length(self) -> int:
        return self.hop

    @classmethod
    def from_dict(cls, d: dict) -> "STFTCodecConfig":
        cfg = dataclass_from_dict(cls, d, "stft codec config keys", ("target_bandwidths",))
        if cfg.channels != 1:
            raise AudiogenError("the stft codec is mono (channels: 1); stereo files are downmixed before encoding")
        if cfg.decode_phase not in ("predicted", "codes"):
            raise AudiogenError(f"stft codec: decode_phase must be 'predicted' or 'codes', not {cfg.decode_phase!r}")
        if cfg.n_fft < 2 * cfg.hop:
            raise AudiogenError(f"stft codec: n_fft ({cfg.n_fft}) must be at least 2 x hop ({cfg.hop})")
        return cfg


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time, LayerNorm, pointwise MLP, layer scale, residual. ``x: [B, D, T] -> [B, D, T]``."""

    def __init__(self, dim: int, hidden: int, kernel: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """``x: [B, in_dim, T] -> [B, out_dim, T]``: input conv, ConvNeXt blocks, LayerNorm, linear out."""

    def __init__(self, in_dim: int, out_dim: int, cfg: STFTCodecConfig, layers: int):
        super().__init__()
        self.inp = nn.Conv1d(in_dim, cfg.dim, cfg.kernel, padding=cfg.kernel // 2)
        self.norm_in = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.ffn_mult * cfg.dim, cfg.kernel, 1.0 / layers) for _ in range(layers))
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(self.inp(x).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm_out(x.transpose(1, 2))).transpose(1, 2)


#: EMA decay of code usage: a short memory, so a code nobody picks is restarted within ~30 steps
#: (a code picked 1.6 times per step on average stays far above any sensible threshold)
USAGE_DECAY = 0.9


class FactorizedCodebook(nn.Module):
    """One residual stage (DAC's factorized VQ): project to ``code_dim``, nearest code by cosine, project back.

    ``forward(z: [B, D, T]) -> (z_q [B, D, T] with a straight-through gradient, codes [B, T], loss scalar)``.
    The loss is DAC's: commitment 0.25 x |e - sg(q)|^2 plus codebook |sg(e) - q|^2.
    """

    def __init__(self, dim: int, code_dim: int, bins: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, code_dim)
        self.proj_out = nn.Linear(code_dim, dim)
        self.codebook = nn.Embedding(bins, code_dim)
        self.register_buffer("inited", torch.tensor(False))
        #: how many times each code was picked per step, EMA over the last ~10 steps (restarts read it)
        self.register_buffer("usage", torch.ones(bins))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, D, T] -> [B, T, code_dim]``, unit vectors: the space codes are looked up in."""
        return F.normalize(self.proj_in(z.transpose(1, 2)), dim=-1)

    def lookup(self, e: torch.Tensor) -> torch.Tensor:
        """``e: [..., code_dim] -> codes [...]`` (nearest code by cosine similarity)."""
        sims = F.normalize(e, dim=-1) @ F.normalize(self.codebook.weight, dim=-1).t()
        return sims.argmax(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: [B, T] -> [B, D, T]``."""
        return self.proj_out(F.normalize(self.codebook(codes), dim=-1)).transpose(1, 2)

    def forward(self, z: torch.Tensor):
        e = self.project(z)  # [B, T, c]
        if self.training and not bool(self.inited):
            self._kmeans_init(e.detach().flatten(0, 1))
        codes = self.lookup(e)
        q = F.normalize(self.codebook(codes), dim=-1)
        loss = 0.25 * F.mse_loss(e, q.detach()) + F.mse_loss(q, e.detach())
        q = e + (q - e).detach()
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(codes.flatten(), minlength=self.usage.numel()).float()
                self.usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        return self.proj_out(q).transpose(1, 2), codes, loss

    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor, iters: int = 10) -> None:
        """Spherical k-means on ``x: [N, code_dim]`` (unit rows); codes start at its centroids."""
        bins = self.codebook.num_embeddings
        g = torch.Generator(device="cpu").manual_seed(x.shape[0])
        c = x[torch.randint(0, x.shape[0], (bins,), generator=g).to(x.device)].clone()
        for _ in range(iters):
            assign = (x @ c.t()).argmax(-1)
            sums = torch.zeros_like(c).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=bins)
            c = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), c)
        self.codebook.weight.copy_(c)
        self.inited.fill_(True)

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, threshold: float) -> int:
        """Codes picked less than ``threshold`` times per step (EMA) restart at random inputs of ``z: [B, D, T]``."""
        if not bool(self.inited):
            return 0
        dead = self.usage < threshold
        n = int(dead.sum())
        if n == 0:
            return 0
        e = self.project(z).flatten(0, 1)
        pick = torch.randint(0, e.shape[0], (n,), device=e.device)
        self.codebook.weight[dead] = e[pick]
        self.usage[dead] = threshold * 2  # time to be picked before it can be judged dead again
        return n


class STFTCodecModel(nn.Module):
    """Encoder, residual quantizer and decoder (see the module docstring)."""

    def __init__(self, cfg: STFTCodecConfig, dead_code_threshold: float = 0.0):
        super().__init__()
        import torchaudio

        self.config = cfg
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, 0.0, cfg.sample_rate / 2, cfg.n_mels,
                                                    cfg.sample_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fb", fb, persistent=False)  # [F, n_mels]
        self.encoder = ConvNeXtStack(cfg.n_mels, cfg.latent_dim, cfg, cfg.encoder_layers)
        # Latents standardised per channel (running statistics at inference). Without it the encoder's
        # output drifts into a narrow cone (a large shared offset the decoder ignores; mean pairwise cosine
        # 0.99 after 20 steps) and cosine lookup sends every frame to one code.
        self.latent_norm = nn.BatchNorm1d(cfg.latent_dim, affine=False, momentum=0.1)
        self.quantizers = nn.ModuleList(FactorizedCodebook(cfg.latent_dim, cfg.code_dim, cfg.bins) for _ in range(cfg.n_q))
        self.decoder = ConvNeXtStack(cfg.latent_dim, cfg.n_fft + 2, cfg, cfg.decoder_layers)
        self.last_restarted = 0

    # -- the three parts ------------------------------------------------------------------
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav: [B, 1, N]`` (N a multiple of hop) -> latents ``[B, latent_dim, N // hop]``."""
        cfg = self.config
        frames = wav.shape[-1] // cfg.hop
        spec = torch.stft(wav[:, 0], cfg.n_fft, cfg.hop, cfg.n_fft, self.window, center=True, return_complex=True)
        mel = (spec.abs().transpose(1, 2) @ self.mel_fb).transpose(1, 2)  # [B, n_mels, frames + 1]
        return self.latent_norm(self.encoder(torch.log(mel.clamp_min(1e-5))[..., :frames]))

    def synthesize(self, z: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``[B, latent_dim, T]`` -> ``wav [B, 1, T * hop]`` through the predicted STFT
        (``phase: [B, F, T]`` replaces the predicted phase)."""
        cfg = self.config
        h = self.decoder(z)
        logmag, predicted = h.float().chunk(2, dim=1)  # [B, F, T] each
        phase = predicted if phase is None else phase
        if self.training:  # kept for magnitude_loss, the direct per-bin target of the training step
            self.last_logmag = logmag
        mag = torch.exp(logmag.clamp(max=6.0))  # bounded: a diverging head must not overflow the iFFT
        spec = torch.polar(mag, phase)
        wav = torch.istft(spec, cfg.n_fft, cfg.hop, cfg.n_fft, self.window, center=True, length=z.shape[-1] * cfg.hop)
        return wav.unsqueeze(1)

    def quantize(self, z: torch.Tensor, n_q: int, dead_code_threshold: float = 0.0):
        """``z: [B, D, T]`` through the first ``n_q`` stages -> (z_q, codes [n_q, B, T], loss).

        In training, each stage first restarts its dead codes from its own input (the residual).
        """
        residual, quantized = z, torch.zeros_like(z)
        codes, losses = [], []
        self.last_restarted = 0
        for stage in self.quantizers[:n_q]:
            if self.training and dead_code_threshold > 0:
                self.last_restarted += stage.restart_dead(residual.detach(), dead_code_threshold)
            q, idx, loss = stage(residual)
            residual = residual - q
            quantized = quantized + q
            codes.append(idx)
            losses.append(loss)
        return quantized, torch.stack(codes), torch.stack(losses).mean()

    # -- training interface (the same as codec_training.TrainableCodec) ----------------------
    def forward(self, wav: torch.Tensor, n_q: int, bypass: bool = False):
        """``wav: [B, 1, N] -> (recon [B, 1, N], codes [n_q, B, N // hop], vq loss)``; ``bypass`` skips the quantizer."""
        n = wav.shape[-1]
        frames = -(-n // self.config.hop)
        wav = F.pad(wav, (0, frames * self.config.hop - n))
        z = self.embed(wav)
        if bypass:
            self.last_restarted = 0
            codes = torch.zeros(n_q, z.shape[0], z.shape[-1], dtype=torch.long, device=z.device)
            return self.synthesize(z)[..., :n], codes, z.new_zeros(())
        zq, codes, loss = self.quantize(z, n_q, self.dead_code_threshold)
        return self.synthesize(zq)[..., :n], codes, loss

    def magnitude_loss(self, wav: torch.Tensor) -> torch.Tensor:
        """L1 between the log-magnitude STFT the decoder predicted in the last training forward and
        that of ``wav: [B, 1, N]``. The output's mel losses see bins only through the inverse STFT and
        the mel bands; this gives every bin (quiet ones included, down to -100 dB) its own target."""
        cfg = self.config
        frames = self.last_logmag.shape[-1]
        wav = F.pad(wav, (0, frames * cfg.hop - wav.shape[-1]))
        spec = torch.stft(wav[:, 0], cfg.n_fft, cfg.hop, cfg.n_fft, self.window, center=True, return_complex=True)
        target = torch.log(spec.abs()[..., :frames].clamp_min(1e-5))
        return F.l1_loss(self.last_logmag.clamp_min(math.log(1e-5)), target)

    def reset_codebooks(self) -> None:
        """k-means initialises every codebook again on the next training batch."""
        for stage in self.quantizers:
            stage.inited.fill_(False)

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int) -> torch.Tensor:
        """``wav: [B, 1, N]`` (N a multiple of hop) -> ``codes [B, n_q, N // hop]``."""
        residual = self.embed(wav)
        codes = []
        for stage in self.quantizers[:n_q]:
            idx = stage.lookup(stage.project(residual))
            residual = residual - stage.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: [B, K, T] -> wav [B, 1, T * hop]``."""
        z = sum(stage.decode(codes[:, k]) for k, stage in enumerate(self.quantizers[: codes.shape[1]]))
        if self.config.decode_phase == "codes":
            return self.synthesize(z, codes_phase(codes, self.config.n_fft // 2 + 1))
        return self.synthesize(z)



def codes_phase(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Pseudo-random phases ``[B, bins, T]`` in [0, 2 pi) from ``codes: [B, K, T]``.

    Frame ``t``'s phases depend only on the codes of frames ``t`` and ``t - 1`` (a hash), so a
    frame decodes the same in every window that contains it, and the result is reproducible.
    """
    c = codes.long()
    prev = torch.cat([c[..., :1], c[..., :-1]], dim=-1)
    mult = torch.arange(1, c.shape[1] + 1, device=c.device)[None, :, None]
    h = ((c * (2 * mult + 1) * 7919 + prev * (2 * mult + 3) * 104729).sum(1) % 2_147_483_647)  # [B, T]
    k = torch.arange(bins, device=c.device)[None, :, None]
    x = (h[:, None, :] * 2_654_435_761 + k * 40_503 + 12_345) % 4_294_967_296  # < 2^63: no overflow
    x = (x ^ (x >> 15)) * 2_246_822_519 % 4_294_967_296
    x = x ^ (x >> 13)
    return (x % 65_536).float() * (2 * math.pi / 65_536)
