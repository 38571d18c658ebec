"""Statistics for blind listening tests, as plain functions on counts and arrays.

Identification (2AFC, single stimulus): exact binomial test against chance, Wilson
intervals, d' and bias (signal detection), TOST equivalence with a stated margin, and a
two-way cluster bootstrap over participants and items. Ratings (MUSHRA, MOS): means with
t intervals, the ITU-R BS.1534-3 post-screening rule, and paired comparisons of systems
(per-listener differences, Wilcoxon signed-rank, Holm correction). See docs/listening.md for the
assumptions behind each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as S


@dataclass
class Proportion:
    k: int
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float  # exact two-sided binomial test against p0
    p0: float = 0.5

    def as_dict(self) -> dict:
        return asdict(self)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (nan, nan when n == 0)."""
    if n == 0:
        return (math.nan, math.nan)
    ci = S.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def binomial(k: int, n: int, p0: float = 0.5, level: float = 0.95) -> Proportion:
    """Accuracy with a Wilson interval and the exact two-sided binomial test against ``p0``."""
    if n == 0:
        return Proportion(0, 0, math.nan, math.nan, math.nan, math.nan, p0)
    lo, hi = wilson(k, n, level)
    return Proportion(int(k), int(n), k / n, lo, hi, float(S.binomtest(k, n, p0).pvalue), p0)


def tost_binomial(k: int, n: int, margin: float, p0: float = 0.5, alpha: float = 0.05) -> dict:
    """Two one-sided exact binomial tests of equivalence: is the accuracy within ``p0 +- margin``?

    H0a: p <= p0 - margin (tested with alternative 'greater'); H0b: p >= p0 + margin ('less').
    Equivalence is claimed when both are rejected, i.e. ``p = max(pa, pb) < alpha``; this is
    the same as the (1 - 2 alpha) exact interval lying inside the margin.
    """
    if n == 0:
        return {"margin": margin, "p_lower": math.nan, "p_upper": math.nan, "p": math.nan, "equivalent": False,
                "alpha": alpha}
    lo, hi = p0 - margin, p0 + margin
    p_lower = float(S.binomtest(k, n, lo, alternative="greater").pvalue)
    p_upper = float(S.binomtest(k, n, hi, alternative="less").pvalue)
    p = max(p_lower, p_upper)
    return {"margin": margin, "bounds": [lo, hi], "p_lower": p_lower, "p_upper": p_upper, "p": p,
            "equivalent": bool(p < alpha), "alpha": alpha}


def _rate(x: float, n: float) -> float:
    """Log-linear corrected rate (Hautus 1995): keeps z finite at 0 and 1."""
    return (x + 0.5) / (n + 1.0)


def dprime_yes_no(hits: int, n_signal: int, false_alarms: int, n_noise: int) -> dict:
    """Single-stimulus 'is it AI?': d' = z(H) - z(F), criterion c = -(z(H) + z(F)) / 2.

    c > 0: a bias towards answering 'human'; c < 0: towards 'AI'.
    """
    zh, zf = S.norm.ppf(_rate(hits, n_signal)), S.norm.ppf(_rate(false_alarms, n_noise))
    return {"dprime": float(zh - zf), "c": float(-(zh + zf) / 2), "hit_rate": hits / n_signal if n_signal else math.nan,
            "fa_rate": false_alarms / n_noise if n_noise else math.nan}


def dprime_2afc(a_when_a: int, n_a: int, a_when_b: int, n_b: int) -> dict:
    """2AFC with the target at A or B: H = P(answer A | target A), F = P(answer A | target B).

    d' = (z(H) - z(F)) / sqrt(2) (Macmillan & Creelman); c = -(z(H) + z(F)) / 2 is a position
    bias (c < 0: a leaning towards answering A). Unbiased proportion correct is Phi(d' / sqrt 2).
    """
    zh, zf = S.norm.ppf(_rate(a_when_a, n_a)), S.norm.ppf(_rate(a_when_b, n_b))
    d = (zh - zf) / math.sqrt(2)
    return {"dprime": float(d), "c": float(-(zh + zf) / 2), "pc_unbiased": float(S.norm.cdf(d / math.sqrt(2)))}


def cluster_bootstrap(y: np.ndarray, participant: np.ndarray, item: np.ndarray, n_boot: int = 2000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``y`` with a two-way (participants x items) cluster bootstrap interval.

    Each replicate resamples participants and items independently with replacement; an
    observation's weight is (times its participant was drawn) x (times its item was drawn)
    (Owen 2007, the 'pigeonhole' bootstrap). It accounts for listeners differing in skill and
    items differing in difficulty, which a pooled binomial interval ignores; it is somewhat
    conservative. Percentile interval.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0 or n_boot == 0:
        return {"estimate": float(y.mean()) if y.size else math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "n_boot": 0}
    pu, pi = np.unique(participant, return_inverse=True)
    iu, ii = np.unique(item, return_inverse=True)
    rng = np.random.default_rng(seed)
    est = np.empty(n_boot)
    for b in range(n_boot):
        wp = np.bincount(rng.integers(0, pu.size, pu.size), minlength=pu.size)
        wi = np.bincount(rng.integers(0, iu.size, iu.size), minlength=iu.size)
        w = wp[pi] * wi[ii]
        s = w.sum()
        est[b] = (w * y).sum() / s if s else np.nan
    est = est[np.isfinite(est)]
    a = (1 - level) / 2
    return {"estimate": float(y.mean()), "ci_low": float(np.quantile(est, a)), "ci_high": float(np.quantile(est, 1 - a)),
            "n_boot": int(est.size), "participants": int(pu.size), "items": int(iu.size)}


def mean_ci(x, level: float = 0.95, scale: tuple[float, float] | None = None) -> dict:
    """Mean with a Student-t interval (what BS.1534-3 asks for MUSHRA scores).

    ``scale``: the ``(lowest, highest)`` value the data can take (a rating scale). With few,
    spread-out ratings the t interval can reach past it (two MOS ratings of 1 and 5 give
    [-22.4, 28.4]); its ends are then cut to the scale and ``truncated`` says so.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "sd": math.nan}
    m = float(x.mean())
    if n == 1:
        return {"mean": m, "ci_low": math.nan, "ci_high": math.nan, "n": 1, "sd": math.nan}
    sd = float(x.std(ddof=1))
    h = float(S.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    lo, hi = m - h, m + h
    out = {"mean": m, "ci_low": lo, "ci_high": hi, "n": int(n), "sd": sd}
    if scale is not None:
        out.update(ci_low=max(lo, scale[0]), ci_high=min(hi, scale[1]), truncated=bool(lo < scale[0] or hi > scale[1]))
    return out


def answer_vs_origin(correct, generated) -> dict:
    """Fisher's exact test of the answer ('AI' or 'human') against the stimulus's origin, pooled over listeners.

    For single-stimulus designs when the mixed model cannot be fitted: unlike accuracy against
    0.5, it does not count a lean towards one answer as skill when the origins are unequally
    many. ``odds_ratio`` > 1: 'AI' is answered more often for generated stimuli. Treats answers as
    independent (as every pooled test does).
    """
    correct, generated = np.asarray(correct, dtype=bool), np.asarray(generated, dtype=bool)
    if not generated.any() or generated.all():
        return {}
    said_ai = correct == generated
    table = [[int(np.sum(said_ai & generated)), int(np.sum(~said_ai & generated))],
             [int(np.sum(said_ai & ~generated)), int(np.sum(~said_ai & ~generated))]]
    res = S.fisher_exact(table)
    return {"table": table, "odds_ratio": float(res.statistic), "p_value": float(res.pvalue)}


def paired_difference(a, b, level: float = 0.95, scale: tuple[float, float] | None = None) -> dict:
    """Two systems compared over listeners: ``a[i]``, ``b[i]`` are listener i's mean scores.

    The mean of the per-listener differences with a Student-t interval, and the two-sided
    Wilcoxon signed-rank test (zero differences dropped; scores are often skewed and
    bounded, so the test assumes no normality). Pairing by listener removes each
    listener's own use of the scale (some rate everything higher), which an unpaired
    comparison of the two systems' means counts as noise. ``scale``: the scores' rating scale;
    the interval of the difference is then cut to what differences can be (±its width).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    width = None if scale is None else (scale[1] - scale[0])
    out = {k: v for k, v in mean_ci(d, level, None if width is None else (-width, width)).items() if k != "sd"}
    nonzero = d[d != 0]
    out["p_value"] = float(S.wilcoxon(nonzero).pvalue) if nonzero.size else (1.0 if d.size else math.nan)
    # the exact two-sided test can go no lower than 2 / 2**n: 0.0625 with 5 listeners
    out["smallest_possible_p"] = min(1.0, 2.0 / 2.0 ** nonzero.size)
    return out


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): family-wise error control for several
    comparisons without assuming they are independent."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def mushra_post_screening(hidden_ref_scores: dict[str, list[float]], threshold: float = 90.0,
                          max_fail_share: float = 0.15) -> dict[str, dict]:
    """ITU-R BS.1534-3 post-screening: exclude an assessor who rates the hidden reference below
    ``threshold`` for more than ``max_fail_share`` of the items. -> {assessor: {fails, items, excluded}}"""
    out = {}
    for who, scores in hidden_ref_scores.items():
        fails = sum(1 for s in scores if s < threshold)
        out[who] = {"fails": fails, "items": len(scores), "excluded": bool(scores) and fails / len(scores) > max_fail_share}
    return out
