"""Power of a planned identification test: how often would ``listen report`` reach each verdict?

Experiments are simulated from the model the report fits (``logit P(correct) = b0 + u +
v``, listener and clip intercepts normal with the given spreads) and each is analysed the
way the report analyses one (:func:`audiogen.listening.report.decision`), so the rates
are those of the report's own verdict. Plan with the spreads a pilot's report printed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from audiogen.errors import AudiogenError


@dataclass
class Plan:
    listeners: int
    clips: int
    accuracy: float  # a typical listener's accuracy on a typical clip (0.5: no ability)
    clips_per_listener: int | None = None  # None: every listener hears every clip
    sd_listener: float = 0.5  # log-odds
    sd_clip: float = 0.5
    margin: float = 0.1
    alpha: float = 0.05

    def check(self) -> None:
        cpl = self.clips_per_listener
        for ok, msg in [
            (self.listeners >= 1 and self.clips >= 1, "need at least 1 listener and 1 clip"),
            (cpl is None or 1 <= cpl <= self.clips, "clips per listener must be between 1 and the number of clips"),
            (0 < self.accuracy < 1, "accuracy must be strictly between 0 and 1"),
            (self.sd_listener >= 0 and self.sd_clip >= 0, "spreads must be >= 0"),
            (0 < self.margin < 0.5, "the equivalence margin must be in (0, 0.5)"),
            (0 < self.alpha < 1, "alpha must be in (0, 1)"),
        ]:
            if not ok:
                raise AudiogenError(msg)


def simulate(plan: Plan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One experiment: ``(correct[N], listener[N], clip[N])``; each listener hears a random subset of clips."""
    per = plan.clips_per_listener or plan.clips
    u = rng.normal(0, plan.sd_listener, plan.listeners)
    v = rng.normal(0, plan.sd_clip, plan.clips)
    listener = np.repeat(np.arange(plan.listeners), per)
    clip = np.concatenate([rng.permutation(plan.clips)[:per] for _ in range(plan.listeners)])
    p = special.expit(special.logit(plan.accuracy) + u[listener] + v[clip])
    return (rng.random(p.size) < p).astype(np.float64), listener, clip


def power(plan: Plan, runs: int = 200, seed: int = 0, progress: bool = False) -> dict:
    """Rates of each verdict over ``runs`` simulated experiments, each with its Wilson 95 % interval."""
    from tqdm import tqdm

    from audiogen.listening import stats as S
    from audiogen.listening.glmm import population_accuracy
    from audiogen.listening.report import decision, tests_against_chance

    plan.check()
    if runs < 1:
        raise AudiogenError("runs must be >= 1")
    rng = np.random.default_rng(seed)
    counts = {"above chance": 0, "below chance": 0, "equivalent": 0, "inconclusive": 0}
    pooled_above = not_fitted = 0
    for _ in tqdm(range(runs), desc="simulated experiments", disable=not progress, dynamic_ncols=True):
        y, listener, clip = simulate(plan, rng)
        block = tests_against_chance(y, listener, clip, plan.margin, plan.alpha, ci=False, tost="unless_significant")
        counts[decision(block, plan.alpha)[0]] += 1
        not_fitted += not block["mixed"]["estimable"]
        pooled_above += block["accuracy"]["p_value"] < plan.alpha and block["accuracy"]["estimate"] > 0.5

    def rate(k: int) -> dict:
        lo, hi = S.wilson(k, runs)
        return {"rate": k / runs, "ci_low": lo, "ci_high": hi}

    b0 = float(special.logit(plan.accuracy))
    return {
        "plan": {**asdict(plan), "answers": plan.listeners * (plan.clips_per_listener or plan.clips)},
        "accuracy_population": population_accuracy(b0, [plan.sd_listener, plan.sd_clip]),
        "runs": runs, "seed": seed,
        "verdicts": {k: rate(v) for k, v in counts.items()},
        "pooled_above_chance": rate(pooled_above),
        "not_fitted": not_fitted,
    }


def power_text(res: dict) -> list[str]:
    p = res["plan"]
    per = p["clips_per_listener"] or p["clips"]
    lines = [f"design: {p['listeners']} listeners x {p['clips']} clips, {per} clips per listener, "
             f"{p['answers']} answers",
             f"assumed: typical-listener accuracy {p['accuracy']:g} (averaged over listeners and clips "
             f"{res['accuracy_population']:.3f}), spread of listeners {p['sd_listener']:g} and of clips "
             f"{p['sd_clip']:g} (sd, log-odds)",
             f"verdicts of 'listen report' over {res['runs']} simulated experiments (alpha {p['alpha']:g}, "
             f"TOST margin ±{p['margin']:g}), with 95% intervals:"]
    for name, r in res["verdicts"].items():
        label = "equivalent to chance" if name == "equivalent" else name
        lines.append(f"  {label:<22} {r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    r = res["pooled_above_chance"]
    lines.append(f"  (a pooled exact binomial test would say 'above chance' in {r['rate']:.3f}; it ignores the "
                 "spreads)" if not math.isclose(p["sd_listener"] + p["sd_clip"], 0) else
                 f"  (pooled exact binomial test: 'above chance' in {r['rate']:.3f})")
    if res["not_fitted"]:
        lines.append(f"  the mixed model could not be fitted in {res['not_fitted']} runs (every answer right or "
                     "wrong, or quasi-separation); those used the pooled exact tests, as the report does")
    return lines
