"""A codec fitted in minutes on a CPU: residual k-means VQ of log-mel frames, decoded by Griffin-Lim.

Why this design (issue 16, measured in docs/codec_training.md): on 2 CPU cores for about an hour
neither a SEANet codec nor a ConvNeXt/iSTFT codec learned to reproduce music (held-out log-mel
band correlation 0.53, error 6.8 dB at 3 kbps), while Griffin-Lim from the *unquantized* mel
scores 0.99 / 1.1 dB. So the quantizer works on the mel itself: each 20 ms frame's log-mel
vector (dB) is coded by a residual VQ whose codebooks are k-means centroids of the residuals
of a corpus (minutes on a CPU, no gradient training, nothing to collapse), encoded with a small
beam search. Decoding sums the codewords, maps the mel back to a linear magnitude (the
filterbank's pseudo-inverse, refined until its mel is the decoded one) and recovers a phase with
fast Griffin-Lim (momentum 0.99),
started from phases drawn from the codes so every decoding window agrees and the result is
reproducible. The L2 distance in dB that k-means minimises is near the log-mel error the quality
checks measure; they measure power in their own 64 bands, and the post-filter's offsets are refined
on that (:func:`refine_post_filter`: the smooth magnitude rebuilt from a band's amplitude has less power
than the real band's partials).

Shapes: ``encode(wav: FloatTensor[B, 1, N]) -> codes: LongTensor[B, K, N // hop]`` (N a multiple
of hop; :class:`audiogen.codec.base.Codec` pads and windows) and ``decode(codes) -> FloatTensor[B, 1,
T * hop]``. Frame ``t`` is centred on sample ``t * hop`` on both sides. ``decode(codes, semitones)`` plays each
row transposed (:func:`shift_spectrum` on the magnitude Griffin-Lim starts from, which rebuilds the phase anyway).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audiogen.codec.stft import codes_phase
from audiogen.errors import AudiogenError, dataclass_from_dict


@dataclass(frozen=True)
class MelVQConfig:
    """Architecture of a :class:`MelVQModel` (field names shared with the other codecs' configs
    where the bookkeeping reads them: ``sample_rate``, ``channels``, ``hop_length``, ``n_q``,
    ``bins``, ``target_bandwidths``)."""

    sample_rate: int = 24_000
    channels: int = 1
    hop: int = 480  #: 50 Hz frames at 24 kHz
    n_fft: int = 2048
    win: int = 1920  #: 4 x hop (80 ms)
    n_mels: int = 128
    floor_db: float = -100.0  #: mel magnitudes below this (dB re full scale) are raised to it
    n_q: int = 8
    bins: int = 1024
    target_bandwidths: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)  #: 2, 4, 6, 8 codebooks at 50 Hz
    beam: int = 4  #: candidates kept per stage when encoding (1: greedy)
    #: > 0: codebook 0 is chosen per sequence by a Viterbi search that charges this (squared dB,
    #: summed over bands) for every change of code, so it holds a code through small wobbles
    #: (an LM then sees note-like runs, not jitter); 0: per frame, the nearest code
    change_penalty: float = 0.0
    #: > 0: codebooks 1.. are chosen the same way, each over the residual the earlier stages leave
    #: (stage by stage, no beam), with this penalty, so they too hold their codes through small
    #: wobbles instead of flipping between near-equal codes every frame (an LM predicts held codes;
    #: flipping ones it can only sample as noise); 0: the beam search per frame
    residual_change_penalty: float = 0.0
    #: True: codebooks 1.. change only where the held codebook 0 changes: over each run of
    #: codebook 0, each is the code nearest the mean of its stage's residual (one set of change
    #: points for every codebook, as a note changes every band at once)
    changes_with_first: bool = False
    #: True (with ``residual_change_penalty``): a change of codebooks 1.. costs nothing in a frame where
    #: codebook 0 changes, so their changes gather at codebook 0's (a note's onset) while they can still
    #: follow the music inside a run, at the penalty
    residual_tied: bool = False
    #: > 0: a linear post-filter mends the decoded log-mel: each frame gets a correction computed from
    #: the decoded frames this many frames either side (a ridge regression fitted on training music,
    #: one per codebook count the codec offers, its per-band offsets then refined by
    #: :func:`refine_post_filter`), restoring some of what the codes drop (the detail a held code
    #: flattens) and the level the smooth magnitude loses; 0: none
    post_filter_frames: int = 0
    #: > 0: the magnitude Griffin-Lim starts from is refined by this many multiplicative updates
    #: (Richardson-Lucy) so that its mel is the decoded one, from the pseudo-inverse's clamped
    #: magnitude, whose mel misses the decoded by 0.22 dB on average (10 updates: 0.016 dB; on held-out
    #: music the roundtrip's mel error drops 0.03 dB, docs/codec_training.md); 0: the pseudo-inverse
    inversion_iters: int = 0
    gl_iters: int = 32
    gl_momentum: float = 0.99
    #: the bands: ``slaney``, ``n_mels`` Slaney mel bands from 0 Hz to Nyquist (80 in the default model's codec
    #: until 2026-12-06); ``pitch`` (the default model's since), one band per FFT bin up to where a semitone grows
    #: wider than a bin, then one per semitone up to ``pitch_split_hz``, then ``upper_per_octave`` per octave to
    #: Nyquist (``n_mels`` must be their count, :func:`pitch_band_count`): 80 Slaney bands are 43 Hz apart below
    #: 1 kHz and blur a held note's partials into bands, which loses the key (docs/codec_training.md, "Pitch: the
    #: mel bands")
    filterbank: str = "slaney"
    pitch_split_hz: float = 2000.0
    upper_per_octave: int = 12
    #: > 0: the ``pitch`` filterbank's semitone bands are centred on the equal-tempered notes of this tuning (440:
    #: A4 = 440 Hz), from the first note a semitone above the last bin band; 0: they start a semitone above that
    #: band wherever it falls (the default model's codec: 23 cents sharp of A440, so quantized notes come back
    #: detuned towards the band centres; docs/codec_training.md, "Notes between the bands")
    pitch_tuning_hz: float = 0.0
    #: > 0: every decode is transposed so that the semitone bands' centres fall on the equal-tempered notes of this
    #: tuning (440: A4 = 440 Hz; :meth:`MelVQModel.retune_semitones`). Notes decoded from quantized bands land near
    #: the band centres, so a grid off the notes plays everything that far sharp or flat: the default model's codec
    #: (``pitch_tuning_hz`` 0) put held-out music 0.23 semitones sharp through its tokens; retuned, 0.01 flat, but its
    #: LM's key requests were heard in their mode less often, so it does not set this (docs/codec_training.md, "Notes
    #: between the bands"). The tokens do not change. 0 = off
    retune_hz: float = 0.0

    @property
    def hop_length(self) -> int:
        return self.hop

    @classmethod
    def from_dict(cls, d: dict) -> "MelVQConfig":
        cfg = dataclass_from_dict(cls, d, "mel codec config keys", ("target_bandwidths",))
        if cfg.channels != 1:
            raise AudiogenError("the mel codec is mono (channels: 1); stereo files are downmixed before encoding")
        if not cfg.hop <= cfg.win <= cfg.n_fft:
            raise AudiogenError(f"mel codec: need hop <= win <= n_fft, got {cfg.hop}, {cfg.win}, {cfg.n_fft}")
        if (cfg.beam < 1 or cfg.gl_iters < 0 or not 0 <= cfg.gl_momentum < 1 or cfg.change_penalty < 0
                or cfg.residual_change_penalty < 0 or cfg.post_filter_frames < 0 or cfg.inversion_iters < 0):
            raise AudiogenError("mel codec: beam must be >= 1, gl_iters >= 0, gl_momentum in [0, 1) and "
                                "change_penalty, residual_change_penalty, post_filter_frames and inversion_iters >= 0")
        if (cfg.residual_change_penalty or cfg.changes_with_first) and not cfg.change_penalty:
            raise AudiogenError("mel codec: residual_change_penalty and changes_with_first hold the codebooks "
                                "after a held codebook 0; set change_penalty > 0 too")
        if cfg.residual_tied and (not cfg.residual_change_penalty or cfg.changes_with_first):
            raise AudiogenError("mel codec: residual_tied waives residual_change_penalty where codebook 0 "
                                "changes; set residual_change_penalty > 0 (and not changes_with_first)")
        if cfg.filterbank not in FILTERBANKS:
            raise AudiogenError(f"mel codec: filterbank must be one of {', '.join(FILTERBANKS)}, got {cfg.filterbank!r}")
        if cfg.filterbank == "pitch":
            if not (0 < cfg.pitch_split_hz < cfg.sample_rate / 2 and cfg.upper_per_octave >= 1
                    and 0 <= cfg.pitch_tuning_hz < cfg.sample_rate / 2 and 0 <= cfg.retune_hz < cfg.sample_rate / 2):
                raise AudiogenError("mel codec: the pitch filterbank needs 0 < pitch_split_hz < sample_rate / 2, "
                                    "upper_per_octave >= 1 and 0 <= pitch_tuning_hz, retune_hz < sample_rate / 2")
            n = pitch_band_count(cfg)
            if cfg.n_mels != n:
                raise AudiogenError(f"mel codec: the pitch filterbank at sample_rate {cfg.sample_rate}, n_fft "
                                    f"{cfg.n_fft}, pitch_split_hz {cfg.pitch_split_hz:g} and upper_per_octave "
                                    f"{cfg.upper_per_octave} has {n} bands; set n_mels: {n}")
        if cfg.retune_hz and cfg.filterbank != "pitch":
            raise AudiogenError("mel codec: retune_hz moves the pitch filterbank's semitone bands onto notes; "
                                "it needs filterbank: pitch")
        return cfg


#: the filterbanks :class:`MelVQConfig` offers
FILTERBANKS = ("slaney", "pitch")


def semitone_region_hz(cfg: MelVQConfig) -> float:
    """Where the ``pitch`` filterbank's bin bands end and its semitone bands begin: the frequency at which a
    semitone grows wider than an FFT bin."""
    return cfg.sample_rate / cfg.n_fft / (2 ** (1 / 12) - 1)


def pitch_band_centres(cfg: MelVQConfig) -> np.ndarray:
    """Centre frequencies (Hz) of the ``pitch`` filterbank's bands: every FFT bin from 0 Hz while a semitone
    is narrower than a bin, then semitones up to ``pitch_split_hz``, then ``upper_per_octave`` per octave
    below Nyquist."""
    bin_hz = cfg.sample_rate / cfg.n_fft
    semitone = 2 ** (1 / 12)
    centres = list(np.arange(0.0, semitone_region_hz(cfg), bin_hz))  # up to where a semitone equals a bin
    f = centres[-1] * semitone
    if cfg.pitch_tuning_hz > 0:  # the first equal-tempered note at or above f
        f = cfg.pitch_tuning_hz * semitone ** math.ceil(12 * math.log2(f / cfg.pitch_tuning_hz) - 1e-9)
    while f < cfg.pitch_split_hz:
        centres.append(f)
        f *= semitone
    step = 2 ** (1 / cfg.upper_per_octave)
    while f < cfg.sample_rate / 2:
        centres.append(f)
        f *= step
    return np.array(centres)


def pitch_band_count(cfg: MelVQConfig) -> int:
    return len(pitch_band_centres(cfg))


def mel_filterbank(cfg: MelVQConfig) -> torch.Tensor:
    """``[n_fft // 2 + 1, n_mels]``: the Slaney mel filterbank from 0 Hz to Nyquist, or (``filterbank:
    pitch``) triangles between neighbouring :func:`pitch_band_centres`, each scaled to unit area over its
    width as Slaney's are."""
    if cfg.filterbank == "pitch":
        freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
        c = pitch_band_centres(cfg)
        edges = np.concatenate([[c[0] - (c[1] - c[0])], c, [cfg.sample_rate / 2 + (c[-1] - c[-2])]])
        lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
        rise = (freqs[:, None] - lo) / (mid - lo)
        fall = (hi - freqs[:, None]) / (hi - mid)
        return torch.tensor(np.clip(np.minimum(rise, fall), 0, None) * (2.0 / (hi - lo)), dtype=torch.float32)
    import torchaudio

    return torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, 0.0, cfg.sample_rate / 2, cfg.n_mels,
                                                 cfg.sample_rate, norm="slaney", mel_scale="slaney")


def measure_filterbank(cfg: MelVQConfig) -> torch.Tensor:
    """``[n_fft // 2 + 1, 64]``: the bands of the quality checks' log-mel
    (:func:`audiogen.metrics.audio_checks.mel_params`: 64 Slaney mel bands from 0 Hz to Nyquist, for power
    spectra) on this codec's STFT bins."""
    import librosa

    from audiogen.metrics.audio_checks import mel_params

    p = mel_params(cfg.sample_rate)
    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=p["n_mels"], fmin=p["fmin"], fmax=p["fmax"])
    return torch.from_numpy(fb).float().T


def power_mel_db(mag: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Magnitudes ``[B, F, T]`` -> ``[B, T, bands]``: the power in each band of ``fb: [F, bands]``
    (:func:`measure_filterbank`), in dB (floored at -100 dB, as the quality checks floor it)."""
    from audiogen.metrics.audio_checks import FLOOR_DB

    return 10 * torch.log10(((mag.transpose(1, 2) ** 2) @ fb).clamp_min(10 ** (FLOOR_DB / 10)))


def band_centres(cfg: MelVQConfig) -> np.ndarray:
    """Each band's peak frequency (Hz), whichever the filterbank."""
    fb = mel_filterbank(cfg)
    return fb.argmax(0).numpy() * cfg.sample_rate / cfg.n_fft


def shift_spectrum(mag: torch.Tensor, semitones: torch.Tensor, from_bin: int = 0) -> torch.Tensor:
    """Linear magnitudes ``[B, F, T]`` (bins 0 .. Nyquist) with row ``b``'s frequency axis scaled by
    ``2 ** (semitones[b] / 12)``: bin ``k`` takes the magnitude at ``k / ratio`` (linear between bins; 0 past
    Nyquist), so a partial at f moves to f * ratio and keeps its amplitude. Time is untouched: the transposition
    of a sound that Griffin-Lim gives its phase, with none of a phase vocoder's smearing. Rows at 0 come back as
    they are. ``from_bin``: the bins below it are kept as they are (and read nothing from above)."""
    F = mag.shape[1]
    ratio = torch.pow(2.0, semitones.to(mag.device, torch.float32) / 12)[:, None]  # [B, 1]
    src = torch.arange(F, device=mag.device, dtype=torch.float32)[None, :] / ratio  # [B, F]
    if from_bin:
        k = torch.arange(F, device=mag.device)[None, :]
        src = torch.where(k < from_bin, k.float(), src.clamp_min(from_bin))
    lo = src.floor().long().clamp(max=F - 1)
    hi = (lo + 1).clamp(max=F - 1)
    w = (src - lo).clamp(0, 1)[..., None]  # [B, F, 1]
    take = lambda idx: mag.gather(1, idx[..., None].expand(-1, -1, mag.shape[2]))  # noqa: E731
    out = take(lo) * (1 - w) + take(hi) * w
    out = out.masked_fill((src > F - 1)[..., None], 0.0)
    return torch.where((semitones == 0).to(mag.device)[:, None, None], mag, out)


def _distances(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances ``[..., bins]`` of vectors ``x: [..., M]`` to every code of ``book: [bins, M]``
    (``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``)."""
    return x.pow(2).sum(-1, keepdim=True) - 2 * x @ book.T + book.pow(2).sum(-1)


def code_changes(codes: torch.Tensor) -> torch.Tensor:
    """``codes: LongTensor[B, T]`` -> ``bool[B, T]``: True where a frame's code differs from the frame
    before it (never in the first frame)."""
    changed = torch.zeros_like(codes, dtype=torch.bool)
    changed[:, 1:] = codes[:, 1:] != codes[:, :-1]
    return changed


def held_codes(dist: torch.Tensor, penalty: float | torch.Tensor) -> torch.Tensor:
    """The code sequence ``LongTensor[T]`` minimising the summed distances ``dist: [T, bins]`` plus
    ``penalty`` per change of code (Viterbi: staying is free, switching comes from the best path);
    a ``penalty: [T]`` prices a change into each frame on its own. Batched: ``dist: [S, T, bins]``
    and ``penalty: [S, T]`` give ``[S, T]``, each row exactly as on its own (the steps are per row)."""
    if dist.dim() == 2:
        return held_codes(dist[None], penalty[None] if isinstance(penalty, torch.Tensor) else penalty)[0]
    S, T, bins = dist.shape
    if not isinstance(penalty, torch.Tensor):
        penalty = torch.full((S, T), float(penalty), dtype=dist.dtype, device=dist.device)
    cost = dist[:, 0].clone()
    codes = torch.arange(bins, device=dist.device)
    index = torch.int16 if bins <= 2 ** 15 else torch.long
    back = torch.empty(S, T, bins, dtype=index, device=dist.device)  # frame 0 is never read
    for t in range(1, T):
        j = cost.argmin(1, keepdim=True)
        # costs are kept relative to the best path's, so they stay small and round alike wherever the
        # search starts: a window with context decides near-ties as the whole file does
        cost = cost - cost.gather(1, j)
        price = penalty[:, t, None]
        stay = cost <= price
        back[:, t] = torch.where(stay, codes, j)
        cost = torch.where(stay, cost, price) + dist[:, t]
    path = torch.empty(S, T, dtype=torch.long, device=dist.device)
    path[:, -1] = cost.argmin(1)
    for t in range(T - 1, 0, -1):
        path[:, t - 1] = back[:, t].gather(1, path[:, t, None])[:, 0].long()
    return path


class MelVQModel(nn.Module):
    """Log-mel features, a residual VQ over them, and their inversion to audio.

    Its state is the feature mean ``[n_mels]`` and the codebooks ``[n_q, bins, n_mels]`` (dB);
    the filterbank, its pseudo-inverse and the window are rebuilt from the config.
    """

    def __init__(self, cfg: MelVQConfig):
        super().__init__()
        self.config = cfg
        self.register_buffer("mean", torch.zeros(cfg.n_mels))
        self.register_buffer("codebooks", torch.zeros(cfg.n_q, cfg.bins, cfg.n_mels))
        if cfg.post_filter_frames:  # [codebook counts, context frames x n_mels + 1 (bias), n_mels]
            width = (2 * cfg.post_filter_frames + 1) * cfg.n_mels + 1
            self.register_buffer("post_filter", torch.zeros(len(self.filtered_codebooks()), width, cfg.n_mels))
        fb = mel_filterbank(cfg)
        self.register_buffer("mel_fb", fb, persistent=False)
        self.register_buffer("mel_pinv", torch.linalg.pinv(fb.T), persistent=False)  # [F, n_mels]
        self.register_buffer("window", torch.hann_window(cfg.win), persistent=False)

    # -- analysis ---------------------------------------------------------------------
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav: [B, 1, N]`` (N a multiple of hop) -> log-mel ``[B, N // hop, n_mels]`` in dB."""
        return self.mel_db(self.spectrum(wav))

    def mel_db(self, spec: torch.Tensor) -> torch.Tensor:
        """STFT magnitudes ``[B, F, T]`` (:meth:`spectrum`) -> their log-mel ``[B, T, n_mels]`` in dB."""
        mel = spec.transpose(1, 2) @ self.mel_fb
        return 20 * torch.log10(mel.clamp_min(10 ** (self.config.floor_db / 20)))

    def spectrum(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav: [B, 1, N]`` (N a multiple of hop) -> STFT magnitudes ``[B, F, N // hop]``, frame ``t`` centred
        on sample ``t * hop``: what :meth:`features` reads and :meth:`magnitude` rebuilds."""
        cfg = self.config
        spec = torch.stft(wav[:, 0].float(), cfg.n_fft, cfg.hop, cfg.win, self.window, center=True,
                          return_complex=True).abs()  # [B, F, frames + 1]
        return spec[..., : wav.shape[-1] // cfg.hop]

    # -- quantizer --------------------------------------------------------------------
    def quantize(self, feats: torch.Tensor, n_q: int, beam: int | None = None) -> torch.Tensor:
        """``feats: [..., n_mels]`` -> codes ``[..., n_q]`` by a beam search over the residual stages
        (``beam`` candidate paths, each extended by every code, the best ``beam`` kept by residual
        energy; ``beam=1`` is the greedy residual VQ). With ``config.change_penalty`` > 0, codebook 0
        is first chosen along the time axis (``feats``' second-to-last) by :func:`held_codes`; then
        with ``config.changes_with_first`` the later codebooks change only where it does
        (:meth:`_quantize_runs`), else with ``config.residual_change_penalty`` > 0 each is held the same
        way, stage by stage (with ``config.residual_tied``, free of charge where codebook 0 changes)."""
        beam = self.config.beam if beam is None else beam
        lead = feats.shape[:-1]
        res = (feats.reshape(-1, feats.shape[-1]) - self.mean)[:, None, :]  # [N, 1, M]
        n = res.shape[0]
        codes = torch.zeros(n, 1, 0, dtype=torch.long, device=feats.device)
        books = self.codebooks[:n_q]
        later = 0.0 if self.config.changes_with_first else self.config.residual_change_penalty
        penalties = [self.config.change_penalty] + [later] * (n_q - 1)
        while feats.dim() >= 2 and books.shape[0] and penalties[codes.shape[-1]] > 0:  # held stages, then the rest
            penalty = penalties[codes.shape[-1]]
            sequences = res[:, 0].reshape(-1, *feats.shape[-2:])  # [B, T, M], earlier stages removed
            first = codes[:, 0, 0].reshape(sequences.shape[:2]) if codes.shape[-1] else None
            held = held_codes(_distances(sequences, books[0]), self._prices(penalty, first)).reshape(n)
            res = res - books[0][held][:, None, :]
            codes = torch.cat([codes, held[:, None, None]], dim=-1)
            books = books[1:]
        if self.config.changes_with_first and feats.dim() >= 2 and books.shape[0]:
            return self._quantize_runs(res[:, 0], codes[:, 0], books, feats.shape[-2]).reshape(*lead, n_q)
        for book in books:
            b = res.shape[1]
            d = _distances(res, book).reshape(n, -1)  # [N, b * bins]: every path and code
            top = d.topk(min(beam, d.shape[1]), dim=1, largest=False).indices
            path, code = top // book.shape[0], top % book.shape[0]
            res = torch.gather(res, 1, path[..., None].expand(-1, -1, res.shape[-1])) - book[code]
            codes = torch.cat([torch.gather(codes, 1, path[..., None].expand(-1, -1, codes.shape[-1])),
                               code[..., None]], dim=-1)
        best = res.pow(2).sum(-1).argmin(1)
        return codes[torch.arange(n, device=feats.device), best].reshape(*lead, n_q)

    def _prices(self, penalty: float, first: torch.Tensor | None) -> float | torch.Tensor:
        """What a change of code costs in each frame of a held stage: ``penalty``, or with
        ``config.residual_tied`` and codebook 0's codes ``first: [S, T]`` known, nothing in a frame
        where codebook 0 changes (``[S, T]``)."""
        if first is None or not self.config.residual_tied:
            return penalty
        return torch.where(code_changes(first), 0.0, penalty).to(self.codebooks.dtype)

    @staticmethod
    def _quantize_runs(res: torch.Tensor, first: torch.Tensor, books: torch.Tensor, frames: int) -> torch.Tensor:
        """``changes_with_first``: the residual ``res [N, M]`` left by the held codebook 0 (``first [N, 1]``,
        sequences of ``frames``) coded by ``books`` with one code per run of codebook 0, each the nearest to
        its stage's residual mean over the run. Returns codes ``[N, 1 + len(books)]``."""
        first = first[:, 0].reshape(-1, frames)
        # runs of codebook 0 numbered across the batch: a new run wherever the code or the sequence changes
        starts = code_changes(first)
        starts[:, 0] = True
        run = starts.reshape(-1).long().cumsum(0) - 1  # [N]
        runs = int(run[-1]) + 1
        counts = torch.bincount(run, minlength=runs)[:, None].to(res.dtype)
        out = [first.reshape(-1)]
        for book in books:
            mean = torch.zeros(runs, res.shape[-1], dtype=res.dtype, device=res.device).index_add_(0, run, res) / counts
            code = _distances(mean, book).argmin(1)[run]
            res = res - book[code]
            out.append(code)
        return torch.stack(out, dim=-1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes: [B, K, T]`` -> log-mel ``[B, T, n_mels]`` (dB): the mean plus the first K codewords."""
        out = self.mean.expand(*codes.shape[::2], -1).clone()
        for k in range(codes.shape[1]):
            out += self.codebooks[k][codes[:, k]]
        return out

    def filtered_codebooks(self) -> list[int]:
        """The codebook counts that have a post-filter: those of the codec's bitrates."""
        cfg = self.config
        bps = math.log2(cfg.bins) * cfg.sample_rate / cfg.hop  # one codebook's bits per second
        return sorted({round(bw * 1000 / bps) for bw in cfg.target_bandwidths} & set(range(1, cfg.n_q + 1)))

    def filter_context(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel: [B, T, n_mels]`` -> ``[B, T, (2 R + 1) n_mels + 1]``: each frame's decoded neighbours
        ``R = post_filter_frames`` either side (the edge frames repeated past the ends) and a 1."""
        r = self.config.post_filter_frames
        padded = torch.nn.functional.pad(mel.transpose(1, 2), (r, r), mode="replicate").transpose(1, 2)
        frames = mel.shape[1]
        return torch.cat([padded[:, i : i + frames] for i in range(2 * r + 1)] + [torch.ones_like(mel[..., :1])], -1)

    def post_filtered(self, mel: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """The decoded log-mel ``[B, T, n_mels]`` of ``num_codebooks`` codebooks, mended by that count's
        post-filter (unchanged without one)."""
        counts = self.filtered_codebooks() if self.config.post_filter_frames else []
        if num_codebooks not in counts or mel.shape[1] == 0:
            return mel
        return mel + self.filter_context(mel) @ self.post_filter[counts.index(num_codebooks)]

    def semitone_bin(self) -> int:
        """The first FFT bin of the ``pitch`` filterbank's semitone region (:func:`semitone_region_hz`)."""
        return math.ceil(semitone_region_hz(self.config) * self.config.n_fft / self.config.sample_rate)

    def retune_semitones(self) -> float:
        """How far :meth:`synthesize` transposes every decode (``config.retune_hz``): minus the semitone bands' offset
        from the nearest equal-tempered note of that tuning, in (-0.5, 0.5] semitones; 0 without it."""
        cfg = self.config
        if not cfg.retune_hz:
            return 0.0
        c = pitch_band_centres(cfg)
        first = c[c > semitone_region_hz(cfg)][0]  # the first semitone band
        off = (12 * math.log2(first / cfg.retune_hz) + 0.5) % 1 - 0.5
        return 0.0 if abs(off) < 1e-6 else -off

    # -- synthesis --------------------------------------------------------------------
    def magnitude(self, mel_db: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, T, n_mels]`` (dB) -> a linear magnitude spectrum ``[B, F, T]`` whose mel is it:
        the pseudo-inverse, clamped at 0, then (with ``config.inversion_iters``) raised to the floor and
        refined by that many multiplicative updates (Richardson-Lucy: non-negative, and a frame's magnitude
        depends on that frame alone)."""
        target = (10 ** (mel_db.float() / 20)).transpose(1, 2)  # [B, n_mels, T]
        mag = (self.mel_pinv @ target).clamp_min(0)
        if self.config.inversion_iters:
            mag = mag.clamp_min(10 ** (self.config.floor_db / 20))  # a bin at 0 would stay there
            fb = self.mel_fb.float()  # [F, n_mels]
            weight = fb.sum(1, keepdim=True).clamp_min(1e-12)  # [F, 1]: how much each bin counts
            for _ in range(self.config.inversion_iters):
                mag = mag * (fb @ (target / (fb.T @ mag).clamp_min(1e-12))) / weight
        return mag

    def synthesize(self, mel_db: torch.Tensor, phase: torch.Tensor,
                   semitones: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel ``[B, T, n_mels]`` and initial phases ``[B, F, T]`` -> ``wav [B, 1, T * hop]`` by
        fast Griffin-Lim (Perraudin et al., 2013) on :meth:`magnitude`, transposed by ``semitones [B]``
        (:func:`shift_spectrum`) when given. Row by row: a batched inverse STFT may round the last bit otherwise
        than one row's, and Griffin-Lim's momentum carries that to 1e-3 of the waveform, so a row would decode
        otherwise beside other rows (a batch of takes, the windows of a long file) than alone."""
        if mel_db.shape[0] > 1:
            return torch.cat([self.synthesize(mel_db[i : i + 1], phase[i : i + 1],
                                              None if semitones is None else semitones[i : i + 1])
                              for i in range(mel_db.shape[0])])
        cfg = self.config
        length = mel_db.shape[1] * cfg.hop
        mag = self.magnitude(mel_db)  # [B, F, T]
        retune = self.retune_semitones()
        if retune:  # the semitone bands' region only: the bin bands below put partials back where they were
            mag = shift_spectrum(mag, torch.full((mag.shape[0],), retune), self.semitone_bin())
        if semitones is not None and bool((semitones != 0).any()):
            mag = shift_spectrum(mag, semitones)
        stft_kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop, win_length=cfg.win, window=self.window, center=True)
        # frame t is centred on sample t * hop: T frames cover T * hop samples plus one frame's tail
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        phase = torch.cat([phase, phase[..., -1:]], dim=-1)
        angles = torch.polar(torch.ones_like(mag), phase)
        previous = torch.zeros_like(angles)
        n_out = (mag.shape[-1] - 1) * cfg.hop
        for _ in range(cfg.gl_iters):
            wav = torch.istft(mag * angles, length=n_out, **stft_kw)
            rebuilt = torch.stft(wav, return_complex=True, **stft_kw)
            angles = rebuilt - cfg.gl_momentum / (1 + cfg.gl_momentum) * previous
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        wav = torch.istft(mag * angles, length=n_out, **stft_kw)
        return wav[:, None, :length]

    @torch.no_grad()
    def code_loudness(self) -> torch.Tensor:
        """``FloatTensor[bins]``: the loudness (BS.1770, LUFS) of each codebook-0 codeword decoded alone and held.

        From the spectrum, not by decoding 1024 sounds: the K-weighted power of the magnitude Griffin-Lim
        starts from (:meth:`magnitude` of the codeword's mel frame), plus one offset measured by decoding the
        loudest codeword for 1 s. Against decoding every codeword of the default model's codec for 1 s: within
        0.27 dB (0.08 before its decoder's ``inversion_iters``), the same 28 codewords below -50 LUFS.
        """
        import numpy as np
        import pyloudnorm
        import scipy.signal

        from audiogen.audio.loudness import integrated_loudness

        cfg = self.config
        level = self.mean.float() + self.codebooks[0].float()  # [V, n_mels] dB
        mag = self.magnitude(level[None])[0].T.double().cpu().numpy()  # [V, F]
        freqs = np.linspace(0, cfg.sample_rate / 2, mag.shape[1])
        gain = np.ones_like(freqs)
        for f in pyloudnorm.Meter(cfg.sample_rate)._filters.values():
            gain *= np.abs(scipy.signal.freqz(f.b, f.a, worN=freqs, fs=cfg.sample_rate)[1]) * f.passband_gain
        power = 10 * np.log10(((mag * gain) ** 2).sum(axis=1) + 1e-30)
        ref = int(power.argmax())
        frames = int(1.0 * cfg.sample_rate / cfg.hop)
        code = torch.full((1, 1, frames), ref, dtype=torch.long, device=level.device)
        wav = self.synthesize(level[ref].expand(1, frames, -1), codes_phase(code, cfg.n_fft // 2 + 1))
        edge = 4 * cfg.hop  # the held frames' middle: no edge effects
        offset = integrated_loudness(wav[0, :, edge:-edge].cpu().numpy(), cfg.sample_rate) - power[ref]
        return torch.from_numpy(power + offset).float()

    def encode(self, wav: torch.Tensor, n_q: int) -> torch.Tensor:
        """``wav: [B, 1, N]`` (N a multiple of hop) -> ``codes [B, n_q, N // hop]``."""
        return self.quantize(self.features(wav), n_q).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, semitones: torch.Tensor | None = None) -> torch.Tensor:
        """``codes: [B, K, T] -> wav [B, 1, T * hop]``; ``semitones [B]``: each row transposed so far."""
        mel = self.post_filtered(self.dequantize(codes), codes.shape[1])
        return self.synthesize(mel, codes_phase(codes, self.config.n_fft // 2 + 1), semitones)


# ------------------------------------------------------------------------------ fitting


@dataclass(frozen=True)
class MelVQFitConfig:
    """What ``recipes/fit_mel_codec.py`` reads (``recipes/configs/codec_melvq.yaml``)."""

    name: str = "audiogen-melvq-24khz"
    codec: dict = dataclasses.field(default_factory=dict)  #: :class:`MelVQConfig` fields
    data_dir: str = ".cache/debian-all"
    holdout_tracks: int = 6  #: held out by a hash of the file name (``split.json``), as the codec trainer does
    cache_dir: str = ""  #: decoded-audio cache (empty: ``OUT_DIR/audio_cache``)
    frame_stride: int = 2  #: every Nth frame of every training track goes into the sample
    max_frames: int = 200_000  #: the k-means sample (drawn at random from the strided frames)
    kmeans_iters: int = 15
    #: the post-filter's sample (with ``codec.post_filter_frames`` > 0): this many runs of
    #: ``post_filter_run`` contiguous frames drawn at random from the training tracks, encoded as the
    #: codec encodes them
    post_filter_runs: int = 1200
    post_filter_run: int = 250
    post_filter_ridge: float = 100.0  #: ridge (L2) weight of the post-filter's least squares
    #: > 0: after the least squares, each post-filter's per-band offset is refined by this many Adam steps on what
    #: the quality checks measure of its output, the power in their 64 mel bands (:func:`refine_post_filter`)
    post_filter_steps: int = 0
    post_filter_lr: float = 0.03  #: the refinement's Adam step (dB)
    post_filter_batch: int = 16  #: runs per refinement step
    #: more audio folders whose tracks join the training tracks in the post-filter's sample only (the
    #: codebooks are fitted on ``data_dir``'s): the default model's takes the rendered scores too
    post_filter_data_dirs: list = dataclasses.field(default_factory=list)
    #: more audio folders whose tracks join the training tracks in the codebooks' k-means sample (and the
    #: post-filter's): codewords for tones the recordings hold few of, e.g. the rendered scores' piano and guitar
    codebook_data_dirs: list = dataclasses.field(default_factory=list)
    #: a mel codec folder whose mean and codebooks are kept instead of fitted (its config must be this
    #: one's, but for the post-filter): adds a post-filter to a codec whose tokens an LM already uses
    codebooks_from: str = ""
    #: a split quantizer: per codebook (``codec.n_q`` entries), the bands its k-means sees, ``full``, ``low``
    #: (bands peaking under ``stage_split_hz``: the pitches) or ``high`` (the rest: the spectral envelope);
    #: its codewords are zero elsewhere, so encoding and decoding are unchanged. Empty: all ``full`` (a plain
    #: residual VQ). Keeps the low stages' bits on pitch (docs/codec_training.md, "Pitch: the mel bands")
    stage_bands: list = dataclasses.field(default_factory=list)
    stage_split_hz: float = 2000.0
    seed: int = 0
    out_dir: str = "runs/codec_melvq"

    def codec_config(self) -> MelVQConfig:
        return MelVQConfig.from_dict(dict(self.codec))

    def validate(self) -> None:
        """Impossible values are user errors (called by :func:`audiogen.train.loop.load_config`)."""
        self.codec_config()
        if self.frame_stride < 1 or self.kmeans_iters < 1:
            raise AudiogenError("mel codec fit: frame_stride and kmeans_iters must be >= 1")
        if self.post_filter_runs < 1 or self.post_filter_run < 1 or self.post_filter_ridge < 0:
            raise AudiogenError("mel codec fit: post_filter_runs and post_filter_run must be >= 1, "
                                "post_filter_ridge >= 0")
        if self.post_filter_steps < 0 or self.post_filter_lr <= 0 or self.post_filter_batch < 1:
            raise AudiogenError("mel codec fit: post_filter_steps must be >= 0, post_filter_lr > 0 and "
                                "post_filter_batch >= 1")
        if self.codebook_data_dirs and self.codebooks_from:
            raise AudiogenError("mel codec fit: codebook_data_dirs fits codebooks, codebooks_from keeps them: "
                                "give one of the two")
        if self.max_frames < 4 * self.codec_config().bins:
            raise AudiogenError(f"mel codec fit: max_frames ({self.max_frames}) must be at least 4 x bins")
        needs_filter = self.post_filter_data_dirs or self.codebooks_from or self.post_filter_steps
        if needs_filter and not self.codec_config().post_filter_frames:
            raise AudiogenError("mel codec fit: post_filter_data_dirs, codebooks_from and post_filter_steps need "
                                "codec.post_filter_frames > 0")
        if self.stage_bands:
            n_q = self.codec_config().n_q
            if len(self.stage_bands) != n_q or not set(self.stage_bands) <= set(STAGE_BANDS):
                raise AudiogenError(f"mel codec fit: stage_bands needs one of {', '.join(STAGE_BANDS)} for each of "
                                    f"the {n_q} codebooks, got {self.stage_bands}")
            masks = self.stage_masks()
            if not masks.any(1).all():
                raise AudiogenError(f"mel codec fit: stage_split_hz {self.stage_split_hz:g} leaves a stage of "
                                    f"stage_bands without any band")

    def stage_masks(self) -> torch.Tensor | None:
        """``bool[n_q, n_mels]``: the bands each codebook is fitted on (``stage_bands``), or None (all)."""
        if not self.stage_bands:
            return None
        low = torch.from_numpy(band_centres(self.codec_config()) < self.stage_split_hz)
        return torch.stack([{"full": torch.ones_like(low), "low": low, "high": ~low}[b] for b in self.stage_bands])


#: what a stage of :attr:`MelVQFitConfig.stage_bands` may see
STAGE_BANDS = ("full", "low", "high")


def _assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 32_768) -> torch.Tensor:
    """Index of the nearest centroid (L2) of each row of ``x``, in chunks to bound memory."""
    c2 = centroids.pow(2).sum(-1)
    return torch.cat([(c2 - 2 * x[i : i + chunk] @ centroids.T).argmin(1) for i in range(0, len(x), chunk)])


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``x: [N, D]`` from ``k`` random rows; an emptied cluster is re-seeded
    from a random row. Returns (centroids ``[k, D]``, assignment ``[N]``)."""
    c = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(iters):
        a = _assign(x, c)
        count = torch.bincount(a, minlength=k).to(x.dtype)
        total = torch.zeros_like(c).index_add_(0, a, x)
        used = count > 0
        c[used] = total[used] / count[used, None]
        empty = (~used).nonzero().flatten()
        if len(empty):
            c[empty] = x[torch.randint(len(x), (len(empty),), generator=generator)]
    return c, _assign(x, c)


def track_mels(model: MelVQModel, caches: list, progress: bool = True, power: bool = False) -> list[torch.Tensor]:
    """Log-mel frames ``[T_i, n_mels]`` of each decoded track (int16 ``.npy`` at the codec rate); tracks
    shorter than a frame are left out. With ``power``, each frame goes on with its power in the quality
    checks' bands (:func:`measure_filterbank`, :func:`power_mel_db`): ``[T_i, n_mels + 64]``, what
    :func:`refine_post_filter` aims at."""
    import numpy as np

    from audiogen.progress import progress_bar

    hop = model.config.hop
    bank = measure_filterbank(model.config) if power else None
    feats = []
    for cache in progress_bar(caches, desc="mel features", disable=not progress):
        wav = torch.from_numpy(np.load(cache, mmap_mode="r")[:].astype(np.float32) / 32768.0)
        n = wav.shape[-1] // hop * hop
        if n:
            feats.append(frame_features(model, wav[:n], bank))
    return feats


def frame_features(model: MelVQModel, wav: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
    """Log-mel frames ``[T, n_mels]`` of mono ``wav: [N]`` (N a multiple of hop); with ``bank``
    (:func:`measure_filterbank`), each frame followed by its power in those bands (:func:`power_mel_db`):
    ``[T, n_mels + bands]``, both from one STFT."""
    spec = model.spectrum(wav[None, None])
    mel = model.mel_db(spec)[0]
    return mel if bank is None else torch.cat([mel, power_mel_db(spec, bank)[0]], -1)


def sample_frames(feats: list[torch.Tensor], stride: int, max_frames: int, generator: torch.Generator) -> torch.Tensor:
    """Every ``stride``-th frame of the tracks ``feats`` (:func:`track_mels`), then at most ``max_frames``
    of them drawn at random: ``[N, n_mels]``."""
    if not feats:
        raise AudiogenError("mel codec fit: no audio to fit on")
    x = torch.cat([f[::stride] for f in feats])
    if len(x) > max_frames:
        x = x[torch.randperm(len(x), generator=generator)[:max_frames]]
    return x


def sample_runs(feats: list[torch.Tensor], run: int, max_runs: int, generator: torch.Generator) -> torch.Tensor:
    """The tracks ``feats`` cut into whole runs of ``run`` contiguous frames, at most ``max_runs`` of
    them drawn at random: ``[S, run, n_mels]``."""
    runs = [f[: len(f) // run * run].reshape(-1, run, f.shape[-1]) for f in feats if len(f) >= run]
    if not runs:
        raise AudiogenError(f"mel codec fit: no audio to fit on (no track is {run} frames long)")
    x = torch.cat(runs)
    if len(x) > max_runs:
        x = x[torch.randperm(len(x), generator=generator)[:max_runs]]
    return x


def fit_codebooks(model: MelVQModel, x: torch.Tensor, iters: int, seed: int, state_file=None,
                  progress: bool = True, masks: torch.Tensor | None = None) -> None:
    """Fit ``model``'s mean and residual codebooks on frames ``x`` stage by stage (k-means on each
    stage's residual). ``masks: bool[n_q, n_mels]`` (:meth:`MelVQFitConfig.stage_masks`): each stage's
    k-means sees only its bands, and its codewords are zero on the others; the nearest codeword of such a
    stage is then the nearest on its bands, so encoding needs nothing else. With ``state_file``, every
    finished stage is saved there (atomically) and a rerun continues after the last saved one."""
    from pathlib import Path

    from audiogen.files import atomic_path
    from audiogen.progress import progress_bar

    cfg = model.config
    done = 0
    if state_file is not None and Path(state_file).is_file():
        state = torch.load(state_file, weights_only=True)
        if state["codebooks"].shape[1:] != model.codebooks.shape[1:] or not torch.equal(state["mean"], x.mean(0)):
            raise AudiogenError(f"{state_file}: saved stages do not match this config and data; "
                                "delete it (or the run folder) to start again")
        done = state["codebooks"].shape[0]
        model.codebooks[:done] = state["codebooks"]
    model.mean.copy_(x.mean(0))
    residual = x - model.mean
    for s in range(done):
        residual -= model.codebooks[s][_assign(residual, model.codebooks[s])]
    for s in progress_bar(range(done, cfg.n_q), desc="k-means stages", disable=not progress, initial=done,
                          total=cfg.n_q):
        generator = torch.Generator().manual_seed(seed * 1000 + s)
        if masks is None:
            centroids, a = kmeans(residual, cfg.bins, iters, generator)
        else:
            keep = masks[s].to(residual.dtype)
            centroids, a = kmeans(residual * keep, cfg.bins, iters, generator)
            centroids = centroids * keep
        model.codebooks[s] = centroids
        residual -= centroids[a]
        if state_file is not None:
            with atomic_path(state_file) as tmp:
                torch.save({"mean": model.mean.clone(), "codebooks": model.codebooks[: s + 1].clone()}, tmp)


#: the config fields that choose how codes are searched for a frame sequence; decoding does not read them (the
#: codebooks, mean and post-filter; the post-filter was fitted on codes of the search the codec was fitted with)
SEARCH_FIELDS = ("beam", "change_penalty", "residual_change_penalty", "changes_with_first", "residual_tied")


def with_search(codec_dir, out_dir, **search) -> Path:
    """A copy of the mel codec in ``codec_dir`` at ``out_dir`` that encodes with another search (``search``: fields
    of :data:`SEARCH_FIELDS`, e.g. ``residual_change_penalty=100, residual_tied=True``) and decodes exactly as it
    does: its weights file is copied byte for byte, so codes decode to the same audio. The default model's LM
    learns from tokens searched so (docs/codec_training.md, "Tied tokens for the LM")."""
    import json
    import shutil

    from audiogen.codec.base import CODEC_CONFIG, CODEC_WEIGHTS, MelVQCodec, load_codec
    from audiogen.files import atomic_path, atomic_write_text, make_dir

    src, out = Path(codec_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise AudiogenError(f"with_search: out_dir={out} is the codec's own folder; choose another")
    if not isinstance(load_codec(src), MelVQCodec):  # the loader's checks of the folder, its files and config
        raise AudiogenError(f"with_search: {src} is not a mel codec")
    meta = json.loads((src / CODEC_CONFIG).read_text())
    unknown = sorted(set(search) - set(SEARCH_FIELDS))
    if unknown:
        raise AudiogenError(f"with_search: {', '.join(unknown)} not search fields "
                            f"(those are {', '.join(SEARCH_FIELDS)})")
    config = {**meta["config"], **search}
    MelVQConfig.from_dict(config)  # the same checks as loading it
    make_dir(out)
    with atomic_path(out / CODEC_WEIGHTS) as tmp:
        shutil.copyfile(src / CODEC_WEIGHTS, tmp)
    atomic_write_text(out / CODEC_CONFIG, json.dumps({**meta, "config": config}, indent=2))
    return out


def encode_runs(model: MelVQModel, runs: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Codes ``[S, n_q, T]`` of runs of frames ``runs: [S, T, n_mels]``, encoded as ``model`` encodes."""
    codes = torch.cat([model.quantize(runs[i : i + chunk], model.config.n_q) for i in range(0, len(runs), chunk)])
    return codes.permute(0, 2, 1)


def fit_post_filter(model: MelVQModel, runs: torch.Tensor, ridge: float = 100.0,
                    codes: torch.Tensor | None = None) -> None:
    """Fit ``model``'s post-filters on runs of real frames ``runs: [S, T, n_mels]``: the runs are
    encoded as the codec encodes them (``codes``: those codes, :func:`encode_runs`, if already encoded), and for each
    codebook count the codec offers, a ridge regression maps the decoded frames around each frame
    (:meth:`MelVQModel.filter_context`) to what decoding missed there (the real frame minus the decoded one)."""
    codes = encode_runs(model, runs) if codes is None else codes
    filters = torch.zeros_like(model.post_filter)
    for i, k in enumerate(model.filtered_codebooks()):
        decoded = model.dequantize(codes[:, :k])
        a = model.filter_context(decoded).reshape(-1, filters.shape[1]).double()
        b = (runs - decoded).reshape(-1, runs.shape[-1]).double()
        eye = torch.eye(a.shape[1], dtype=torch.double)
        eye[-1, -1] = 0  # the bias is not shrunk
        filters[i] = torch.linalg.solve(a.T @ a + ridge * eye, a.T @ b).float()
    model.post_filter.copy_(filters)


def refine_post_filter(model: MelVQModel, codes: torch.Tensor, targets: torch.Tensor, steps: int, lr: float = 0.03,
                       batch: int = 16, seed: int = 0, progress: bool = True, check_runs: int = 64) -> dict:
    """Refine the per-band offset (the bias row) of ``model``'s post-filters on the power the quality checks measure.

    The least squares (:func:`fit_post_filter`) fits the codec's own bands, sums of STFT amplitudes; the
    magnitude the decoder rebuilds from them (:meth:`MelVQModel.magnitude`) is smooth within each band, so it
    carries less power than real spectra, which are peaky with partials: from the unquantized mel, 1.1 dB less
    in the checks' 64 bands, from 3 kbps codes 1.7 dB, and the roundtrip came back 2.4 LU quiet.
    ``codes: [S, n_q, T]`` encode runs whose power in the checks' bands is ``targets: [S, T, 64]`` (dB,
    :func:`track_mels` with ``power``). For each codebook count, ``steps`` Adam steps (``lr`` in dB) of ``batch``
    runs move the offset the filter adds to each band so as to lower the mean absolute difference between
    ``targets`` and the same bands of the rebuilt magnitude, both floored 80 dB under each run's loudest target
    bin as the checks floor them; the rest of the filter is kept. On the six held-out tracks at 3 kbps (tied codes,
    the LM's): 3.03 to 2.75 dB, and the roundtrip's loudness from 2.4 to 1.3 LU under the input's
    (docs/codec_training.md, "The decoder's level"). Returns each count's loss (dB) over the first
    ``check_runs`` runs before and after."""
    from audiogen.metrics.audio_checks import DYNAMIC_RANGE_DB
    from audiogen.progress import progress_bar

    bank = measure_filterbank(model.config)
    top = targets.amax(dim=(1, 2), keepdim=True) - DYNAMIC_RANGE_DB  # [S, 1, 1]
    floored = torch.maximum(targets, top)
    generator = torch.Generator().manual_seed(seed)
    check = slice(0, check_runs)
    report = {}
    for i, k in enumerate(model.filtered_codebooks()):
        filt = model.post_filter[i]
        decoded = model.dequantize(codes[:, :k])
        base = decoded + model.filter_context(decoded)[..., :-1] @ filt[:-1]  # the filter without its offset

        def loss_of(offset: torch.Tensor, pick) -> torch.Tensor:
            est = power_mel_db(model.magnitude(base[pick] + offset), bank)
            return (torch.maximum(est, top[pick]) - floored[pick]).abs().mean()

        offset = torch.nn.Parameter(filt[-1].clone())
        opt = torch.optim.Adam([offset], lr=lr)
        with torch.no_grad():
            before = float(loss_of(offset, check))
        for _ in progress_bar(range(steps), desc=f"post-filter offset, {k} codebooks", disable=not progress):
            loss = loss_of(offset, torch.randint(0, len(codes), (batch,), generator=generator))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.post_filter[i, -1] = offset.detach()
        with torch.no_grad():
            report[k] = [round(before, 4), round(float(loss_of(offset, check)), 4)]
    return report


def load_fit_config(path, overrides=()) -> MelVQFitConfig:
    """Read a YAML config and apply ``key=value`` overrides (``codec.KEY`` for codec fields)."""
    from audiogen.train.loop import load_config

    return load_config(MelVQFitConfig, path, overrides)


def _keep_codebooks(model: MelVQModel, codec_dir: str) -> None:
    """``codebooks_from``: copy the mean and codebooks of the mel codec in ``codec_dir`` into ``model``, whose
    config must be the codec's but for the post-filter, the search and the inversion (else the codebooks would
    mean other frames)."""
    from audiogen.codec.base import MelVQCodec, load_codec

    source = load_codec(codec_dir)
    if not isinstance(source, MelVQCodec):
        raise AudiogenError(f"codebooks_from={codec_dir} is not a mel codec")
    # the search (how codes are chosen) and the decoder's inversion do not change what the codebooks are
    same = {f: getattr(model.config, f) for f in SEARCH_FIELDS + ("inversion_iters",)}
    mine = dataclasses.replace(model.config, post_filter_frames=0)
    theirs = dataclasses.replace(source.model.config, post_filter_frames=0, **same)
    if mine != theirs:
        diff = {k: (v, getattr(theirs, k)) for k, v in dataclasses.asdict(mine).items() if getattr(theirs, k) != v}
        raise AudiogenError(f"codebooks_from={codec_dir}: its codec config differs from this one ({diff}: this, its)")
    model.mean.copy_(source.model.mean.float())
    model.codebooks.copy_(source.model.codebooks.float())


def _new_files(dirs: list, known: list) -> list:
    """The audio files under ``dirs`` in their order, each once, less those in ``known``."""
    from audiogen.audio.io import find_audio_files

    known = set(known)
    return [f for f in dict.fromkeys(f for d in dirs for f in find_audio_files(d)) if f not in known]


def fit_mel_codec(cfg: MelVQFitConfig, progress: bool = True) -> int:
    """The whole fit (``recipes/fit_mel_codec.py``): decode the corpus to the cache, split tracks,
    fit the codebooks stage by stage (resumable), export ``OUT_DIR/codec`` with ``training.json``."""
    import json
    import sys
    import time
    from pathlib import Path

    import yaml

    from audiogen.audio.io import find_audio_files
    from audiogen.codec.base import MelVQCodec, save_codec
    from audiogen.files import atomic_write_text, make_dir
    from audiogen.train.codec import decode_corpus, split_tracks

    out = Path(cfg.out_dir)
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise AudiogenError(f"data_dir={data_dir} is not a folder" if data_dir.exists() else f"data_dir={data_dir} does not exist")
    files = find_audio_files(data_dir)
    if not files:
        raise AudiogenError(f"no audio files under data_dir={data_dir}")
    saved = out / "config.yaml"
    # a field added since that fit was saved has its default there (each new field defaults to the old behaviour)
    if saved.is_file() and {**dataclasses.asdict(MelVQFitConfig()), **yaml.safe_load(saved.read_text())} != \
            dataclasses.asdict(cfg):
        raise AudiogenError(f"{out} holds a fit with another config ({saved}); choose another out_dir or delete it")
    started = time.time()
    train_files, held_out = split_tracks(files, cfg.holdout_tracks)
    codec_cfg = cfg.codec_config()
    # the codebooks' and the post-filter's extra tracks are decoded with the training tracks, into the same cache
    books_extra = _new_files(cfg.codebook_data_dirs, files)
    extra = _new_files(cfg.post_filter_data_dirs, files + books_extra)
    cache_of, skipped = decode_corpus(train_files + books_extra + extra, codec_cfg.sample_rate,
                                      Path(cfg.cache_dir) if cfg.cache_dir else out / "audio_cache", progress)
    for f, why in skipped:
        print(f"skipped: {why}", file=sys.stderr)
    train_files = [f for f in train_files if f in cache_of]
    books_extra = [f for f in books_extra if f in cache_of]
    extra = [f for f in extra if f in cache_of]
    if not train_files:
        raise AudiogenError(f"none of the audio files under data_dir={data_dir} could be decoded (each is listed above)")
    make_dir(out)
    atomic_write_text(saved, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    split = {"train": [str(f) for f in train_files], "held_out": [str(f) for f in held_out],
             "codebook_extra": [str(f) for f in books_extra], "post_filter_extra": [str(f) for f in extra],
             "skipped": [{"file": str(f), "reason": why} for f, why in skipped]}
    atomic_write_text(out / "split.json", json.dumps(split, indent=2))

    model = MelVQModel(codec_cfg)
    if cfg.codebooks_from:
        _keep_codebooks(model, cfg.codebooks_from)
    refine = bool(cfg.post_filter_steps)
    # training tracks first; with the refinement, each frame carries its power in the checks' bands after its mel
    fitted_on = train_files + books_extra  # the codebooks' tracks; every track goes into the post-filter's sample
    feats = track_mels(model, [cache_of[f] for f in fitted_on + extra], progress, power=refine)
    runs = (sample_runs(feats, cfg.post_filter_run, cfg.post_filter_runs, torch.Generator().manual_seed(cfg.seed + 1))
            if codec_cfg.post_filter_frames else None)
    frames = 0
    if not cfg.codebooks_from:
        generator = torch.Generator().manual_seed(cfg.seed)
        x = sample_frames([f[:, : codec_cfg.n_mels] for f in feats[: len(fitted_on)]], cfg.frame_stride,
                          cfg.max_frames, generator)
        del feats
        fit_codebooks(model, x, cfg.kmeans_iters, cfg.seed, out / "fit_state.pt", progress, cfg.stage_masks())
        frames = len(x)
    refined = {}
    if runs is not None:
        runs, power = runs[..., : codec_cfg.n_mels], runs[..., codec_cfg.n_mels :]
        codes = encode_runs(model, runs)
        fit_post_filter(model, runs, cfg.post_filter_ridge, codes)
        if refine:
            refined = refine_post_filter(model, codes, power, cfg.post_filter_steps, cfg.post_filter_lr,
                                         cfg.post_filter_batch, cfg.seed, progress)
    path = save_codec(MelVQCodec(model.eval(), codec_cfg, cfg.name), out / "codec")
    atomic_write_text(path / "training.json", json.dumps(
        {"frames": frames, "fit_seconds": round(time.time() - started, 1), **split, "config": dataclasses.asdict(cfg),
         "post_filter_refinement_loss_db": refined},
        indent=2))
    print(f"mel codec: {len(train_files)} tracks, {frames} frames, {codec_cfg.n_q} x {codec_cfg.bins} codes -> {path}",
          file=sys.stderr)
    return 0
