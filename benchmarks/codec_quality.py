"""Reconstruction quality of a trained codec on held-out tracks, against mu-law and MP3.

For each held-out track, an excerpt (mono, at the codec's rate) goes through:
- the codec at each of its target bandwidths (encode -> decode),
- 8-bit mu-law (the classic telephony companding, 8 bits/sample),
- MP3 (libsndfile/LAME) at the compression level whose bitrate is closest to the codec's
  highest bandwidth (MPEG-2 layer III cannot go below 8 kbps).
Reported per method: bitrate (kbps), mel distance (mean |log10 mel| difference, 80 mels,
1024-point FFT, hop 256; lower is better) and SI-SDR (dB, higher is better), averaged over
tracks. Outputs are aligned to the reference (best lag within +-50 ms) before scoring, so an
MP3 encoder delay is not counted as error. Prints one JSON object.

    python benchmarks/codec_quality.py --codec runs/codec_default/codec [--seconds 10]

Held-out tracks come from the run's ``split.json`` (beside the codec folder) or, with
``--audio-dir``, from the same hash split the training recipe uses.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audiogen.audio import find_audio_files, load_audio  # noqa: E402
from audiogen.codec import load_codec, num_codebooks_for_bandwidth  # noqa: E402
from audiogen.codec_training import split_tracks  # noqa: E402


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SDR in dB of ``est`` against ``ref`` (1-D, same length)."""
    ref = ref - ref.mean()
    est = est - est.mean()
    target = (est @ ref) / (ref @ ref + 1e-12) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + 1e-12) / (noise @ noise + 1e-12)))


def mel_distance(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    import librosa

    kw = dict(sr=sr, n_fft=1024, hop_length=256, n_mels=80, power=1.0)
    a = np.log10(np.maximum(librosa.feature.melspectrogram(y=ref, **kw), 1e-5))
    b = np.log10(np.maximum(librosa.feature.melspectrogram(y=est, **kw), 1e-5))
    return float(np.abs(a - b).mean())


def align(ref: np.ndarray, est: np.ndarray, max_lag: int) -> np.ndarray:
    """``est`` shifted by the lag (|lag| <= max_lag) that best correlates with ``ref``, same length as ``ref``."""
    n = len(ref)
    est = np.pad(est[:n], (0, max(0, n - len(est))))
    size = 1 << int(np.ceil(np.log2(2 * n)))
    xc = np.fft.irfft(np.fft.rfft(est, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    lag = int(lags[np.argmax(xc[lags])])
    out = np.zeros(n, dtype=est.dtype)
    if lag >= 0:
        out[: n - lag] = est[lag:]
    else:
        out[-lag:] = est[: n + lag]
    return out


def mulaw_roundtrip(wav: np.ndarray) -> np.ndarray:
    import torchaudio.functional as AF

    x = torch.from_numpy(np.clip(wav, -1, 1))
    return AF.mu_law_decoding(AF.mu_law_encoding(x, 256), 256).numpy()


def mp3_roundtrip(wav: np.ndarray, sr: int, level: float) -> tuple[np.ndarray, float]:
    """Encode at ``compression_level`` (0 best .. 1 smallest), decode; returns (audio, kbps)."""
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="MP3", compression_level=level, bitrate_mode="CONSTANT")
    kbps = len(buf.getvalue()) * 8 / (len(wav) / sr) / 1000
    buf.seek(0)
    out, _ = sf.read(buf, dtype="float32")
    return out.reshape(-1) if out.ndim == 1 else out.mean(axis=1), kbps


def closest_mp3_level(wav: np.ndarray, sr: int, target_kbps: float) -> float:
    # libsndfile rejects 1.0; the low bitrates all sit in 0.9..0.99
    levels = np.round(np.concatenate([np.linspace(0, 0.9, 10), np.linspace(0.91, 0.99, 9)]), 3)
    rates = [mp3_roundtrip(wav[: sr * 3], sr, lv)[1] for lv in levels]
    return float(levels[int(np.argmin([abs(r - target_kbps) for r in rates]))])


def held_out_tracks(codec_dir: Path, audio_dir: str | None, holdout: int) -> list[Path]:
    split = codec_dir.parent / "split.json"
    if audio_dir is None and split.is_file():
        return [Path(p) for p in json.loads(split.read_text())["held_out"]]
    files = find_audio_files(audio_dir or REPO / ".cache" / "debian-music")
    return split_tracks(files, holdout)[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default=str(REPO / "runs" / "codec_default" / "codec"), help="codec folder or name")
    p.add_argument("--audio-dir", default=None, help="corpus to hold tracks out of (default: the run's split.json)")
    p.add_argument("--holdout", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--offset", type=float, default=30.0, help="excerpt start (s), clamped to the track")
    a = p.parse_args(argv)

    torch.set_grad_enabled(False)
    codec = load_codec(a.codec)
    sr = codec.sample_rate
    cfg = codec.config
    bandwidths = sorted(cfg.target_bandwidths)
    tracks = held_out_tracks(Path(a.codec), a.audio_dir, a.holdout)
    scores: dict[str, dict[str, list[float]]] = {}

    def add(name, ref, est, kbps):
        est = align(ref, est, int(0.05 * sr))
        d = scores.setdefault(name, {"kbps": [], "mel_distance": [], "si_sdr_db": []})
        d["kbps"].append(kbps)
        d["mel_distance"].append(mel_distance(ref, est, sr))
        d["si_sdr_db"].append(si_sdr(ref, est))

    mp3_level = None
    for track in tracks:
        info = sf.info(str(track))
        offset = max(0.0, min(a.offset, info.duration - a.seconds - 0.1))
        wav, _ = load_audio(track, sample_rate=sr, channels=1, offset_s=offset, duration_s=a.seconds)
        ref = wav[0]
        for bw in bandwidths:
            k = num_codebooks_for_bandwidth(cfg, bw)
            codec.num_codebooks = k
            codes = codec.encode(torch.from_numpy(wav)[None])
            est = codec.decode(codes)[0, 0, : len(ref)].numpy()
            add(f"codec_{bw:g}kbps", ref, est, bw)
        add("mulaw_8bit", ref, mulaw_roundtrip(ref), 8 * sr / 1000)
        if mp3_level is None:
            mp3_level = closest_mp3_level(ref, sr, max(bandwidths))
        est, kbps = mp3_roundtrip(ref, sr, mp3_level)
        add("mp3", ref, est, kbps)

    results = {name: {k: round(float(np.mean(v)), 3) for k, v in d.items()} for name, d in scores.items()}
    results["mp3"]["compression_level"] = mp3_level
    training = Path(a.codec) / "training.json"
    steps = json.loads(training.read_text()).get("steps") if training.is_file() else None
    codec.num_codebooks = cfg.n_q
    print(json.dumps({
        "benchmark": "codec_quality",
        "codec": codec.describe(),
        "codec_training_steps": steps,
        "held_out_tracks": [t.name for t in tracks],
        "seconds_per_track": a.seconds,
        "sample_rate": sr,
        "results": results,
    }))


if __name__ == "__main__":
    main()
