"""Tempo and key estimators, and the MIREX measures that validate them against known labels.

The rendered music21 corpus (:mod:`audiogen.render`) knows every track's exact tempo and
key, so the estimators prep uses can be measured instead of trusted::

    est = {name: f(y, sr) for name, f in TEMPO_ESTIMATORS.items()}      # bpm
    tempo_accuracy(true_bpm, est_bpm)      # MIREX accuracy-1 (within 4 %) and accuracy-2 (x2, x3, /2, /3 too)
    key_score("C major", "G major")        # MIREX weighted key score: 1, fifth 0.5, relative 0.3, parallel 0.2

Tempo: ``beat_track`` is prep's estimator (librosa's dynamic-programming beat tracker,
tempo refined by a line through the beat times); ``tempogram`` is librosa's
autocorrelation tempogram with its default log-normal prior around 120 bpm
(``librosa.feature.tempo``); ``tempogram_flat`` the same without the prior (the
strongest periodicity between 30 and 300 bpm). Key: Krumhansl-Schmuckler (the profiles
prep uses) and Temperley (2001, "Kostka-Payne") profiles, on STFT or CQT chroma.
"""

from __future__ import annotations

import numpy as np

SR = 22_050
HOP = 512

# Krumhansl & Kessler (1982) probe-tone profiles, as in audiogen.prep
KS_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KS_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Temperley (2001) Kostka-Payne profiles
TEMPERLEY_MAJOR = np.array([5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0])
TEMPERLEY_MINOR = np.array([5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0])
PROFILES = {"krumhansl": (KS_MAJOR, KS_MINOR), "temperley": (TEMPERLEY_MAJOR, TEMPERLEY_MINOR)}
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PC = {n: i for i, n in enumerate(NAMES)} | {"Db": 1, "D#": 3, "Gb": 6, "G#": 8, "A#": 10, "Cb": 11, "E#": 5,
                                              "Fb": 4, "B#": 0}


# ------------------------------------------------------------------------------- tempo


def onset_envelope(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """``y: [N]`` mono at ``sr`` -> onset strength ``[F]`` at hop 512."""
    import librosa

    return librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP)


def tempo_beat_track(env: np.ndarray, sr: int = SR) -> float | None:
    """prep's estimator (:func:`audiogen.prep.estimate_bpm`) on this envelope."""
    from audiogen.prep import estimate_bpm

    return estimate_bpm(env, sr=sr, hop=HOP)


def tempo_tempogram(env: np.ndarray, sr: int = SR, prior: bool = True) -> float | None:
    """librosa's autocorrelation-tempogram tempo; ``prior=False`` drops its log-normal prior at 120 bpm."""
    import librosa

    import scipy.stats

    kw = {} if prior else {"prior": scipy.stats.uniform(30, 270)}  # flat between 30 and 300 bpm
    t = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=env, sr=sr, hop_length=HOP, **kw))[0])
    return round(t, 1) if t > 0 else None


TEMPO_ESTIMATORS = {
    "beat_track": tempo_beat_track,
    "tempogram": tempo_tempogram,
    "tempogram_flat": lambda env, sr=SR: tempo_tempogram(env, sr, prior=False),
}


def tempo_accuracy(true_bpm, est_bpm, tol: float = 0.04) -> dict:
    """MIREX tempo accuracy over tracks: ``acc1`` (within ``tol`` of the truth) and ``acc2``
    (also at 2x, 3x, 1/2, 1/3 of it: octave errors forgiven). A missing estimate counts wrong."""
    t = np.asarray(true_bpm, dtype=np.float64)
    e = np.asarray([np.nan if x is None else x for x in est_bpm], dtype=np.float64)
    ok1 = np.abs(e - t) <= tol * t
    ok2 = np.any([np.abs(e - t * f) <= tol * t * f for f in (1, 2, 3, 1 / 2, 1 / 3)], axis=0)
    return {"acc1": float(np.mean(ok1)), "acc2": float(np.mean(ok2)), "n": int(t.size)}


# --------------------------------------------------------------------------------- key


def chroma(y: np.ndarray, sr: int = SR, kind: str = "cqt") -> np.ndarray:
    """``y: [N]`` -> mean chroma ``[12]`` (``kind``: ``stft`` as prep computes it, or ``cqt``)."""
    import librosa

    if kind == "stft":
        c = librosa.feature.chroma_stft(y=y, sr=sr, hop_length=HOP, n_fft=4096, tuning=0.0)
    elif kind == "cqt":
        c = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=HOP, tuning=0.0)
    else:
        raise ValueError(f"unknown chroma kind {kind!r}")
    return c.mean(axis=1)


def key_from_chroma(c: np.ndarray, profiles: str = "krumhansl", names=NAMES, min_std: float = 1e-9) -> str | None:
    """The key (e.g. ``"D minor"``, tonic spelled from ``names``) whose rotated profile correlates best
    with mean chroma ``c: [12]``; None for a flat or invalid chroma (std under ``min_std``)."""
    c = np.asarray(c, dtype=np.float64)
    if c.shape != (12,) or not np.isfinite(c).all() or c.std() < min_std:
        return None
    major, minor = PROFILES[profiles]
    best, best_r = None, -2.0
    for mode, prof in (("major", major), ("minor", minor)):
        for tonic in range(12):
            r = np.corrcoef(c, np.roll(prof, tonic))[0, 1]
            if r > best_r:
                best, best_r = f"{names[tonic]} {mode}", r
    return best


def _parse_key(name: str) -> tuple[int, str]:
    tonic, mode = name.split()
    return _PC[tonic], mode


def key_score(true: str, est: str | None) -> float:
    """MIREX weighted key score of one estimate: 1 same key, 0.5 a fifth away (same mode),
    0.3 relative major/minor, 0.2 parallel major/minor, else 0."""
    if est is None:
        return 0.0
    (t, tm), (e, em) = _parse_key(true), _parse_key(est)
    if (t, tm) == (e, em):
        return 1.0
    if tm == em and (e - t) % 12 in (5, 7):
        return 0.5
    if tm == "major" and em == "minor" and (e - t) % 12 == 9:
        return 0.3
    if tm == "minor" and em == "major" and (e - t) % 12 == 3:
        return 0.3
    if t == e:
        return 0.2
    return 0.0
