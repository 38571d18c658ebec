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
    design: str = "2afc"  # or "single": each clip is one stimulus, human or generated
    human_share: float = 0.5  # single: the share of stimuli that are human
    lean: float = 0.0  # single: listeners' lean towards answering 'AI' (log-odds)

    @property
    def human_stimuli(self) -> int:
        """Single stimulus: how many of the clips are human (the first ones)."""
        return round(self.clips * self.human_share)

    def check(self) -> None:
        cpl = self.clips_per_listener
        for ok, msg in [
            (self.design in ("2afc", "single"), "design must be 2afc or single"),
            (self.design == "2afc" or 1 <= self.human_stimuli < self.clips,
             "a single-stimulus plan needs human and generated stimuli: set --human-share so both are there"),
            (self.listeners >= 1 and self.clips >= 1, "need at least 1 listener and 1 clip"),
            (cpl is None or 1 <= cpl <= self.clips, "clips per listener must be between 1 and the number of clips"),
            (0 < self.accuracy < 1, "accuracy must be strictly between 0 and 1"),
            (self.sd_listener >= 0 and self.sd_clip >= 0, "spreads must be >= 0"),
            (0 < self.margin < 0.5, "the equivalence margin must be in (0, 0.5)"),
            (0 < self.alpha < 1, "alpha must be in (0, 1)"),
        ]:
            if not ok:
                raise AudiogenError(msg)


def simulate(plan: Plan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One experiment: ``(correct[N], listener[N], clip[N], generated[N] or None)``; each listener hears a
    random subset of clips. Single stimulus: the first ``human_share`` of the clips are human, and a lean
    towards 'AI' makes answers to generated stimuli right (and to human ones wrong) more often."""
    per = plan.clips_per_listener or plan.clips
    u = rng.normal(0, plan.sd_listener, plan.listeners)
    v = rng.normal(0, plan.sd_clip, plan.clips)
    listener = np.repeat(np.arange(plan.listeners), per)
    clip = np.concatenate([rng.permutation(plan.clips)[:per] for _ in range(plan.listeners)])
    logit = special.logit(plan.accuracy) + u[listener] + v[clip]
    generated = None
    if plan.design == "single":
        generated = clip >= plan.human_stimuli
        logit = logit + np.where(generated, plan.lean, -plan.lean)
    p = special.expit(logit)
    return (rng.random(p.size) < p).astype(np.float64), listener, clip, generated


def power(plan: Plan, runs: int = 200, seed: int = 0, progress: bool = False) -> dict:
    """Rates of each verdict over ``runs`` simulated experiments, each with its Wilson 95 % interval."""
    from audiogen.progress import progress_bar

    from audiogen.listening import stats as S
    from audiogen.listening.glmm import population_accuracy
    from audiogen.listening.report import decision, tests_against_chance

    plan.check()
    if runs < 1:
        raise AudiogenError("runs must be >= 1")
    rng = np.random.default_rng(seed)
    counts = {"above chance": 0, "below chance": 0, "equivalent": 0, "inconclusive": 0}
    pooled_above = not_fitted = 0
    for _ in progress_bar(range(runs), desc="simulated experiments", disable=not progress, dynamic_ncols=True):
        y, listener, clip, generated = simulate(plan, rng)
        block = tests_against_chance(y, listener, clip, plan.margin, plan.alpha, ci=False, origin=generated,
                                     tost="unless_significant")
        counts[decision(block, plan.alpha)[0]] += 1
        not_fitted += not block["mixed"]["estimable"]
        pooled_above += block["accuracy"]["p_value"] < plan.alpha and block["accuracy"]["estimate"] > 0.5  # vs 0.5

    def rate(k: int) -> dict:
        lo, hi = S.wilson(k, runs)
        return {"rate": k / runs, "ci_low": lo, "ci_high": hi}

    b0 = float(special.logit(plan.accuracy))
    return {
        "plan": {**asdict(plan), "answers": plan.listeners * (plan.clips_per_listener or plan.clips),
                 "human_stimuli": plan.human_stimuli if plan.design == "single" else None},
        "accuracy_population": population_accuracy(b0, [plan.sd_listener, plan.sd_clip]),
        "runs": runs, "seed": seed,
        "verdicts": {k: rate(v) for k, v in counts.items()},
        "pooled_above_chance": rate(pooled_above),
        "not_fitted": not_fitted,
    }


def power_text(res: dict) -> list[str]:
    p = res["plan"]
    per = p["clips_per_listener"] or p["clips"]
    single = (f" (single stimulus: {p['human_stimuli']} human, lean towards 'AI' {p['lean']:g})"
              if p["design"] == "single" else "")
    lines = [f"design: {p['listeners']} listeners x {p['clips']} clips, {per} clips per listener, "
             f"{p['answers']} answers{single}",
             f"assumed: typical-listener accuracy {p['accuracy']:g} (averaged over listeners and clips "
             f"{res['accuracy_population']:.3f}), spread of listeners {p['sd_listener']:g} and of clips "
             f"{p['sd_clip']:g} (sd, log-odds)",
             f"verdicts of 'listen report' over {res['runs']} simulated experiments (alpha {p['alpha']:g}, "
             f"TOST margin ±{p['margin']:g}), with 95% intervals:"]
    for name, r in res["verdicts"].items():
        label = "equivalent to chance" if name == "equivalent" else name
        lines.append(f"  {label:<22} {r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    r = res["pooled_above_chance"]
    ignores = [what for what, on in (("the spreads", not math.isclose(p["sd_listener"] + p["sd_clip"], 0)),
                                     ("the lean", p["design"] == "single" and p["lean"] != 0)) if on]
    lines.append(f"  (a pooled exact binomial test against 0.5 would say 'above chance' in {r['rate']:.3f}"
                 + (f"; it ignores {' and '.join(ignores)})" if ignores else ")"))
    if res["not_fitted"]:
        lines.append(f"  the mixed model could not be fitted in {res['not_fitted']} runs (every answer right or "
                     "wrong, or quasi-separation); those were decided as the report decides them (pooled exact "
                     "tests, or inconclusive)")
    return lines
