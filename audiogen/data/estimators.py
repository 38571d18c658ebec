"""Tempo and key estimators, and the MIREX measures that validate them against known labels.

The rendered music21 corpus (:mod:`audiogen.data.render`) knows every track's exact tempo and
key, so the estimators prep uses can be measured instead of trusted::

    est = {name: f(env, sr, hop, chroma=chroma) for name, f in TEMPO_ESTIMATORS.items()}   # bpm
    tempo_accuracy(true_bpm, est_bpm)      # MIREX accuracy-1 (within 4 %) and accuracy-2 (x2, x3, /2, /3 too)
    key_score("C major", "G major")        # MIREX weighted key score: 1, fifth 0.5, relative 0.3, parallel 0.2

Tempo: ``levels`` (:func:`tempo_levels`, prep's estimator since shard version 6) scores the
peaks of ``metrical``'s tempogram with weights fitted on rendered tuning pieces (their
periodicity, subdivision and bar in both envelopes, Fourier magnitude, a learnt prior) and
takes the best; ``metrical`` (:func:`tempo_metrical`, prep's in shard version 5) picks the beat's
level on detrended tempograms (the onset floor of legato renders removed) of the onset envelope
and of the harmonic change (:func:`harmonic_change`, from chroma) with a prior at 100 bpm;
``metrical_onset`` is the same on the onset envelope alone (prep's estimator in shard version
4); ``beat_track`` was prep's estimator before that (librosa's dynamic-programming beat tracker,
tempo refined by a line through the beat times); ``tempogram`` is librosa's autocorrelation
tempogram with its default log-normal prior around 120 bpm (``librosa.feature.tempo``);
``tempogram_flat`` the same without the prior (the strongest periodicity between 30 and 300
bpm). Key: Krumhansl-Schmuckler (the profiles prep uses) and Temperley (2001,
"Kostka-Payne") profiles, on STFT or CQT chroma.
"""

from __future__ import annotations

import numpy as np

SR = 22_050
HOP = 512

# Krumhansl & Kessler (1982) probe-tone profiles, as in audiogen.data.prep
KS_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KS_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Temperley (2001) Kostka-Payne profiles
TEMPERLEY_MAJOR = np.array([5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0])
TEMPERLEY_MINOR = np.array([5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0])
PROFILES = {"krumhansl": (KS_MAJOR, KS_MINOR), "temperley": (TEMPERLEY_MAJOR, TEMPERLEY_MINOR)}
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PC = {n: i for i, n in enumerate(NAMES)} | {"Db": 1, "D#": 3, "Gb": 6, "G#": 8, "A#": 10, "Cb": 11, "E#": 5,
                                              "Fb": 4, "B#": 0}
#: each pitch class spelled with a sharp: the tonics of prep's estimated keys and of a model's key vocabulary
SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


# ------------------------------------------------------------------------------- tempo


def onset_envelope(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """``y: [N]`` mono at ``sr`` -> onset strength ``[F]`` at hop 512."""
    import librosa

    return librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP)


def _no_tempo_in(env: np.ndarray, sr: int, hop: int) -> bool:
    """Whether an onset envelope ``env: [F]`` is too short (under 4 s) or flat (no onsets) to hold a tempo."""
    return env.size < 4 * sr / hop or float(env.max(initial=0.0)) <= 0


def tempo_beat_track(env: np.ndarray, sr: int = SR, hop: int = HOP) -> float | None:
    """prep's estimator until shard version 4: librosa's beat tracker (its tempo prior at 120 bpm),
    refined by a line fit through the beat times (the tracker's own tempo is quantized to whole lags)."""
    import librosa

    if _no_tempo_in(env, sr, hop):
        return None  # under 4 s, or no onsets at all
    tempo, beats = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=hop)
    tempo = float(np.atleast_1d(tempo)[0])
    if len(beats) >= 4:
        times = np.asarray(beats, dtype=np.float64) * hop / sr
        slope = np.polyfit(np.arange(len(times)), times, 1)[0]
        if slope > 0:
            tempo = 60.0 / slope
    return round(tempo, 1) if tempo > 0 else None


def tempo_tempogram(env: np.ndarray, sr: int = SR, hop: int = HOP, prior: bool = True) -> float | None:
    """librosa's autocorrelation-tempogram tempo; ``prior=False`` drops its log-normal prior at 120 bpm."""
    import librosa

    import scipy.stats

    kw = {} if prior else {"prior": scipy.stats.uniform(30, 270)}  # flat between 30 and 300 bpm
    t = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=env, sr=sr, hop_length=hop, **kw))[0])
    return round(t, 1) if t > 0 else None


#: metrical tempo estimator's settings, chosen on rendered tuning pieces (validate_labels --seed 29,
#: then --seed 29, 53 and 71 for the harmonic change; click tracks at 90/120/140 bpm must come out
#: right) and measured on held-out ones (--seed 41, --seed 67), docs/prep.md: a log-normal prior at
#: 100 bpm, sd 1 octave. Weights on the subdivision (1/2, 1/3 period) and bar (2-4 periods)
#: periodicities were tried: 0.25/0.25 scored best on the tuning pieces but halves a 140-bpm click
#: track (its half tempo has a perfect "subdivision"), so both are 0
METRICAL_PRIOR_BPM, METRICAL_PRIOR_OCTAVES, METRICAL_W_SUB, METRICAL_W_BAR = 100.0, 1.0, 0.0, 0.0
#: weight of the harmonic-change envelope's periodicity next to the onset envelope's (1); 0.5 and 1
#: were tried on the tuning pieces (93.1 % and 91.7 % accuracy-1 on 144)
METRICAL_W_HARMONIC = 0.5
#: harmonic change: chroma smoothed over HARMONIC_SMOOTH_S, compared with HARMONIC_LAG_S before
HARMONIC_SMOOTH_S, HARMONIC_LAG_S = 0.1, 0.05


def _acf_at(a: np.ndarray, lags: np.ndarray, tol: float) -> np.ndarray:
    """Largest value of ``a`` (linearly interpolated) within ``tol`` (relative) of each lag; 0 past its end."""
    lags = np.asarray(lags, dtype=np.float64)[..., None] * (1 + np.linspace(-tol, tol, 7))
    i = np.floor(lags).astype(int)
    ok = (i >= 0) & (i + 1 < a.size)
    i = np.clip(i, 0, a.size - 2)
    v = a[i] * (1 - (lags - i)) + a[i + 1] * (lags - i)
    return np.where(ok, v, 0.0).max(axis=-1)


def harmonic_change(chroma: np.ndarray, sr: int = SR, hop: int = HOP) -> np.ndarray:
    """``chroma: [12, F]`` (frames at ``hop``) -> harmonic change ``[F]``: the pitch-class content each
    frame has that the frame ``HARMONIC_LAG_S`` before it had not (positive flux of the unit-norm
    chroma, smoothed over ``HARMONIC_SMOOTH_S`` so single partials and noise do not count).

    A chord change is an event here whatever its attack: legato strings and choir, whose onset
    envelope barely marks it, change chord on the beat."""
    from scipy.ndimage import uniform_filter1d

    c = uniform_filter1d(np.asarray(chroma, dtype=np.float64), max(1, int(round(HARMONIC_SMOOTH_S * sr / hop))),
                         axis=1, mode="nearest")
    c = c / (np.linalg.norm(c, axis=0, keepdims=True) + 1e-9)
    k = max(1, int(round(HARMONIC_LAG_S * sr / hop)))
    h = np.zeros(c.shape[1])
    h[k:] = np.maximum(c[:, k:] - c[:, :-k], 0.0).sum(axis=0)
    return h


def _detrend(x: np.ndarray, sr: int, hop: int) -> np.ndarray:
    """Envelope ``x: [F]`` minus its 1-s running mean, half-wave rectified ``[F]``."""
    w = max(1, int(round(sr / hop)))
    return np.maximum(x - np.convolve(x, np.ones(w) / w, mode="same"), 0.0)


def _periodicity(x: np.ndarray, sr: int, hop: int) -> np.ndarray | None:
    """Envelope ``x: [F]`` -> its mean autocorrelation tempogram ``[lag]`` (12-s windows), after removing
    its 1-s running mean (half-wave rectified); None when nothing is left."""
    import librosa

    e = _detrend(x, sr, hop)
    if float(e.max(initial=0.0)) <= 0:
        return None
    win = min(int(round(12.0 * sr / hop)), e.size)
    return librosa.feature.tempogram(onset_envelope=e, sr=sr, hop_length=hop, win_length=win).mean(axis=1)


def tempo_metrical(env: np.ndarray, sr: int = SR, hop: int = HOP, lo: float = 40.0, hi: float = 250.0,
                   chroma: np.ndarray | None = None) -> float | None:
    """Tempo of the metre's beat from an onset envelope ``env: [F]`` and, where given, the chroma
    ``chroma: [12, F]`` of the same frames (at ``hop``).

    1. Each envelope minus its 1-s running mean (half-wave rectified): rendered and legato music
       (strings, choir) has a high, steady onset floor that otherwise makes every lag look periodic.
    2. librosa's autocorrelation tempogram over 12-s windows, averaged over time; with ``chroma``,
       the tempogram of its harmonic change (:func:`harmonic_change`) is added, weighted
       ``METRICAL_W_HARMONIC``: chords change on beats, passing notes and repeated notes between
       them do not change the harmony, so this settles the level an onset envelope alone leaves
       open (a chorale with running eighths heard at the eighths). ``a[lag]``.
    3. Each candidate beat (``lo``..``hi`` bpm, 600 log-spaced) scores its own periodicity, plus
       ``METRICAL_W_SUB`` x its best subdivision (1/2 or 1/3: duple or compound metre) and
       ``METRICAL_W_BAR`` x its best bar (2, 3 or 4 beats; both 0 today, see above), times a
       log-normal prior at 100 bpm; the best one wins.
    4. The tempogram's own peak within 4 % of it, interpolated between lags, sharpens it (the
       level is decided by step 3). librosa's beat tracker at that tempo with a line through its
       beats did worse here: legato renders drift (3 more misses of 4-5 % on the 49 tuning pieces).
    """
    if _no_tempo_in(env, sr, hop):
        return None
    a = _periodicity(env, sr, hop)
    if a is None:
        return None
    if chroma is not None and METRICAL_W_HARMONIC:
        ah = _periodicity(harmonic_change(chroma, sr, hop), sr, hop)
        if ah is not None and ah.size == a.size:
            a = a + METRICAL_W_HARMONIC * ah
    bpm = np.exp(np.linspace(np.log(lo), np.log(hi), 600))
    period = 60.0 * sr / hop / bpm  # frames
    beat = _acf_at(a, period, 0.01)
    sub = np.maximum(_acf_at(a, period / 2, 0.03), _acf_at(a, period / 3, 0.03))
    bar = np.max([_acf_at(a, k * period, 0.03) for k in (2, 3, 4)], axis=0)
    prior = np.exp(-0.5 * (np.log2(bpm / METRICAL_PRIOR_BPM) / METRICAL_PRIOR_OCTAVES) ** 2)
    tempo = float(bpm[int(np.argmax((beat + METRICAL_W_SUB * sub + METRICAL_W_BAR * bar) * prior))])
    return _sharpen(a, tempo, sr, hop)


def _sharpen(a: np.ndarray, tempo: float, sr: int, hop: int) -> float:
    """Sharpen ``tempo`` within 4 % (its level is decided already): the autocorrelation ``a[lag]``'s own
    peak near that period, parabolically interpolated between lags."""
    p0 = 60.0 * sr / hop / tempo
    lags = np.arange(max(1, int(np.floor(p0 * 0.96))), min(a.size - 1, int(np.ceil(p0 * 1.04))) + 1)
    if lags.size:
        k = int(lags[np.argmax(a[lags])])
        if 0 < k < a.size - 1:
            den = a[k - 1] - 2 * a[k] + a[k + 1]
            lag = k + (0.5 * (a[k - 1] - a[k + 1]) / den if den < 0 else 0.0)
            if abs(lag - p0) <= 0.04 * p0:
                tempo = 60.0 * sr / hop / lag
    return round(tempo, 1)


#: what the level chooser (:func:`tempo_levels`) knows of each candidate beat: its periodicity in the
#: onset and harmonic-change envelopes (absolute, and relative to the best candidate's), their Fourier
#: magnitude at the candidate's frequency (relative: it favours faster levels where autocorrelation
#: favours slower ones), the periodicity at its subdivision (1/2, 1/3 period) and bar (2-4 periods) in
#: both envelopes, and log2(bpm / 100) and its square (a log-normal prior, learnt)
LEVEL_FEATURES = ("onset", "onset_rel", "harmonic", "harmonic_rel", "onset_fourier_rel", "harmonic_fourier_rel",
                  "onset_sub", "onset_bar", "harmonic_sub", "harmonic_bar", "log2_tempo", "log2_tempo_sq")
#: candidates: the LEVEL_CANDIDATES strongest peaks of the combined tempogram between ``lo`` and ``hi``
LEVEL_CANDIDATES = 10
#: the level chooser's weights, per LEVEL_FEATURES: :func:`fit_level_weights` (L2 0.01) on the rendered
#: corpus's tuning half and click tracks at LEVEL_FIT_CLICKS bpm (data_prep/fit_tempo_levels.py;
#: docs/prep.md, "Tempo, the beat's level chosen by a fitted scorer")
LEVEL_WEIGHTS = np.array([1.761, 4.805, 3.058, 1.613, 2.63, 1.875, 9.88, 10.143, -5.662, 11.092, -1.63, -5.796])
#: click tracks the weights are also fitted on: music always has subdivisions, so without them the
#: fit halves a plain click track (its half tempo has a perfect "subdivision")
LEVEL_FIT_CLICKS = (65, 75, 85, 105, 115, 130, 150, 170)


def _fourier_at(x: np.ndarray, bpm: np.ndarray, sr: int, hop: int) -> np.ndarray:
    """Magnitude of the mean-removed envelope ``x: [F]``'s Fourier transform at each tempo ``bpm: [K]``
    (relative to the envelope's energy) ``[K]``."""
    x = x - x.mean()
    z = np.exp(-2j * np.pi * np.outer(np.asarray(bpm) / 60.0 * hop / sr, np.arange(x.size))) @ x
    return np.abs(z) / (np.linalg.norm(x) * np.sqrt(x.size) + 1e-9)


def level_candidates(env: np.ndarray, sr: int = SR, hop: int = HOP, chroma: np.ndarray | None = None,
                     lo: float = 40.0, hi: float = 250.0):
    """Candidate beats of an onset envelope ``env: [F]`` (and its ``chroma: [12, F]``): ``(bpm [K],
    features [K, len(LEVEL_FEATURES)], a [lag])`` with ``a`` the combined tempogram (as
    :func:`tempo_metrical` builds it); None under 4 s or without onsets. Without chroma the
    harmonic-change features are 0."""
    if _no_tempo_in(env, sr, hop):
        return None
    a_on = _periodicity(env, sr, hop)
    if a_on is None:
        return None
    hc = harmonic_change(chroma, sr, hop) if chroma is not None else None
    a_h = _periodicity(hc, sr, hop) if hc is not None else None
    if a_h is None or a_h.size != a_on.size:
        a_h, hc = np.zeros_like(a_on), None
    a = a_on + METRICAL_W_HARMONIC * a_h
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 600))
    s = _acf_at(a, 60.0 * sr / hop / grid, 0.01)
    peaks = np.flatnonzero((s[1:-1] >= s[:-2]) & (s[1:-1] >= s[2:])) + 1
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(s))])
    peaks = peaks[np.argsort(-s[peaks], kind="stable")][:LEVEL_CANDIDATES]
    bpm = grid[peaks]
    period = 60.0 * sr / hop / bpm
    cols = []
    for y in (a_on, a_h):
        v = _acf_at(y, period, 0.01)
        cols += [v, v / (v.max() + 1e-9)]
    for x in (env, hc):
        f = _fourier_at(_detrend(x, sr, hop), bpm, sr, hop) if x is not None else np.zeros(bpm.size)
        cols.append(f / (f.max() + 1e-9))
    for y in (a_on, a_h):
        cols.append(np.maximum(_acf_at(y, period / 2, 0.03), _acf_at(y, period / 3, 0.03)))
        cols.append(np.max([_acf_at(y, k * period, 0.03) for k in (2, 3, 4)], axis=0))
    ell = np.log2(bpm / 100.0)
    cols += [ell, ell**2]
    return bpm, np.stack(cols, axis=1), a


def fit_level_weights(candidates: list, true_bpm, lam: float = 0.01, tol: float = 0.04) -> np.ndarray:
    """Weights ``[len(LEVEL_FEATURES)]`` of a conditional logit choosing among each track's candidates
    (``(bpm [K], features [K, D])`` from :func:`level_candidates`) the one within ``tol`` of its true
    tempo; L2 penalty ``lam``. Tracks with no right candidate (or None) are left out."""
    from scipy.optimize import minimize

    data = []
    for c, t in zip(candidates, true_bpm):
        if c is not None:
            right = np.abs(c[0] - t) <= tol * t
            if right.any():
                data.append((c[1], right))

    def loss(w):
        value, grad = lam * w @ w, 2 * lam * w
        for f, right in data:
            s = f @ w
            p = np.exp(s - s.max())
            p /= p.sum()
            p_right = p[right].sum()
            value -= np.log(p_right + 1e-12)
            grad -= (p[right] @ f[right]) / p_right - p @ f
        return value, grad

    return minimize(loss, np.zeros(len(LEVEL_FEATURES)), jac=True, method="L-BFGS-B").x


def tempo_levels(env: np.ndarray, sr: int = SR, hop: int = HOP, chroma: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> float | None:
    """Tempo of the metre's beat: the candidate of :func:`level_candidates` that ``weights`` (default
    ``LEVEL_WEIGHTS``) score highest, sharpened as in :func:`tempo_metrical`. ``env: [F]``,
    ``chroma: [12, F]``; without chroma (the weights were fitted with it) :func:`tempo_metrical`."""
    if chroma is None:
        return tempo_metrical(env, sr, hop)
    got = level_candidates(env, sr, hop, chroma)
    if got is None:
        return None
    bpm, f, a = got
    w = LEVEL_WEIGHTS if weights is None else np.asarray(weights)
    return _sharpen(a, float(bpm[int(np.argmax(f @ w))]), sr, hop)


def track_beats(env: np.ndarray, bpm: float | None, sr: int = SR, hop: int = HOP) -> np.ndarray:
    """Beat times (seconds from the envelope's first frame, ``float32 [n]``) at the given tempo:
    librosa's dynamic-programming tracker (Ellis 2007) told ``bpm``, so the beats follow the label
    or prep's estimate rather than its own prior. Empty when there is no tempo, under 4 s or
    without onsets. Prep stores them per segment (the ``beats`` column); the LM's beat grid
    (:func:`beat_phase`) is made from them."""
    import librosa

    if bpm is None or not np.isfinite(bpm) or bpm <= 0 or _no_tempo_in(env, sr, hop):
        return np.zeros(0, dtype=np.float32)
    _, beats = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=hop, bpm=float(bpm), trim=False,
                                       units="time")
    return np.asarray(beats, dtype=np.float32)


def beat_phase(beats: np.ndarray, frames: int, frame_rate: float, offset_s: float = 0.0) -> np.ndarray:
    """Where each of ``frames`` codec frames (starting ``offset_s`` after the beats' origin) falls in
    its beat: ``float32 [frames]`` in [0, 1), 0 on a beat, linear between beats; before the first and
    after the last beat the median beat period is extended. All NaN with fewer than 2 beats."""
    beats = np.asarray(beats, dtype=np.float64)
    if beats.size < 2:
        return np.full(frames, np.nan, dtype=np.float32)
    period = float(np.median(np.diff(beats)))
    t = offset_s + np.arange(frames) / frame_rate
    # beat index as a continuous count: interpolated between beats, extrapolated at the median period
    count = np.interp(t, beats, np.arange(beats.size, dtype=np.float64))
    count = np.where(t < beats[0], (t - beats[0]) / period, count)
    count = np.where(t > beats[-1], beats.size - 1 + (t - beats[-1]) / period, count)
    return np.mod(count, 1.0).astype(np.float32)


#: every tempo estimator measured by ``validate_labels``: ``f(env, sr, hop, chroma=None) -> bpm | None``
#: (``env: [F]`` prep's onset envelope, ``chroma: [12, F]`` prep's chroma of the same frames)
TEMPO_ESTIMATORS = {
    "levels": tempo_levels,
    "metrical": tempo_metrical,
    "metrical_onset": lambda env, sr=SR, hop=HOP, chroma=None: tempo_metrical(env, sr, hop),
    "beat_track": lambda env, sr=SR, hop=HOP, chroma=None: tempo_beat_track(env, sr, hop),
    "tempogram": lambda env, sr=SR, hop=HOP, chroma=None: tempo_tempogram(env, sr, hop),
    "tempogram_flat": lambda env, sr=SR, hop=HOP, chroma=None: tempo_tempogram(env, sr, hop, prior=False),
}


def click_track(bpm: float, seconds: float = 12.0, sr: int = SR) -> np.ndarray:
    """A click (200-sample Hann burst) every beat at ``bpm`` from 0.2 s: ``float32 [seconds * sr]``."""
    y = np.zeros(int(seconds * sr), dtype=np.float32)
    for t in np.arange(0.2, seconds, 60 / bpm):
        i = int(t * sr)
        y[i : i + 200] += np.hanning(200).astype(np.float32)[: y.size - i]
    return y


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


def sharp_key(name: str) -> str | None:
    """A key name in any case and spelling (``"eb MAJOR"``, ``"Cb minor"``) with its tonic spelled sharp
    (``"D# major"``, ``"B minor"``), or None when ``name`` is not "<tonic> major|minor"."""
    parts = name.split()
    if len(parts) != 2 or parts[1].lower() not in ("major", "minor") or not parts[0]:
        return None
    pc = _PC.get(parts[0][0].upper() + parts[0][1:].lower())
    return None if pc is None else f"{SHARP_NAMES[pc]} {parts[1].lower()}"


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
