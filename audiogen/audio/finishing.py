"""Finishing a generated track for podcasts and video.

``finish(wav, sr, spec)`` turns raw decoder output into a deliverable:

1. DC and sub-audible rumble removed (``audio.shaping.remove_dc``), and bursts (half a second
   20-40 dB over the music around it, a decoder glitch) taken down to 12 dB over it
   (``audio.shaping.BurstTamer``): a burst left in would set the track's loudness, and the music
   around it would play far under the target;
   then the level evened (``audio.level.even_level``, unless ``even_level=False``): the stream's
   level stage, a loudness follower holding the 3 s loudness near the target, so a take whose level
   drifts (a quarter of the default model's 30 s takes rise 8-16 dB after 20 s) does not play its
   first part far under the target;
2. exact duration to the sample, or a seamless loop: the audio rendered past the end is
   crossfaded (equal power) into the head, so the last sample flows into the first;
3. equal-power fade-in / fade-out (not in loop mode: a faded loop is not seamless);
4. gain to the integrated-loudness target (BS.1770-4; default -16 LUFS);
5. a look-ahead true-peak limiter on the 4x-oversampled signal (default -1 dBTP),
   circular in loop mode so the gain at the end equals the gain at the start;
6. loudness re-measured and corrected after limiting.

``write_finished`` writes the file atomically with provenance tags (and an AI-generated
marker), checks loudness and true peak on the *written, re-read* file (lossy encoders
move peaks), corrects and rewrites if needed, and writes a JSON sidecar with the
measured figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audiogen.audio.io import WRITE_FORMATS, write_audio
from audiogen.audio.level import even_level
from audiogen.audio.loudness import db_to_gain, integrated_loudness, measure_file, true_peak_envelope
from audiogen.audio.shaping import BurstTamer, apply_fades, equal_power_fade, remove_dc
from audiogen.errors import AudiogenError
from audiogen.files import atomic_path, atomic_write_text

#: Named loudness targets (integrated LUFS).
PRESETS = {"podcast": -16.0, "streaming": -14.0, "broadcast": -23.0}
#: Below this the input is treated as silence: there is nothing to normalise.
SILENCE_LUFS = -70.0


MIN_DURATION_S = 1.0  # BS.1770 gates 0.4 s blocks: a shorter track has no meaningful integrated loudness


@dataclass(frozen=True)
class FinishSpec:
    duration_s: float
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    loop: bool = False
    loop_crossfade_s: float = 1.0
    lufs: float = -16.0
    true_peak_db: float = -1.0
    remove_dc: bool = True
    tame_bursts: bool = True
    even_level: bool = True

    def validate(self) -> None:
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise AudiogenError(f"duration must be a positive number of seconds, got {self.duration_s}")
        if self.duration_s < MIN_DURATION_S:
            raise AudiogenError(f"duration {self.duration_s:g}s is too short: at least {MIN_DURATION_S:g}s, since "
                                "integrated loudness is measured over 0.4 s blocks")
        for name, value in (("--fade-in", self.fade_in_s), ("--fade-out", self.fade_out_s)):
            if not (math.isfinite(value) and value >= 0):
                raise AudiogenError(f"{name} must be a finite number of seconds >= 0, got {value}")
        if self.loop and (self.fade_in_s or self.fade_out_s):
            raise AudiogenError("--loop and fades exclude each other: a faded track does not loop seamlessly")
        if self.fade_in_s + self.fade_out_s > self.duration_s:
            raise AudiogenError(
                f"fades ({self.fade_in_s:g}s + {self.fade_out_s:g}s) are longer than the track ({self.duration_s:g}s)"
            )
        if not -40.0 <= self.lufs <= -5.0:
            raise AudiogenError(f"loudness target {self.lufs} LUFS is outside the sensible range -40..-5")
        if not -12.0 <= self.true_peak_db <= 0.0:
            raise AudiogenError(f"true-peak limit {self.true_peak_db} dBTP is outside -12..0")

    def samples_needed(self, sample_rate: int) -> int:
        """How much raw audio ``finish`` needs: the duration, plus the crossfade tail in loop mode."""
        n = int(round(self.duration_s * sample_rate))
        return n + (self.crossfade_samples(sample_rate) if self.loop else 0)

    def crossfade_samples(self, sample_rate: int) -> int:
        return int(round(min(self.loop_crossfade_s, self.duration_s / 4) * sample_rate))


def make_loop(wav: np.ndarray, n: int, crossfade: int) -> np.ndarray:
    """``[C, >= n + crossfade] -> [C, n]`` whose end flows into its start.

    The ``crossfade`` samples rendered after the end are faded out over the head while
    the head fades in: at the wrap, sample n-1 is followed by what the music played
    next (sample n), so there is no jump in waveform or level.
    """
    if wav.shape[-1] < n + crossfade:
        raise AudiogenError(f"loop needs {n + crossfade} samples of audio, got {wav.shape[-1]}")
    out = np.array(wav[..., :n], dtype=np.float32, copy=True)
    if crossfade:
        fin, fout = equal_power_fade(crossfade, True), equal_power_fade(crossfade, False)
        out[..., :crossfade] = wav[..., :crossfade] * fin + wav[..., n : n + crossfade] * fout
    return out


def true_peak_limit(wav: np.ndarray, sample_rate: int, ceiling_db: float, lookahead_s: float = 0.005,
                    circular: bool = False, block_s: float = 30.0) -> np.ndarray:
    """Look-ahead true-peak limiter: a smooth gain that keeps the oversampled peak under the ceiling.

    The required gain per sample is ``min(1, ceiling / peak)``; a sliding minimum over
    +-lookahead, then a moving average over the lookahead, gives a gain curve that is
    smooth (no clicks) and never above the required gain at any sample. ``circular``
    treats the audio as a loop so the gain at the end matches the start.

    The gain curve is float32 and is smoothed ``block_s`` at a time (scipy's 1-D filters
    take float64 working copies of whatever they are given), so a long track costs a few
    float32 copies of its length, not a dozen float64 ones.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = np.float32(db_to_gain(ceiling_db))
    need = true_peak_envelope(wav, sample_rate)  # float32 [N], turned in place into the required gain
    np.maximum(need, np.float32(1e-12), out=need)
    np.divide(ceiling, need, out=need)
    np.minimum(need, np.float32(1.0), out=need)
    if need.min() >= 1.0:
        return wav
    look = max(1, int(lookahead_s * sample_rate))
    # each smoothed value depends on the required gain within 1.5 lookaheads of it, so blocks of the
    # curve padded by 2 lookaheads (wrapped for a loop, else repeating the end values) are smoothed
    # independently: for a loop this is exactly the whole-curve filtering; for a track, the first and
    # last 1.5 lookaheads (~8 ms) see the required gain continue past the ends, rather than the
    # sliding minimum's own end values
    pad = 2 * look
    ext = np.pad(need, pad, mode="wrap" if circular else "edge")
    del need
    N = ext.shape[0] - 2 * pad
    g = np.empty(N, dtype=np.float32)
    block = max(1, int(block_s * sample_rate))
    for s in range(0, N, block):
        e = min(N, s + block)
        smooth = uniform_filter1d(minimum_filter1d(ext[s : e + 2 * pad], size=2 * look + 1, mode="nearest"),
                                  size=look, mode="nearest")
        g[s:e] = smooth[pad : pad + e - s]
    np.minimum(g, ext[pad : pad + N], out=g)  # guard against the averaging ever exceeding the requirement
    del ext
    return np.asarray(wav, dtype=np.float32) * g


WRITE_ATTEMPTS = 5
LOUDNESS_TOLERANCE_LU = 0.2  # a written file further than this from the target is corrected and rewritten
MIN_LIMITER_SLOPE = 0.05  # LU of loudness per dB of gain below which limiting is a brick wall
MAX_GAIN_STEP_DB = 12.0


def normalize_loudness(wav: np.ndarray, sample_rate: int, lufs: float, true_peak_db: float,
                       circular: bool = False) -> np.ndarray:
    """Gain to ``lufs`` integrated, then true-peak limiting, iterated so both hold."""
    measured = integrated_loudness(wav, sample_rate)
    if not math.isfinite(measured) or measured < SILENCE_LUFS:
        raise AudiogenError(
            f"the audio is silent ({measured:.1f} LUFS): cannot normalise it to {lufs:g} LUFS"
        )
    margin = 0.1  # aim just under the ceiling: oversampling estimates differ by a few hundredths

    def render(gain_db: float) -> tuple[np.ndarray, float]:
        y = true_peak_limit(wav * db_to_gain(gain_db), sample_rate, true_peak_db - margin, circular=circular)
        return y, integrated_loudness(y, sample_rate)

    # Limiting costs loudness, so the gain that reaches the target is found by the secant
    # method on gain -> loudness-after-limiting (monotone; slope 1 without limiting, < 1 with).
    # Once the slope is nearly 0 the limiter is a brick wall: more gain only adds distortion,
    # so the search stops there (the caller reports the loudness actually reached).
    g0 = lufs - measured
    out, l0 = render(g0)
    g1 = g0 + (lufs - l0)
    for _ in range(8):
        if abs(lufs - l0) < 0.05:
            break
        out1, l1 = render(g1)
        slope = (l1 - l0) / (g1 - g0) if g1 != g0 else 1.0
        if abs(lufs - l1) < abs(lufs - l0):
            out = out1
        if slope < MIN_LIMITER_SLOPE:
            break
        g0, l0 = g1, l1
        g1 = g1 + min(MAX_GAIN_STEP_DB, (lufs - l1) / min(1.0, slope))
    return out.astype(np.float32)


def finish(wav: np.ndarray, sample_rate: int, spec: FinishSpec) -> np.ndarray:
    """Raw audio ``[C, >= spec.samples_needed(sr)]`` -> finished ``[C, duration * sr]``."""
    spec.validate()
    n = int(round(spec.duration_s * sample_rate))
    need = spec.samples_needed(sample_rate)
    if wav.shape[-1] < need:
        raise AudiogenError(f"need {need} samples to finish a {spec.duration_s:g}s track, got {wav.shape[-1]}")
    if not np.isfinite(wav[..., :need]).all():  # else loudness would call it silent
        raise AudiogenError("the audio contains NaN or infinite samples (a model whose output diverged; with "
                            "--dtype float16 try bfloat16 or float32)")
    x = remove_dc(wav[..., :need], sample_rate) if spec.remove_dc else np.asarray(wav[..., :need], np.float32)
    if spec.even_level:
        x = even_level(x, sample_rate, spec.lufs, spec.true_peak_db, tame_bursts=spec.tame_bursts)
    elif spec.tame_bursts:
        x = BurstTamer(sample_rate, x.shape[0]).run(x)
    if spec.loop:
        x = make_loop(x, n, spec.crossfade_samples(sample_rate))
    else:
        x = apply_fades(x[..., :n], sample_rate, spec.fade_in_s, spec.fade_out_s)
    return normalize_loudness(x, sample_rate, spec.lufs, spec.true_peak_db, circular=spec.loop)


# ------------------------------------------------------------------------------ writing


def tag_file(path: Path, tags: dict[str, str]) -> None:
    """Write provenance tags with mutagen: ID3 for mp3/wav/aiff, Vorbis comments for flac/ogg/opus."""
    import mutagen
    from mutagen import id3

    ext = path.suffix.lower()
    if ext in (".mp3", ".wav", ".aiff"):
        f = mutagen.File(str(path))
        if f is None:
            raise AudiogenError(f"{path}: could not open the written file to tag it")
        if f.tags is None:
            f.add_tags()
        t = f.tags
        t.add(id3.TIT2(encoding=3, text=tags["title"]))
        t.add(id3.TPE1(encoding=3, text=tags["artist"]))
        t.add(id3.COMM(encoding=3, lang="eng", desc="", text=tags["comment"]))
        for k, v in tags.items():
            if k not in ("title", "artist", "comment"):
                t.add(id3.TXXX(encoding=3, desc=k, text=str(v)))
        f.save()
    else:
        f = mutagen.File(str(path))
        if f is None:
            raise AudiogenError(f"{path}: could not open the written file to tag it")
        if f.tags is None:
            f.add_tags()
        for k, v in tags.items():
            f.tags[k] = str(v)
        f.save()


def read_tags(path: str | Path) -> dict[str, str]:
    """Tags as a flat dict (title, artist, comment and custom keys), whatever the container."""
    import mutagen

    f = mutagen.File(str(path))
    out: dict[str, str] = {}
    if f is None or f.tags is None:
        return out
    if hasattr(f.tags, "getall"):  # ID3
        for frame in f.tags.values():
            name = type(frame).__name__
            text = str(frame.text[0]) if getattr(frame, "text", None) else ""
            key = {"TIT2": "title", "TPE1": "artist", "COMM": "comment"}.get(name)
            if key:
                out[key] = text
            elif name == "TXXX":
                out[frame.desc] = text
    else:
        for k, v in f.tags.items():
            out[k.lower()] = v[0] if isinstance(v, list) else str(v)
    return out


def write_finished(path: str | Path, wav: np.ndarray, sample_rate: int, spec: FinishSpec,
                   tags: dict[str, str], sidecar: dict) -> dict:
    """Write ``wav`` (already finished) with tags and a JSON sidecar; returns the sidecar dict.

    Loudness and true peak are measured on the file as written and re-read. Lossy
    encoders move both: MP3/Vorbis overshoot the true peak on bright material, and their
    low-pass and quantisation shift the loudness. So the write is closed-loop: when the
    re-read file is over the true-peak limit, the audio is limited again to a ceiling
    lowered by the overshoot; when it misses the loudness target by more than
    ``LOUDNESS_TOLERANCE_LU``, the target is moved by the miss; then it is rewritten (at
    most ``WRITE_ATTEMPTS`` times). Nothing half-written is ever left at ``path``.
    """
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise AudiogenError(f"{path}: cannot write '{path.suffix}' files; use .wav, .flac, .ogg or .mp3")
    ceiling, target = spec.true_peak_db, spec.lufs
    out = wav
    for attempt in range(WRITE_ATTEMPTS):
        try:
            with atomic_path(path) as tmp:
                write_audio(tmp, out, sample_rate)
                tag_file(tmp, tags)
                back = measure_file(tmp)  # the written file, decoded block by block
                lufs, tp = back.lufs, back.true_peak_dbtp
                over, miss = tp - spec.true_peak_db, spec.lufs - lufs
                if (over > 0 or abs(miss) > LOUDNESS_TOLERANCE_LU) and attempt < WRITE_ATTEMPTS - 1:
                    if over > 0:
                        ceiling -= over + 0.1
                    if abs(miss) > LOUDNESS_TOLERANCE_LU:
                        target += miss
                    out = normalize_loudness(wav, sample_rate, target, ceiling, circular=spec.loop)
                    raise _Retry()
        except _Retry:
            continue
        break
    meta = {
        **sidecar,
        "file": path.name,
        "sample_rate": back.sample_rate,
        "channels": back.channels,
        "duration_s": round(back.duration_s, 6),
        "samples": back.frames,
        "finishing": asdict(spec),
        "measured": {"integrated_lufs": round(lufs, 2), "true_peak_dbtp": round(tp, 2)},
        "ai_generated": True,
    }
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2))
    return meta


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


class _Retry(Exception):
    """Internal: abandon this attempt's temp file and write again with less gain."""
