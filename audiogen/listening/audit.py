"""Blinding audit: can cheap clip features tell the generated stimuli from the human ones?

Stimulus prep matches format, length and BS.1770 loudness, but differences in the music's
production survive it: generated clips that are mono in a stereo file, that have nothing
above 12.5 kHz, that are quieter in RMS at equal loudness, or that end in silence. A
listener can learn such a tell in a few trials and answer without judging the music.

``audit_clips`` measures each finished clip (what listeners hear), then asks a simple
classifier to predict origin from those features: a ridge least-squares linear classifier
on standardised features, scored by exact leave-one-out balanced accuracy, with a
permutation test (origins shuffled) for whether it beats chance. Each feature on its own
is also compared between origins (Mann-Whitney U, AUC), which names the tells.
"""

from __future__ import annotations

import numpy as np

#: Band edges (Hz) of the band-energy features; the last band, above 12.5 kHz, is where
#: generated audio at low sample rates or with lossy codecs often has nothing.
BANDS = (0, 150, 500, 2000, 6000, 12500)
SILENCE_DB = -50.0  # a 10 ms frame this far below the clip's loudest frame counts as silence
PERMUTATIONS = 999
RIDGE = 1.0

#: feature name prefix -> the smallest difference between origins (medians) worth naming: below it a
#: consistent difference (e.g. float rounding after a gain) is no tell a listener could use
MIN_DIFF = {"rms_db": 0.5, "crest_db": 1.0, "band": 1.5, "rolloff_hz": 500.0, "stereo_width": 1.0,
            "lead_silence_s": 0.05, "trail_silence_s": 0.05}

#: feature name prefix -> the matching fix create suggests
FIXES = {
    "rms_db": "loudness match: choose clips of similar dynamics or match them by RMS as well as by "
              "BS.1770 loudness (stimulus.loudness_lufs)",
    "crest_db": "loudness match: the clips' dynamics differ (peak to RMS); compress alike or choose other clips",
    "band": "common band limit: stimulus.lowpass_hz below the narrowest source's bandwidth",
    "rolloff_hz": "common band limit: stimulus.lowpass_hz below the narrowest source's bandwidth",
    "stereo_width": "common channel layout: stimulus.channels: 1, or stereo sources for both origins",
    "lead_silence_s": "trimmed and faded edges: trim silence off the sources or use window: middle and a longer "
                      "stimulus.fade_s",
    "trail_silence_s": "trimmed and faded edges: trim silence off the sources or use window: middle and a longer "
                       "stimulus.fade_s",
}


def clip_features(wav: np.ndarray, sr: int) -> dict[str, float]:
    """Cheap features of one clip ``wav [C, N]`` (float, as served): level, dynamics, band energies
    (dB of the clip's total), 99% spectral roll-off, stereo width (side/mid, dB), edge silences (s)."""
    x = wav.astype(np.float64)
    mono = x.mean(0)
    eps = 1e-12
    rms = np.sqrt(np.mean(x ** 2)) + eps
    out = {"rms_db": 20 * np.log10(rms), "crest_db": 20 * np.log10(np.abs(x).max() / rms + eps)}
    power = np.abs(np.fft.rfft(mono)) ** 2
    f = np.fft.rfftfreq(mono.size, 1 / sr)
    total = power.sum() + eps
    edges = [b for b in BANDS if b < sr / 2] + [sr / 2]
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"band_{lo / 1000:g}k_{hi / 1000:g}k" if hi < sr / 2 else f"band_above_{lo / 1000:g}k"
        out[name] = 10 * np.log10(power[(f >= lo) & (f < hi)].sum() / total + 1e-10)
    out["rolloff_hz"] = float(f[min(np.searchsorted(np.cumsum(power) / total, 0.99), f.size - 1)])
    if x.shape[0] == 2:
        mid, side = (x[0] + x[1]) / 2, (x[0] - x[1]) / 2
        out["stereo_width"] = 10 * np.log10((np.mean(side ** 2) + 1e-10) / (np.mean(mid ** 2) + 1e-10))
    hop = max(1, int(0.01 * sr))
    frames = np.sqrt(np.mean(x[:, : x.shape[1] // hop * hop].reshape(x.shape[0], -1, hop) ** 2, axis=(0, 2))) + eps
    loud = 20 * np.log10(frames) > 20 * np.log10(frames.max()) + SILENCE_DB
    idx = np.flatnonzero(loud)
    out["lead_silence_s"] = float(idx[0] * hop / sr) if idx.size else x.shape[1] / sr
    out["trail_silence_s"] = float((frames.size - 1 - idx[-1]) * hop / sr) if idx.size else x.shape[1] / sr
    return {k: float(v) for k, v in out.items()}


def _loo_balanced_accuracy(X: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Exact leave-one-out balanced accuracy of a ridge least-squares classifier, for each label
    vector in ``ys [P, n]`` (+1/-1) on the same features ``X [n, d]`` (standardised). -> [P]"""
    n = X.shape[0]
    Z = np.hstack([np.ones((n, 1)), X])
    reg = RIDGE * np.eye(Z.shape[1])
    reg[0, 0] = 0.0  # the intercept is not shrunk
    H = Z @ np.linalg.solve(Z.T @ Z + reg, Z.T)  # hat matrix: fits are H @ y
    h = np.diag(H)
    loo = (ys @ H.T - h * ys) / (1 - h)  # prediction for i from the fit without i
    right = np.sign(loo) == ys
    pos = ys > 0
    return 0.5 * ((right & pos).sum(1) / pos.sum(1) + (right & ~pos).sum(1) / (~pos).sum(1))


def audit_clips(clips: list[np.ndarray], generated: list[bool], sr: int, alpha: float = 0.05,
                seed: int = 0) -> dict:
    """Audit finished clips ``[C, N]`` with their origins (True: generated).

    Returns the per-feature comparison (``features``: name -> {human, generated medians, auc, p}),
    the classifier's leave-one-out balanced ``accuracy`` and permutation ``p_value``, ``beats_chance``
    (p < alpha), the ``tells`` (features that differ, most telling first) and their ``fixes``.
    """
    from scipy.stats import mannwhitneyu

    y = np.where(np.asarray(generated, bool), 1.0, -1.0)
    res: dict = {"clips": len(clips), "generated": int((y > 0).sum()), "method": (
        "ridge least-squares linear classifier on standardised clip features, exact leave-one-out balanced "
        f"accuracy, permutation test ({PERMUTATIONS} shuffles of origin); per feature Mann-Whitney U")}
    if (y > 0).sum() < 2 or (y < 0).sum() < 2:
        return {**res, "accuracy": None, "p_value": None, "beats_chance": False, "tells": [], "fixes": [],
                "features": {}, "note": "fewer than two clips of an origin: nothing to audit"}
    feats = [clip_features(c, sr) for c in clips]
    names = [k for k in feats[0] if all(k in f for f in feats)]
    F = np.array([[f[k] for k in names] for f in feats])
    # a feature whose spread is below the smallest difference worth naming tells nothing
    floor = np.array([next(v for prefix, v in MIN_DIFF.items() if k.startswith(prefix)) for k in names])
    keep = np.ptp(F, axis=0) >= floor
    per = {}
    for j, k in enumerate(names):
        g, hmn = F[y > 0, j], F[y < 0, j]
        if keep[j]:
            u = mannwhitneyu(g, hmn, alternative="two-sided")
            auc, p = float(u.statistic / (g.size * hmn.size)), float(u.pvalue)
        else:
            auc, p = 0.5, 1.0
        per[k] = {"human": float(np.median(hmn)), "generated": float(np.median(g)), "auc": auc, "p": p}
    X = F[:, keep]
    if X.shape[1] == 0:
        acc, pval = 0.5, 1.0
    else:
        X = (X - X.mean(0)) / X.std(0)
        rng = np.random.default_rng(seed)
        ys = np.vstack([y] + [rng.permutation(y) for _ in range(PERMUTATIONS)])
        accs = _loo_balanced_accuracy(X, ys)
        acc = float(accs[0])
        pval = float((1 + (accs[1:] >= acc).sum()) / (1 + PERMUTATIONS))
    tells = sorted((k for j, k in enumerate(names) if per[k]["p"] < alpha
                    and abs(per[k]["generated"] - per[k]["human"]) >= floor[j]), key=lambda k: per[k]["p"])
    if pval < alpha and not tells:  # the combination tells: name the features that differ most
        tells = sorted((k for j, k in enumerate(names) if keep[j]), key=lambda k: -abs(per[k]["auc"] - 0.5))[:2]
    fixes = []
    for k in tells:
        fix = next(v for prefix, v in FIXES.items() if k.startswith(prefix))
        if fix not in fixes:
            fixes.append(fix)
    return {**res, "accuracy": acc, "p_value": pval, "beats_chance": pval < alpha, "tells": tells,
            "fixes": fixes, "features": per}


def describe_tell(name: str, f: dict) -> str:
    """One feature's difference in words, e.g. 'rms_db: generated -21.3, human -18.2 (AUC 0.05)'."""
    return f"{name}: generated {f['generated']:.4g}, human {f['human']:.4g} (AUC {f['auc']:.2f}, p {f['p']:.2g})"


def audit_warning(audit: dict) -> str | None:
    """The warning ``listen create`` prints when the audit's classifier beats chance, else None."""
    if not audit.get("beats_chance"):
        return None
    tells = "; ".join(describe_tell(k, audit["features"][k]) for k in audit["tells"])
    return (f"blinding audit: simple clip features tell generated from human clips "
            f"(leave-one-out balanced accuracy {audit['accuracy']:.0%}, permutation p = {audit['p_value']:.3g}), "
            f"so listeners may too without judging the music. Telling features: {tells}. "
            f"Fixes: {'; '.join(audit['fixes'])}")
