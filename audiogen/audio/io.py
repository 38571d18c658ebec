"""Audio files in and out: probe, decode (with truncation checks), read in blocks, find, downmix,
resample, and write any supported format atomically.

Arrays are ``float32`` numpy arrays shaped ``[C, N]`` (channels first) unless a
function says otherwise. Everything a user can get wrong (a missing, empty, corrupt
or absurd file) raises :class:`~audiogen.errors.AudiogenError` naming the file.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from audiogen.errors import AudiogenError
from audiogen.files import atomic_path

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
    resampler with the "kaiser_best" settings (64 zero crossings, ~-100 dB stop band), over a
    long signal in blocks (:func:`_resample_sinc`, the same samples).
    """
    if orig_sr == target_sr:
        return wav
    if not (MIN_SAMPLE_RATE <= orig_sr <= MAX_SAMPLE_RATE and MIN_SAMPLE_RATE <= target_sr <= MAX_SAMPLE_RATE):
        raise AudiogenError(f"cannot resample {orig_sr} Hz -> {target_sr} Hz: rate out of range")
    import torch

    is_np = isinstance(wav, np.ndarray)
    g = math.gcd(int(orig_sr), int(target_sr))
    down, up = int(orig_sr) // g, int(target_sr) // g
    if up * down > _MAX_POLYPHASE_KERNEL:
        y = _resample_polyphase(wav if is_np else wav.detach().cpu().numpy(), up, down)
        return y if is_np else torch.from_numpy(y).to(wav.device, wav.dtype)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)) if is_np else wav
    y = _resample_sinc(x, down, up, round(_RESAMPLE_BLOCK_S * orig_sr))
    return y.numpy() if is_np else y


#: seconds of input (at the source rate) per block of :func:`_resample_sinc`
_RESAMPLE_BLOCK_S = 10.0


def _resample_sinc(x, down: int, up: int, block: int):
    """torchaudio's sinc resampler (``down`` -> ``up``, coprime) over ``x [..., N]`` in blocks of about
    ``block`` input samples, each read with the filter's reach on both sides: every output sample comes
    from the same input samples and the same kernel row as in one call over the whole signal, and memory
    stays that of a block. One call over a long signal is costly where ``up`` is small: oneDNN pads the
    convolution's ``up`` output channels to 16, so 327 s at 48 -> 24 kHz made a 500 MB tensor, and a
    prep worker's first such call took 2 s against 0.4 s (docs/prep.md, "Lean SEANet pass")."""
    import torchaudio.functional as AF

    def run(part):
        return AF.resample(part, down, up, lowpass_filter_width=_SINC_ZEROS, rolloff=_ROLLOFF,
                           resampling_method="sinc_interp_kaiser", beta=_KAISER_BETA)

    n = x.shape[-1]
    width = math.ceil(_SINC_ZEROS * down / (min(down, up) * _ROLLOFF))  # torchaudio's kernel half-width
    margin = -(-(width + down) // down) * down  # input samples of context, whole conv frames (of `down`)
    step = max(down, block // down * down)
    if n <= step + 2 * margin:
        return run(x)
    import torch

    total = -(-up * n // down)  # torchaudio's output length
    out = []
    for s in range(0, n, step):  # s, a: multiples of `down`, so outputs stay on the whole signal's grid
        a, b = max(0, s - margin), min(n, s + step + margin)
        first = (s - a) // down * up
        count = step // down * up if s + step < n else total - s // down * up
        out.append(run(x[..., a:b])[..., first : first + count])
    return torch.cat(out, -1)


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
