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


def answer_rows(manifest: dict, participants: list[dict], answers: list[dict]) -> list[dict]:
    """Answers joined with their step's truth: one flat dict per answer (the CSV/JSON export)."""
    plans = {p["token"]: p for p in participants}
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
        })
    return rows
