"""Simulated participants over HTTP: load tests, crash tests, and checking the database after them.

Each simulated participant does what the browser does: create a session, consent, fetch
each step's audio (two range requests), submit an answer with a fresh client-side id
(sometimes twice, as a retry after a lost acknowledgement would), complete. On a
connection error it waits, re-reads its session (resume) and retries the same answer id,
so a server killed mid-session loses nothing that it acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SimResult:
    index: int
    token: str = ""
    acked: dict = field(default_factory=dict)  # slot -> (answer_id, response)
    duplicates_seen: int = 0
    retries: int = 0
    completed: bool = False
    code: str | None = None


def simulated_response(step: dict, rng: random.Random) -> dict:
    d = step["design"]
    if d == "screening":
        return {"choice": rng.randint(1, 3)}
    if d == "calibration":
        return {"confirmed": True}
    if d == "count":
        return {"count": rng.randint(2, 5)}
    if d == "2afc":
        return {"choice": rng.choice("AB")}
    if d == "single":
        return {"origin": rng.choice(["human", "ai"]), "confidence": rng.randint(1, 5)}
    if d == "mos":
        return {"rating": rng.randint(1, 5)}
    return {"ratings": {s: rng.randint(0, 100) for s in step["stimuli"]}}


class ServerGaveUp(RuntimeError):
    """The server did not answer a request within its retry time."""


async def _request(client, lat: dict, label: str, method: str, url: str, retry_for: float, res: SimResult, **kw):
    """One request, retried on connection errors and 429/5xx until ``retry_for`` seconds pass."""
    import httpx

    deadline = time.monotonic() + retry_for
    while True:
        t0 = time.perf_counter()
        try:
            r = await client.request(method, url, **kw)
            if r.status_code not in (429, 500, 502, 503):
                lat.setdefault(label, []).append(time.perf_counter() - t0)
                return r
        except (httpx.TransportError, httpx.TimeoutException):
            pass
        if time.monotonic() > deadline:
            raise ServerGaveUp(f"{label} {url}: no answer after {retry_for:.0f}s of retries")
        res.retries += 1
        await asyncio.sleep(0.2 + random.random() * 0.3)


async def simulate_participant(client, index: int, lat: dict, seed: int = 0, dup_rate: float = 0.1,
                               think_s: float = 0.0, retry_for: float = 60.0, resume: SimResult | None = None,
                               stop_after: int | None = None) -> SimResult:
    """One participant's whole session; ``resume`` continues an earlier one (as a reopened browser
    tab does, from its stored token); ``stop_after`` answers, it walks away (tab closed)."""
    rng = random.Random(seed * 100_003 + index + (7 if resume else 0))
    res = resume or SimResult(index)
    if resume:
        r = await _request(client, lat, "session", "GET", "/api/session", retry_for, res,
                           headers={"X-Session": res.token})
    else:
        r = await _request(client, lat, "session", "POST", "/api/session", retry_for, res,
                           json={"consent": True, "external_id": f"sim-{index}"})
    r.raise_for_status()
    s = r.json()
    if resume and set(s["answered"]) != set(res.acked):
        raise AssertionError(f"resumed session {index}: server has slots {s['answered']}, acked {sorted(res.acked)}")
    res.token = s["token"]
    hdr = {"X-Session": res.token}
    answered = set(s["answered"])
    for step in s["steps"]:
        if step["slot"] in answered:
            continue
        if stop_after is not None and len(res.acked) >= stop_after:
            return res
        for sid in step["stimuli"]:  # the whole file, in two ranges as a media element may ask for it
            for rng_header in ("bytes=0-16383", "bytes=16384-"):
                a = await _request(client, lat, "audio", "GET", f"/audio/{sid}", retry_for, res,
                                   headers={"Range": rng_header})
                assert a.status_code == 206, a.status_code
        if think_s:
            await asyncio.sleep(think_s * rng.random())
        body = {"answer_id": uuid.uuid4().hex, "slot": step["slot"], "response": simulated_response(step, rng),
                "plays": {x: 1 for x in step["stimuli"]}, "listened": {x: 1.0 for x in step["stimuli"]},
                "client_ms": rng.randint(1000, 20000)}
        for attempt in range(2 if rng.random() < dup_rate else 1):
            r = await _request(client, lat, "answer", "POST", "/api/answer", retry_for, res, headers=hdr, json=body)
            if r.status_code == 409:  # answered before a crash with a lost ack: take the server's word
                break
            r.raise_for_status()
            st = r.json()["status"]
            res.duplicates_seen += st == "duplicate"
            res.acked[step["slot"]] = (body["answer_id"], body["response"])
    r = await _request(client, lat, "complete", "POST", "/api/complete", retry_for, res, headers=hdr)
    r.raise_for_status()
    res.completed, res.code = True, r.json()["completion_code"]
    return res


async def run_participants(base_url: str, n: int, seed: int = 0, dup_rate: float = 0.1, think_s: float = 0.0,
                           retry_for: float = 60.0) -> tuple[list[SimResult], dict, float]:
    """``n`` participants at once against ``base_url``; returns (results, latencies by label, wall s)."""
    import httpx

    lat: dict[str, list[float]] = {}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(simulate_participant(client, i, lat, seed, dup_rate, think_s, retry_for)
                                         for i in range(n)))
        wall = time.perf_counter() - t0
    return list(results), lat, wall


def percentiles(lat: dict[str, list[float]]) -> dict:
    out = {}
    every = [x for v in lat.values() for x in v]
    for label, xs in [("all", every), *sorted(lat.items())]:
        a = np.asarray(xs) * 1000
        out[label] = {"n": int(a.size), **{f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)},
                      "max_ms": round(float(a.max()), 2)}
    return out


def check_database(db_path, results: list[SimResult]) -> dict:
    """Every acknowledged answer is in the database, exactly once, with the same content; nothing else is."""
    import sqlite3

    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows = con.execute("SELECT participant, slot, answer_id, response FROM answers").fetchall()
    con.close()
    db = {}
    dup_slots = 0
    for p, slot, aid, resp in rows:
        if (p, slot) in db:
            dup_slots += 1
        db[(p, slot)] = (aid, json.loads(resp))
    acked = {(r.token, slot): v for r in results for slot, v in r.acked.items()}
    lost = [k for k, v in acked.items() if db.get(k) != (v[0], v[1])]
    tokens = {r.token for r in results}
    extra = [k for k in db if k[0] in tokens and k not in acked]
    return {"answers_in_db": len(rows), "acknowledged": len(acked), "lost_or_changed": len(lost),
            "unacknowledged_in_db": len(extra), "duplicate_slots": dup_slots,
            "duplicate_answer_ids": len(rows) - len({r[2] for r in rows})}


def simulate_into_db(exp_dir, n: int, accuracy: dict[str, float], seed: int = 0, fail_screening: int = 0,
                     fail_catch: int = 0, fail_reference: int = 0, skill_sd: float = 0.0) -> None:
    """``n`` complete sessions written straight to EXP_DIR's database, answered from the plan's truth:
    a listener picks the AI clip (2AFC) or names the origin (single) with probability
    ``accuracy[system]`` (plus a per-listener logit offset with sd ``skill_sd``), rates MUSHRA/MOS
    by ``accuracy`` (score = 100 * p, plus noise), and passes the checks except for the first
    ``fail_screening`` (headphone check), the next ``fail_catch`` (catch trial) and the next
    ``fail_reference`` (MUSHRA: hidden reference rated 60) participants."""
    from pathlib import Path

    from audiogen.listening.db import AnswerStore
    from audiogen.listening.experiment import read_manifest

    manifest = read_manifest(exp_dir)
    store = AnswerStore(Path(exp_dir) / "listen.db", manifest, durable=False)  # a simulation
    rng = np.random.default_rng(seed)
    try:
        for i in range(n):
            token, plan = store.create_participant(f"sim-{i}", "simulated")
            skill = rng.normal(0, skill_sd)
            bad_screen = i < fail_screening
            bad_catch = fail_screening <= i < fail_screening + fail_catch
            bad_ref = fail_screening + fail_catch <= i < fail_screening + fail_catch + fail_reference
            for st in plan["steps"]:
                t, d = st["truth"], st["design"]
                if d == "screening":
                    resp = {"choice": (t["answer"] % 3) + 1 if bad_screen else t["answer"]}
                elif d == "calibration":
                    resp = {"confirmed": True}
                elif d == "count":
                    resp = {"count": t["answer"] + 1 if bad_catch else t["answer"]}
                elif st["kind"] == "practice":
                    resp = {"2afc": {"choice": "A"}, "single": {"origin": "ai", "confidence": 3}, "mos": {"rating": 3},
                            "mushra": {"ratings": {s: 50 for s in st["stimuli"]}}}[d]
                elif d in ("2afc", "single"):
                    p = min(max(accuracy.get(t["system"], 0.5), 1e-9), 1 - 1e-9)  # 0 and 1: always wrong/right
                    p = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + skill)))
                    right = rng.random() < p
                    if d == "2afc":
                        resp = {"choice": t["ai"] if right else "AB"[t["ai"] == "A"]}
                    else:
                        truth = "human" if t["origin"] == "human" else "ai"
                        resp = {"origin": truth if right else ("ai" if truth == "human" else "human"),
                                "confidence": int(rng.integers(1, 6))}
                elif d == "mos":
                    p = accuracy.get(t["system"], 0.5)
                    resp = {"rating": int(np.clip(round(1 + 4 * p + rng.normal(0, 0.7)), 1, 5))}
                else:
                    # draws in the order of the system names: the stimulus ids are random (secrets), and drawing
                    # in their order made the same seed give other ratings in every run
                    by_system = sorted(t["systems"].items(), key=lambda kv: kv[1])
                    resp = {"ratings": {s: int(np.clip(round(100 * accuracy.get(sys, 0.5) + rng.normal(0, 8)), 0, 100))
                                        for s, sys in by_system}}
                    for s, sys in by_system:
                        if sys == "hidden_reference":
                            resp["ratings"][s] = 60 if bad_ref else int(rng.integers(92, 101))
                for pos, sid in enumerate(st["stimuli"]):  # as a browser fetches it before answering
                    size = (Path(exp_dir) / "stimuli" / f"{sid}.wav").stat().st_size
                    store.record_served(token, st["slot"], pos, 0, size - 1, size)
                store.add_answer(token, uuid.uuid4().hex, st["slot"], st["kind"], resp,
                                 {s: 1 for s in st["stimuli"]}, {s: 2.0 for s in st["stimuli"]}, 5000)
            store.complete(token, "SIM")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    """``python eval/listen_loadtest.py --url URL --db EXP_DIR/listen.db``: N participants at once."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Simulated participants against a running 'audiogen listen serve' "
                                 "(start it with a high --new-sessions-per-minute and --sessions-per-ip 0: they all come from one IP). "
                                 "Prints one JSON object: latency percentiles and the database check.")
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--participants", type=int, default=200, help="concurrent participants (default: %(default)s)")
    ap.add_argument("--db", default=None, help="the experiment's listen.db, to check that no answer was lost")
    ap.add_argument("--dup-rate", type=float, default=0.1, help="share of answers sent twice (default: %(default)s)")
    ap.add_argument("--think", type=float, default=0.0, metavar="S",
                    help="each participant waits up to S seconds (uniform) before each answer (default: 0)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.participants < 1:
        ap.error(f"--participants must be at least 1, got {a.participants}")
    if not 0 <= a.dup_rate <= 1 or not a.think >= 0:
        ap.error("--dup-rate must be in [0, 1] and --think >= 0")
    try:
        results, lat, wall = asyncio.run(run_participants(a.url.rstrip("/"), a.participants, a.seed, a.dup_rate,
                                                          a.think))
    except ServerGaveUp as e:
        print(f"listen_loadtest: error: {e} (is 'audiogen listen serve' running at {a.url}?)", file=sys.stderr)
        return 1
    out = {"participants": a.participants, "think_s": a.think, "completed": sum(r.completed for r in results), "wall_s": round(wall, 2),
           "requests": sum(len(v) for v in lat.values()), "latency": percentiles(lat),
           "retries": sum(r.retries for r in results)}
    if a.db:
        out["database"] = check_database(a.db, results)
    print(json.dumps(out))
    return 0
