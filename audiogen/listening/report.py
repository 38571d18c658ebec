"""``listen report``: one tidy row per answer, exclusions, statistics, an HTML report with plots."""

from __future__ import annotations


def _correct(step: dict, response: dict):
    truth, design = step.get("truth") or {}, step["design"]
    if not truth:
        return None
    if design == "screening":
        return response.get("choice") == truth["answer"]
    if design == "count":
        return response.get("count") == truth["answer"]
    if design == "2afc":
        return response.get("choice") == truth["ai"]
    if design == "single":
        return response.get("origin") == ("human" if truth["origin"] == "human" else "ai")
    return None


#: An answer counts as given after listening when the server had sent at least this share of each of
#: its step's files to the participant before the answer came (a browser fetches the whole file to play it).
FETCHED_SHARE = 0.9


def fetched_share(records: list[tuple[float, int, int, int]], before: float) -> float:
    """The share of a file's bytes covered by the ranges sent before time ``before``;
    ``records``: [(time, first byte, last byte, file size)] as ``db.load_served`` gives them."""
    spans = sorted((first, last) for at, first, last, _ in records if at <= before)
    if not spans:
        return 0.0
    covered, end = 0, -1
    for first, last in spans:
        if last > end:
            covered += last - max(first, end + 1) + 1
            end = last
    return covered / records[0][3]


def audio_fetched(step: dict, token: str, received_at: float, served: dict, min_plays: int) -> bool | None:
    """Had the server sent the participant the step's audio before the answer? None: nothing was required."""
    if not min_plays and step["design"] != "calibration":
        return None
    return all(fetched_share(served.get((token, step["slot"], pos), []), received_at) >= FETCHED_SHARE
               for pos in range(len(step["stimuli"])))


def answer_rows(manifest: dict, participants: list[dict], answers: list[dict], served: dict | None = None) -> list[dict]:
    """Answers joined with their step's truth: one flat dict per answer (the CSV/JSON export).
    ``served`` (``db.load_served``): adds ``audio_fetched``, whether the answer came after its audio."""
    plans = {p["token"]: p for p in participants}
    min_plays = manifest["experiment"]["min_plays"]
    rows = []
    for a in answers:
        p = plans[a["participant"]]
        step = p["plan"]["steps"][a["slot"]]
        truth = step.get("truth") or {}
        rows.append({
            "participant": f"P{p['idx']:04d}",
            "external_id": p["external_id"],
            "completed": p["completed_at"] is not None,
            "slot": a["slot"],
            "kind": step["kind"],
            "design": step["design"],
            "stimuli": " ".join(step["stimuli"]),
            "ai_position": truth.get("ai"),
            "origin": truth.get("origin") or ("generated" if truth.get("ai") else None),
            "system": truth.get("system"),
            "item": truth.get("item"),
            "systems": truth.get("systems"),
            "response": a["response"],
            "correct": _correct(step, a["response"]),
            "plays": a["plays"],
            "listened_s": a["listened"],
            "client_ms": a["client_ms"],
            "received_at": a["received_at"],
            "answer_id": a["answer_id"],
            "audio_fetched": None if served is None else audio_fetched(step, a["participant"], a["received_at"],
                                                                       served, min_plays),
        })
    return rows


# --------------------------------------------------------------------------- analysis


def participant_checks(exp: dict, parts: list[dict], rows: list[dict]) -> dict[str, dict]:
    """Per participant: finished?, headphone screening and catch-trial scores, exclusion reasons."""
    out = {}
    for p in parts:
        pid = f"P{p['idx']:04d}"
        mine = [r for r in rows if r["participant"] == pid]
        scr = [r["correct"] for r in mine if r["kind"] == "screening"]
        cat = [r["correct"] for r in mine if r["kind"] == "catch"]
        reasons = []
        if p["completed_at"] is None:
            reasons.append("incomplete")
        if exp["screening"]["enabled"] and scr and sum(scr) < exp["screening"]["pass_min"]:
            reasons.append(f"headphone screening {sum(scr)}/{len(scr)} < {exp['screening']['pass_min']}")
        if cat and not all(cat):
            reasons.append(f"catch trials {sum(cat)}/{len(cat)} correct")
        unheard = sum(r.get("audio_fetched") is False for r in mine)
        if unheard:  # the server never sent the audio these answers were about: not listened to
            reasons.append(f"{unheard} answer(s) without the audio fetched")
        out[pid] = {"participant": pid, "external_id": p["external_id"], "completed": p["completed_at"] is not None,
                    "screening": f"{sum(scr)}/{len(scr)}" if scr else "-", "catch": f"{sum(cat)}/{len(cat)}" if cat else "-",
                    "answers": len(mine), "reasons": reasons}
    return out


def tests_against_chance(correct, participant, item, margin: float, alpha: float, ci: bool = True,
                         origin=None, tost: bool | str = True) -> dict:
    """What :func:`decision` needs for one block of 0/1 answers: the pooled exact tests and the mixed model
    (``origin``: single-stimulus designs, True for generated stimuli; see :func:`fit_identification`)."""
    from audiogen.listening import stats as S
    from audiogen.listening.glmm import fit_identification

    k, n = int(sum(correct)), len(correct)
    res = {"n": n, "accuracy": S.binomial(k, n).as_dict(), "tost": S.tost_binomial(k, n, margin, alpha=alpha)}
    if n:
        res["mixed"] = fit_identification(correct, participant, item, margin, alpha=alpha, ci=ci, origin=origin,
                                          tost=tost)
    if n and origin is not None:  # the pooled test that a lean towards one answer cannot pass
        res["fisher"] = S.answer_vs_origin(correct, origin)
    return res


def _identification(rows: list[dict], design: str, margin: float, alpha: float, n_boot: int, seed: int) -> dict:
    import math

    import numpy as np

    from audiogen.listening import stats as S

    def block(rs: list[dict], noise: list[dict] | None = None) -> dict:
        """Accuracy, TOST, d' and bootstrap of trials ``rs``; ``noise``: the human trials (single design)."""
        y = np.array([float(bool(r["correct"])) for r in rs])
        part, item = np.array([r["participant"] for r in rs]), np.array([r["item_key"] for r in rs])
        # single stimulus: a lean towards one answer is right more often on one origin; the model separates it
        origin = [r["origin"] != "human" for r in rs] if design == "single" else None
        res = tests_against_chance(y, part, item, margin, alpha, origin=origin)
        n = res["n"]
        if design == "2afc" and n:
            a_when_a = sum(r["response"]["choice"] == "A" for r in rs if r["ai_position"] == "A")
            a_when_b = sum(r["response"]["choice"] == "A" for r in rs if r["ai_position"] == "B")
            res["sdt"] = S.dprime_2afc(a_when_a, sum(r["ai_position"] == "A" for r in rs), a_when_b,
                                       sum(r["ai_position"] == "B" for r in rs))
        if design == "single" and n and noise:
            sig = [r for r in rs if r["origin"] != "human"]
            if sig:
                hits = sum(r["response"]["origin"] == "ai" for r in sig)
                fas = sum(r["response"]["origin"] == "ai" for r in noise)
                res["sdt"] = S.dprime_yes_no(hits, len(sig), fas, len(noise))
        if n:
            res["bootstrap"] = S.cluster_bootstrap(y, part, item, n_boot=n_boot, seed=seed)
        return res

    humans = [r for r in rows if r["origin"] == "human"]
    out = {"overall": block(rows, humans), "systems": {}}
    for system in sorted({r["system"] for r in rows}):
        rs = [r for r in rows if r["system"] == system]
        if design == "single" and system != "human":
            rs = rs + humans  # a system is told apart from the human stimuli: both kinds of trial count
        out["systems"][system] = block(rs, humans if system != "human" else None)
        if design == "single" and system == "human":  # the correct-rejection rate: it measures a lean, not ability
            b = out["systems"][system]
            b["accuracy"]["p_value"] = math.nan
            b["tost"] = {**b["tost"], "p": math.nan, "p_lower": math.nan, "p_upper": math.nan, "equivalent": False}
    if design == "single":  # are listeners right more often when they say they are sure?
        out["by_confidence"] = {}
        for c in range(1, 6):
            rs = [r for r in rows if r["response"]["confidence"] == c]
            out["by_confidence"][c] = S.binomial(sum(bool(r["correct"]) for r in rs), len(rs)).as_dict()
    per_part: dict[str, list] = {}
    for r in rows:
        per_part.setdefault(r["participant"], []).append(bool(r["correct"]))
    out["per_participant_accuracy"] = {p: sum(v) / len(v) for p, v in per_part.items()}
    return out


def _t_interval(r: dict) -> str:
    """A mean's Student-t interval as shown in the tables, marked where it was cut to the rating scale."""
    return f"[{_fmt(r['ci_low'], 4)}, {_fmt(r['ci_high'], 4)}]" + (" (cut to the scale)" if r.get("truncated") else "")


def _ratings(rows: list[dict], design: str, exp: dict, n_boot: int, seed: int) -> dict:
    import numpy as np

    from audiogen.listening import stats as S
    from audiogen.listening.experiment import RATING_SCALES

    scale = RATING_SCALES[design]
    flat = []  # (participant, item, system, score)
    for r in rows:
        if design == "mos":
            flat.append((r["participant"], r["item_key"], r["system"], r["response"]["rating"]))
        else:
            for sid, score in r["response"]["ratings"].items():
                flat.append((r["participant"], r["item"] or r["item_key"], r["systems"][sid], score))
    out: dict = {"systems": {}}
    if design == "mushra":
        hidden: dict[str, list] = {}
        for p, _, s, score in flat:
            if s == "hidden_reference":
                hidden.setdefault(p, []).append(score)
        out["post_screening"] = S.mushra_post_screening(hidden, exp["mushra"]["reference_min"],
                                                        exp["mushra"]["max_fail_share"])
    for system in sorted({f[2] for f in flat}):
        sel = [f for f in flat if f[2] == system]
        scores = np.array([f[3] for f in sel], dtype=float)
        out["systems"][system] = {
            **S.mean_ci(scores, scale=scale),
            "bootstrap": S.cluster_bootstrap(scores, np.array([f[0] for f in sel]), np.array([f[1] for f in sel]),
                                             n_boot=n_boot, seed=seed),
        }
    out["pairs"] = _pairs(flat, n_boot, seed, scale)
    out["flat"] = flat
    return out


def _pairs(flat: list[tuple], n_boot: int, seed: int, scale: tuple[float, float]) -> list[dict]:
    """Every pair of systems compared by listener (paired), Holm-corrected over all pairs; where
    both were rated in the same trial (MUSHRA), also a two-way cluster bootstrap of those differences."""
    import itertools

    import numpy as np

    from audiogen.listening import stats as S

    per_listener: dict[tuple, list] = {}  # (participant, system) -> scores
    per_cell: dict[tuple, dict] = {}  # (participant, item) -> {system: score}
    for p, item, system, score in flat:
        per_listener.setdefault((p, system), []).append(score)
        per_cell.setdefault((p, item), {})[system] = score
    systems = sorted({f[2] for f in flat})
    pairs = []
    for a, b in itertools.combinations(systems, 2):
        both = sorted({p for p, s in per_listener if s == a} & {p for p, s in per_listener if s == b})
        res = {"a": a, "b": b, "listeners": len(both),
               **S.paired_difference([np.mean(per_listener[p, a]) for p in both],
                                     [np.mean(per_listener[p, b]) for p in both], scale=scale)}
        cells = [(p, item, c[a] - c[b]) for (p, item), c in per_cell.items() if a in c and b in c]
        if cells:
            res["bootstrap"] = S.cluster_bootstrap(np.array([c[2] for c in cells], dtype=float),
                                                   np.array([c[0] for c in cells]), np.array([c[1] for c in cells]),
                                                   n_boot=n_boot, seed=seed)
        pairs.append(res)
    tested = [r for r in pairs if r["p_value"] == r["p_value"]]  # not NaN: some listener rated both
    for res, adjusted in zip(tested, S.holm([r["p_value"] for r in tested])):
        res["p_holm"] = adjusted
    return pairs


def analyse(exp_dir, margin: float | None = None, alpha: float = 0.05, n_boot: int = 2000,
            include_incomplete: bool = False, apply_exclusions: bool = True) -> dict:
    """Everything the report shows, as one JSON-able dict."""
    from pathlib import Path

    from audiogen.listening import db as DB
    from audiogen.listening.experiment import read_manifest

    manifest = read_manifest(exp_dir)
    exp = manifest["experiment"]
    design = exp["design"]
    margin = exp["tost_margin"] if margin is None else margin
    con = DB.connect(Path(exp_dir) / "listen.db")
    parts, answers = DB.load_all(con)
    served = DB.load_served(con)
    con.close()
    rows = answer_rows(manifest, parts, answers, served)
    for r in rows:
        # the unit a judgement generalises over: the generated clip (2AFC), the item (MUSHRA), the stimulus
        ids = r["stimuli"].split()
        if r["kind"] != "trial":
            r["item_key"] = None
        elif design == "2afc":
            r["item_key"] = next(x for x in ids if manifest["stimuli"][x]["origin"] == "generated")
        else:
            r["item_key"] = r["item"] if design == "mushra" else ids[0]
    checks = participant_checks(exp, parts, rows)
    trials = [r for r in rows if r["kind"] == "trial"]
    if design == "mushra":
        pre = _ratings([r for r in trials if not checks[r["participant"]]["reasons"]], design, exp, 0, 0)
        for p, ps in pre["post_screening"].items():
            if ps["excluded"]:
                checks[p]["reasons"].append(f"BS.1534 post-screening: hidden reference < {exp['mushra']['reference_min']:g} "
                                            f"in {ps['fails']}/{ps['items']} items")
    def keep(pid):
        reasons = checks[pid]["reasons"]
        if include_incomplete:
            reasons = [x for x in reasons if x != "incomplete"]
        if not apply_exclusions:
            reasons = [x for x in reasons if x == "incomplete"]
        return not reasons

    included = sorted(p for p in checks if keep(p))
    used = [r for r in trials if r["participant"] in set(included)]
    res = {"experiment": exp["name"], "design": design, "margin": margin, "alpha": alpha, "n_boot": n_boot,
           "participants": {"total": len(parts), "completed": sum(c["completed"] for c in checks.values()),
                            "included": len(included), "excluded": len(checks) - len(included)},
           "exclusions": [c for c in checks.values() if c["participant"] not in set(included)],
           "checks": list(checks.values()), "trials_used": len(used),
           "listening": _listening(used), "audit": audit_text(manifest.get("audit"))}
    if design in ("2afc", "single"):
        res["identification"] = ident = _identification(used, design, margin, alpha, n_boot, exp["seed"])
        conclusion, how = decision(ident["overall"], alpha)
        ident["verdict"] = {"conclusion": conclusion, "basis": how, "text": _verdict_text(ident["overall"], conclusion,
                                                                                         how, margin, alpha)}
    else:
        rt = _ratings(used, design, exp, n_boot, exp["seed"])
        res["ratings"] = {k: v for k, v in rt.items() if k != "flat"}
    return res


def audit_text(audit: dict | None) -> str:
    """The blinding audit ``listen create`` ran, in one paragraph for the methods section."""
    from audiogen.listening.audit import describe_tell

    if not audit:
        return "No blinding audit was recorded (the experiment was created before audiogen audited its stimuli)."
    if audit.get("accuracy") is None:
        return f"Blinding audit: not run ({audit.get('note', 'too few clips')})."
    head = (f"Blinding audit at creation: {audit['method']}, over {audit['clips']} clips ({audit['generated']} "
            f"generated); leave-one-out balanced accuracy {audit['accuracy']:.0%} (chance 50%), permutation "
            f"p = {audit['p_value']:.3g}: ")
    if not audit["beats_chance"]:
        return head + "the features did not tell the origins apart."
    return (head + "the features told the origins apart, so listeners could have too without judging the music. "
            "Telling features: " + "; ".join(describe_tell(k, audit["features"][k]) for k in audit["tells"]) + ".")


def _listening(rows: list[dict]) -> dict:
    import numpy as np

    plays = [v for r in rows for v in r["plays"].values()]
    heard = [v for r in rows for v in r["listened_s"].values()]
    return {"median_plays": float(np.median(plays)) if plays else None,
            "median_listened_s": float(np.median(heard)) if heard else None,
            "median_trial_s": float(np.median([r["client_ms"] / 1000 for r in rows if r["client_ms"]])) if rows else None}


# --------------------------------------------------------------------------- plots and HTML


def _png(fig) -> str:
    """A matplotlib figure as a data: URI (the report is one self-contained file); closes it."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(res: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if "identification" in res:
        ident = res["identification"]
        names = [label for label, _ in _rows(res)]
        blocks = [ident["overall"], *ident["systems"].values()]
        est = [b["accuracy"]["estimate"] for b in blocks]
        lo = [b["accuracy"]["ci_low"] for b in blocks]
        hi = [b["accuracy"]["ci_high"] for b in blocks]
        blo = [b.get("bootstrap", {}).get("ci_low", float("nan")) for b in blocks]
        bhi = [b.get("bootstrap", {}).get("ci_high", float("nan")) for b in blocks]
        fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.55 * len(names)))
        y = list(range(len(names)))[::-1]
        m = res["margin"]
        ax.axvspan(0.5 - m, 0.5 + m, color="#dde8f6", label=f"equivalence margin ±{m:g}")
        ax.axvline(0.5, color="#777", ls="--", lw=1, label="chance")
        ax.errorbar(est, [v + 0.12 for v in y], xerr=[[e - l for e, l in zip(est, lo)], [h - e for e, h in zip(est, hi)]],
                    fmt="o", color="#1f5fbf", capsize=3, label="accuracy, Wilson 95%")
        ax.errorbar(est, [v - 0.12 for v in y], xerr=[[max(0, e - l) for e, l in zip(est, blo)],
                                                      [max(0, h - e) for e, h in zip(est, bhi)]],
                    fmt="s", color="#c0504d", ms=4, capsize=3, label="cluster bootstrap 95%")
        mix = [b.get("mixed") or {} for b in blocks]
        mx = [(v, m["accuracy"], m["ci_low"], m["ci_high"]) for v, m in zip(y, mix) if m.get("estimable")]
        if mx:
            ax.errorbar([e for _, e, _, _ in mx], [v for v, *_ in mx],
                        xerr=[[e - lo for _, e, lo, _ in mx], [hi - e for _, e, _, hi in mx]],
                        fmt="D", color="#2e7d32", ms=4, capsize=3, label="mixed model 95% (typical listener)")
        ax.set_yticks(y, [f"{n} (n={b['n']})" for n, b in zip(names, blocks)])
        ax.set_xlim(0, 1)
        ax.set_xlabel("identification accuracy (AI clip picked / origin named correctly)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        out.append(("Identification accuracy", _png(fig)))
        acc = list(ident["per_participant_accuracy"].values())
        if acc:
            fig, ax = plt.subplots(figsize=(6.5, 2.4))
            ax.hist(acc, bins=[i / 10 for i in range(11)], color="#1f5fbf", edgecolor="white")
            ax.axvline(0.5, color="#777", ls="--", lw=1)
            ax.set_xlabel("accuracy per participant")
            ax.set_ylabel("participants")
            out.append(("Accuracy per participant", _png(fig)))
    if "ratings" in res:
        systems = res["ratings"]["systems"]
        names = list(systems)
        fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.55 * len(names)))
        y = list(range(len(names)))[::-1]
        est = [systems[n]["mean"] for n in names]
        ax.errorbar(est, y, xerr=[[e - systems[n]["ci_low"] for e, n in zip(est, names)],
                                  [systems[n]["ci_high"] - e for e, n in zip(est, names)]],
                    fmt="o", color="#1f5fbf", capsize=3)
        ax.set_yticks(y, [f"{n} (n={systems[n]['n']})" for n in names])
        scale = (0, 100) if res["design"] == "mushra" else (1, 5)
        ax.set_xlim(*scale)
        ax.set_xlabel("MUSHRA score (mean, 95% t interval)" if res["design"] == "mushra" else "MOS (mean, 95% t interval)")
        out.append(("Scores by system", _png(fig)))
        pairs = [r for r in res["ratings"].get("pairs", []) if r["listeners"] > 1]
        if pairs:  # a forest plot of the paired differences, significant ones (Holm) filled
            fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.4 * len(pairs)))
            y = list(range(len(pairs)))[::-1]
            for v, r in zip(y, pairs):
                filled = r.get("p_holm", 1.0) < res["alpha"]
                ax.errorbar([r["mean"]], [v], xerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]], fmt="o",
                            color="#1f5fbf", mfc="#1f5fbf" if filled else "white", capsize=3)
            ax.axvline(0, color="#777", ls="--", lw=1)
            ax.set_yticks(y, [f"{r['a']} − {r['b']}" for r in pairs])
            ax.set_xlabel(f"mean difference per listener, 95% t interval (filled: Holm p < {res['alpha']:g})")
            out.append(("Paired differences between systems", _png(fig)))
    return out


def _pooled_p(block: dict) -> float:
    """The pooled test's p: in single-stimulus designs Fisher's test of answer against origin (accuracy against
    0.5 would count a lean towards one answer as skill), else the exact binomial test against 0.5."""
    if "fisher" in block:
        return (block["fisher"] or {}).get("p_value", float("nan"))
    return block["accuracy"]["p_value"]


def _pooled_tost(res: dict, block: dict) -> dict:
    """The pooled TOST as the tables show it: none in single-stimulus designs, where equivalence of accuracy
    to 0.5 would count a lean towards one answer as skill (the mixed model's TOST is the one there)."""
    return {"p": None, "equivalent": None} if res["design"] == "single" else block["tost"]


def _rows(res: dict) -> list[tuple[str, dict]]:
    """``(label, block)`` of the identification table. In single-stimulus designs a system's row holds its
    trials and the human ones (``sysA vs human``), and the human row alone is the correct-rejection rate."""
    ident = res["identification"]
    if res["design"] != "single":
        return [("overall", ident["overall"]), *ident["systems"].items()]
    return [("overall", ident["overall"]), *((f"{name} vs human" if name != "human" else
                                               "human (correct rejections)", b) for name, b in ident["systems"].items())]


def _fmt(x, d=3) -> str:
    import math

    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:.{d}g}" if abs(x) < 1e-3 and x else f"{x:.{d}f}")


def decision(block: dict, alpha: float) -> tuple[str, str]:
    """``(conclusion, how)`` for one identification block: the conclusion is ``above chance``, ``below chance``,
    ``equivalent`` (to chance within the margin) or ``inconclusive``; from the mixed model where it could be
    fitted, else from the pooled exact tests (``how`` says which, and why)."""
    if block.get("n") == 0:
        return "inconclusive", "no answers to analyse"
    m = block.get("mixed") or {}
    if m.get("estimable"):
        how, above, p = "mixed model", m["accuracy"] > 0.5, m["p_value"]
        equivalent = bool((m["tost"] or {}).get("equivalent"))  # None: not computed, the test against chance decided
    elif m and not m.get("fallback", True):
        return "inconclusive", f"mixed model not fitted: {m['reason']}"
    elif block.get("fisher"):  # single stimulus: the pooled test of answer against origin ignores a lean
        f = block["fisher"]
        how = f"pooled Fisher exact test of answer against origin; mixed model not fitted: {m.get('reason')}"
        above, p, equivalent = f["odds_ratio"] > 1, f["p_value"], False
    else:
        how = "pooled exact binomial tests" + (f"; mixed model not fitted: {m['reason']}" if m else "")
        above, p = block["accuracy"]["estimate"] > 0.5, block["accuracy"]["p_value"]
        equivalent = block["tost"]["equivalent"]
    if p < alpha:
        return ("above chance" if above else "below chance"), how
    return ("equivalent" if equivalent else "inconclusive"), how


_SAID = {"below chance": "below chance (listeners systematically take one origin for the other)",
         "equivalent": "equivalent to chance within the margin"}


def verdict(block: dict, margin: float, alpha: float) -> str:
    """The overall conclusion as the report's last line (see :func:`decision`)."""
    return _verdict_text(block, *decision(block, alpha), margin, alpha)


def _verdict_text(block: dict, conclusion: str, how: str, margin: float, alpha: float) -> str:
    said = _SAID.get(conclusion, conclusion)
    m = block.get("mixed") or {}
    if conclusion == "above chance" and m.get("estimable") and (m["tost"] or {}).get("equivalent"):
        said += ", yet within the equivalence margin"  # detectable, but by less than the margin
    return f"overall: {said} ({how}; TOST margin ±{margin:g}, alpha {alpha:g})"


def _text(res: dict) -> list[str]:
    p = res["participants"]
    lines = [f"{res['experiment']} ({res['design']}): {p['total']} participants, {p['completed']} completed, "
             f"{p['included']} included, {p['excluded']} excluded; {res['trials_used']} trials analysed"]
    for e in res["exclusions"]:
        lines.append(f"  excluded {e['participant']} ({e['external_id'] or '-'}): {'; '.join(e['reasons'])}")
    lines.append(res["audit"])
    if "identification" in res:
        ident = res["identification"]
        w = max(16, *(len(label) for label, _ in _rows(res)))
        if res["design"] == "single":
            lines.append("single stimulus: a system's row holds its trials and the human ones (is it told apart from "
                         "them?); the human row alone is the rate of human stimuli called human")
        lines.append(f"{'system':<{w}} {'n':>5} {'acc':>6} {'Wilson 95%':>15} "
                     f"{'p(Fisher)' if res['design'] == 'single' else 'p(binom)':>9} {'TOST p':>8} "
                     f"{'boot 95%':>15} {'d-prime':>7} {'c':>6}")
        for name, b in _rows(res):
            a, t, bo, sdt = b["accuracy"], _pooled_tost(res, b), b.get("bootstrap", {}), b.get("sdt", {})
            lines.append(f"{name:<{w}} {b['n']:>5} {_fmt(a['estimate']):>6} "
                         f"{'[' + _fmt(a['ci_low']) + ', ' + _fmt(a['ci_high']) + ']':>15} {_fmt(_pooled_p(b)):>9} "
                         f"{_fmt(t['p']):>8} {'[' + _fmt(bo.get('ci_low')) + ', ' + _fmt(bo.get('ci_high')) + ']':>15} "
                         f"{_fmt(sdt.get('dprime'), 2):>7} {_fmt(sdt.get('c'), 2):>6}")
        mixed = [(name, b["mixed"]) for name, b in _rows(res)
                 if b.get("mixed")]
        if mixed:
            lines.append("mixed-effects logistic model (random listener and clip intercepts; accuracy of a typical "
                         + ("unbiased " if res["design"] == "single" else "") + "listener on a typical clip):")
            lines.append(f"{'system':<{w}} {'acc':>6} {'95% profile':>15} {'p(LRT)':>9} {'TOST p':>8} "
                         f"{'sd listener':>11} {'sd clip':>7} {'listeners 10-90%':>16}")
            for name, m in mixed:
                if m["estimable"]:
                    lines.append(f"{name:<{w}} {_fmt(m['accuracy']):>6} "
                                 f"{'[' + _fmt(m['ci_low']) + ', ' + _fmt(m['ci_high']) + ']':>15} "
                                 f"{_fmt(m['p_value']):>9} {_fmt(m['tost']['p']):>8} {_fmt(m['sd_participant'], 2):>11} "
                                 f"{_fmt(m['sd_item'], 2):>7} "
                                 f"{_fmt(m['accuracy_listeners_p10_p90'][0], 2) + '-' + _fmt(m['accuracy_listeners_p10_p90'][1], 2):>16}"
                                 + (f"  lean towards 'AI' {m['lean_towards_ai']:+.2f}" if "lean_towards_ai" in m else ""))
                else:
                    lines.append(f"{name:<{w}} not fitted: {m['reason']}")
        lines.append(ident["verdict"]["text"])
    if "ratings" in res:
        for name, s in res["ratings"]["systems"].items():
            lines.append(f"{name:<18} n={s['n']:<5} mean {_fmt(s['mean'], 4)}  95% CI {_t_interval(s)}  "
                         f"bootstrap [{_fmt(s['bootstrap']['ci_low'], 4)}, "
                         f"{_fmt(s['bootstrap']['ci_high'], 4)}]")
        if res["ratings"].get("pairs"):
            lines.append("paired comparisons (per-listener mean differences, Wilcoxon signed-rank, Holm-corrected):")
            for r in res["ratings"]["pairs"]:
                boot = r.get("bootstrap")
                lines.append(f"  {r['a']} - {r['b']}: {_signed(r['mean'])} {_t_interval(r)}, "
                             f"{r['listeners']} listeners, p {_fmt(r['p_value'])}, "
                             f"Holm p {_fmt(r.get('p_holm'))}"
                             + (f", bootstrap [{_fmt(boot['ci_low'], 4)}, {_fmt(boot['ci_high'], 4)}]" if boot else "")
                             + (f" (with {r['listeners']} listeners p cannot go below {r['smallest_possible_p']:.3g})"
                                if r["smallest_possible_p"] >= res["alpha"] else ""))
    return lines


def _signed(x) -> str:
    return _fmt(x, 4) if x != x or x < 0 else "+" + _fmt(x, 4)


def _html(res: dict, plots: list[tuple[str, str]]) -> str:
    # Long on purpose: a linear page template, one section after another; nothing in it branches
    # far.
    from html import escape

    p = res["participants"]
    parts = [f"<h1>Listening test report: {escape(res['experiment'])}</h1>",
             f"<p>Design <b>{escape(res['design'])}</b>. {p['total']} participants, {p['completed']} completed, "
             f"<b>{p['included']} included</b>, {p['excluded']} excluded. {res['trials_used']} trials analysed. "
             f"Generated {escape(res['generated_at'])}.</p>"]
    if "identification" in res:
        ident = res["identification"]
        rows = []
        for name, b in _rows(res):
            a, t, bo, sdt = b["accuracy"], _pooled_tost(res, b), b.get("bootstrap", {}), b.get("sdt", {})
            rows.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in [
                name, b["n"], _fmt(a["estimate"]), f"[{_fmt(a['ci_low'])}, {_fmt(a['ci_high'])}]", _fmt(_pooled_p(b)),
                _fmt(t["p"]), {True: "yes", False: "no"}.get(t["equivalent"], "–"), f"[{_fmt(bo.get('ci_low'))}, {_fmt(bo.get('ci_high'))}]",
                _fmt(sdt.get("dprime"), 2), _fmt(sdt.get("c"), 2)]) + "</tr>")
        parts.append("<h2>Identification</h2><table><tr><th>system</th><th>n</th><th>accuracy</th><th>Wilson 95%</th>"
                     + ("<th>p (Fisher exact, answer vs origin)</th>" if res["design"] == "single" else
                        "<th>p (exact binomial vs 0.5)</th>") + "<th>TOST p</th>"
                     f"<th>equivalent (±{res['margin']:g})</th><th>cluster bootstrap 95%</th><th>d′</th><th>c</th></tr>"
                     + "".join(rows) + "</table>")
        rows = []
        for name, b in _rows(res):
            m = b.get("mixed")
            if not m:
                continue
            lean = [_fmt(m.get("lean_towards_ai"), 2)] if res["design"] == "single" else []
            cells = ([name, _fmt(m["accuracy"]), f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]", _fmt(m["p_value"]),
                      _fmt(m["tost"]["p"]), "yes" if m["tost"]["equivalent"] else "no", _fmt(m["sd_participant"], 2),
                      _fmt(m["sd_item"], 2), _fmt(m["accuracy_population"]),
                      "–".join(_fmt(x, 2) for x in m["accuracy_listeners_p10_p90"]), *lean] if m["estimable"] else
                     [name, f"not fitted: {m['reason']}", *[""] * (8 + len(lean))])
            rows.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in cells) + "</tr>")
        if rows:
            parts.append("<h3>Mixed-effects logistic model</h3><table><tr><th>system</th><th>accuracy (typical "
                         "listener, typical clip)</th><th>95% profile interval</th><th>p (likelihood ratio vs 0.5)</th>"
                         f"<th>TOST p</th><th>equivalent (±{res['margin']:g})</th><th>sd listener (logit)</th>"
                         "<th>sd clip (logit)</th><th>accuracy averaged over listeners and clips</th>"
                         "<th>10th–90th percentile listener</th>"
                         + ("<th>lean towards 'AI' (logit)</th>" if res["design"] == "single" else "") + "</tr>"
                         + "".join(rows) + "</table>")
        parts.append(f"<p class='verdict'>{escape(ident['verdict']['text'])}</p>")
        if "by_confidence" in ident:
            rows = "".join(f"<tr><td>{c}</td><td>{b['n']}</td><td>{_fmt(b['estimate'])}</td>"
                           f"<td>[{_fmt(b['ci_low'])}, {_fmt(b['ci_high'])}]</td></tr>"
                           for c, b in ident["by_confidence"].items())
            parts.append("<h3>Accuracy by stated confidence</h3><table><tr><th>confidence</th><th>n</th>"
                         f"<th>accuracy</th><th>Wilson 95%</th></tr>{rows}</table>")
    if "ratings" in res:
        rows = []
        for name, s in res["ratings"]["systems"].items():
            rows.append(f"<tr><td>{escape(name)}</td><td>{s['n']}</td><td>{_fmt(s['mean'], 4)}</td>"
                        f"<td>{_t_interval(s)}</td>"
                        f"<td>[{_fmt(s['bootstrap']['ci_low'], 4)}, {_fmt(s['bootstrap']['ci_high'], 4)}]</td></tr>")
        parts.append("<h2>Scores</h2><table><tr><th>system</th><th>n</th><th>mean</th><th>95% t interval</th>"
                     "<th>cluster bootstrap 95%</th></tr>" + "".join(rows) + "</table>")
        rows = []
        for r in res["ratings"].get("pairs", []):
            boot = r.get("bootstrap")
            rows.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in [
                f"{r['a']} − {r['b']}", r["listeners"], _signed(r["mean"]), _t_interval(r),
                _fmt(r["p_value"]), _fmt(r.get("p_holm")),
                f"[{_fmt(boot['ci_low'], 4)}, {_fmt(boot['ci_high'], 4)}]" if boot else "–"]) + "</tr>")
        if rows:
            parts.append("<h3>Paired comparisons</h3><table><tr><th>difference</th><th>listeners</th><th>mean</th>"
                         "<th>95% t interval</th><th>p (Wilcoxon signed-rank)</th><th>p (Holm)</th>"
                         "<th>cluster bootstrap 95% (same-trial differences)</th></tr>" + "".join(rows) + "</table>")
    for title, uri in plots:
        parts.append(f"<figure><img src='{uri}' alt='{escape(title)}'><figcaption>{escape(title)}</figcaption></figure>")
    ex = "".join(f"<tr><td>{e['participant']}</td><td>{escape(e['external_id'] or '–')}</td><td>{e['screening']}</td>"
                 f"<td>{e['catch']}</td><td>{escape('; '.join(e['reasons']))}</td></tr>" for e in res["exclusions"])
    parts.append(f"<h2>Exclusions ({len(res['exclusions'])})</h2>"
                 + ("<table><tr><th>participant</th><th>external id</th><th>headphone check</th><th>catch</th>"
                    f"<th>reasons</th></tr>{ex}</table>" if ex else "<p>None.</p>"))
    li = res["listening"]
    parts.append(f"<h2>Listening behaviour</h2><p>Median plays per stimulus {_fmt(li['median_plays'], 2)}, median time "
                 f"heard {_fmt(li['median_listened_s'], 2)} s, median time per trial {_fmt(li['median_trial_s'], 2)} s.</p>")
    parts.append(
        "<h2>Methods</h2><p>Accuracy: exact two-sided binomial test against 0.5 and Wilson score intervals, which treat "
        "every trial as independent. Equivalence (\"indistinguishable\"): two one-sided exact binomial tests (TOST) "
        f"against 0.5 ± {res['margin']:g} at alpha {res['alpha']:g}. d′ and criterion c: signal detection with the "
        "log-linear correction; in 2AFC, c is a bias towards answering A. Because listeners differ in skill and clips in "
        "difficulty, answers are not independent, and the pooled tests above are too often significant. The verdict "
        "therefore comes from a mixed-effects logistic regression, logit P(correct) = b0 + u[listener] + v[clip] with "
        "normal random intercepts, fitted by maximum likelihood with the Laplace approximation (as lme4's glmer): a "
        "likelihood-ratio test of b0 = 0, profile-likelihood intervals, and TOST from the two one-sided signed-root "
        "tests (single-stimulus designs add the stimulus origin as a fixed effect, so that a lean towards answering "
        "'AI' or 'human' is not counted as skill when the two origins are not equally many); where it cannot be "
        "fitted (every answer right or wrong, say) the verdict falls back to the pooled exact tests (single-stimulus: "
        "Fisher's test of answer against origin) and says so, and where no test can speak for clips in general "
        f"(one clip) it is inconclusive. A two-way cluster bootstrap over participants and items ({res['n_boot']} resamples, "
        "percentile interval) gives a model-free interval for the average accuracy. Ratings: means with Student-t "
        "intervals; systems compared pairwise by each listener's mean difference (Student-t interval, Wilcoxon "
        "signed-rank test, Holm correction over all pairs; for MUSHRA also a cluster bootstrap of the differences "
        "within each trial); MUSHRA assessors who "
        "rate the hidden reference below 90 for more than 15% of items are excluded (ITU-R BS.1534-3). Participants who "
        "did not finish, failed the headphone check or a catch trial, or answered a step whose audio the server "
        f"had not sent them (less than {FETCHED_SHARE:.0%} of a file before the answer) are excluded and listed "
        f"above.</p><p>{escape(res['audit'])}</p>")
    style = ("body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 16px;color:#1b1f24}"
             "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #d6dbe1;padding:4px 8px;"
             "text-align:left;font-size:14px}th{background:#f1f4f8}figure{margin:12px 0}.verdict{font-weight:600}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Report: {escape(res['experiment'])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _strict(x):
    """``x`` with NaN and infinities (an empty block's accuracy, an undefined interval) as None: report.json
    stays strict JSON, which JavaScript's JSON.parse and jq require."""
    import math

    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def make_report(exp_dir, out_dir=None, margin: float | None = None, alpha: float = 0.05, n_boot: int = 2000,
                include_incomplete: bool = False, apply_exclusions: bool = True) -> dict:
    """Analyse EXP_DIR and write report.html (plots embedded) and report.json (atomically)."""
    import json
    import time
    from pathlib import Path

    from audiogen.errors import AudiogenError
    from audiogen.files import atomic_write_text, make_dir

    if margin is not None and not 0 < margin < 0.5:
        raise AudiogenError("--margin must be in (0, 0.5)")
    res = analyse(exp_dir, margin, alpha, n_boot, include_incomplete, apply_exclusions)
    res["generated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = Path(out_dir) if out_dir else Path(exp_dir) / "report"
    make_dir(out)
    text = _text(res)
    summary = _strict(res)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=1, default=str, allow_nan=False))
    atomic_write_text(out / "report.html", _html(res, _plots(res)))
    text.append(f"report: {out / 'report.html'}")
    return {"summary": summary, "text": text, "html": out / "report.html"}
