"""Listening-test statistics: hand-computed examples and simulated listeners with known ability."""

from __future__ import annotations

import math
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from scipy.stats import norm

from audiogen.listening import stats as S


def test_binomial_and_wilson_match_hand_computed_values():
    # 7 of 10 correct: P(X >= 7 | 0.5) = (120 + 45 + 10 + 1) / 1024; two-sided doubles it
    r = S.binomial(7, 10)
    assert r.p_value == pytest.approx(352 / 1024, abs=1e-12) and r.estimate == 0.7
    # Wilson: (p + z^2/2n) / (1 + z^2/n) -+ z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2), z = 1.959964
    z, n, p = 1.959963984540054, 10, 0.7
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (r.ci_low, r.ci_high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (r.ci_low, r.ci_high) == pytest.approx((0.396778, 0.892209), abs=1e-6)


def _tail(k_from: int, k_to: int, n: int, p: Fraction) -> float:
    return float(sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(k_from, k_to + 1)))


def test_tost_matches_exact_binomial_tails():
    # 5 of 10, margin 0.1: P(X >= 5 | 0.4) = P(X <= 5 | 0.6) = 3582976 / 9765625 -> not equivalent
    t = S.tost_binomial(5, 10, 0.1)
    assert t["p_lower"] == pytest.approx(3582976 / 9765625, abs=1e-12)
    assert t["p_upper"] == pytest.approx(3582976 / 9765625, abs=1e-12)
    assert not t["equivalent"]
    # 60 of 100, margin 0.15: the upper test decides (p = P(X <= 60 | 0.65) = 0.1724...)
    t = S.tost_binomial(60, 100, 0.15)
    assert t["p_lower"] == pytest.approx(_tail(60, 100, 100, Fraction(35, 100)), rel=1e-9)
    assert t["p"] == pytest.approx(_tail(0, 60, 100, Fraction(65, 100)), rel=1e-9)
    assert t["p"] == pytest.approx(0.172415, abs=1e-6) and not t["equivalent"]
    # 400 of 800, margin 0.1: both tails tiny -> equivalent
    t = S.tost_binomial(400, 800, 0.1)
    assert t["p"] == pytest.approx(_tail(400, 800, 800, Fraction(2, 5)), rel=1e-9)
    assert t["p"] < 1e-8 and t["equivalent"]


def test_wilson_interval_covers_simulated_listeners_accuracy():
    """Homogeneous listeners at 70%: the 95% interval covers 0.7 in about 95% of 400 experiments."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        k = int(rng.binomial(200, 0.7))
        lo, hi = S.wilson(k, 200)
        hits += lo <= 0.7 <= hi
    assert 0.91 <= hits / 400 <= 0.99


def _simulate(rng, n_part, n_items, mean_acc, sd_part=0.6, sd_item=0.4):
    """Listeners differ in skill and items in difficulty (logit scale); returns y, part, item."""
    logit = math.log(mean_acc / (1 - mean_acc))
    u = rng.normal(0, sd_part, n_part)[:, None]
    v = rng.normal(0, sd_item, n_items)[None, :]
    prob = 1 / (1 + np.exp(-(logit + u + v)))
    y = rng.random((n_part, n_items)) < prob
    part = np.repeat(np.arange(n_part), n_items)
    item = np.tile(np.arange(n_items), n_part)
    return y.ravel().astype(float), part, item


def test_cluster_bootstrap_recovers_population_accuracy_despite_listener_and_item_spread():
    """Population accuracy of simulated heterogeneous listeners and items (computed by Monte Carlo)
    lies in the two-way bootstrap interval in most simulated experiments, where the pooled binomial
    interval, which ignores the clustering, misses it far more often."""
    rng = np.random.default_rng(7)
    # the population mean accuracy for these random effects
    big = rng.normal(0, 0.6, 400_000) + rng.normal(0, 0.4, 400_000) + math.log(0.7 / 0.3)
    truth = float(np.mean(1 / (1 + np.exp(-big))))
    boot_hits = wilson_hits = 0
    runs = 60
    for r in range(runs):
        y, part, item = _simulate(rng, 30, 16, 0.7)
        b = S.cluster_bootstrap(y, part, item, n_boot=300, seed=r)
        boot_hits += b["ci_low"] <= truth <= b["ci_high"]
        lo, hi = S.wilson(int(y.sum()), y.size)
        wilson_hits += lo <= truth <= hi
    assert boot_hits / runs >= 0.85
    assert wilson_hits < boot_hits


def test_dprime_and_bias_are_recovered_from_simulated_2afc_and_yes_no():
    rng = np.random.default_rng(3)
    d_true, n = 1.0, 20000
    # 2AFC: compare noisy observations, plus a position bias b towards A
    bias = 0.3
    target_a = rng.random(n) < 0.5
    xa = rng.normal(0, 1, n) + np.where(target_a, d_true, 0)
    xb = rng.normal(0, 1, n) + np.where(target_a, 0, d_true)
    answer_a = xa - xb + bias > 0
    r = S.dprime_2afc(int((answer_a & target_a).sum()), int(target_a.sum()),
                      int((answer_a & ~target_a).sum()), int((~target_a).sum()))
    assert r["dprime"] == pytest.approx(d_true, abs=0.06)
    # c in z-units of the decision variable's sd (sqrt 2): bias / sqrt(2) towards A -> c < 0
    assert r["c"] == pytest.approx(-bias / math.sqrt(2), abs=0.05)
    assert r["pc_unbiased"] == pytest.approx(norm.cdf(d_true / math.sqrt(2)), abs=0.02)
    # yes/no with a conservative criterion (answers 'AI' only when x > d/2 + 0.4)
    signal = rng.random(n) < 0.5
    x = rng.normal(0, 1, n) + np.where(signal, d_true, 0)
    say = x > d_true / 2 + 0.4
    r = S.dprime_yes_no(int((say & signal).sum()), int(signal.sum()), int((say & ~signal).sum()), int((~signal).sum()))
    assert r["dprime"] == pytest.approx(d_true, abs=0.06) and r["c"] == pytest.approx(0.4, abs=0.05)


def test_chance_listeners_are_equivalent_to_chance_and_good_ones_are_not():
    rng = np.random.default_rng(5)
    chance = int(rng.binomial(1000, 0.5))
    assert S.tost_binomial(chance, 1000, 0.1)["equivalent"]
    assert S.binomial(chance, 1000).p_value > 0.001
    good = int(rng.binomial(1000, 0.7))
    assert not S.tost_binomial(good, 1000, 0.1)["equivalent"]
    assert S.binomial(good, 1000).p_value < 1e-6


def test_mean_ci_and_mushra_post_screening():
    m = S.mean_ci([60, 70, 80])
    # mean 70, sd 10, t(0.975, 2) = 4.302653 -> half width 4.302653 * 10 / sqrt(3)
    assert m["mean"] == 70 and m["ci_high"] - 70 == pytest.approx(4.302653 * 10 / math.sqrt(3), abs=1e-5)
    assert "truncated" not in m and not S.mean_ci([60, 70, 80], scale=(0, 100))["truncated"]
    # two MOS ratings of 1 and 5: the t interval 3 -+ 12.7 * 2.83 / 1.41 = [-22.4, 28.4] is far past the 1-5 scale
    few = S.mean_ci([1, 5], scale=(1, 5))
    assert few["mean"] == 3 and (few["ci_low"], few["ci_high"]) == (1, 5) and few["truncated"]
    d = S.paired_difference([5, 1], [1, 5], scale=(1, 5))  # differences +4 and -4: bounded by -+4
    assert (d["ci_low"], d["ci_high"]) == (-4, 4) and d["truncated"]
    ps = S.mushra_post_screening({"good": [100, 95, 92, 88, 100, 100, 100], "bad": [100, 80, 70, 100]})
    # good: 1 of 7 items below 90 (14% <= 15%): kept; bad: 2 of 4: excluded
    assert ps["good"] == {"fails": 1, "items": 7, "excluded": False}
    assert ps["bad"]["excluded"]


# ---- mixed-effects logistic model (audiogen.listening.glmm) ----

from audiogen.listening import glmm as G  # noqa: E402


def test_mixed_model_laplace_matches_a_brute_force_computation():
    """The Schur-complement Newton solve and log-determinant equal a dense, generic computation of the
    same Laplace approximation (mode by scipy's optimiser, full Hessian), for crossed factors whichever
    factor is the larger."""
    from scipy import optimize
    from scipy.special import expit

    rng = np.random.default_rng(11)
    for n_part, n_items in ((9, 5), (4, 7)):
        y, part, item = _simulate(rng, n_part, n_items, 0.65)
        keep = rng.random(y.size) < 0.8  # unbalanced: some cells missing
        y, part, item = y[keep], part[keep], item[keep]
        b0, sp, si = 0.3, 0.7, 1.1
        Z = np.zeros((y.size, n_part + n_items))
        Z[np.arange(y.size), part] = sp
        Z[np.arange(y.size), n_part + item] = si

        def neg(z):
            eta = b0 + Z @ z
            return -(np.sum(y * eta - np.logaddexp(0, eta)) - 0.5 * z @ z)

        z = optimize.minimize(neg, np.zeros(Z.shape[1]), method="BFGS", options={"gtol": 1e-10}).x
        w = expit(b0 + Z @ z) * (1 - expit(b0 + Z @ z))
        hess = Z.T @ (w[:, None] * Z) + np.eye(Z.shape[1])
        brute = -neg(z) - 0.5 * np.linalg.slogdet(hess)[1]
        assert G.Laplace(y, [part, item])(b0, [sp, si]) == pytest.approx(brute, abs=1e-7)


def test_mixed_model_gradient_equals_central_differences():
    """The optimiser's analytic gradient of the Laplace likelihood in (b0, b1, spreads) equals central
    differences of the likelihood, with two crossed factors (either the larger), one factor and none,
    unbalanced cells and an origin covariate, away from the optimum."""
    rng = np.random.default_rng(21)
    for n_part, n_items in ((12, 5), (4, 9), (7, 7)):
        y, part, item = _simulate(rng, n_part, n_items, 0.65, sd_part=0.5, sd_item=0.8)
        keep = rng.random(y.size) < 0.8
        y, part, item = y[keep], part[keep], item[keep]
        origin = np.where(rng.random(y.size) < 0.4, 0.5, -0.5)
        for groups in ([part, item], [item], []):
            lik = G.Laplace(y, groups, origin)
            theta = np.concatenate([rng.normal(0, 1, 2), rng.uniform(0.1, 1.5, len(groups))])
            _, grad = lik.value_and_grad(theta[0], theta[2:], theta[1])
            h, numeric = 1e-5, np.empty_like(theta)
            for j in range(theta.size):
                e = np.zeros_like(theta)
                e[j] = h
                up, down = theta + e, theta - e
                numeric[j] = (lik(up[0], up[2:], up[1]) - lik(down[0], down[2:], down[1])) / (2 * h)
            np.testing.assert_allclose(grad, numeric, atol=1e-6)
            assert np.abs(grad).max() > 1e-2  # not at a stationary point: the comparison has something to see


def test_mixed_model_likelihood_is_close_to_exact_integration_for_one_factor():
    """With one random factor the marginal likelihood is a product of 1-D integrals, computed here by
    100-point Gauss-Hermite quadrature; the Laplace approximation is within 0.05 of it per 100 answers."""
    from scipy.special import expit

    rng = np.random.default_rng(12)
    y, part, _ = _simulate(rng, 15, 20, 0.7, sd_item=0.0)
    b0, sd = 0.8, 0.6
    x, w = np.polynomial.hermite_e.hermegauss(100)
    exact = 0.0
    for p in range(15):
        yp = y[part == p]
        pr = expit(b0 + sd * x[:, None])
        lik = np.prod(np.where(yp[None] > 0, pr, 1 - pr), axis=1)
        exact += math.log(np.sum(w * lik) / math.sqrt(2 * math.pi))
    approx = G.Laplace(y, [part])(b0, [sd])
    assert abs(approx - exact) < 0.05 * y.size / 100
    assert approx != exact


def test_mixed_model_recovers_accuracy_and_spreads_of_simulated_listeners():
    rng = np.random.default_rng(13)
    y, part, item = _simulate(rng, 50, 40, 0.7, sd_part=0.6, sd_item=0.4)
    r = G.fit_identification(y, part, item, margin=0.1)
    assert r["estimable"] and r["participants"] == 50 and r["items"] == 40
    b_true = math.log(0.7 / 0.3)
    assert r["b0_ci"][0] < b_true < r["b0_ci"][1] and r["b0_ci"][1] - r["b0_ci"][0] < 0.8
    assert r["sd_participant"] == pytest.approx(0.6, abs=0.2) and r["sd_item"] == pytest.approx(0.4, abs=0.2)
    assert r["ci_low"] < r["accuracy"] < r["ci_high"]
    assert 0.5 < r["accuracy_population"] < r["accuracy"]  # averaging over listeners pulls towards chance
    lo, hi = r["accuracy_listeners_p10_p90"]
    assert hi == pytest.approx(1 / (1 + math.exp(-(r["b0"] + norm.ppf(0.9) * r["sd_participant"]))))
    assert lo < r["accuracy"] < hi
    assert r["p_value"] < 1e-6 and not r["tost"]["equivalent"]


def test_mixed_model_keeps_its_false_alarm_rate_where_the_pooled_test_does_not():
    """Null hypothesis true on average (b0 = 0) but listeners and clips differ: the pooled exact binomial
    test calls the result significant far more often than 5%, the mixed model's likelihood-ratio test
    about 5% of the time (150 simulated experiments of 12 listeners x 20 clips)."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(14)
    runs, glmm_hits, pooled_hits = 150, 0, 0
    for _ in range(runs):
        y, part, item = _simulate(rng, 12, 20, 0.5, sd_part=0.5, sd_item=1.0)
        glmm_hits += G.fit_identification(y, part, item, 0.1, ci=False, tost=False)["p_value"] < 0.05
        pooled_hits += binomtest(int(y.sum()), y.size).pvalue < 0.05
    assert glmm_hits / runs <= 0.10
    assert pooled_hits / runs >= 0.18


def test_mixed_model_equivalence_and_its_limits():
    rng = np.random.default_rng(15)
    y, part, item = _simulate(rng, 40, 30, 0.5, sd_part=0.2, sd_item=0.2)
    r = G.fit_identification(y, part, item, margin=0.1)
    assert r["tost"]["equivalent"] and r["p_value"] > 0.01
    # the 90% interval (1 - 2 alpha) lies inside the margin exactly when TOST says equivalent
    r90 = G.fit_identification(y, part, item, margin=0.1, level=0.9)
    assert 0.4 < r90["ci_low"] and r90["ci_high"] < 0.6
    # a few listeners, every answer right: no finite estimate, said so
    r = G.fit_identification(np.ones(12), np.repeat([0, 1, 2], 4), np.tile([0, 1, 2, 3], 3), 0.1)
    assert not r["estimable"] and "every answer was right" in r["reason"]
    assert G.fit_identification([], [], [], 0.1)["reason"] == "no answers"
    # clips that are always right or always wrong: the clip spread runs to its bound, no estimate
    r = G.fit_identification((np.tile([0, 1], 10) == 0).astype(float), np.repeat(np.arange(10), 2), np.tile([0, 1], 10), 0.1)
    assert not r["estimable"] and "runs to its bounds" in r["reason"]
    # one answer per listener and per clip: no spread is identifiable, so it is plain logistic regression,
    # whose profile interval for 4 of 6 solves 2 * (L(b_hat) - L(b)) = 3.841 (computed here independently)
    from scipy.optimize import brentq
    from scipy.special import expit

    def loglik(b):
        return 4 * math.log(expit(b)) + 2 * math.log(1 - expit(b))

    b_hat = math.log(2)
    ends = [brentq(lambda b: 2 * (loglik(b_hat) - loglik(b)) - norm.ppf(0.975) ** 2, *br) for br in ((-10, b_hat), (b_hat, 10))]
    r = G.fit_identification([1, 0, 1, 1, 0, 1], list("abcdef"), list("uvwxyz"), 0.1)
    assert r["sd_participant"] is None and r["sd_item"] is None and r["accuracy"] == pytest.approx(4 / 6, abs=1e-5)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(expit(e) for e in ends), abs=1e-4)
    # one listener: no participant variance to estimate, the item factor alone is fitted
    y, _, item = _simulate(rng, 1, 60, 0.6)
    r = G.fit_identification(y, np.zeros(60), item, 0.1)
    assert r["estimable"] and r["participants"] == 1 and r["sd_participant"] is None  # not in the model


def test_holm_adjustment_matches_a_hand_computed_example():
    # sorted 0.01, 0.02, 0.04, 0.5 -> x4, x3, x2, x1 = 0.04, 0.06, 0.08, 0.5 (monotone), given in input order
    assert S.holm([0.04, 0.5, 0.01, 0.02]) == pytest.approx([0.08, 0.5, 0.04, 0.06])
    assert S.holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])  # running max keeps the order of the raw p-values
    assert S.holm([0.9, 0.8]) == [1.0, 1.0]


def test_paired_difference_sees_through_listeners_own_use_of_the_scale():
    """Listeners' offsets (sd 15 points) swamp a 4-point difference between two systems when their means
    are compared unpaired; the per-listener paired comparison finds it."""
    from scipy.stats import ttest_ind, wilcoxon

    rng = np.random.default_rng(21)
    offset = rng.normal(0, 15, 20)
    a = 60 + offset + rng.normal(0, 3, 20)
    b = 56 + offset + rng.normal(0, 3, 20)
    r = S.paired_difference(a, b)
    assert r["n"] == 20 and r["ci_low"] < 4 < r["ci_high"] and r["ci_low"] > 0
    assert r["p_value"] == pytest.approx(wilcoxon(a - b).pvalue) and r["p_value"] < 0.001
    assert ttest_ind(a, b).pvalue > 0.2
    same = S.paired_difference(a, a)
    assert same["mean"] == 0 and same["p_value"] == 1.0
    few = S.paired_difference(a[:4], b[:4])  # 4 listeners, all in one direction: the exact test's floor
    assert few["p_value"] == pytest.approx(0.125) == few["smallest_possible_p"]


# ---- power planning (audiogen.listening.power) ----

def test_power_simulation_matches_the_exact_binomial_power_without_spreads():
    """With no listener or clip spread every answer is an independent Bernoulli(0.6), so the share of simulated
    experiments where the pooled exact test says 'above chance' must match its closed-form power; the mixed
    model, which also has to estimate the (zero) spreads, is close to it and never above chance at random."""
    from scipy.stats import binom, binomtest

    from audiogen.listening.power import Plan, power, simulate

    n, p = 200, 0.6
    exact = sum(binom.pmf(k, n, p) for k in range(n + 1) if k > n / 2 and binomtest(k, n).pvalue < 0.05)
    res = power(Plan(20, 10, p, sd_listener=0, sd_clip=0), runs=100, seed=3)
    assert res["plan"]["answers"] == n
    pooled = res["pooled_above_chance"]
    assert pooled["ci_low"] - 0.03 <= exact <= pooled["ci_high"] + 0.03
    above = res["verdicts"]["above chance"]["rate"]
    assert exact - 0.15 <= above <= exact + 0.05
    assert sum(v["rate"] for v in res["verdicts"].values()) == pytest.approx(1.0)
    # subsets: each listener hears K distinct clips
    y, listener, clip, generated = simulate(Plan(5, 12, 0.7, clips_per_listener=4), np.random.default_rng(0))
    assert generated is None
    assert y.size == 20 and all(len(set(clip[listener == i])) == 4 for i in range(5))


def test_power_of_an_equivalence_plan_and_its_false_alarms():
    from audiogen.listening.power import Plan, power

    res = power(Plan(30, 20, 0.5, sd_listener=0.3, sd_clip=0.3, margin=0.15), runs=40, seed=4)
    v = res["verdicts"]
    assert v["equivalent"]["rate"] >= 0.7 and v["above chance"]["rate"] <= 0.1
    assert res["accuracy_population"] == pytest.approx(0.5)
    from audiogen.errors import AudiogenError

    with pytest.raises(AudiogenError, match="clips per listener"):
        power(Plan(4, 3, 0.6, clips_per_listener=5), runs=1)


def test_mixed_model_interval_does_not_depend_on_the_order_of_the_answers():
    """A pilot-sized block (29 listeners x 2 clips, from a simulated report) whose profile is flat: the
    interval ends once moved by 0.08 in log-odds with the order of the rows."""
    y = np.array([int(c) for c in "1111111100100101111111110101111111111101111011111111110001"], dtype=float)
    part, item = np.repeat(np.arange(29), 2), np.tile([0, 1], 29)
    ref = G.fit_identification(y, part, item, 0.15)
    rng = np.random.default_rng(0)
    for _ in range(3):
        o = rng.permutation(y.size)
        r = G.fit_identification(y[o], part[o], item[o], 0.15)
        assert r["b0_ci"] == pytest.approx(ref["b0_ci"], abs=1e-5)
        assert r["tost"]["p"] == pytest.approx(ref["tost"]["p"], abs=1e-6)


def test_mixed_model_with_few_clips_refers_to_student_t_and_keeps_its_false_alarm_rate():
    """4 clips of very different difficulty (sd 1.5), 40 listeners, no effect on average: the normal reference
    gave about 10 % false positives; Satterthwaite-style degrees of freedom bring it back near 5 %."""
    rng = np.random.default_rng(31)
    hits = fitted = 0
    for _ in range(200):
        y, part, item = _simulate(rng, 40, 4, 0.5, sd_part=0.5, sd_item=1.5)
        r = G.fit_identification(y, part, item, 0.1, ci=False, tost=False)
        if r["estimable"]:
            fitted += 1
            hits += r["p_value"] < 0.05
            assert r["sd_item"] < 0.3 or r["df"] < 10
    assert fitted >= 170 and hits / fitted <= 0.08  # 3.3 % over 400 runs (measured); normal reference: ~10 %
    # many clips and listeners: effectively the normal reference
    y, part, item = _simulate(rng, 60, 40, 0.6, sd_part=0.3, sd_item=0.3)
    assert G.fit_identification(y, part, item, 0.1, ci=False, tost=False)["df"] > 50


def test_blocks_no_test_can_decide_are_inconclusive_and_single_stimulus_falls_back_to_fisher():
    from audiogen.listening.report import decision, tests_against_chance

    rng = np.random.default_rng(32)
    # one clip: the model cannot speak for clips in general, and neither may a pooled test
    y = (rng.random(30) < 0.8).astype(float)
    b = tests_against_chance(y, np.arange(30), np.zeros(30), 0.1, 0.05)
    assert b["accuracy"]["p_value"] < 0.01 and decision(b, 0.05)[0] == "inconclusive"
    assert "one clip" in decision(b, 0.05)[1]
    # single stimulus, listeners answering 'AI' always: the lean runs to its bound, yet nothing is above chance
    part, stim = np.repeat(np.arange(20), 9), np.tile(np.arange(9), 20)
    generated = stim >= 3
    b = tests_against_chance(generated.astype(float), part, stim, 0.1, 0.05, origin=generated)
    assert b["accuracy"]["p_value"] < 1e-4 and decision(b, 0.05)[0] == "inconclusive"
    # ... and when the model cannot be fitted, Fisher's test of answer against origin stands in, not accuracy
    said_ai = rng.random(180) < 0.8
    b = tests_against_chance((said_ai == generated).astype(float), part, stim, 0.1, 0.05, origin=generated)
    b["mixed"] = {"estimable": False, "reason": "forced for the test"}
    assert b["accuracy"]["p_value"] < 0.01 and decision(b, 0.05) == (
        "inconclusive", "pooled Fisher exact test of answer against origin; mixed model not fitted: forced for the test")
    only_human = tests_against_chance((rng.random(40) < 0.8).astype(float), np.repeat(np.arange(10), 4),
                                      np.tile(np.arange(4), 10), 0.1, 0.05, origin=np.zeros(40, bool))
    assert decision(only_human, 0.05)[0] == "inconclusive"


def test_power_of_a_single_stimulus_plan_with_a_lean_and_unequal_origins():
    """Listeners who cannot tell but lean towards 'AI' (log-odds 1), a third of the stimuli human: the report's
    verdict stays near its false-alarm rate, while accuracy against 0.5 pooled would call most runs above chance."""
    from audiogen.listening.power import Plan, power, simulate

    plan = Plan(20, 12, 0.5, sd_listener=0.3, sd_clip=0.3, design="single", human_share=1 / 3, lean=1.0)
    y, _, clip, generated = simulate(plan, np.random.default_rng(0))
    assert generated.sum() == 20 * 8 and y[generated].mean() > 0.55 > 0.45 > y[~generated].mean()  # expit(+-1)
    res = power(plan, runs=40, seed=5)
    assert res["verdicts"]["above chance"]["rate"] <= 0.1 and res["pooled_above_chance"]["rate"] >= 0.5
    from audiogen.errors import AudiogenError

    with pytest.raises(AudiogenError, match="human and generated"):
        power(Plan(4, 3, 0.6, design="single", human_share=0.0), runs=1)
