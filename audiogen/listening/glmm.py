"""Mixed-effects logistic regression for identification answers.

    logit P(correct) = b0 + u[participant] + v[item],   u ~ N(0, sd_participant^2),  v ~ N(0, sd_item^2)

Crossed random intercepts, fitted by maximum likelihood with the Laplace approximation
of the marginal likelihood (what lme4's ``glmer`` does with its default ``nAGQ = 1``).
Listeners differ in skill and clips in difficulty, so the answers of one listener, or to
one clip, are not independent; a pooled binomial test treats them as if they were and
is too often "significant". Here the test against chance is a likelihood-ratio test of
``b0 = 0`` and the intervals are profile-likelihood intervals (signed-root deviance),
each maximised over the two standard deviations.

``b0`` is the log-odds of a correct answer for a typical listener (u = 0) on a typical
clip (v = 0), the median of both. Averaged over listeners and clips, accuracy is pulled
towards 0.5 (``accuracy_population``), so a typical-listener interval inside the
equivalence margin implies the population average is inside it too.

The random effects are written ``u = sd * z`` with ``z ~ N(0, I)`` (lme4's spherical
form): a standard deviation of 0 is then an ordinary point, not a singularity. The
conditional modes of ``z`` come from Newton's method on the penalised log-likelihood,
whose Hessian is two diagonal blocks plus their cross counts; the larger block is
eliminated first, so the cost grows with the smaller of the two numbers of levels. The
outer maximisation over ``b0``, ``b1`` and the spreads (L-BFGS-B) gets the likelihood's
exact gradient (:meth:`Laplace.value_and_grad`), from the same block elimination.

Written here because no well-kept Python library fits this model by maximum likelihood:
statsmodels' ``BinomialBayesMixedGLM`` is variational Bayes with priors on the spreads,
and pymer4 drives R's lme4.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg, optimize, special
from scipy import stats as S

#: A factor with fewer levels than this gets no random effect (its variance is not estimable), nor
#: does one with a single answer per level (its spread is then inseparable from chance).
MIN_LEVELS = 2
_B_BOUND = 15.0  # |log-odds| bound: accuracy within 3e-7 of 0 or 1
_SD_BOUND = 10.0
_Z90 = float(S.norm.ppf(0.9))


class Laplace:
    """Laplace-approximated log-likelihood of the model for fixed ``b0`` and standard deviations.

    ``y``: 0/1 answers; ``groups``: one level-index array per random factor (0, 1 or 2 factors);
    ``covariate``: an optional per-answer value whose coefficient ``b1`` enters the linear predictor.
    """

    def __init__(self, y: np.ndarray, groups: list[np.ndarray], covariate: np.ndarray | None = None):
        self.y = np.asarray(y, dtype=np.float64)
        self.x = np.zeros_like(self.y) if covariate is None else np.asarray(covariate, dtype=np.float64)
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.sizes = [int(g.max()) + 1 for g in self.groups]
        if len(self.groups) == 2 and self.sizes[0] < self.sizes[1]:  # eliminate the larger block first
            self.groups.reverse()
            self.sizes.reverse()
            self._order = [1, 0]
        else:
            self._order = list(range(len(self.groups)))
        if len(self.groups) == 2:
            self._cell = self.groups[0] * self.sizes[1] + self.groups[1]
        self._z = [np.zeros(n) for n in self.sizes]  # conditional modes, warm start for the next call

    def _eta(self, fixed: np.ndarray, sds, z) -> np.ndarray:
        eta = fixed.copy()
        for g, s, zf in zip(self.groups, sds, z):
            eta += s * zf[g]
        return eta

    def _penalised(self, eta: np.ndarray, z) -> float:
        return float(np.sum(self.y * eta - np.logaddexp(0.0, eta)) - 0.5 * sum(float(zf @ zf) for zf in z))

    def _newton(self, eta: np.ndarray, sds, z) -> list[np.ndarray]:
        """One Newton direction for ``z``: ``H^-1`` times the gradient of the penalised log-likelihood."""
        inv = self._inverse(eta, sds, leverages=False)
        r = self.y - inv["mu"]
        grads = [s * np.bincount(g, r, n) - zf for g, s, n, zf in zip(self.groups, sds, self.sizes, z)]
        return inv["solve"](grads)

    def _modes(self, fixed: np.ndarray, sds):
        """The conditional modes of ``z`` (Newton, warm-started), their linear predictor and penalised value."""
        z = [zf.copy() for zf in self._z]
        eta = self._eta(fixed, sds, z)
        value = self._penalised(eta, z)
        if not self.groups:
            return z, eta, value
        for _ in range(100):
            steps = self._newton(eta, sds, z)
            t = 1.0
            while True:  # the penalised log-likelihood is concave in z: halving always finds an ascent
                z_new = [zf + t * d for zf, d in zip(z, steps)]
                eta_new = self._eta(fixed, sds, z_new)
                new = self._penalised(eta_new, z_new)
                if new >= value - 1e-12 or t < 1e-8:
                    break
                t *= 0.5
            z, eta, gain, value = z_new, eta_new, new - value, new
            if max(float(np.max(np.abs(d))) for d in steps) * t < 1e-10 or abs(gain) < 1e-13:
                break
        self._z = z
        return z, eta, value

    def __call__(self, b0: float, sds, b1: float = 0.0) -> float:
        """``b1``: the coefficient of the covariate (a nuisance parameter, see :func:`fit_identification`)."""
        return self.value_and_grad(b0, sds, b1, grad=False)[0]

    def value_and_grad(self, b0: float, sds, b1: float = 0.0, grad: bool = True) -> tuple[float, np.ndarray | None]:
        """The Laplace log-likelihood and its gradient in ``(b0, b1, *sds)`` (``sds`` in the caller's order).

        ``L = P(z^) - log det(H) / 2`` with ``H = I + A' W A`` (``A = Z diag(sd)``). By the envelope
        theorem ``dP(z^)/dt`` is the explicit derivative; ``d log det H / dt = tr(H^-1 dH/dt)``,
        where ``dH/dt`` moves with ``W`` through ``eta``, which moves with ``t`` directly and through
        the modes (``dz^/dt = H^-1 d2P/dz dt``), and, for a spread, with ``A`` itself. Every
        ``H^-1`` entry this needs comes from the same block elimination as the Newton step.
        """
        fixed = b0 + float(b1) * self.x  # the fixed effects' part of the linear predictor, once per call
        sds = [float(sds[i]) for i in self._order]
        z, eta, value = self._modes(fixed, sds)
        if not self.groups:
            if not grad:
                return value, None
            r = self.y - special.expit(eta)
            return value, np.array([r.sum(), r @ self.x])
        inv = self._inverse(eta, sds, leverages=grad)
        value -= 0.5 * inv["logdet"]
        if not grad:
            return value, None
        mu, w = inv["mu"], inv["w"]
        r = self.y - mu
        dw = w * (1.0 - 2.0 * mu)
        lev, cols = inv["lev"], inv["cols"]  # A_i H^-1 A_i' and (H^-1 A_i')[level of factor k] per answer
        derivs = [np.ones_like(eta), self.x] + [zf[g] for zf, g in zip(z, self.groups)]  # explicit d eta / dt
        out = np.empty(len(derivs))
        for j, e in enumerate(derivs):
            v = [-s * np.bincount(g, w * e, n) for g, s, n in zip(self.groups, sds, self.sizes)]  # d2P/dz dt
            if j >= 2:  # a spread: A itself depends on it
                v[j - 2] += np.bincount(self.groups[j - 2], r, self.sizes[j - 2])
            dz = inv["solve"](v)
            d_eta = e + sum(s * d[g] for g, s, d in zip(self.groups, sds, dz))
            trace = float(np.sum(dw * d_eta * lev)) + (2.0 * float(w @ cols[j - 2]) if j >= 2 else 0.0)
            out[j] = float(r @ e) - 0.5 * trace
        g_sd = np.empty(len(sds))
        g_sd[self._order] = out[2:]  # back to the caller's order of the factors
        return value, np.concatenate([out[:2], g_sd])

    def _inverse(self, eta: np.ndarray, sds, leverages: bool = True) -> dict:
        """``H = -d2P/dz2`` at ``eta``: ``mu`` and the weights ``w`` it is built from, ``log det H``, a
        solver for ``H x = v`` (one array per factor) and, with ``leverages``, per answer
        ``lev = A_i H^-1 A_i'`` and ``cols[k] = (H^-1 A_i')`` at its level of factor ``k``. Two factors: the larger (diagonal) block is eliminated, leaving the Schur
        complement of the smaller, so the cost grows with the smaller number of levels."""
        mu = special.expit(eta)
        w = mu * (1.0 - mu)
        diags = [1.0 + s * s * np.bincount(g, w, n) for g, s, n in zip(self.groups, sds, self.sizes)]
        if len(self.groups) == 1:
            (g,), (s,), (d,) = self.groups, sds, diags
            h = 1.0 / d[g]
            return {"mu": mu, "w": w, "logdet": float(np.sum(np.log(d))), "solve": lambda v: [v[0] / d],
                    "lev": s * s * h, "cols": [s * h]}
        (ga, gb), (sa, sb), (da, db) = self.groups, sds, diags
        cross = (sa * sb) * np.bincount(self._cell, w, self.sizes[0] * self.sizes[1]).reshape(self.sizes)
        m = cross / da[:, None]  # Da^-1 C
        chol = linalg.cho_factor(np.diag(db) - cross.T @ m, lower=True, check_finite=False)  # Schur complement S

        def solve(v):
            xb = linalg.cho_solve(chol, v[1] - m.T @ v[0], check_finite=False)
            return [(v[0] - cross @ xb) / da, xb]

        out = {"mu": mu, "w": w, "logdet": float(np.sum(np.log(da)) + 2.0 * np.sum(np.log(np.diag(chol[0])))),
               "solve": solve}
        if not leverages:
            return out
        s_inv = linalg.cho_solve(chol, np.eye(len(db)), check_finite=False)
        ms = m @ s_inv  # H^-1 = [[Da^-1 + M S^-1 M', -M S^-1], [-S^-1 M', S^-1]]
        h_aa = 1.0 / da + np.einsum("ap,ap->a", ms, m)  # the diagonal of the large block
        h_ab = -ms[ga, gb]
        h_bb = np.diag(s_inv)[gb]
        col_a = sa * h_aa[ga] + sb * h_ab
        col_b = sa * h_ab + sb * h_bb
        return {**out, "lev": sa * col_a + sb * col_b, "cols": [col_a, col_b]}


def population_accuracy(b0: float, sds) -> float:
    """Accuracy averaged over listeners and clips: ``E[expit(b0 + u + v)]`` (41-point Gauss-Hermite)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(41)
    spread = math.sqrt(sum(s * s for s in sds))
    return float(np.sum(weights * special.expit(b0 + spread * nodes)) / math.sqrt(2 * math.pi))


def _satterthwaite_df(sds, levels, n: int, fixed: int) -> float:
    """Degrees of freedom for the signed root (Student's t instead of normal), Satterthwaite-style.

    With few clips (or listeners) the normal reference is too liberal: about 10 % false
    positives at 4 clips. ``b0``'s variance is roughly the sum of ``sd**2 / levels`` per
    random factor (with ``levels - fixed`` degrees of freedom) and a residual ``(pi**2 / 3) /
    n`` (the logistic's variance; many degrees of freedom); Satterthwaite's formula weighs
    them. Many clips and listeners give a large df, that is the normal reference.
    """
    parts = [(sd * sd / k, k - fixed) for sd, k in zip(sds, levels) if sd > 1e-4]
    if not parts:
        return math.inf
    total = sum(v for v, _ in parts) + (math.pi ** 2 / 3) / n
    return max(1.0, total * total / sum(v * v / max(d, 1) for v, d in parts))


def _maximise(fun, x0: list[float], bounds: list[tuple[float, float]]) -> tuple[np.ndarray, float]:
    """Maximise ``fun(x) -> (value, gradient)`` within ``bounds`` (L-BFGS-B)."""
    def negated(x):
        value, grad = fun(x)
        return -value, -grad

    res = optimize.minimize(negated, np.asarray(x0, dtype=np.float64), jac=True, method="L-BFGS-B", bounds=bounds,
                            options={"ftol": 1e-10, "gtol": 1e-6, "maxiter": 500})
    return res.x, -float(res.fun)


def fit_identification(correct, participant, item, margin: float, alpha: float = 0.05, level: float = 0.95,
                       p0: float = 0.5, ci: bool = True, tost: bool | str = True, origin=None) -> dict:
    """Fit the model to one block of answers and test it against chance (``p0``) and for equivalence.

    Returns ``estimable: False`` with a ``reason`` when there is no finite estimate (no
    answers, all of them right or all wrong, or the fit running to its bounds: listeners or
    clips that are each always right or always wrong). Otherwise: ``b0`` and its ``level``
    profile interval, ``accuracy`` (typical listener on a typical clip, ``expit(b0)``)
    with ``ci_low``/``ci_high``, ``accuracy_population`` (averaged over the fitted spread),
    ``accuracy_listeners_p10_p90`` (a 10th- and a 90th-percentile listener on a typical clip),
    ``sd_participant``/``sd_item`` (log-odds), the likelihood-ratio ``p_value`` against
    ``p0``, and ``tost``: the two one-sided signed-root tests against ``p0 -+ margin``
    (equivalent when both reject at ``alpha``, i.e. the 1 - 2 alpha interval lies inside).
    Tests and intervals refer the signed root to Student's t with Satterthwaite-style
    degrees of freedom (``df``, see :func:`_satterthwaite_df`), which matters below about
    20 clips. ``fallback: False`` marks a block no pooled test may decide either (one
    clip, one origin). ``sd_participant``/``sd_item`` are None for a factor not in the model.
    ``ci=False`` / ``tost=False`` skip the interval / the equivalence tests (None), which
    cost most of the time, for simulations that need only some of the answers;
    ``tost="unless_significant"`` skips the equivalence tests when the test against chance
    already rejects at ``alpha``.

    ``origin`` (single-stimulus designs: True where the stimulus was generated) adds a fixed
    effect ``b1 * (+1/2 generated, -1/2 human)``. A listener who leans towards one answer is
    right more often on one origin and less on the other; with the origin in the model,
    ``b0`` is the average of the two log-odds of being right, which is half the sensitivity
    ``d`` on the logit scale whatever the lean, and ``b1`` is twice the lean (towards
    answering "AI"). So ``expit(b0)`` is the accuracy of an unbiased listener, and the test
    against chance holds even when the stimuli are not half human, half generated.
    """
    # Long on purpose: one estimation (fit, profile interval, likelihood-ratio test, TOST) whose
    # steps share the fitted state; split, they would pass a dozen intermediates around.
    y = np.asarray(correct, dtype=np.float64)
    out = {"model": "logit P(correct) = b0 + u[participant] + v[item] (Laplace ML)", "n": int(y.size),
           "estimable": False, "alpha": alpha, "level": level}
    if y.size == 0:
        return {**out, "reason": "no answers"}
    if np.unique(np.asarray(item)).size < 2:  # fallback False: no pooled test may speak for clips in general
        return {**out, "fallback": False, "reason": "one clip: nothing can be said about clips in general"}
    if y.min() == y.max():
        return {**out, "reason": f"every answer was {'right' if y[0] else 'wrong'}: the accuracy has no finite "
                                 "estimate (use the exact binomial interval)"}
    groups, names, levels = [], [], {}
    for name, labels in (("participant", participant), ("item", item)):
        _, idx = np.unique(np.asarray(labels), return_inverse=True)
        levels[name] = int(idx.max()) + 1
        if MIN_LEVELS <= levels[name] < y.size:  # one answer per level: its spread is not identifiable
            groups.append(idx)
            names.append(name)
    x_origin = None
    if origin is not None:
        out["model"] = "logit P(correct) = b0 + b1 * origin + u[participant] + v[item] (Laplace ML)"
        o = np.asarray(origin, dtype=bool)
        if o.all() or not o.any():
            return {**out, "fallback": False, "reason": "only one origin among these answers: the listeners' lean "
                                                        "and their ability cannot be told apart"}
        x_origin = np.where(o, 0.5, -0.5)
    nb = 1 if x_origin is None else 2  # fixed effects: b0, and b1 with an origin
    try:
        lik = Laplace(y, groups, x_origin)
        nsd = len(groups)
        sd_bounds = [(0.0, _SD_BOUND)] * nsd
        b_bounds = [(-_B_BOUND, _B_BOUND)] * nb

        def full(v):  # v = [b0, (b1), sds...] -> the likelihood and its gradient in v
            value, grad = lik.value_and_grad(v[0], v[nb:], v[1] if nb == 2 else 0.0)
            return value, np.delete(grad, 1) if nb == 1 else grad

        def at_b0(b: float):  # v = [(b1), sds...] with b0 = b fixed
            def fun(v):
                value, grad = lik.value_and_grad(b, v[nb - 1:], v[0] if nb == 2 else 0.0)
                return value, grad[3 - nb:]
            return fun

        b_start = float(np.clip(special.logit(y.mean()), -_B_BOUND + 1, _B_BOUND - 1))
        x, l_max = _maximise(full, [b_start] + [0.0] * (nb - 1) + [0.5] * nsd, b_bounds + sd_bounds)
        b_hat, b1_hat, sds = float(x[0]), float(x[1]) if nb == 2 else 0.0, [float(s) for s in x[nb:]]
        # b1 may sit at its bound (listeners who always give one answer); b0 and the spreads may not
        if abs(b_hat) > _B_BOUND - 1e-3 or any(s > _SD_BOUND - 1e-3 for s in sds):
            return {**out, "reason": "the fit runs to its bounds (nearly every listener or clip is always right or always "
                                     "wrong, so the spread has no finite estimate; use the exact binomial test)"}

        # A spread of exactly 0 is a stationary point (the likelihood is even in each spread), where a
        # local optimiser can stay: the profile starts from the fit's spreads lifted off 0, and from the
        # last profile point's optimum (interval searches move in small steps of b0), lifted likewise.
        lifted = [b1_hat] * (nb - 1) + [max(s, 0.25) for s in sds]
        last = [lifted]

        def profile(b: float) -> float:  # the likelihood at b0 = b, maximised over (b1 and) the spreads
            if nsd + nb == 1:
                return lik(b, [])
            starts = [lifted] if last[0] == lifted else [lifted, last[0]]
            best = max((_maximise(at_b0(b), x0, b_bounds[1:] + sd_bounds) for x0 in starts), key=lambda r: r[1])
            last[0] = [float(v) for v in best[0][: nb - 1]] + [max(float(v), 0.25) for v in best[0][nb - 1:]]
            return best[1]

        def signed_root(b: float) -> float:
            return math.copysign(math.sqrt(max(0.0, 2.0 * (l_max - profile(b)))), b_hat - b)

        df = _satterthwaite_df(sds, [levels[name] for name in names], y.size, nb)
        ref = S.t(df) if math.isfinite(df) else S.norm

        def bound(z_crit: float, direction: int) -> float:
            """The interval end beyond ``b_hat`` in ``direction``: where the signed root reaches ``-direction * z_crit``."""
            def gap(b: float) -> float:  # > 0 inside the interval, <= 0 past its end
                return (signed_root(b) + direction * z_crit) * direction

            inner, step = b_hat, 0.5
            while True:
                outer = float(np.clip(b_hat + direction * step, -_B_BOUND, _B_BOUND))
                if gap(outer) <= 0:
                    return optimize.brentq(gap, *sorted((inner, outer)), xtol=1e-3)
                if abs(outer) >= _B_BOUND:
                    return outer  # the data do not bound it (accuracy indistinguishable from 0 or 1 there)
                inner, step = outer, step * 2

        p_value = float(2 * ref.sf(abs(signed_root(float(special.logit(p0))))))
        lo = hi = equivalence = None
        if ci:
            z_crit = float(ref.ppf(0.5 + level / 2))
            lo, hi = bound(z_crit, -1), bound(z_crit, +1)
        if tost and not (tost == "unless_significant" and p_value < alpha):
            b_lo, b_hi = float(special.logit(p0 - margin)), float(special.logit(p0 + margin))
            p_lower = float(ref.sf(signed_root(b_lo)))  # H0: b0 <= b_lo
            p_upper = float(ref.cdf(signed_root(b_hi)))  # H0: b0 >= b_hi
            equivalence = {"margin": margin, "bounds": [p0 - margin, p0 + margin], "p_lower": p_lower,
                           "p_upper": p_upper, "p": max(p_lower, p_upper),
                           "equivalent": bool(max(p_lower, p_upper) < alpha), "alpha": alpha}
        population = population_accuracy(b_hat, sds)
        # None: the factor is not in the model (one level, or one answer per level); at the boundary the
        # optimiser's 1e-7 is 0
        sd = {name: s if s > 1e-4 else 0.0 for name, s in zip(names, sds)}
        return {**out, "estimable": True, "participants": levels["participant"], "items": levels["item"],
                "b0": b_hat, "b0_ci": None if lo is None else [lo, hi], "accuracy": float(special.expit(b_hat)),
                "ci_low": None if lo is None else float(special.expit(lo)),
                "ci_high": None if hi is None else float(special.expit(hi)),
                "accuracy_population": population,
                # the spread of skill in accuracy terms: a 10th- and a 90th-percentile listener on a typical clip
                "accuracy_listeners_p10_p90": [float(special.expit(b_hat + z * (sd.get("participant") or 0.0)))
                                               for z in (-_Z90, _Z90)],
                "sd_participant": sd.get("participant"), "sd_item": sd.get("item"), "df": df,
                "loglik": l_max, "p_value": p_value, "tost": equivalence,
                **({"lean_towards_ai": b1_hat / 2} if nb == 2 else {})}
    except np.linalg.LinAlgError as e:  # the Hessian is positive definite in theory; guard rounding anyway
        return {**out, "reason": f"the fit failed numerically ({e})"}
