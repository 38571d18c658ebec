"""Checks, computed on the audio, that tell music from a buzz, silence or noise.

Loudness, peak, duration, a mel distance and even FAD all passed a codec that decoded every
input to the same static comb at multiples of its 75 Hz frame rate (issue 16). The figures
here do not:

- :func:`temporal_variation_db`: how much the log-mel spectrum changes over time. Real music
  here: 6-9 dB; the buzz: 0.12-0.16 dB.
- :func:`frame_rate_harmonic_fraction`: the share of 20 Hz-4 kHz energy within 1 Hz of a
  multiple of the codec's frame rate. Music: a few %; the buzz: 99.99 %.
- :func:`rms_dbfs`, :func:`silent_frame_fraction`: silence.
- :func:`spectral_flatness`: white noise (flat spectrum in every frame).
- :func:`pulse_strength`, :func:`harmonic_movement`, :func:`tonal_clarity`, :func:`dropouts_per_minute`
  (figures, not checks; the README take's test holds the last three to lines): onsets on a beat, chords
  that change (one chord held under hits has a pulse but no movement), pitch classes held long enough to
  stand out, and short holes in the sound.
- :func:`band_correlation`, :func:`mel_error_db`, :func:`variation_ratio`: a codec's output
  against its input (does the reconstruction follow the input over time?).
- :func:`codebook_stats`: per-codebook usage and entropy of a token sequence.

:func:`music_likeness` and :func:`reconstruction_fidelity` gather these and list the
thresholds a signal fails; docs/quality_checks.md explains each figure.

Audio is float mono ``[N]`` (or ``[C, N]``, downmixed) at ``sr`` Hz. All log-mel figures share
:func:`log_mel_db`: 64 mel bands, 20 ms hop, power in dB.
"""

from __future__ import annotations

import math

import numpy as np

from audiogen.errors import AudiogenError

#: the log-mel every figure here is computed on
N_MELS = 64
HOP_S = 0.020
#: levels more than this far below the loudest mel bin are floored: a fade from digital
#: silence would otherwise put 100 dB steps into the variation and correlation
DYNAMIC_RANGE_DB = 80.0
#: absolute floor (power 1e-10), the level of digital silence
FLOOR_DB = -100.0

#: thresholds of :func:`music_likeness` (docs/quality_checks.md says where each comes from)
MIN_VARIATION_DB = 3.0
MAX_HARMONIC_FRACTION = 0.30
SILENCE_DBFS = -60.0
MAX_SILENT_FRACTION = 0.5
MAX_NOISE_FLATNESS = 0.3
MAX_FRAME_JUMP_RATIO = 0.6
#: beat periods :func:`pulse_strength` searches (30-240 bpm)
PULSE_LAGS_S = (0.25, 2.0)
#: :func:`harmonic_movement`: chroma at this rate, compared ``HARMONY_WINDOW_S`` apart; below
#: ``HELD_CHORD_MOVEMENT`` a clip holds one chord (2 of 47 corpus tracks are below it)
CHROMA_SR = 22050
HARMONY_WINDOW_S = 1.0
HELD_CHORD_MOVEMENT = 0.017
#: :func:`tonal_clarity` under this is a chroma spread over the classes, partials that never settle: every README
#: take of the default model shipped until 2026-12-06 (1.53-2.08); not a line for music in general (14 of 77 corpus
#: excerpts are under it), so it is held only against the README's orchestral take (docs/quality_checks.md)
SCATTERED_CHROMA_CLARITY = 2.2
#: :func:`dropouts_per_minute`: a hole is at least this far under the median frame level, and at most this long
DROPOUT_DB = 25.0
DROPOUT_MAX_S = 0.2
#: thresholds of :func:`reconstruction_fidelity` (issue 16's acceptance figures)
MIN_BAND_CORRELATION = 0.85
MAX_MEL_ERROR_DB = 3.0
VARIATION_RATIO_RANGE = (0.7, 1.3)
#: ... and of :func:`codebook_failures`
MIN_FIRST_CODEBOOK_DISTINCT = 64
CODEBOOK_WINDOW_S = 20.0
#: :func:`align` searches lags in steps of this many seconds (1 ms), on at most the first ``ALIGN_MAX_S``
#: of both signals (a delay is the same throughout; the fine log-mel of 30 s takes about 250 MB)
ALIGN_STEP_S = 0.001
ALIGN_MAX_S = 30.0

#: the band :func:`frame_rate_harmonic_fraction` looks at, and its tolerance around a harmonic
HARMONIC_BAND_HZ = (20.0, 4000.0)
HARMONIC_TOLERANCE_HZ = 1.0
#: Welch segment length: 0.25 Hz bins, fine enough to tell +-1 Hz around a harmonic from the rest
WELCH_SEGMENT_S = 4.0


def _mono(wav: np.ndarray) -> np.ndarray:
    """``[N]`` or ``[C, N]`` -> float64 ``[N]`` (channel mean)."""
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise AudiogenError(f"expected audio shaped [N] or [C, N], got {np.shape(wav)}")
    if x.size == 0:
        raise AudiogenError("cannot measure zero-length audio")
    if not np.isfinite(x).all():
        raise AudiogenError("audio contains NaN or infinite samples")
    return x


def mel_params(sr: int) -> dict:
    """The STFT/mel settings of :func:`log_mel_db` at ``sr``: 20 ms hop, a window of the next
    power of two >= 4 hops (85 ms at 24 kHz), 64 bands from 0 Hz to Nyquist."""
    hop = int(round(HOP_S * sr))
    n_fft = 1 << math.ceil(math.log2(4 * hop))
    return dict(sr=sr, n_fft=n_fft, hop_length=hop, n_mels=N_MELS, fmin=0.0, fmax=sr / 2, power=2.0)


def _mel_power_db(y: np.ndarray, sr: int, hop: int | None = None) -> np.ndarray:
    """Mel power in dB of mono ``y [N]`` with :func:`mel_params` (``hop`` samples apart if given), in
    ``y``'s float precision."""
    import librosa

    params = mel_params(sr) if hop is None else {**mel_params(sr), "hop_length": hop}
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, **params), ref=1.0, amin=10 ** (FLOOR_DB / 10),
                               top_db=None)


def log_mel_db(wav: np.ndarray, sr: int) -> np.ndarray:
    """``float32[64, T]``: mel power in dB (re full scale 1.0, floored at -100 dB), 20 ms frames."""
    return _mel_power_db(_mono(wav), sr).astype(np.float32)


def _floored(mel_db: np.ndarray, top: float | None = None) -> np.ndarray:
    """``mel_db`` with everything more than :data:`DYNAMIC_RANGE_DB` below ``top`` (default: its max) raised to it."""
    top = float(mel_db.max()) if top is None else top
    return np.maximum(mel_db, top - DYNAMIC_RANGE_DB)


def variation_of_mel(mel_db: np.ndarray) -> float:
    """Std over time of each band of ``mel_db [bands, T]`` (floored), mean over bands, in dB."""
    return float(_floored(mel_db).std(axis=1).mean())


def temporal_variation_db(wav: np.ndarray, sr: int) -> float:
    """How much the log-mel spectrum moves over time: the std over 20 ms frames of each of the
    64 bands (dB), averaged over bands. Real music here: 6-9 dB; a static buzz ~0.1 dB;
    silence 0. See :data:`MIN_VARIATION_DB`."""
    return variation_of_mel(log_mel_db(wav, sr))


def frame_jump_ratio(wav: np.ndarray, sr: int) -> float:
    """How far the log-mel jumps between consecutive 20 ms frames relative to how far it moves
    overall: mean |difference of neighbouring frames| / mean std over time (both over the 64 bands,
    floored). Music is continuous at 20 ms: 0.06-0.49 on 15 s of each of the 87 corpus tracks
    (median 0.28). Frames that do not follow from each other jump as far as they vary: random
    codes through the ``melvq`` codec 0.68, a real track's frames shuffled 0.70-0.84, white noise
    0.76. See :data:`MAX_FRAME_JUMP_RATIO`; 0 for a signal that does not move at all."""
    return jump_ratio_of_mel(log_mel_db(wav, sr))


def jump_ratio_of_mel(mel_db: np.ndarray) -> float:
    """:func:`frame_jump_ratio` of ``mel_db [bands, T]`` (floored here)."""
    spread = variation_of_mel(mel_db)
    if spread <= 1e-9:
        return 0.0
    return float(np.abs(np.diff(_floored(mel_db), axis=1)).mean()) / spread


def pulse_of_mel(mel_db: np.ndarray, hop_s: float = HOP_S) -> float:
    """How periodic the onsets are: the highest autocorrelation (normalised, lag 0 = 1) of the
    spectral flux (the mean rise of ``mel_db [bands, T]`` per frame, floored here) at lags of
    0.25-2 s, the beat periods of 30-240 bpm. Onsets on a beat give a clear peak; held chords,
    drones and random clicks give little. 0.0 for signals too short for a 2 s lag."""
    flux = np.maximum(np.diff(_floored(mel_db), axis=1), 0.0).mean(axis=0)
    flux = flux - flux.mean()
    lo, hi = int(round(PULSE_LAGS_S[0] / hop_s)), int(round(PULSE_LAGS_S[1] / hop_s))
    energy = float(flux @ flux)
    if len(flux) <= 2 * hi or energy <= 1e-12:
        return 0.0
    return float(max(flux[:-lag] @ flux[lag:] for lag in range(lo, hi + 1)) / energy)


def _window_chroma(wav: np.ndarray, sr: int, window_s: float, n_fft: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean STFT chroma (librosa's, 12 pitch classes, unnormalised so that frames weigh by their energy)
    of consecutive ``window_s`` windows of ``wav`` at :data:`CHROMA_SR`, and which windows sound (within 60 dB
    of the loudest): ``(means [W, 12], sounding [W])``, or None for fewer than one whole window."""
    import librosa

    from audiogen.audio.io import resample

    y = _mono(wav)
    if sr != CHROMA_SR:
        y = resample(y[None], sr, CHROMA_SR)[0]
    y = y.astype(np.float32, copy=False)
    hop = 512
    # unnormalised, so that a window's mean weighs frames by their energy (per-frame normalisation lifts a
    # fade's last quiet frames, or a resampler's ringing after a cut, to the level of the chord)
    chroma = librosa.feature.chroma_stft(y=y, sr=CHROMA_SR, hop_length=hop, n_fft=n_fft, norm=None)  # [12, F]
    rms = librosa.feature.rms(y=y, frame_length=2048, hop_length=hop)[0]
    n = max(1, int(round(window_s * CHROMA_SR / hop)))
    w = min(chroma.shape[1], len(rms)) // n
    if w < 1:
        return None
    means = chroma[:, : w * n].reshape(12, w, n).mean(axis=2).T  # [w, 12]
    level = 20 * np.log10(np.sqrt((rms[: w * n].reshape(w, n) ** 2).mean(axis=1)) + 1e-12)
    return means, level > level.max() - 60.0


def harmonic_movement(wav: np.ndarray, sr: int, window_s: float = HARMONY_WINDOW_S) -> float:
    """How far the pitch content moves from one second to the next: 1 - the cosine similarity of the
    mean STFT chroma (librosa's, 12 pitch classes, frames weighed by energy) of consecutive ``window_s``
    windows, the median over the signal. Windows more than 60 dB below the loudest are left out (a pause
    is not a chord change).
    One chord held under hits: 0.001-0.02 (the default model's README take until 2026-12-04, 0.0014, and
    five more takes of it); 30 s of each of the 47 corpus tracks of at least 50 s, from 20 s in:
    0.005-0.34, median 0.097, 2 below 0.017; 58 rendered scores: 0.028-0.63, median 0.17. NaN for
    fewer than two sounding windows.
    A figure, not a check (some real music holds a chord for half a minute): see
    :data:`HELD_CHORD_MOVEMENT`."""
    got = _window_chroma(wav, sr, window_s, 2048)
    if got is None or len(got[0]) < 2:
        return float("nan")
    means, sounding = got
    means = means / (np.linalg.norm(means, axis=1, keepdims=True) + 1e-12)
    pairs = sounding[1:] & sounding[:-1]
    if not pairs.any():
        return float("nan")
    return float(np.median(1.0 - np.sum(means[1:] * means[:-1], axis=1)[pairs]))


def tonal_clarity(wav: np.ndarray, sr: int, window_s: float = HARMONY_WINDOW_S) -> float:
    """How clearly the sound holds pitch classes: in each ``window_s`` window, the strongest of the 12
    pitch classes over their mean (STFT chroma with a 0.37 s FFT, 2.7 Hz bins, frames weighed by energy),
    the median over the sounding windows. 1 for a flat chroma (white noise: 1.1), 12 for one class alone.
    Notes held for a second or more stand out of the chroma; moving partials and broadband hits spread it.
    30 s of each corpus track of at least 50 s, from 20 s in: 77 tracks, 1.39-5.68, median 3.23 (18 under
    2.5); 23 rendered scores: 2.84-5.19, median 3.77; the six held-out tracks, 30 s from 30 s in: 3.26-4.39;
    the 80-band default model's README take (six seeds, 2026-12-06): 1.53-2.08; the old codec's 75 Hz buzz: 2.65.
    A figure, not a check (some music holds little pitch), except on the README's take
    (:data:`SCATTERED_CHROMA_CLARITY`); NaN for less than one window."""
    got = _window_chroma(wav, sr, window_s, 8192)
    if got is None:  # (the loudest window always sounds)
        return float("nan")
    means, sounding = got
    means = means[sounding]
    return float(np.median(means.max(axis=1) / (means.mean(axis=1) + 1e-12)))


def pulse_strength(wav: np.ndarray, sr: int) -> float:
    """:func:`pulse_of_mel` of ``wav``'s log-mel."""
    return pulse_of_mel(log_mel_db(wav, sr))


def _paired_mels(ref: np.ndarray, est: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-mels of ``ref`` and ``est`` over their common length, both floored 80 dB below the
    reference's loudest bin (so a band the reference does not use is not scored on noise
    60 dB further down)."""
    a, b = _mono(ref), _mono(est)
    n = min(len(a), len(b))
    A, B = log_mel_db(a[:n], sr), log_mel_db(b[:n], sr)
    top = float(A.max())
    return _floored(A, top), _floored(B, top)


def _band_correlation(A: np.ndarray, B: np.ndarray) -> float:
    """Mean over bands of the Pearson correlation over time of ``A[b]`` and ``B[b]``; bands that
    are constant in the reference carry no timing and are skipped; a constant band in the
    estimate correlates 0."""
    a = A - A.mean(axis=1, keepdims=True)
    b = B - B.mean(axis=1, keepdims=True)
    sa, sb = np.sqrt((a * a).sum(axis=1)), np.sqrt((b * b).sum(axis=1))
    used = sa > 1e-6 * A.shape[1]
    if not used.any():
        raise AudiogenError("the reference's log-mel does not change over time: nothing to correlate with")
    r = np.where(sb[used] > 0, (a[used] * b[used]).sum(axis=1) / (sa[used] * np.maximum(sb[used], 1e-30)), 0.0)
    return float(r.mean())


def band_correlation(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """Per-band Pearson correlation over time between the log-mels of ``ref`` (input) and
    ``est`` (e.g. a codec's reconstruction), averaged over the 64 bands; lengths are cut to the
    shorter. 1: the reconstruction follows every change of the input; ~0: it ignores the input
    (the buzz: -0.01). Align a delayed ``est`` first (:func:`align`)."""
    return _band_correlation(*_paired_mels(ref, est, sr))


def mel_error_db(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """Mean absolute log-mel difference (dB) between ``ref`` and ``est`` (common length)."""
    A, B = _paired_mels(ref, est, sr)
    return float(np.abs(A - B).mean())


def variation_ratio(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """``temporal_variation_db(est) / temporal_variation_db(ref)`` over the common length:
    ~1 when the reconstruction moves as much as the input, ~0.02 for a static buzz."""
    A, B = _paired_mels(ref, est, sr)
    return variation_of_mel(B) / max(variation_of_mel(A), 1e-9)


def alignment_lag(ref: np.ndarray, est: np.ndarray, sr: int, max_lag: int) -> int:
    """How many samples ``est`` (at ``sr``, as ``ref``) lags ``ref`` (negative: leads it): the lag
    (|lag| <= ``max_lag``, in steps of :data:`ALIGN_STEP_S`) at which its log-mel (:func:`log_mel_db`'s
    bands and window, hopped every step, floored as the figures are) correlates best with ``ref``'s, over
    the first :data:`ALIGN_MAX_S` seconds.

    Log-mel magnitudes, not waveforms, are compared, so a codec that rebuilds the phase (Griffin-Lim,
    phases from the codes) is aligned as well as one that keeps it, and the lag is the one the figures
    on that log-mel favour. Until 2026-12-06 the lag came from amplitude envelopes (RMS over 64
    samples): sample-exact for a waveform codec (MP3's 1105 samples), but on Griffin-Lim output off
    by up to 10 ms at random, from bass periods left in the envelope (docs/quality_checks.md)."""
    hop = max(1, int(round(ALIGN_STEP_S * sr)))
    n = int(ALIGN_MAX_S * sr)
    # float32: at a 1 ms hop the STFT of 30 s is 30 000 frames (about 250 MB in float32)
    a = _mel_power_db(_mono(ref)[:n].astype(np.float32), sr, hop)
    b = _mel_power_db(_mono(est)[: n + max_lag].astype(np.float32), sr, hop)
    top = float(a.max())  # both floored below the reference's loudest bin
    a, b = _floored(a, top), _floored(b, top)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    size = 1 << int(np.ceil(np.log2(2 * max(a.shape[1], b.shape[1]))))
    # xc[k] = the sum over bands and frames of b[t + k] a[t]
    xc = np.fft.irfft((np.fft.rfft(b, size, axis=1) * np.conj(np.fft.rfft(a, size, axis=1))).sum(axis=0), size)
    steps = max_lag // hop
    lags = np.concatenate([np.arange(0, steps + 1), np.arange(-steps, 0)])
    return int(lags[np.argmax(xc[lags])]) * hop


def align(ref: np.ndarray, est: np.ndarray, sr: int, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ref, est)`` cut to the span they share once ``est [N']`` is moved back by its
    :func:`alignment_lag` behind ``ref [N]``: a codec's or an MP3 encoder's delay is then not
    counted as error, and neither is the edge the shift uncovers (zeros padded there would add a
    fade from silence to the variation)."""
    ref, est = np.asarray(ref), np.asarray(est)
    lag = alignment_lag(ref, est, sr, max_lag)
    start_ref, start_est = max(0, -lag), max(0, lag)  # est[t + lag] is heard with ref[t]
    m = min(ref.shape[-1] - start_ref, est.shape[-1] - start_est)
    return ref[..., start_ref : start_ref + m], est[..., start_est : start_est + m]


def power_spectrum(wav: np.ndarray, sr: int, segment_s: float = WELCH_SEGMENT_S) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum ``(freqs [F], power [F])`` with ``segment_s`` Hann segments (0.25 Hz
    bins by default). A signal shorter than a segment is zero-padded to it: the bins stay
    0.25 Hz apart but the true resolution is then ``1 / duration``."""
    from scipy.signal import welch

    x = _mono(wav)
    seg = int(segment_s * sr)
    nperseg = min(seg, len(x))
    return welch(x, fs=sr, window="hann", nperseg=nperseg, nfft=max(seg, nperseg), detrend=False)


def frame_rate_harmonic_fraction(wav: np.ndarray, sr: int, frame_rate: float) -> float:
    """The share of the 20 Hz-4 kHz energy lying within +-1 Hz of a multiple of ``frame_rate``.

    A codec (or an LM over its tokens) that emits the same frame again and again makes a comb
    at exactly these frequencies: the buzz had 99.99 %. For music it is the width of the
    teeth over the width of the band (53 harmonics x 2 Hz / 3980 Hz = 2.7 % at 75 Hz) plus
    the notes that happen to fall on a tooth. See :data:`MAX_HARMONIC_FRACTION`.
    """
    if not frame_rate > 0:
        raise AudiogenError(f"frame rate must be > 0, got {frame_rate}")
    if 4 * HARMONIC_TOLERANCE_HZ >= frame_rate:
        raise AudiogenError(f"frame rate {frame_rate:g} Hz is too low to tell its harmonics apart from the rest")
    f, p = power_spectrum(wav, sr)
    lo, hi = HARMONIC_BAND_HZ
    band = (f >= lo) & (f <= hi)
    total = float(p[band].sum())
    if total <= 0:
        return 0.0
    k = np.round(f / frame_rate)
    near = band & (k >= 1) & (np.abs(f - k * frame_rate) <= HARMONIC_TOLERANCE_HZ)
    return min(1.0, float(p[near].sum() / total))  # near is a subset of band: only rounding can exceed 1


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level in dB re full scale (a full-scale sine is -3 dBFS); -inf for digital silence."""
    ms = float(np.mean(_mono(wav) ** 2))
    return 10 * math.log10(ms) if ms > 0 else -math.inf


def _frame_levels(wav: np.ndarray, sr: int) -> np.ndarray:
    """RMS level in dB of each 20 ms frame (the last one zero-padded)."""
    x = _mono(wav)
    hop = int(round(HOP_S * sr))
    n = -(-len(x) // hop)
    frames = np.pad(x, (0, n * hop - len(x))).reshape(n, hop)
    return 10 * np.log10(np.maximum((frames**2).mean(axis=1), 1e-20))


def silent_frame_fraction(wav: np.ndarray, sr: int, threshold_dbfs: float = SILENCE_DBFS) -> float:
    """The share of 20 ms frames whose RMS is below ``threshold_dbfs``."""
    return float((_frame_levels(wav, sr) < threshold_dbfs).mean())


def dropouts_per_minute(wav: np.ndarray, sr: int) -> float:
    """Holes in the sound: runs of at most ``DROPOUT_MAX_S`` of 20 ms frames at least ``DROPOUT_DB`` under the
    clip's median frame level, with louder frames on both sides, per minute. A rest or a pause longer than
    that is not counted, nor the start and end of the clip. 30 s of each of the 47 corpus tracks of at least
    50 s, from 20 s in: median 0, 90th percentile 0.8, at most 20 (5 tracks above 0); 58 rendered scores:
    median 0, at most 16. The default model's six README-prompt takes (night of 2026-12-04): 4-64, median 43
    (the model before it: 4-64, median 29). A figure, not a check."""
    low = _frame_levels(wav, sr)
    if len(low) < 3:
        return 0.0
    low = low < np.median(low) - DROPOUT_DB
    longest = max(1, int(round(DROPOUT_MAX_S / HOP_S)))
    edges = np.diff(np.concatenate([[0], low.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    holes = sum(1 for a, b in zip(starts, ends) if a > 0 and b < len(low) and b - a <= longest)
    return holes / (len(low) * HOP_S / 60.0)


def spectral_flatness(wav: np.ndarray, sr: int) -> float:
    """Median over frames (those above the silence threshold) of the spectral flatness (geometric
    over arithmetic mean of the power spectrum, 0..1). White noise: ~0.56 (the mean log of an
    exponential variable); music: a few hundredths at most. See :data:`MAX_NOISE_FLATNESS`."""
    import librosa

    x = _mono(wav)
    p = mel_params(sr)
    S = np.abs(librosa.stft(x, n_fft=p["n_fft"], hop_length=p["hop_length"])) ** 2  # [F, T]
    S = S[1:]  # DC says nothing about the spectrum's shape
    rms = librosa.feature.rms(y=x, frame_length=p["n_fft"], hop_length=p["hop_length"])[0]  # same frames as S
    loud = 20 * np.log10(np.maximum(rms, 1e-10)) >= SILENCE_DBFS
    if not loud.any():
        return 0.0
    S = np.maximum(S[:, loud], 1e-20)
    flat = np.exp(np.log(S).mean(axis=0)) / S.mean(axis=0)
    return float(np.median(flat))


def codebook_stats(codes: np.ndarray, cardinality: int) -> list[dict]:
    """Per codebook of ``codes [K, T]`` (ints in ``[0, cardinality)``): how many distinct codes
    it uses and the entropy (bits) of its code histogram; ``max_entropy_bits`` is
    ``log2(min(T, cardinality))``, what a codebook that uses every code equally would reach."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[1] == 0:
        raise AudiogenError(f"expected codes shaped [K, T] with T > 0, got {c.shape}")
    if c.min() < 0 or c.max() >= cardinality:
        raise AudiogenError(f"codes must lie in [0, {cardinality}); got {int(c.min())}..{int(c.max())}")
    out = []
    for row in c.astype(np.int64):
        counts = np.bincount(row, minlength=cardinality)
        p = counts[counts > 0] / row.size
        out.append({"distinct": int((counts > 0).sum()), "entropy_bits": float(-(p * np.log2(p)).sum()),
                    "max_entropy_bits": math.log2(min(row.size, cardinality))})
    return out


def hold_rates(codes) -> list[float]:
    """Per codebook of ``codes``, ``[K, T]``, ``[B, K, T]`` or a list of ``[K, T_i]`` (pooled over their frames): the
    share of frames whose code is the frame before's. The model report sets its samples' rates beside those of the
    held-out tokens: the default model sampled with top-k 20 holds its residual codes in 34-53 % of the frames
    where its tokens hold them in 5-24 %, and with top-k 250 it matches them, but the codes it then draws from the
    tail of the residual codebooks decode to broadband noise (docs/training.md, "Top-k and held codes")."""
    parts = [np.asarray(c) for c in codes] if isinstance(codes, (list, tuple)) else [np.asarray(codes)]
    held, steps = 0, 0
    for c in parts:
        c = c[None] if c.ndim == 2 else c
        if c.ndim != 3 or c.shape[2] < 2:
            raise AudiogenError(f"expected codes shaped [K, T] or [B, K, T] with T >= 2, got {c.shape}")
        held = held + (c[:, :, 1:] == c[:, :, :-1]).sum(axis=(0, 2))
        steps += c.shape[0] * (c.shape[2] - 1)
    if not steps:
        raise AudiogenError("no codes to count holds in")
    return [float(x) for x in np.asarray(held) / steps]


def music_likeness(wav: np.ndarray, sr: int, frame_rate: float) -> dict:
    """Every figure above for one signal, and ``failures``: the thresholds it misses (empty for
    music). ``frame_rate`` is that of the codec that made the audio (75 Hz for 24 kHz EnCodec).

    Fails when: log-mel temporal variation < 3 dB; >= 30 % of the 20 Hz-4 kHz energy on
    harmonics of the frame rate; silent (RMS < -60 dBFS or more than half the 20 ms frames
    below it); white noise (median spectral flatness >= 0.3); incoherent (frame-jump ratio >= 0.6:
    frames that do not follow from each other, as an LM emitting random codes would make).
    """
    mel = log_mel_db(wav, sr)  # shared by the variation and the frame-jump figures
    figs = {
        "seconds": len(_mono(wav)) / sr,
        "temporal_variation_db": variation_of_mel(mel),
        "frame_rate_hz": float(frame_rate),
        "frame_rate_harmonic_fraction": frame_rate_harmonic_fraction(wav, sr, frame_rate),
        "rms_dbfs": rms_dbfs(wav),
        "silent_frame_fraction": silent_frame_fraction(wav, sr),
        "spectral_flatness": spectral_flatness(wav, sr),
        "frame_jump_ratio": jump_ratio_of_mel(mel),
        "pulse": pulse_of_mel(mel),  # a figure, not a check: some real music (ambient) has little pulse
        "harmonic_movement": harmonic_movement(wav, sr),  # a figure too: some real music holds a chord
        "tonal_clarity": tonal_clarity(wav, sr),  # and pitch classes that stand out (some music holds few)
        "dropouts_per_minute": dropouts_per_minute(wav, sr),  # and holes in the sound (staccato music has some)
    }
    failures = []
    if figs["rms_dbfs"] < SILENCE_DBFS or figs["silent_frame_fraction"] > MAX_SILENT_FRACTION:
        failures.append(f"silent: RMS {figs['rms_dbfs']:.1f} dBFS, {100 * figs['silent_frame_fraction']:.0f} % of "
                        f"frames below {SILENCE_DBFS:g} dBFS (limits: RMS >= {SILENCE_DBFS:g} dBFS, at most "
                        f"{100 * MAX_SILENT_FRACTION:.0f} % silent frames)")
    if figs["temporal_variation_db"] < MIN_VARIATION_DB:
        failures.append(f"static: log-mel temporal variation {figs['temporal_variation_db']:.2f} dB "
                        f"< {MIN_VARIATION_DB:g} dB (music here: 6-9 dB)")
    if figs["frame_rate_harmonic_fraction"] >= MAX_HARMONIC_FRACTION:
        failures.append(f"buzz: {100 * figs['frame_rate_harmonic_fraction']:.1f} % of the 20 Hz-4 kHz energy within "
                        f"{HARMONIC_TOLERANCE_HZ:g} Hz of harmonics of the {frame_rate:g} Hz frame rate "
                        f"(limit {100 * MAX_HARMONIC_FRACTION:.0f} %)")
    if figs["spectral_flatness"] >= MAX_NOISE_FLATNESS:
        failures.append(f"white noise: median spectral flatness {figs['spectral_flatness']:.2f} "
                        f">= {MAX_NOISE_FLATNESS:g} (music: < 0.1)")
    if figs["frame_jump_ratio"] >= MAX_FRAME_JUMP_RATIO:
        failures.append(f"incoherent: consecutive frames jump {figs['frame_jump_ratio']:.2f} x as far as the spectrum "
                        f"varies (limit {MAX_FRAME_JUMP_RATIO:g}; music here 0.06-0.49, random codes 0.68)")
    figs["failures"] = failures
    return figs


def reconstruction_fidelity(ref: np.ndarray, est: np.ndarray, sr: int) -> dict:
    """How well ``est`` (a codec's output, already aligned) reproduces ``ref``: band correlation,
    mel error (dB), variation of each and their ratio, and ``failures`` (:func:`fidelity_failures`)."""
    A, B = _paired_mels(ref, est, sr)
    va, vb = variation_of_mel(A), variation_of_mel(B)
    figs = {"band_correlation": _band_correlation(A, B), "mel_error_db": float(np.abs(A - B).mean()),
            "ref_variation_db": va, "est_variation_db": vb, "variation_ratio": vb / max(va, 1e-9)}
    figs["failures"] = fidelity_failures(figs)
    return figs


def fidelity_failures(figs: dict) -> list[str]:
    """The thresholds of issue 16 that ``figs`` (``band_correlation``, ``mel_error_db``,
    ``variation_ratio``) miss: correlation >= 0.85, error <= 3 dB, ratio in 0.7..1.3."""
    lo, hi = VARIATION_RATIO_RANGE
    failures = []
    if figs["band_correlation"] < MIN_BAND_CORRELATION:
        failures.append(f"band correlation {figs['band_correlation']:.3f} < {MIN_BAND_CORRELATION:g}")
    if figs["mel_error_db"] > MAX_MEL_ERROR_DB:
        failures.append(f"mel error {figs['mel_error_db']:.2f} dB > {MAX_MEL_ERROR_DB:g} dB")
    if not lo <= figs["variation_ratio"] <= hi:
        failures.append(f"variation ratio {figs['variation_ratio']:.3f} outside {lo:g}..{hi:g}")
    return failures


def codebook_failures(first_codebook_distinct: int, seconds: float) -> list[str]:
    """Issue 16's usage threshold: codebook 0 uses at least 64 distinct codes in 20 s of music
    (the collapsed codec used 3). Not judged on excerpts shorter than 20 s."""
    if seconds < CODEBOOK_WINDOW_S or first_codebook_distinct >= MIN_FIRST_CODEBOOK_DISTINCT:
        return []
    return [f"codebook 0 uses {first_codebook_distinct} distinct codes in {seconds:g} s "
            f"(< {MIN_FIRST_CODEBOOK_DISTINCT})"]
