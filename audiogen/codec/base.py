"""The codec layer: waveforms <-> discrete tokens.

Contract (see DESIGN.md): a :class:`Codec` exposes ``sample_rate``, ``channels``,
``frame_rate``, ``hop_length``, ``num_codebooks``, ``cardinality``,
``encode(wav: FloatTensor[B, C, N]) -> LongTensor[B, K, T]`` with ``T = ceil(N / hop)``
and ``decode(codes: LongTensor[B, K, T]) -> FloatTensor[B, C, T * hop]``.

Backends:
- :class:`EncodecCodec` wraps the ``encodec`` package (SEANet + residual VQ): the
  pretrained 24 kHz / 48 kHz models from a local checkpoint, a tiny random-init model
  for tests, or a codec we trained and saved with :func:`save_codec`.
- :class:`STFTCodec`: our CPU-trainable codec (log-mel encoder, factorized RVQ, iSTFT decoder;
  :mod:`audiogen.codec.stft`), the default model's codec.
- :class:`HFEncodecCodec` wraps a transformers ``EncodecModel`` (e.g. MusicGen's
  32 kHz 4-codebook EnCodec, ``facebook/encodec_32khz``); see ``audiogen.models.musicgen_import``.

Long inputs are encoded and decoded in frame-aligned windows with context on both
sides (the left alone for a causal codec) that is computed and thrown away, so memory is bounded by the window size, not
the file length, and windows are batched together for speed. An EnCodec (SEANet) runs through
:mod:`audiogen.codec.seanet`'s lean pass: the package's layers with fewer passes over memory and, on CPU, a causal
model's convolutions in chunks with carried state.

A job that encodes many equal-length pieces (prep) batches them by :attr:`Codec.preferred_batch`,
pads the last batch to the same shape and says so with ``encode(wav, rows=n)``, so a piece's
codes depend only on its own audio and the batch size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audiogen.codec.seanet import run_chunked, run_layers, rvq_encode
from audiogen.devices import resolve_device  # noqa: F401 (part of this module's API)
from audiogen.errors import AudiogenError, dataclass_from_dict
from audiogen.files import sha256_file

#: Where the encodec package's pretrained checkpoints are published (for the error message only;
#: nothing here downloads).
ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/{name}"
PRETRAINED_FILES = {
    "encodec_24khz": "encodec_24khz-d7cc33bc.th",
    "encodec_48khz": "encodec_48khz-7e698e3e.th",
}


@dataclass(frozen=True)
class EncodecConfig:
    """Architecture of an ``encodec``-package model (SEANet encoder/decoder + RVQ)."""

    sample_rate: int = 24_000
    channels: int = 1
    causal: bool = True
    norm: str = "weight_norm"
    n_filters: int = 32
    dimension: int = 128
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    n_residual_layers: int = 1
    lstm: int = 2
    n_q: int = 32
    bins: int = 1024
    target_bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    #: k-means codebook init on the first training batch (encodec's default)
    kmeans_init: bool = True

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @classmethod
    def from_dict(cls, d: dict) -> "EncodecConfig":
        return dataclass_from_dict(cls, d, "codec config keys", ("ratios", "target_bandwidths"))


NAMED_CONFIGS = {
    "encodec_24khz": EncodecConfig(),
    "encodec_48khz": EncodecConfig(
        sample_rate=48_000, channels=2, causal=False, norm="time_group_norm", n_q=16,
        target_bandwidths=(3.0, 6.0, 12.0, 24.0),
    ),
    # Random-init, a few thousand parameters: for tests and CI. Same shape of network.
    "tiny": EncodecConfig(
        n_filters=4, dimension=16, lstm=0, n_q=4, bins=64, target_bandwidths=(0.9, 1.8),
    ),
}


def build_encodec_model(cfg: EncodecConfig):
    """Instantiate an ``encodec.EncodecModel`` from a config (random weights)."""
    import warnings

    from encodec import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    common = dict(
        channels=cfg.channels, dimension=cfg.dimension, n_filters=cfg.n_filters,
        n_residual_layers=cfg.n_residual_layers, ratios=list(cfg.ratios), norm=cfg.norm,
        causal=cfg.causal, lstm=cfg.lstm,
    )
    with warnings.catch_warnings():  # encodec uses the old weight_norm API; harmless
        warnings.simplefilter("ignore", FutureWarning)
        encoder = SEANetEncoder(**common)
        decoder = SEANetDecoder(**common)
    quantizer = ResidualVectorQuantizer(dimension=cfg.dimension, n_q=cfg.n_q, bins=cfg.bins, kmeans_init=cfg.kmeans_init)
    model = EncodecModel(
        encoder, decoder, quantizer, list(cfg.target_bandwidths), cfg.sample_rate, cfg.channels,
        normalize=False, segment=None, name="audiogen",
    )
    return model


@torch.no_grad()
def _init_random_codec(model, cfg: EncodecConfig, seconds: float = 2.0) -> None:
    """Make a random-init codec whose codes depend on its input.

    An untrained SEANet's output is dominated by its conv biases, so every frame lands
    on the same codebook entry. With biases zeroed, the embeddings vary with the audio;
    encodec's own k-means init on deterministic synthetic audio (tones, chirps, noise)
    then spreads the codebooks over them. The LM and generation tests need this.
    """
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
    n = int(seconds * cfg.sample_rate)
    t = torch.arange(n) / cfg.sample_rate
    g = torch.Generator().manual_seed(1234)
    parts = []
    for i in range(4):
        f0 = 55.0 * 2 ** (i * 1.5)
        parts.append(0.4 * torch.sin(2 * math.pi * f0 * t * (1 + 0.3 * t / seconds)))
        parts.append(0.1 * torch.randn(n, generator=g) * (i + 1) / 4)
    wav = torch.stack(parts).view(len(parts), 1, n).expand(-1, cfg.channels, -1).contiguous()
    model.train()
    emb = model.encoder(wav)
    model.quantizer(emb, cfg.sample_rate / cfg.hop_length)
    model.eval()
    # a bias-free random decoder whispers (~1e-5): scale its last conv so decoded codes
    # come out at a music-like level (RMS 0.1), which loudness normalization can work with
    out = model.decoder(model.quantizer.decode(model.quantizer.encode(emb, cfg.sample_rate / cfg.hop_length)))
    rms = out.pow(2).mean().sqrt().clamp_min(1e-12)
    last = [p for n, p in model.decoder.named_parameters() if n.endswith("weight_g") or n.endswith("original0")][-1]
    last.mul_(0.1 / rms)


#: bump when _init_random_codec changes, so stale cached tiny weights are not reused
TINY_INIT_VERSION = 2


def cache_dir() -> Path:
    """audiogen's cache folder: ``$AUDIOGEN_CACHE``, else ``$XDG_CACHE_HOME/audiogen`` or ``~/.cache/audiogen``."""
    if os.environ.get("AUDIOGEN_CACHE"):
        return Path(os.environ["AUDIOGEN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audiogen"


@functools.lru_cache(maxsize=4)
def _tiny_state(seed: int) -> dict:
    """Weights of the random ``tiny`` codec for ``seed``: built once, then read from the cache folder
    (the k-means init takes seconds, and every test subprocess would pay it)."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"tiny_codec_seed{seed}_v{TINY_INIT_VERSION}_torch{torch.__version__.split('+')[0]}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache file is rebuilt
            pass
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_encodec_model(NAMED_CONFIGS["tiny"])
        _init_random_codec(model, NAMED_CONFIGS["tiny"])
    finally:
        torch.random.set_rng_state(gen_state)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    try:
        from audiogen.files import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    except OSError:  # a read-only home is fine: no cache
        pass
    return state


def _is_lstm(layer: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.LSTM) for m in layer.children())


def rows_around_lstm(layers: list[torch.nn.Module], x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``layers`` in turn to ``x[B, C, L]``: each row through the convolutions on its own, all rows
    together through a layer that wraps an LSTM (the encodec package's ``SLSTM``).

    The result equals ``Sequential(*layers)(x)`` up to float rounding (the convolutions go through
    :func:`audiogen.codec.seanet.run_chunked`: a causal run in 4 s chunks), and a row's result depends only on
    its own input and ``B``. On a CPU core the split is the faster order: a long window's convolutions
    run faster one row at a time than batched, and the LSTM's step, a matrix-vector product for one
    row, becomes a matrix product for many (2 layers of 512 over 900 steps, one thread: 0.36 s for one
    row, 0.72 s for 8). Rows where ``real`` is False are padding: they skip the convolutions and enter
    the LSTM as zeros, so a batch padded to a fixed shape costs little more than its real rows.
    """
    keep = [i for i in range(x.shape[0]) if real is None or bool(real[i])]
    hs: dict[int, torch.Tensor] = {i: x[i : i + 1] for i in keep}

    def batch() -> torch.Tensor:  # the kept rows in their places, padding rows as zeros
        like = next(iter(hs.values()))
        return torch.cat([hs[i] if i in hs else torch.zeros_like(like) for i in range(x.shape[0])])

    run: list[torch.nn.Module] = []
    for layer in [*layers, None]:
        if layer is not None and not _is_lstm(layer):
            run.append(layer)
            continue
        if run:  # the convolutions since the last LSTM, a row at a time (a causal run in chunks)
            hs = {i: run_chunked(run, h) for i, h in hs.items()}
            run = []
        if layer is not None:  # the LSTM, all rows at once
            y = layer(batch())
            hs = {i: y[i : i + 1] for i in keep}
    return batch()


def run_seanet(layers: list[torch.nn.Module], x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """A SEANet encoder's or decoder's ``layers`` over ``x [B, C, L]`` through the lean pass: on CPU row by
    row around the LSTM (:func:`rows_around_lstm`, ``real`` marking padding rows), elsewhere the whole batch
    at once (:func:`audiogen.codec.seanet.run_layers`)."""
    return rows_around_lstm(layers, x, real) if x.device.type == "cpu" else run_layers(layers, x)


def roundtrip_array(codec, wav: np.ndarray) -> np.ndarray:
    """``wav: float32 [C, N]`` (numpy) encoded and decoded by ``codec`` (on its device): ``float32 [C, N]`` on the
    CPU, cut to the input's length (a codec pads to whole frames). What the metrics hear "through the codec"."""
    with torch.inference_mode():
        y = codec.decode(codec.encode(torch.from_numpy(wav)[None].to(codec.device)))[0]
    return y.float().cpu().numpy()[..., : wav.shape[-1]]


class Codec:
    """Base class: windowed, batched encode/decode on top of a backend's whole-window calls.

    Subclasses implement ``_encode_window(wav[B, C, L]) -> codes[B, K, L // hop]`` and
    ``_decode_window(codes[B, K, F]) -> wav[B, C, F * hop]`` for frame-aligned inputs.
    """

    sample_rate: int
    channels: int
    hop_length: int
    num_codebooks: int
    cardinality: int
    #: window and context lengths for long inputs, in seconds
    window_s: float = 10.0
    context_s: float = 1.0
    #: the window on CPU, when it differs from ``window_s`` (see :attr:`window_seconds`)
    cpu_window_s: float | None = None
    #: codec context a streaming decoder keeps on each side of a chunk (``audiogen.generation.stream``): the
    #: reach of a frame into its neighbours' audio; it is also the lookahead each streamed chunk waits for
    stream_context_s: float = 0.6
    #: windows encoded/decoded per forward pass; None: by device, see :attr:`windows_per_call`
    window_batch: int | None = None
    #: a frame's codes (and its decoded audio) depend on no later audio (codes): windows then need context
    #: on the left only, since what follows a window cannot change it
    causal: bool = False
    #: :meth:`decode` can transpose what the codes play (``semitones``): a codec whose decoder builds a magnitude
    #: spectrum and its phase (the mel codec), so moving the partials costs nothing a waveform decoder would
    transposes: bool = False

    @property
    def windows_per_call(self) -> int:
        """``window_batch``, or by device: 8 on a GPU, where batching windows fills it; 1 on CPU, where
        one window at a time measured faster and leaner (90 s through the default model's codec:
        encode 1.97 s and 294 MB vs 4.26 s and 695 MB with 8; decode 2.4-2.6 s vs 4.2-4.4 s, 0.3-0.4 GB
        vs 0.9 GB)."""
        if self.window_batch is not None:
            return self.window_batch
        return 8 if self.device.type == "cuda" else 1

    @property
    def window_seconds(self) -> float:
        """The window :meth:`encode` and :meth:`decode` cut long inputs into: ``cpu_window_s`` on CPU when set,
        else ``window_s``."""
        if self.cpu_window_s is not None and self.device.type == "cpu":
            return self.cpu_window_s
        return self.window_s

    @property
    def preferred_batch(self) -> int:
        """Rows per :meth:`encode` call that a job with many equal-length pieces (prep) should use: 8 on a
        GPU; 1 on CPU, where a batch's rows cost as much as one at a time or more (padding rows included;
        the default model's codec, 11 segments of 30 s, one thread: 2.3 s one at a time, 3.2 s in 8s)."""
        return 8 if self.device.type == "cuda" else 1

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-able description recorded in model directories and sidecars."""
        raise NotImplementedError

    #: a codebook-0 code is "silent" when the frame it decodes to, held, is quieter than this (BS.1770, LUFS of
    #: the codec's raw output; the default model's training frames: median -26, 2 % below -50). The same level
    #: as the stream's loudness follower's gate: :meth:`silent_codes`, the sampler's silence guard
    SILENT_LUFS = -50.0
    #: a codebook-0 code is "quiet" when the frame it decodes to, held, is quieter than this: some 20 dB under
    #: the default model's median frame, where a frame of one in the middle of music is heard as a hole
    #: (:func:`audiogen.metrics.audio_checks.dropouts_per_minute`). :meth:`quiet_codes`, the sampler's cap on
    #: what guidance may add (``SamplingParams.cap_quiet``)
    QUIET_LUFS = -40.0

    def silent_codes(self) -> torch.Tensor | None:
        """``BoolTensor[cardinality]``: the codebook-0 codes that decode to (near) silence whatever the other
        codebooks hold, or None when the codec cannot tell (then nothing guards against long silences)."""
        return None

    def quiet_codes(self) -> torch.Tensor | None:
        """``BoolTensor[cardinality]``: the codebook-0 codes that decode to frames quieter than ``QUIET_LUFS``
        (the silent ones among them), or None when the codec cannot tell."""
        return None

    def to(self, device) -> "Codec":
        raise NotImplementedError

    # -- windowing ----------------------------------------------------------------------
    def _windows(self, total_frames: int) -> list[tuple[int, int, int, int]]:
        """Split ``total_frames`` into (ctx_start, start, end, ctx_end) frame windows."""
        w = max(1, int(round(self.window_seconds * self.frame_rate)))
        x = int(round(self.context_s * self.frame_rate))
        if total_frames <= w + 2 * x:
            return [(0, 0, total_frames, total_frames)]
        right = 0 if self.causal else x
        out = []
        for a in range(0, total_frames, w):
            b = min(a + w, total_frames)
            out.append((max(0, a - x), a, b, min(total_frames, b + right)))
        return out

    def _run_windows(self, x: torch.Tensor, fn, in_scale: int, out_scale: int,
                     **per_row: torch.Tensor | None) -> torch.Tensor:
        """Apply ``fn`` window by window along the last axis; windows of equal length are batched.

        ``in_scale``/``out_scale`` are samples per frame on the input/output side
        (hop for audio, 1 for codes). Each ``per_row`` tensor ``[B]`` that is not None is passed on as
        ``fn(batch, name=...)``, repeated for each window in the batch: ``real`` (False marks padding rows),
        ``semitones`` (a row's transposition).
        """
        per_row = {k: v for k, v in per_row.items() if v is not None}
        total = x.shape[-1] // in_scale
        windows = self._windows(total)
        by_len: dict[int, list[int]] = {}
        for i, (cs, _, _, ce) in enumerate(windows):
            by_len.setdefault(ce - cs, []).append(i)
        B = x.shape[0]
        out: torch.Tensor | None = None  # allocated from the first output; each window's centre is copied in
        per_call = max(1, self.windows_per_call // max(B, 1))
        for idxs in by_len.values():
            for j in range(0, len(idxs), per_call):
                group = idxs[j : j + per_call]
                batch = torch.cat([x[..., windows[i][0] * in_scale : windows[i][3] * in_scale] for i in group])
                y = fn(batch, **{k: v.repeat(len(group)) for k, v in per_row.items()})
                if out is None:
                    out = y.new_empty((B, *y.shape[1:-1], total * out_scale))
                for n, i in enumerate(group):
                    cs, a, b, _ = windows[i]
                    centre = y[n * B : (n + 1) * B, ..., (a - cs) * out_scale : (b - cs) * out_scale]
                    out[..., a * out_scale : b * out_scale] = centre
                del y  # one group's output at a time: memory is the result plus one batch of windows
        return out  # type: ignore[return-value]

    # -- public API -------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """``wav: FloatTensor[B, C, N]`` at ``sample_rate`` -> ``codes: LongTensor[B, K, ceil(N / hop)]``.

        ``rows``: only the first ``rows`` rows are wanted; the rest pad a batch to a fixed shape (so that
        a row's codes never depend on how many others shared its batch) and their codes are
        unspecified. A backend may skip most of their work (:class:`EncodecCodec` on CPU does)."""
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise AudiogenError(
                f"codec expects audio shaped [batch, {self.channels}, samples], got {tuple(wav.shape)}"
            )
        if wav.shape[-1] == 0:
            raise AudiogenError("cannot encode zero-length audio")
        hop = self.hop_length
        n = wav.shape[-1]
        frames = -(-n // hop)
        wav = torch.nn.functional.pad(wav.to(self.device, torch.float32), (0, frames * hop - n))
        real = None
        if rows is not None:
            if not 1 <= rows <= wav.shape[0]:
                raise AudiogenError(f"rows must lie in [1, {wav.shape[0]}], got {rows}")
            if rows < wav.shape[0]:
                real = torch.arange(wav.shape[0]) < rows
        return self._run_windows(wav, self._encode_window, hop, 1, real=real)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, semitones=None) -> torch.Tensor:
        """``codes: LongTensor[B, K, T]`` -> ``wav: FloatTensor[B, C, T * hop]``. ``semitones``: per row (``[B]``,
        or one number for all), how far to transpose what the codes play, for a codec that can
        (:attr:`transposes`); None or zeros: as coded."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise AudiogenError(
                f"codec expects codes shaped [batch, {self.num_codebooks}, frames], got {tuple(codes.shape)}"
            )
        if codes.shape[-1] == 0:
            raise AudiogenError("cannot decode zero frames of codes")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cardinality):
            raise AudiogenError(f"codes must lie in [0, {self.cardinality}); got {int(codes.min())}..{int(codes.max())}")
        shift = None
        if semitones is not None:
            shift = torch.as_tensor(semitones, dtype=torch.float32).reshape(-1).expand(codes.shape[0]).clone()
            if not bool(torch.isfinite(shift).all()):
                raise AudiogenError(f"semitones must be finite numbers, got {semitones!r}")
            if not bool((shift != 0).any()):
                shift = None
            elif not self.transposes:
                raise AudiogenError(f"codec '{self.name}' cannot decode transposed (only a mel codec can; "
                                    "generate --no-key-shift plays every key as the model learned it)")
        return self._run_windows(codes.to(self.device, torch.long), self._decode_window, 1, self.hop_length,
                                 semitones=shift)

    def retuned(self, a4_hz: float) -> tuple["Codec", float]:
        """``(this codec decoding in tune with A4 = a4_hz, the semitones its every decode is moved by)``, for a codec
        whose bands sit on semitones (the mel codec with the ``pitch`` filterbank): a copy sharing the weights, this
        one unchanged (a server's streams share it). Others: an :class:`AudiogenError` (their decoders have no notes
        to move)."""
        raise AudiogenError(f"codec '{self.name}' has no semitone bands to tune (only a mel codec with the pitch "
                            "filterbank has); leave out --tuning")

    def _encode_window(self, wav: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """``real``: see :meth:`_run_windows`; a backend that cannot skip padding rows ignores it."""
        raise NotImplementedError

    def _decode_window(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EncodecCodec(Codec):
    """An ``encodec``-package model used at a fixed number of codebooks (bandwidth)."""

    def __init__(self, model, config: EncodecConfig, name: str, num_codebooks: int | None = None,
                 weights_sha256: str | None = None):
        self.model = model.eval()
        self.config = config
        self.name = name
        self.sample_rate = config.sample_rate
        self.channels = config.channels
        self.hop_length = config.hop_length
        self.cardinality = config.bins
        k = config.n_q if num_codebooks is None else int(num_codebooks)
        if not 1 <= k <= config.n_q:
            raise AudiogenError(f"codec '{name}' has {config.n_q} codebooks; cannot use {k}")
        self.num_codebooks = k
        self.weights_sha256 = weights_sha256
        if getattr(config, "norm", None) == "time_group_norm":
            # Normalised over each window's whole time axis (the 48 kHz kind, trained on 1 s segments):
            # windows never equal a whole-file pass, and long ones only cost more. Measured, one thread,
            # CPU-s per second of stereo audio, encode/decode: 12 s windows (10 s + 1 s context each side)
            # 0.278/0.371; 2 s + 0.1 s 0.219/0.259; the encodec package's 1 s segments 0.213/0.233
            # (docs/prep.md, Throughput).
            self.window_s, self.context_s = 2.0, 0.1
        # the encodec package's causal SEANet (the 24 kHz kind): left padding only, a forward LSTM, transposed
        # convolutions trimmed on the right; not the models other backends put in self.model
        self.causal = bool(getattr(config, "causal", False)) and self._encoder_layers() is not None
        if self.causal:
            # On CPU a window's left context (1 s) is computed and thrown away: 10 % of a 10 s window, 3 % of
            # 30 s, and none for a 30 s prep segment, which becomes one window. Memory stays small: on CPU a
            # batch's rows go through the convolutions one at a time, in 4 s chunks (rows_around_lstm,
            # seanet.run_chunked); 120 s encoded and decoded in 0.99 GB of peak RSS (docs/prep.md, "Lean SEANet
            # pass"). GPUs keep 10 s windows, batched 8 at a time.
            self.cpu_window_s = 30.0

    @property
    def bandwidth_kbps(self) -> float:
        return self.num_codebooks * math.log2(self.cardinality) * self.frame_rate / 1000

    @property
    def preferred_batch(self) -> int:
        """8 on CPU too when the encoder has an LSTM: its rows run through it together (:func:`rows_around_lstm`;
        the 24 kHz EnCodec, 11 segments of 30 s, one thread: 27.3-28.4 s one at a time, 23.7 s in 8s)."""
        return 8 if self._lstm_on_cpu() else super().preferred_batch

    @property
    def windows_per_call(self) -> int:
        """On CPU, 8 for a SEANet with an LSTM too: its windows go through the convolutions one at a time
        anyway and through the LSTM together (:func:`rows_around_lstm`)."""
        return 8 if self.window_batch is None and self._lstm_on_cpu() else super().windows_per_call

    def _lstm_on_cpu(self) -> bool:
        """A SEANet with an LSTM, on CPU: where a batch is cheaper per row than one row (:func:`rows_around_lstm`)."""
        layers = self._encoder_layers()
        return self.device.type == "cpu" and layers is not None and any(map(_is_lstm, layers))

    def _encoder_layers(self, part: str = "encoder") -> list[torch.nn.Module] | None:
        """The SEANet encoder's (or decoder's) layers, in order; None for a model built otherwise."""
        layers = getattr(getattr(self.model, part, None), "model", None)
        return list(layers) if isinstance(layers, torch.nn.Sequential) else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "EncodecCodec":
        self.model.to(device)
        return self

    def describe(self) -> dict:
        return {
            "backend": "encodec",
            "name": self.name,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.frame_rate,
            "num_codebooks": self.num_codebooks,
            "cardinality": self.cardinality,
            "bandwidth_kbps": round(self.bandwidth_kbps, 3),
            "weights_sha256": self.weights_sha256,
        }

    def _encode_window(self, wav: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        layers = self._encoder_layers()
        emb = self.model.encoder(wav) if layers is None else run_seanet(layers, wav, real)
        codes = rvq_encode(self.model.quantizer.vq, emb, self.num_codebooks)  # [K, B, T]
        return codes.transpose(0, 1)

    def _decode_window(self, codes: torch.Tensor) -> torch.Tensor:
        emb = self.model.quantizer.decode(codes.transpose(0, 1))
        layers = self._encoder_layers("decoder")
        return self.model.decoder(emb) if layers is None else run_seanet(layers, emb)


class STFTCodec(EncodecCodec):
    """An :class:`audiogen.codec.stft.STFTCodecModel` used at a fixed number of codebooks (its config
    has the same fields as :class:`EncodecConfig` for what the bookkeeping reads)."""

    def describe(self) -> dict:
        return {**super().describe(), "backend": "stft"}

    def _encode_window(self, wav: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode(wav, self.num_codebooks)

    def _decode_window(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes)


class MelVQCodec(EncodecCodec):
    """An :class:`audiogen.codec.mel.MelVQModel` (residual VQ of log-mel frames, Griffin-Lim
    decoding) used at a fixed number of codebooks."""

    #: its decoder transposes the magnitude Griffin-Lim starts from (:func:`audiogen.codec.mel.shift_spectrum`)
    transposes = True
    #: Griffin-Lim makes each decoding window's phases its own; long windows put few joins in a file
    window_s = 30.0
    #: 1 s chunks of held-out music decoded with 0.2 s of context differ from the whole-file decode
    #: by 0.16 dB of log-mel within two frames of a join and 0.00 dB elsewhere (0.6 s: 0.07 dB)
    stream_context_s = 0.2

    @property
    def device(self) -> torch.device:
        return self.model.mean.device

    def describe(self) -> dict:
        desc = {**super().describe(), "backend": "melvq"}
        if self.model.config.change_penalty:  # the same codebooks encode differently with it
            desc["change_penalty"] = self.model.config.change_penalty
        if self.model.config.residual_change_penalty:
            desc["residual_change_penalty"] = self.model.config.residual_change_penalty
        if self.model.config.changes_with_first:
            desc["changes_with_first"] = True
        if self.model.config.residual_tied:
            desc["residual_tied"] = True
        if self.model.config.post_filter_frames:  # the same codes decode differently with it
            desc["post_filter_frames"] = self.model.config.post_filter_frames
        if self.model.config.filterbank != "slaney":  # other bands: other features, other codes
            desc["filterbank"] = self.model.config.filterbank
        return desc

    def retuned(self, a4_hz: float) -> tuple["Codec", float]:
        """:meth:`Codec.retuned` through the model's ``retune_hz``
        (:meth:`~audiogen.codec.mel.MelVQModel.retune_semitones`): the semitone bands' region moved onto the notes of
        that tuning at every decode; the codes do not change."""
        import copy

        cfg = self.model.config
        if cfg.filterbank != "pitch":
            return super().retuned(a4_hz)
        model = copy.copy(self.model)  # the same parameters and buffers, its own config
        model.config = dataclasses.replace(cfg, retune_hz=float(a4_hz))
        codec = copy.copy(self)
        codec.model = model
        return codec, model.retune_semitones()

    def silent_codes(self) -> torch.Tensor:
        """Codebook 0's codewords are whole log-mel frames (over the mean): silent where such a frame, held,
        is quieter than ``SILENT_LUFS`` (:meth:`MelVQModel.code_loudness`)."""
        return self.model.code_loudness() < self.SILENT_LUFS

    def quiet_codes(self) -> torch.Tensor:
        """As :meth:`silent_codes`, under ``QUIET_LUFS``."""
        return self.model.code_loudness() < self.QUIET_LUFS

    def _encode_window(self, wav: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode(wav, self.num_codebooks)

    def _decode_window(self, codes: torch.Tensor, semitones: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.decode(codes, semitones)


class HFEncodecCodec(Codec):
    """A transformers ``EncodecModel`` (MusicGen's 32 kHz EnCodec layout) used at a fixed number of codebooks.

    Encoding runs the SEANet encoder and the first ``num_codebooks`` residual quantizers;
    decoding sums their codebook vectors and runs the decoder: the same computation as
    ``EncodecModel.encode``/``decode`` for a model without input normalization or chunking.
    """

    def __init__(self, model, num_codebooks: int | None = None, name: str = "hf-encodec",
                 weights_sha256: str | None = None):
        cfg = model.config
        if cfg.normalize or cfg.chunk_length_s is not None:
            raise AudiogenError(
                f"codec '{name}': EnCodec models with input normalization or chunking (the 48 kHz kind) are not "
                "supported; MusicGen's 32 kHz EnCodec uses neither"
            )
        self.model = model.eval()
        self.name = name
        self.sample_rate = int(cfg.sampling_rate)
        self.channels = int(cfg.audio_channels)
        self.hop_length = math.prod(cfg.upsampling_ratios)
        self.cardinality = int(cfg.codebook_size)
        n_q = len(model.quantizer.layers)
        k = n_q if num_codebooks is None else int(num_codebooks)
        if not 1 <= k <= n_q:
            raise AudiogenError(f"codec '{name}' has {n_q} codebooks; cannot use {k}")
        self.num_codebooks = k
        self.weights_sha256 = weights_sha256

    # the same bookkeeping as EncodecCodec (a torch model in self.model, the same description fields)
    bandwidth_kbps = EncodecCodec.bandwidth_kbps
    device = EncodecCodec.device
    to = EncodecCodec.to

    def describe(self) -> dict:
        return {**EncodecCodec.describe(self), "backend": "hf_encodec"}

    def _encoder_layers(self, part: str = "encoder") -> list[torch.nn.Module]:
        """The encoder's (or decoder's) layers: the lean SEANet pass (:func:`run_seanet`) takes transformers'
        EnCodec layers as it takes the encodec package's."""
        return list(getattr(self.model, part).layers)

    def _encode_window(self, wav: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        residual = run_seanet(self._encoder_layers(), wav, real)
        codes = []
        for layer in self.model.quantizer.layers[: self.num_codebooks]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)  # [B, K, T]

    def _decode_window(self, codes: torch.Tensor) -> torch.Tensor:
        emb = self.model.quantizer.decode(codes.transpose(0, 1))
        return run_seanet(self._encoder_layers("decoder"), emb)

    @classmethod
    def load(cls, path: Path, meta: dict, num_codebooks: int | None = None) -> "HFEncodecCodec":
        from safetensors.torch import load_file
        from transformers import EncodecConfig as HFConfig
        from transformers import EncodecModel

        try:
            cfg = HFConfig.from_json_file(str(path / "config.json"))
        except (OSError, ValueError) as e:
            raise AudiogenError(f"{path}: invalid EnCodec config.json ({e})") from None
        model = EncodecModel(cfg)
        w = path / CODEC_WEIGHTS
        try:
            model.load_state_dict(load_file(str(w)))
        except Exception as e:
            raise AudiogenError(f"{w}: weights do not match {path / 'config.json'} ({type(e).__name__})") from None
        k = num_codebooks if num_codebooks is not None else meta.get("num_codebooks")
        return cls(model.float(), k, name=meta.get("name", path.name), weights_sha256=sha256_file(w))


# ------------------------------------------------------------------------------ loading


def num_codebooks_for_bandwidth(cfg: EncodecConfig, bandwidth_kbps: float) -> int:
    per_q = math.log2(cfg.bins) * cfg.sample_rate / cfg.hop_length / 1000
    if bandwidth_kbps not in cfg.target_bandwidths:
        raise AudiogenError(
            f"bandwidth {bandwidth_kbps:g} kbps is not one this codec was trained for; "
            f"choose one of {', '.join(f'{b:g}' for b in cfg.target_bandwidths)}"
        )
    return max(1, int(bandwidth_kbps // per_q + 1e-9))


def pretrained_weights_path(name: str) -> Path:
    """Where a pretrained EnCodec checkpoint is looked for: ``$AUDIOGEN_WEIGHTS`` or torch's hub cache."""
    base = os.environ.get("AUDIOGEN_WEIGHTS")
    if base:
        return Path(base) / PRETRAINED_FILES[name]
    return Path(torch.hub.get_dir()) / "checkpoints" / PRETRAINED_FILES[name]


def load_codes(path: str | os.PathLike) -> torch.Tensor:
    """A token file written by ``audiogen codec encode`` (.npy of integers ``[K, T]``) as ``LongTensor[1, K, T]``."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise AudiogenError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise AudiogenError(f"{path}: not a .npy token file (write one with 'audiogen codec encode')")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise AudiogenError(f"{path}: corrupt .npy token file ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise AudiogenError(f"{path}: expected integer tokens shaped [K, T], got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr.astype(np.int64))[None]


#: ``--codec default``: the codec of the embedded default model (resolved through its config)
DEFAULT_CODEC = "default"


def default_codec_spec() -> tuple[str, int | None]:
    """(spec, codebooks) of the codec the embedded default model's config names: its folder
    (``audiogen/default_model/codec`` today) or a codec name, and the codebooks the model uses."""
    from audiogen.generation.pipeline import resolve_model_dir
    from audiogen.models.checkpoint import read_config

    model_dir = resolve_model_dir(None)
    info = read_config(model_dir)["codec"]
    spec = str(info.get("spec", ""))
    if spec in ("", DEFAULT_CODEC):
        raise AudiogenError(f"{model_dir}: the default model's config names no codec (codec.spec: {spec!r})")
    return (str(model_dir / spec) if (model_dir / spec).is_dir() else spec), info.get("num_codebooks")


#: ``describe()`` keys that decide what a codec's tokens mean: codecs that differ in one do not share tokens
TOKEN_KEYS = ("sample_rate", "num_codebooks", "cardinality", "change_penalty", "residual_change_penalty",
              "changes_with_first", "residual_tied")


def describe_diff(got: dict, want: dict, also: tuple[str, ...] = ()) -> list[str]:
    """The keys of :data:`TOKEN_KEYS` (and ``also``) on which two ``describe()`` dicts differ."""
    return [k for k in (*also, *TOKEN_KEYS) if got.get(k) != want.get(k)]


def load_tokenizing_codec(spec: str | os.PathLike, desc: dict) -> "Codec":
    """``spec`` loaded with the codebooks ``desc`` names (the ``describe()`` a prepared dataset's rows record,
    :func:`audiogen.data.loader.dataset_codec`), checked to be the codec that made those tokens: an error naming
    the keys that differ (:func:`describe_diff`, the weights' hash included) otherwise."""
    codec = load_codec(spec, num_codebooks=desc.get("num_codebooks"))
    diff = describe_diff(codec.describe(), desc, also=("weights_sha256",))
    if diff:
        raise AudiogenError(f"codec={spec} is not the codec the dataset was tokenized with ({', '.join(diff)} differ)")
    return codec


def load_codec(spec: str | os.PathLike = "tiny", bandwidth: float | None = None, weights: str | os.PathLike | None = None,
               num_codebooks: int | None = None, device: str | torch.device = "cpu", seed: int = 0) -> Codec:
    """Load a codec by name or path.

    ``spec``: ``default`` (the embedded default model's codec, with the codebooks it uses),
    ``encodec_24khz`` / ``encodec_48khz`` (pretrained, from ``weights`` or the local cache,
    never downloaded), ``tiny`` (random init from ``seed``), or a directory written by
    :func:`save_codec`. ``bandwidth`` (kbps) or ``num_codebooks`` choose how many residual
    codebooks are used.
    """
    resolve_device(device)
    spec_str = str(spec)
    if spec_str == DEFAULT_CODEC:
        spec_str, model_k = default_codec_spec()
        return load_codec(spec_str, bandwidth, weights, num_codebooks if num_codebooks is not None or bandwidth
                          is not None else model_k, device, seed)
    if spec_str in PRETRAINED_FILES:
        cfg = NAMED_CONFIGS[spec_str]
        path = Path(weights) if weights else pretrained_weights_path(spec_str)
        if not path.is_file():
            raise AudiogenError(
                f"pretrained {spec_str} weights not found at {path}. This tool never downloads at run time: "
                f"fetch {ENCODEC_URL.format(name=PRETRAINED_FILES[spec_str])} on a machine with network access "
                f"and copy it to {path} (or set AUDIOGEN_WEIGHTS to its folder, or pass the file explicitly)."
            )
        model = build_encodec_model(cfg)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:  # a wrong or corrupt file is a user error
            raise AudiogenError(f"{path}: not a valid {spec_str} checkpoint ({type(e).__name__}: {e})") from None
        sha = sha256_file(path)
        name = spec_str
    elif spec_str == "tiny":
        cfg = NAMED_CONFIGS["tiny"]
        model = build_encodec_model(cfg)
        model.load_state_dict(_tiny_state(seed))
        sha, name = None, f"tiny-seed{seed}"
    else:
        return load_saved_codec(spec_str, bandwidth=bandwidth, num_codebooks=num_codebooks, device=device)
    if bandwidth is not None:
        num_codebooks = num_codebooks_for_bandwidth(cfg, bandwidth)
    codec = EncodecCodec(model, cfg, name, num_codebooks, weights_sha256=sha)
    return codec.to(device)


CODEC_CONFIG = "codec.json"
CODEC_WEIGHTS = "codec.safetensors"


def save_codec(codec: EncodecCodec | HFEncodecCodec, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Save a codec as ``codec.json`` + ``codec.safetensors`` (written atomically); an
    :class:`HFEncodecCodec` also gets its transformers ``config.json``.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point weights smaller; loading
    copies them into the float32 model.
    """
    from safetensors.torch import save_file

    from audiogen.files import atomic_path, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in codec.model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(out / CODEC_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    if isinstance(codec, HFEncodecCodec):  # transformers config.json beside the weights
        codec.weights_sha256 = sha256_file(out / CODEC_WEIGHTS)  # what loading the saved copy reports
        atomic_write_text(out / "config.json", codec.model.config.to_json_string())
        meta = {"backend": "hf_encodec", "name": codec.name, "num_codebooks": codec.num_codebooks}
    else:
        backend = "melvq" if isinstance(codec, MelVQCodec) else "stft" if isinstance(codec, STFTCodec) else "encodec"
        meta = {"backend": backend, "name": codec.name,
                "num_codebooks": codec.num_codebooks, "config": dataclasses.asdict(codec.config)}
    atomic_write_text(out / CODEC_CONFIG, json.dumps(meta, indent=2))
    return out


def load_saved_codec(path: str | os.PathLike, bandwidth: float | None = None, num_codebooks: int | None = None,
                     device: str | torch.device = "cpu") -> EncodecCodec | HFEncodecCodec:
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_file() and p.name in (CODEC_CONFIG, CODEC_WEIGHTS):
        p = p.parent
    if not p.exists():
        raise AudiogenError(
            f"unknown codec '{path}': not one of {', '.join([DEFAULT_CODEC, *PRETRAINED_FILES, 'tiny'])} and no such folder"
        )
    cfg_file, w_file = p / CODEC_CONFIG, p / CODEC_WEIGHTS
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise AudiogenError(f"{p}: not a codec folder ({f.name} is missing)")
    try:
        meta = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise AudiogenError(f"{cfg_file}: invalid codec config ({e})") from None
    if isinstance(meta, dict) and meta.get("backend") == "hf_encodec":
        codec = HFEncodecCodec.load(p, meta, num_codebooks)
        if bandwidth is not None:
            per_q = math.log2(codec.cardinality) * codec.frame_rate / 1000
            k = round(bandwidth / per_q)
            if abs(k * per_q - bandwidth) > 1e-6 * max(1.0, bandwidth) or not 1 <= k <= len(codec.model.quantizer.layers):
                raise AudiogenError(f"{p}: {bandwidth:g} kbps is not a whole number of this codec's codebooks "
                                    f"({per_q:g} kbps each, at most {len(codec.model.quantizer.layers)})")
            codec.num_codebooks = k
        return codec.to(device)
    from audiogen.codec.mel import MelVQConfig, MelVQModel
    from audiogen.codec.stft import STFTCodecConfig, STFTCodecModel

    backend = meta.get("backend", "encodec") if isinstance(meta, dict) else "encodec"
    kinds = {"encodec": (EncodecConfig, build_encodec_model, EncodecCodec),
             "stft": (STFTCodecConfig, STFTCodecModel, STFTCodec),
             "melvq": (MelVQConfig, MelVQModel, MelVQCodec)}
    if backend not in kinds:
        raise AudiogenError(f"{cfg_file}: unknown codec backend {backend!r} (known: {', '.join([*kinds, 'hf_encodec'])})")
    config_cls, model_cls, codec_cls = kinds[backend]
    try:
        cfg = config_cls.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise AudiogenError(f"{cfg_file}: invalid codec config ({e})") from None
    model = model_cls(cfg)
    try:
        model.load_state_dict(load_file(str(w_file)))
    except Exception as e:
        raise AudiogenError(f"{w_file}: weights do not match {cfg_file.name} ({type(e).__name__})") from None
    if bandwidth is not None:
        num_codebooks = num_codebooks_for_bandwidth(cfg, bandwidth)
    k = num_codebooks if num_codebooks is not None else meta.get("num_codebooks")
    codec = codec_cls(model, cfg, meta.get("name", p.name), k, weights_sha256=sha256_file(w_file))
    return codec.to(device)
