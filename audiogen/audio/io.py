"""Audio I/O and signal utilities: load, resample, channel conversion, loudness,
true peak, fades, DC removal and atomic writes.

Arrays are ``float32`` numpy arrays shaped ``[C, N]`` (channels first) unless a
function says otherwise. Everything a user can get wrong (a missing, empty, corrupt
or absurd file) raises :class:`~audiogen.errors.AudiogenError` naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from audiogen.errors import AudiogenError

#: File extensions the audio layer reads (via libsndfile >= 1.1: mp3 and opus included).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc")
#: Extensions :func:`write_audio` writes, with libsndfile's (format, default subtype).
WRITE_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".aiff": ("AIFF", "PCM_16"),
}
#: Sample rates outside this range are treated as a broken header, not as audio.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudiogenError(f"{path}: no such file")
    if path.is_dir():
        raise AudiogenError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudiogenError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudiogenError(f"{path}: permission denied")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file, validated (rate, channels, length)."""
    path = Path(path)
    _check_readable(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        kind = "unsupported format" if path.suffix.lower() not in AUDIO_EXTENSIONS else "corrupt or unreadable"
        reason = _sf_reason(e)
        if "does not exist or is not a regular file" in reason:  # libsndfile's words for an MP3 with no frames
            reason = "no audio frames found"
        raise AudiogenError(f"{path}: {kind} ({reason})") from None
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudiogenError(
            f"{path}: absurd sample rate {info.samplerate} Hz "
            f"(expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}); the header is probably corrupt"
        )
    if info.channels < 1:
        raise AudiogenError(f"{path}: header declares {info.channels} channels")
    if info.frames == 0:
        size = path.stat().st_size
        if _EMPTY_DATA.search(info.extra_info or "") and size > _HEADER_BYTES_AT_MOST:
            raise AudiogenError(
                f"{path}: the header says it holds no audio, yet the file is {size} bytes long: a recording "
                "whose writer stopped before filling in the sizes (never finalized). Repair a copy, e.g. "
                "`sox --ignore-length IN.wav OUT.wav`, and use that")
        raise AudiogenError(f"{path}: zero-length audio (no samples)")
    _check_chunk_sizes(path, info)
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


#: libsndfile's header log lines for a container or audio chunk whose declared size the file
#: does not match (WAV, AIFF, W64: ``data : 576000 (should be 287978)``), and for an RF64
#: file whose 64-bit frame count the file does not hold
_CHUNK_SIZE = re.compile(r"^\s*(?:data|SSND|RIFF|riff|FORM)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_DS64_FRAMES = re.compile(r"Calculated frame count (\d+) does not match value from 'ds64' chunk of (\d+)")
#: a WAV whose data chunk says 0 bytes (libsndfile then reads no frames)
_EMPTY_DATA = re.compile(r"^data\s*:\s*0\s*$", re.MULTILINE)
#: more than this in a file whose data chunk is empty is audio the header does not count
_HEADER_BYTES_AT_MOST = 4096
#: sizes that streaming writers leave in a header they never finalized, not truncation: the
#: largest 32-bit sizes, signed or not, less up to a header's worth (0xFFFFFFFF, sox's
#: 0x7FFFF000 when writing to a pipe, 0xFFFFFFFF - 8 for RIFF over data - 36, ...). A real
#: chunk within 4 KiB of 2 or 4 GiB is too unlikely to weigh against these.
_PLACEHOLDER_RANGES = ((0x7FFFF000, 0x7FFFFFFF), (0xFFFFF000, 0xFFFFFFFF))
#: a shortfall this small (a missing pad byte, a writer's rounding) is not called truncation
_MISSING_S_TOLERATED = 0.01


def _check_chunk_sizes(path: Path, info) -> None:
    """A WAV, AIFF, W64 or RF64 file cut short (an interrupted copy or download) still opens:
    libsndfile shortens its frame count to what is there. Refuse it, like a truncated FLAC or
    MP3, rather than use a partial file without a word."""
    log = info.extra_info or ""
    have_s = info.frames / info.samplerate
    full_s = None
    m = _DS64_FRAMES.search(log)
    if m and int(m.group(2)) > int(m.group(1)):
        full_s = int(m.group(2)) / info.samplerate
    for m in _CHUNK_SIZE.finditer(log):
        declared, present = int(m.group(1)), int(m.group(2))
        if declared > present and not any(lo <= declared <= hi for lo, hi in _PLACEHOLDER_RANGES):
            full_s = max(full_s or 0.0, have_s * declared / max(present, 1))
    if full_s is not None and full_s - have_s > _MISSING_S_TOLERATED:
        raise AudiogenError(f"{path}: truncated: the header declares {full_s:.2f}s of audio, the file holds only "
                            f"{have_s:.2f}s (an interrupted copy or download?)")


def _sf_reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    # libsndfile prefixes its message with the (already printed) path
    return msg.split(": ", 1)[-1] if "Error opening" in msg else msg


def _check_decoded(path, got: int, expected: int) -> None:
    """Lossy decoders may report a frame count a little off; a large shortfall is truncation."""
    if got < expected - max(4096, int(0.01 * expected)):
        raise AudiogenError(f"{path}: truncated or corrupt: header promises {expected} frames, only {got} could be "
                            "decoded")
    if got == 0:
        raise AudiogenError(f"{path}: zero-length audio (no samples could be decoded)")


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int | None = None,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read an audio file as ``float32 [C, N]``; optionally resample and convert channels.

    ``offset_s``/``duration_s`` read a window without decoding the whole file into memory
    (where the format allows seeking). Returns ``(wav, sample_rate)``.
    """
    info = audio_info(path)
    path = info.path
    start = int(round(offset_s * info.sample_rate))
    if start < 0 or (start >= info.frames and info.frames > 0):
        raise AudiogenError(f"{path}: offset {offset_s:.3f}s is outside the file ({info.duration_s:.3f}s)")
    want = -1 if duration_s is None else int(round(duration_s * info.sample_rate))
    try:
        with sf.SoundFile(str(path)) as f:
            if start:
                f.seek(start)
            data = f.read(frames=want, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudiogenError(f"{path}: corrupt or truncated audio ({_sf_reason(e)})") from None
    _check_decoded(path, data.shape[0], info.frames - start if want < 0 else min(want, info.frames - start))
    wav = np.ascontiguousarray(data.T)
    if not np.isfinite(wav).all():
        raise AudiogenError(f"{path}: contains NaN or infinite samples")
    sr = info.sample_rate
    if channels is not None:
        wav = convert_channels(wav, channels)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, sr


def iter_audio(path: str | os.PathLike, sample_rate: int | None = None, channels: int | None = None,
               block_s: float = 30.0) -> Iterator[np.ndarray]:
    """The file as consecutive ``float32 [C, n]`` blocks of about ``block_s`` seconds that,
    concatenated, equal ``load_audio(path, sample_rate, channels)[0]`` (to float rounding),
    with memory bounded by one block whatever the file's length.

    The file is read once, in order. When resampling, each block is resampled with a margin
    of source samples on either side, from a window that starts on the resampler's phase
    grid (a multiple of ``sr / gcd(sr, sample_rate)``), so every output sample sees the same
    input and filter phase as in a whole-file resample.
    """
    info = audio_info(path)
    sr = info.sample_rate
    target = sample_rate or sr
    if not MIN_SAMPLE_RATE <= target <= MAX_SAMPLE_RATE:
        raise AudiogenError(f"cannot resample {sr} Hz -> {target} Hz: rate out of range")
    step = sr // math.gcd(sr, target)
    block = max(step, round(block_s * sr) // step * step)
    # the sinc kernel spans 64 zero crossings of the lower rate each side; keep twice that
    margin = 0 if target == sr else -(-max(int(0.1 * sr), 128 * sr // min(sr, target)) // step) * step
    carry, start = None, 0  # source samples held from ``start`` on
    due, got = 0, 0  # the first source sample whose output is not yet yielded; samples read
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                data = f.read(frames=block, dtype="float32", always_2d=True)
                got += data.shape[0]
                eof = data.shape[0] < block
                x = np.ascontiguousarray(data.T)
                if not np.isfinite(x).all():
                    raise AudiogenError(f"{info.path}: contains NaN or infinite samples")
                if channels is not None:
                    x = convert_channels(x, channels)
                buf = x if carry is None else np.concatenate([carry, x], axis=1)
                end = start + buf.shape[1]
                ready = end if eof else (end - margin) // step * step  # output for [due, ready) is final
                if ready > due:
                    if target == sr:
                        yield buf[:, due - start : ready - start]
                    else:
                        y = resample(buf, sr, target)
                        first = (due - start) * target // sr
                        yield y[:, first:] if eof else y[:, first : (ready - start) * target // sr]
                    due = ready
                if eof:
                    break
                keep = max(0, due - margin)  # a multiple of step
                carry, start = buf[:, keep - start :], keep
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudiogenError(f"{info.path}: corrupt or truncated audio ({_sf_reason(e)})") from None
    _check_decoded(info.path, got, info.frames)


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files under ``root`` (recursive, sorted, hidden folders skipped)."""
    root = Path(root)
    if not root.exists():
        raise AudiogenError(f"{root}: no such file or directory")
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / n for n in filenames if n.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(out)


def convert_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """Downmix by averaging or upmix by repetition: ``[C, N] -> [channels, N]``."""
    if channels < 1:
        raise AudiogenError(f"channel count must be >= 1, got {channels}")
    c = wav.shape[0]
    if c == channels:
        return wav
    if channels == 1:
        return wav.mean(axis=0, keepdims=True)
    if c == 1:
        return np.repeat(wav, channels, axis=0)
    # e.g. 5.1 -> stereo: fold to mono then spread; avoids guessing a speaker layout
    return np.repeat(wav.mean(axis=0, keepdims=True), channels, axis=0)


def resample(wav, orig_sr: int, target_sr: int):
    """Band-limited (windowed-sinc, Kaiser) resampling along the last axis.

    Accepts numpy or torch; returns the same kind. Uses torchaudio's polyphase sinc
    resampler with the "kaiser_best" settings (64 zero crossings, ~-100 dB stop band).
    """
    if orig_sr == target_sr:
        return wav
    if not (MIN_SAMPLE_RATE <= orig_sr <= MAX_SAMPLE_RATE and MIN_SAMPLE_RATE <= target_sr <= MAX_SAMPLE_RATE):
        raise AudiogenError(f"cannot resample {orig_sr} Hz -> {target_sr} Hz: rate out of range")
    import torch
    import torchaudio.functional as AF

    is_np = isinstance(wav, np.ndarray)
    g = math.gcd(int(orig_sr), int(target_sr))
    down, up = int(orig_sr) // g, int(target_sr) // g
    if up * down > _MAX_POLYPHASE_KERNEL:
        y = _resample_polyphase(wav if is_np else wav.detach().cpu().numpy(), up, down)
        return y if is_np else torch.from_numpy(y).to(wav.device, wav.dtype)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)) if is_np else wav
    y = AF.resample(x, down, up, lowpass_filter_width=_SINC_ZEROS, rolloff=_ROLLOFF,
                    resampling_method="sinc_interp_kaiser", beta=_KAISER_BETA)
    return y.numpy() if is_np else y


#: The resampling filter (torchaudio's "kaiser_best"): zero crossings each side, cutoff as a
#: share of the lower Nyquist rate, Kaiser window beta.
_SINC_ZEROS, _ROLLOFF, _KAISER_BETA = 64, 0.9475937167399596, 14.769656459379492
#: torchaudio builds one kernel row per output phase: ``up x (down + 2 * width)`` floats.
#: For a ratio like 44101 -> 24000 Hz (coprime rates) that is GBs, so such ratios take
#: :func:`_resample_polyphase`, whose filter is one long row.
_MAX_POLYPHASE_KERNEL = 1_000_000


def _resample_polyphase(wav: np.ndarray, up: int, down: int) -> np.ndarray:
    """``[..., N] -> [..., ceil(N * up / down)]`` with scipy's polyphase filter, using the same
    Kaiser-windowed sinc as the torchaudio path (same zero crossings, cutoff and beta), for
    ratios whose torchaudio kernel would not fit in memory."""
    from scipy.signal import resample_poly

    y = resample_poly(np.asarray(wav, dtype=np.float32), up, down, axis=-1, window=_polyphase_filter(up, down))
    return np.ascontiguousarray(y, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _polyphase_filter(up: int, down: int) -> np.ndarray:
    """The FIR of :func:`_resample_polyphase` (millions of taps for coprime rates: designed once)."""
    from scipy.signal import firwin

    rate = max(up, down)
    half = math.ceil(_SINC_ZEROS * rate / _ROLLOFF)
    h = firwin(2 * half + 1, _ROLLOFF / rate, window=("kaiser", _KAISER_BETA))
    h.flags.writeable = False  # shared between calls (resample_poly copies it before scaling)
    return h


# --------------------------------------------------------------------------- loudness


def integrated_loudness(wav: np.ndarray, sample_rate: int, block_s: float = 30.0) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4 with gating, as pyloudnorm computes it).

    Returns ``-inf`` for digital silence. Audio shorter than one 400 ms gating block
    is zero-padded to one block so short clips still get a figure. The array is fed to a
    :class:`LoudnessMeter` ``block_s`` at a time, so the float64 filtering never holds
    more than one block (a 10-minute track would otherwise need several full-length copies).
    """
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[None]
    meter = LoudnessMeter(sample_rate, x.shape[0])
    block = max(1, int(block_s * sample_rate))
    for s in range(0, x.shape[1], block):
        meter.add(x[:, s : s + block])
    return meter.integrated()


class KWeighting:
    """BS.1770's K-weighting (pyloudnorm's filter stages) of audio fed in chunks, the filter state
    carried across them: ``kw(chunk [C, n]) -> float64 [C, n]``."""

    def __init__(self, sample_rate: int, channels: int):
        import pyloudnorm

        self.stages = [(f.b, f.a, f.passband_gain) for f in pyloudnorm.Meter(sample_rate)._filters.values()]
        self.state = [np.zeros((channels, max(len(b), len(a)) - 1)) for b, a, _ in self.stages]

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        y = np.asarray(chunk, dtype=np.float64)
        for i, (b, a, gain) in enumerate(self.stages):
            y, self.state[i] = lfilter(b, a, y, axis=1, zi=self.state[i])
            y = gain * y
        return y


class LoudnessMeter:
    """Integrated loudness (BS.1770-4, the same K-weighting, blocks and gating as pyloudnorm)
    of audio fed in chunks, so a file of any length is measured in bounded memory.

    The K-weighting filters carry their state across chunks; each 400 ms block's energy
    is the difference of running sums of the squared filtered signal at the block's
    bounds, computed with pyloudnorm's own expressions so the blocks are the same.
    """

    def __init__(self, sample_rate: int, channels: int):
        if channels > 5:
            raise AudiogenError(f"loudness (BS.1770-4) is defined for up to 5 channels, this audio has {channels}; "
                                "downmix it first")
        self.rate, self.channels = sample_rate, channels
        self.k_weighting = KWeighting(sample_rate, channels)
        self.n = 0  # samples seen
        self.total = np.zeros(channels)  # running sum of squares of the filtered signal
        self.marks: dict[int, np.ndarray] = {0: np.zeros(channels)}  # sample index -> running sum before it
        self._next = [0, 0]  # per side (lower, upper bound): the next block whose bound is not yet marked

    def _bounds(self, j: int) -> tuple[int, int]:
        return int(0.4 * (j * 0.25) * self.rate), int(0.4 * (j * 0.25 + 1) * self.rate)

    def add(self, chunk: np.ndarray) -> None:
        """``chunk: [C, n]`` float audio, the next ``n`` samples."""
        y = self.k_weighting(chunk)
        csum = np.cumsum(y * y, axis=1) + self.total[:, None]
        start, self.n = self.n, self.n + y.shape[1]
        for side in (0, 1):  # the running sum at every block bound (lower, then upper) inside this chunk
            while (bound := self._bounds(self._next[side])[side]) <= self.n:
                if bound > start:
                    self.marks[bound] = csum[:, bound - start - 1].copy()
                self._next[side] += 1
        if y.shape[1]:
            self.total = csum[:, -1].copy()

    def integrated(self) -> float:
        """LUFS; ``-inf`` for digital silence. Shorter than one block counts as one zero-padded block."""
        if self.n < int(math.ceil(0.4 * self.rate)):
            self.add(np.zeros((self.channels, int(math.ceil(0.4 * self.rate)) - self.n)))
        blocks = int(np.round((self.n / self.rate - 0.4) / 0.1)) + 1
        G = np.array([1.0, 1.0, 1.0, 1.41, 1.41][: self.channels])
        z = np.empty((self.channels, blocks))
        for j in range(blocks):
            lo, hi = self._bounds(j)
            z[:, j] = (self.marks.get(min(hi, self.n), self.total) - self.marks[lo]) / (0.4 * self.rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            loud = -0.691 + 10.0 * np.log10(G @ z)
            gated = z[:, loud >= -70.0]
            if not gated.shape[1]:
                return float("-inf")
            rel = -0.691 + 10.0 * np.log10(G @ gated.mean(axis=1)) - 10.0
            keep = z[:, (loud > rel) & (loud > -70.0)]
            if not keep.shape[1]:
                return float("-inf")
            return float(-0.691 + 10.0 * np.log10(G @ keep.mean(axis=1)))


@dataclass(frozen=True)
class FileMeasure:
    frames: int
    duration_s: float
    sample_rate: int
    channels: int
    lufs: float | None  # None above 5 channels (the channel weights here cover up to 5)
    true_peak_dbtp: float


def measure_file(path: str | os.PathLike, block_s: float = 30.0) -> FileMeasure:
    """Loudness and true peak of a whole file, read ``block_s`` at a time (bounded memory for
    any length); the figures equal :func:`integrated_loudness` and :func:`true_peak_dbtp` on
    the loaded file. ``lufs`` is None for more than 5 channels (the channel weights here cover up to 5)."""
    info = audio_info(path)
    # a block is at least the filter context, so the held block's neighbours give a full context on each side
    sr, block, pad = info.sample_rate, max(TRUE_PEAK_PAD, int(block_s * info.sample_rate)), TRUE_PEAK_PAD
    loudness = info.channels <= 5  # BS.1770-4 defines loudness for up to 5 channels
    meter, peak, n = None, 0.0, 0
    held = None  # the block waiting for the next one's first samples (true-peak filter context)
    left = None  # the last samples before the held block
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                data = f.read(frames=block, dtype="float32", always_2d=True)
                if not data.shape[0] and held is None:
                    break
                x = np.ascontiguousarray(data.T, dtype=np.float64)
                if not np.isfinite(x).all():
                    raise AudiogenError(f"{info.path}: contains NaN or infinite samples")
                if x.shape[1]:
                    if loudness:
                        meter = meter or LoudnessMeter(sr, x.shape[0])
                        meter.add(x)
                    n += x.shape[1]
                if held is not None:
                    ctx = [c for c in (left, held, x[:, :pad]) if c is not None]
                    off = 0 if left is None else left.shape[1]
                    peak = max(peak, float(_true_peak_block(np.concatenate(ctx, axis=1), off,
                                                            off + held.shape[1], sr).max(initial=0.0)))
                    left = held[:, -pad:]
                held = x if x.shape[1] else None
                if held is None:
                    break
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudiogenError(f"{info.path}: corrupt or truncated audio ({_sf_reason(e)})") from None
    _check_decoded(info.path, n, info.frames)
    return FileMeasure(frames=n, duration_s=n / sr, sample_rate=sr, channels=info.channels,
                       lufs=meter.integrated() if loudness else None,
                       true_peak_dbtp=20 * math.log10(peak) if peak > 0 else float("-inf"))


def true_peak_envelope(wav: np.ndarray, sample_rate: int, block_s: float = 10.0) -> np.ndarray:
    """Per-sample true peak, max over channels: ``[C, N] -> float32[N]``.

    Each sample's value is the largest magnitude of the signal oversampled to >= 192 kHz
    (BS.1770-4 Annex 2) within that sample period. Computed in blocks (with overlap for
    the interpolation filter) so an hour of audio never needs an hour of oversampled
    float64 at once; stored as float32 (the limiter's resolution), one value per sample.
    """
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[None]
    env = np.zeros(x.shape[1], dtype=np.float32)
    for s, e, peaks in _true_peak_blocks(x, sample_rate, block_s):
        env[s:e] = peaks
    return env


TRUE_PEAK_PAD = 64  # context samples on each side of a block for the oversampling filter


def _true_peak_blocks(x: np.ndarray, sample_rate: int, block_s: float) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, float64 true-peak envelope of x[:, start:stop])`` block by block over ``[C, N]``."""
    N = x.shape[1]
    block = max(1, int(block_s * sample_rate))
    for s in range(0, N, block):
        lo, hi, e = max(0, s - TRUE_PEAK_PAD), min(N, s + block + TRUE_PEAK_PAD), min(N, s + block)
        yield s, e, _true_peak_block(np.asarray(x[:, lo:hi], dtype=np.float64), s - lo, e - lo, sample_rate)


def _true_peak_block(x: np.ndarray, start: int, stop: int, sample_rate: int) -> np.ndarray:
    """True-peak envelope of ``x[:, start:stop]``, the samples around it being filter context."""
    from scipy.signal import resample_poly

    C, n = x.shape
    factor = max(4, int(math.ceil(192_000 / sample_rate)))
    up = np.abs(resample_poly(x, factor, 1, axis=1)).reshape(C, n, factor).max(axis=2).max(axis=0)
    return np.maximum(up[start:stop], np.abs(x[:, start:stop]).max(axis=0))


def true_peak_dbtp(wav: np.ndarray, sample_rate: int, block_s: float = 10.0) -> float:
    """True peak in dBTP: the peak of the signal oversampled to >= 192 kHz (BS.1770-4 Annex 2)."""
    x = np.asarray(wav)
    if x.ndim == 1:
        x = x[None]
    peak = max((float(p.max(initial=0.0)) for _, _, p in _true_peak_blocks(x, sample_rate, block_s)), default=0.0)
    return 20 * math.log10(peak) if peak > 0 else float("-inf")


def sample_peak_dbfs(wav: np.ndarray) -> float:
    peak = float(np.abs(wav).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else float("-inf")


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


# --------------------------------------------------------------------------- shaping


def equal_power_fade(n: int, fade_in: bool = True) -> np.ndarray:
    """An equal-power fade curve of ``n`` samples (sin for in, cos for out): power sums to 1."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    curve = np.sin(0.5 * np.pi * t) if fade_in else np.cos(0.5 * np.pi * t)
    return curve.astype(np.float32)


def apply_fades(wav: np.ndarray, sample_rate: int, fade_in_s: float = 0.0, fade_out_s: float = 0.0) -> np.ndarray:
    """Equal-power fade-in and fade-out (seconds) on ``[C, N]``; returns a new array."""
    n = wav.shape[-1]
    if not (math.isfinite(fade_in_s) and math.isfinite(fade_out_s) and fade_in_s >= 0 and fade_out_s >= 0):
        raise AudiogenError(f"fade lengths must be >= 0 seconds, got {fade_in_s:g} in and {fade_out_s:g} out")
    nin, nout = int(round(fade_in_s * sample_rate)), int(round(fade_out_s * sample_rate))
    if nin + nout > n:
        raise AudiogenError(
            f"fades ({fade_in_s:g}s in + {fade_out_s:g}s out) are longer than the audio ({n / sample_rate:.2f}s)"
        )
    out = np.array(wav, dtype=np.float32, copy=True)
    if nin:
        out[..., :nin] *= equal_power_fade(nin, fade_in=True)
    if nout:
        out[..., n - nout :] *= equal_power_fade(nout, fade_in=False)
    return out


def remove_dc(wav: np.ndarray, sample_rate: int, cutoff_hz: float = 10.0, block_s: float = 30.0) -> np.ndarray:
    """Remove DC offset and sub-audible rumble: zero-phase 2nd-order Butterworth high-pass.

    The same filtering as ``scipy.signal.sosfiltfilt`` (odd extension at both ends, steady-state
    initial conditions, forward then backward), run ``block_s`` at a time with the filter state
    carried across blocks into one float32 buffer: memory is one copy of the audio plus one
    float64 block, where ``sosfiltfilt`` needs several float64 copies of the whole signal.
    """
    from scipy.signal import butter, sosfilt, sosfilt_zi

    x = np.asarray(wav, dtype=np.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    sos = butter(2, cutoff_hz, btype="highpass", fs=sample_rate, output="sos")
    pad = 3 * (2 * len(sos) + 1)  # sosfiltfilt's default padlen for these sections
    if x.shape[-1] <= max(32, pad):
        out = x - mean
        return out[0] if squeeze else out
    # odd extension, as sosfiltfilt pads: 2*x[0] - x[pad:0:-1] ... 2*x[-1] - x[-2:-pad-2:-1]
    y = np.concatenate([2 * x[:, :1] - x[:, pad:0:-1], x, 2 * x[:, -1:] - x[:, -2 : -pad - 2 : -1]], axis=1)
    y -= mean
    zi = sosfilt_zi(sos)[:, None, :]  # [sections, 1, 2], scaled per channel by the first sample
    block = max(1, int(block_s * sample_rate))
    n = y.shape[1]
    state = zi * y[None, :, 0, None].astype(np.float64)
    for s in range(0, n, block):  # forward
        seg, state = sosfilt(sos, y[:, s : s + block].astype(np.float64), axis=-1, zi=state)
        y[:, s : s + block] = seg
    state = zi * y[None, :, -1, None].astype(np.float64)
    for e in range(n, 0, -block):  # backward, over the time-reversed signal
        s = max(0, e - block)
        seg, state = sosfilt(sos, y[:, s:e][:, ::-1].astype(np.float64), axis=-1, zi=state)
        y[:, s:e] = seg[:, ::-1]
    out = y[:, pad:-pad]  # a view (strided when there are several channels): no second copy of the audio
    return out[0] if squeeze else out


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's content; of a folder: of its files' relative names and contents, sorted."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    A crash or exception leaves ``path`` untouched (either the old file or nothing).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AudiogenError(f"{path} is a folder: cannot write a file there")
    if not parent.is_dir():
        raise AudiogenError(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise AudiogenError(f"{path}: the folder {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        # mkstemp makes the file 0600; give it the replaced file's mode, or what a plain open() would
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it, even for a
    moment, would race with files other threads create, e.g. the listening server's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a folder that cannot be made (a file in the way, no permission) is an AudiogenError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AudiogenError(f"{path}: exists and is not a folder") from None
    except OSError as e:
        raise AudiogenError(f"{path}: cannot create the folder ({e.filename}: {e.strerror})") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


#: constant bit rate at the highest rate the sample rate allows (160 kb/s at 24 kHz, 320 at 32-48 kHz): the
#: default VBR setting adds about 1 dB of true-peak overshoot on limited material, CBR at the top rate none
MP3_SETTINGS = {"bitrate_mode": "CONSTANT", "compression_level": 0.0}


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str | None = None) -> Path:
    """Write ``[C, N]`` float audio atomically; the format follows the extension.

    Supported: .wav .flac .ogg .opus .mp3 .aiff. Refuses non-finite samples rather than
    writing a broken file.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if path.is_dir():
        raise AudiogenError(f"{path}: is a folder; give a file name ending in one of {', '.join(WRITE_FORMATS)}")
    if ext not in WRITE_FORMATS:
        raise AudiogenError(f"{path}: cannot write '{ext}' files; use one of {', '.join(WRITE_FORMATS)}")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.shape[-1] == 0:
        raise AudiogenError(f"{path}: refusing to write zero-length audio")
    if not np.isfinite(wav).all():
        raise AudiogenError(f"{path}: refusing to write NaN or infinite samples")
    fmt, default_subtype = WRITE_FORMATS[ext]
    if ext == ".opus" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
        wav, sample_rate = resample(wav, sample_rate, 48000), 48000
    extra = MP3_SETTINGS if ext == ".mp3" else {}
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav.T, sample_rate, format=fmt, subtype=subtype or default_subtype, **extra)
    return path
