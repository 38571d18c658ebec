"""A codec's reconstruction quality on real music, next to anchors measured in the same run.

For each excerpt (mono, at the codec's rate) and each method, the output is aligned to the
input (best lag within +-50 ms, so an encoder delay is not counted as error) and scored with
:mod:`audiogen.metrics.audio_checks` (band correlation, mel error, variation ratio, frame-rate
harmonic fraction) plus the older mel distance and SI-SDR. The methods:

- the codec at each bitrate it offers, with per-codebook usage and entropy of its tokens;
- Griffin-Lim from the unquantized mel of the input (a spectral ceiling: no codec, only the
  phase is lost);
- Vorbis, MP3 and Opus (libsndfile) at the compression levels whose bitrates are nearest the
  codec's;
- 8-bit mu-law;
- the pretrained EnCodec 24 kHz at the bandwidths nearest the codec's, when its weights are
  on this machine (never downloaded).

``benchmarks/codec_quality.py`` is the command-line entry point; docs/quality_checks.md
explains the figures.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiogen.errors import AudiogenError
from audiogen.metrics import audio_checks as C

#: libsndfile formats used as anchors: name -> (format, subtype, extra write options)
COMPRESSED_ANCHORS = {
    "vorbis": ("OGG", "VORBIS", {}),
    "mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT"}),
    "opus": ("OGG", "OPUS", {}),
}
#: compression levels scanned (0 best .. 1 smallest); libsndfile's MP3 rejects 1.0
COMPRESSION_LEVELS = {
    "vorbis": (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
    "mp3": (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.97, 0.99),
    "opus": (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0),
}
#: EnCodec 24 kHz's bandwidths (kbps)
ENCODEC_BANDWIDTHS = (1.5, 3.0, 6.0, 12.0, 24.0)
MAX_LAG_S = 0.05


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SDR in dB of ``est [N]`` against ``ref [N]``."""
    ref = ref - ref.mean()
    est = est - est.mean()
    target = (est @ ref) / (ref @ ref + 1e-12) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + 1e-12) / (noise @ noise + 1e-12)))


def mel_distance(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """Mean |log10 mel| difference (80 mels, 1024-point FFT, hop 256): the figure this benchmark
    reported before issue 16 (it rated the buzz 'better than MP3'; kept for comparison)."""
    import librosa

    kw = dict(sr=sr, n_fft=1024, hop_length=256, n_mels=80, power=1.0)
    a = np.log10(np.maximum(librosa.feature.melspectrogram(y=ref, **kw), 1e-5))
    b = np.log10(np.maximum(librosa.feature.melspectrogram(y=est, **kw), 1e-5))
    return float(np.abs(a - b).mean())


def score(ref: np.ndarray, est: np.ndarray, sr: int, frame_rate: float) -> dict:
    """Every figure of ``est [N']`` as a reconstruction of ``ref [N]`` (aligned first)."""
    ref, est = C.align(ref, np.asarray(est, dtype=np.float32), sr, int(MAX_LAG_S * sr))
    fid = C.reconstruction_fidelity(ref, est, sr)
    return {"band_correlation": fid["band_correlation"], "mel_error_db": fid["mel_error_db"],
            "variation_ratio": fid["variation_ratio"], "variation_db": fid["est_variation_db"],
            "frame_rate_harmonic_fraction": C.frame_rate_harmonic_fraction(est, sr, frame_rate),
            "mel_distance": mel_distance(ref, est, sr), "si_sdr_db": si_sdr(ref, est)}


# ----------------------------------------------------------------------------- anchors


def mulaw_roundtrip(wav: np.ndarray) -> np.ndarray:
    """``[N] -> [N]`` through 8-bit mu-law (8 bits a sample)."""
    import torchaudio.functional as AF

    x = torch.from_numpy(np.clip(wav, -1, 1).astype(np.float32))
    return AF.mu_law_decoding(AF.mu_law_encoding(x, 256), 256).numpy()


def compressed_roundtrip(wav: np.ndarray, sr: int, anchor: str, level: float) -> tuple[np.ndarray, float]:
    """Encode ``wav [N]`` with libsndfile's ``anchor`` (vorbis, mp3, opus) at ``compression_level``
    ``level``, decode; returns ``(audio [N'], kbps)``, kbps from the encoded size (headers included)."""
    fmt, subtype, extra = COMPRESSED_ANCHORS[anchor]
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=fmt, subtype=subtype, compression_level=level, **extra)
    kbps = len(buf.getvalue()) * 8 / (len(wav) / sr) / 1000
    buf.seek(0)
    out, _ = sf.read(buf, dtype="float32", always_2d=True)
    return out.mean(axis=1), kbps


def nearest_levels(wav: np.ndarray, sr: int, anchor: str, targets_kbps: list[float]) -> dict[float, float]:
    """For each target bitrate, the compression level of ``anchor`` whose bitrate on ``wav`` is
    nearest: ``{target: level}``."""
    rates = [(lv, compressed_roundtrip(wav, sr, anchor, lv)[1]) for lv in COMPRESSION_LEVELS[anchor]]
    return {t: min(rates, key=lambda r: abs(r[1] - t))[0] for t in targets_kbps}


def griffin_lim_from_mel(wav: np.ndarray, sr: int, n_iter: int = 32) -> np.ndarray:
    """``[N] -> [N]``: a 128-band mel (1024-point FFT, hop 256) of the input, unquantized,
    inverted by Griffin-Lim: what a perfect mel with no phase gives back (the ceiling)."""
    import librosa

    kw = dict(sr=sr, n_fft=1024, hop_length=256, power=1.0)
    mel = librosa.feature.melspectrogram(y=wav, n_mels=128, **kw)
    return librosa.feature.inverse.mel_to_audio(mel, n_iter=n_iter, length=len(wav), **kw).astype(np.float32)


# ----------------------------------------------------------------------------- codecs


def operating_points(codec) -> list[tuple[float, int]]:
    """``[(kbps, num_codebooks)]`` for each bitrate the codec offers: its trained target
    bandwidths when its config lists them, else its current number of codebooks."""
    from audiogen.codec.base import num_codebooks_for_bandwidth

    cfg = getattr(codec, "config", None)
    if cfg is not None and getattr(cfg, "target_bandwidths", None):
        return [(float(bw), num_codebooks_for_bandwidth(cfg, bw)) for bw in sorted(cfg.target_bandwidths)]
    k = codec.num_codebooks
    return [(k * np.log2(codec.cardinality) * codec.frame_rate / 1000, k)]


@torch.inference_mode()
def codec_roundtrip(codec, wav: np.ndarray, sr: int, num_codebooks: int) -> tuple[np.ndarray, np.ndarray]:
    """``wav [N]`` at ``sr`` through ``codec`` with ``num_codebooks``: ``(audio [N'] at sr, codes [K, T])``."""
    from audiogen.audio.io import resample

    x = resample(wav[None].astype(np.float32), sr, codec.sample_rate)
    x = np.repeat(x, codec.channels, axis=0)
    saved, codec.num_codebooks = codec.num_codebooks, num_codebooks
    try:
        codes = codec.encode(torch.from_numpy(x)[None].to(codec.device))  # [1, K, T]
        y = codec.decode(codes)[0].float().cpu().numpy().mean(axis=0)
    finally:
        codec.num_codebooks = saved
    return resample(y, codec.sample_rate, sr), codes[0].cpu().numpy()


def load_pretrained_encodec():
    """The pretrained EnCodec 24 kHz, or the one-line reason it is absent."""
    from audiogen.codec.base import load_codec

    try:
        return load_codec("encodec_24khz"), None
    except AudiogenError as e:
        return None, str(e)


# ----------------------------------------------------------------------------- the run


def _mean(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def _codebook_summary(per_track: list[list[dict]]) -> list[dict]:
    """Per codebook: mean distinct codes and entropy over tracks, and the fewest distinct codes."""
    out = []
    for q in range(len(per_track[0])):
        rows = [t[q] for t in per_track]
        out.append({"codebook": q, "distinct_mean": round(float(np.mean([r["distinct"] for r in rows])), 1),
                    "distinct_min": min(r["distinct"] for r in rows),
                    "entropy_bits_mean": round(float(np.mean([r["entropy_bits"] for r in rows])), 3),
                    "max_entropy_bits": round(rows[0]["max_entropy_bits"], 3)})
    return out


def codec_quality(codec, excerpts: list[tuple[str, np.ndarray]], sr: int, griffin_lim: bool = True,
                  encodec: bool = True) -> dict:
    """Score ``codec`` and the anchors on ``excerpts`` (``(name, wav [N] at sr)``); returns the
    ``results`` (one entry per method, figures averaged over excerpts) and facts about the run."""
    from audiogen.codec.base import num_codebooks_for_bandwidth

    frame_rate = codec.frame_rate
    seconds = min(len(w) for _, w in excerpts) / sr
    points = operating_points(codec)
    targets = [kbps for kbps, _ in points]
    scores: dict[str, list[dict]] = {}
    codebooks: dict[str, list[list[dict]]] = {}
    kbps_of: dict[str, list[float]] = {}

    def add(name: str, ref: np.ndarray, est: np.ndarray, kbps: float | None) -> None:
        scores.setdefault(name, []).append(score(ref, est, sr, frame_rate))
        if kbps is not None:
            kbps_of.setdefault(name, []).append(kbps)

    levels = {a: nearest_levels(excerpts[0][1][: 5 * sr], sr, a, targets) for a in COMPRESSED_ANCHORS}
    pretrained, encodec_absent = load_pretrained_encodec() if encodec else (None, "not requested (--no-encodec)")
    encodec_bws = sorted({min(ENCODEC_BANDWIDTHS, key=lambda b: abs(b - t)) for t in targets})
    inputs = []
    for _, ref in excerpts:
        inputs.append({"variation_db": C.temporal_variation_db(ref, sr),
                       "frame_rate_harmonic_fraction": C.frame_rate_harmonic_fraction(ref, sr, frame_rate)})
        for kbps, k in points:
            name = f"codec_{kbps:g}kbps"
            est, codes = codec_roundtrip(codec, ref, sr, k)
            add(name, ref, est, kbps)
            codebooks.setdefault(name, []).append(C.codebook_stats(codes, codec.cardinality))
        if griffin_lim:
            add("griffin_lim_from_mel", ref, griffin_lim_from_mel(ref, sr), None)
        add("mulaw_8bit", ref, mulaw_roundtrip(ref), 8 * sr / 1000)
        for anchor, by_target in levels.items():
            for level in sorted(set(by_target.values())):
                est, kbps = compressed_roundtrip(ref, sr, anchor, level)
                add(f"{anchor}_level{level:g}", ref, est, kbps)
        if pretrained is not None:
            for bw in encodec_bws:
                est, _ = codec_roundtrip(pretrained, ref, sr, num_codebooks_for_bandwidth(pretrained.config, bw))
                add(f"encodec_24khz_{bw:g}kbps", ref, est, bw)

    results = {}
    for name, rows in scores.items():
        r = _mean(rows)
        if name in kbps_of:
            r["kbps"] = round(float(np.mean(kbps_of[name])), 2)
        if name in codebooks:
            r["codebooks"] = _codebook_summary(codebooks[name])
        r["failures"] = C.fidelity_failures(r)
        if name in codebooks:
            r["failures"] += C.codebook_failures(r["codebooks"][0]["distinct_min"], seconds)
        results[name] = r
    for anchor, by_target in levels.items():
        for level in set(by_target.values()):
            results[f"{anchor}_level{level:g}"]["compression_level"] = level
            results[f"{anchor}_level{level:g}"]["nearest_to_codec_kbps"] = [t for t, lv in by_target.items()
                                                                          if lv == level]
    return {"frame_rate_hz": frame_rate, "codec_kbps": targets, "seconds_per_excerpt": seconds, "input": _mean(inputs),
            "encodec_24khz": "measured" if pretrained is not None else f"absent: {encodec_absent}",
            "results": results}


def read_excerpts(tracks: list[Path], sr: int, seconds: float, offset_s: float) -> list[tuple[str, np.ndarray]]:
    """``seconds`` of each track (mono, at ``sr``) from ``offset_s``, moved earlier for a short
    track; a track shorter than ``seconds`` is refused (the figures assume the full length)."""
    from audiogen.audio.io import audio_info, load_audio

    out = []
    for t in tracks:
        dur = audio_info(t).duration_s
        if dur < seconds:
            raise AudiogenError(f"{t}: {dur:.1f} s long, shorter than the {seconds:g} s excerpt; leave it out or "
                                "ask for shorter excerpts")
        wav, _ = load_audio(t, sample_rate=sr, channels=1, offset_s=max(0.0, min(offset_s, dur - seconds - 0.1)),
                            duration_s=seconds)
        out.append((t.name, wav[0]))
    return out


# ------------------------------------------------------------------------------ timbre

#: the instrument families a timbre check renders (ensembles of :mod:`audiogen.data.render`), the five of issue 22's
#: six that General MIDI plays (drums have no score in the corpus)
TIMBRE_ENSEMBLES = {"piano": "piano", "strings": "string quartet", "guitar": "guitar", "flute": "flute",
                    "choir": "choir"}
TIMBRE_COLLECTIONS = ("bach_chorales", "oneills")


def timbre_pieces(n: int, exclude_dirs=()) -> list:
    """``n`` score jobs (:class:`audiogen.data.render.Job`, variant 0, seed 0) taken in turn from
    :data:`TIMBRE_COLLECTIONS`, none of them a piece rendered under ``exclude_dirs`` (a training corpus,
    whatever its ensemble: the check must hear pieces the codec or model never met)."""
    from audiogen.data.render import interleave, plan_corpus

    seen = {p.stem.split("__v")[0] for d in exclude_dirs if Path(d).is_dir() for p in Path(d).rglob("*.json")}
    jobs = interleave([j for j in plan_corpus(1, 0, list(TIMBRE_COLLECTIONS)) if j.name.split("__v")[0] not in seen])
    if len(jobs) < n:
        raise AudiogenError(f"timbre check: only {len(jobs)} pieces are not in {', '.join(map(str, exclude_dirs))}")
    return jobs[:n]


def render_timbre_clips(jobs: list, sr: int, seconds: float) -> list[tuple[str, str, np.ndarray]]:
    """Each job rendered by each :data:`TIMBRE_ENSEMBLES` ensemble (FluidSynth, FluidR3_GM): ``(family,
    piece, wav [N] mono at sr)``, the first ``seconds`` of each."""
    import tempfile
    from dataclasses import replace

    from audiogen.audio.io import load_audio
    from audiogen.data.render import output_paths, render_job

    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam, ensemble in TIMBRE_ENSEMBLES.items():
            for job in jobs:
                j = replace(job, ensemble=ensemble)
                render_job(j, Path(tmp) / fam, max_seconds=seconds + 1)
                wav, _ = load_audio(output_paths(j, Path(tmp) / fam)[0], sample_rate=sr, channels=1)
                clips.append((fam, j.name, wav[0, : int(seconds * sr)]))
    return clips


def timbre_roundtrip(codec, clips: list[tuple[str, str, np.ndarray]], sr: int, tagger) -> dict:
    """Does the codec keep an instrument's timbre? For the inputs ``clips`` (:func:`render_timbre_clips`)
    and their roundtrip at each bitrate the codec offers, the MTT tagger's top family among issue 22's six
    (:func:`audiogen.metrics.adherence.family_scores`): ``{method: {"top1", "clips", "per_family":
    {family: [top family per clip]}}}``. A codec that turns piano into noise is heard as drums here, while
    its mel error can look fine."""
    from audiogen.metrics.adherence import FAMILIES, family_scores

    def top(wav: np.ndarray) -> str:
        return FAMILIES[int(np.argmax(family_scores(tagger.tag_probabilities(wav[None], sr)[None], tagger.labels)[0]))]

    heard: dict[str, dict[str, list[str]]] = {}
    for fam, _, wav in clips:
        heard.setdefault("input", {}).setdefault(fam, []).append(top(wav))
        for kbps, k in operating_points(codec):
            est, _ = codec_roundtrip(codec, wav, sr, k)
            heard.setdefault(f"codec_{kbps:g}kbps", {}).setdefault(fam, []).append(top(est))
    return {m: {"top1": sum(t == f for f, ts in by.items() for t in ts), "clips": len(clips), "per_family": by}
            for m, by in heard.items()}
