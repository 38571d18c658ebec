"""Debian's chromium (headless, Playwright) through the whole participant flow, then the admin export.

The test plays every sound (and waits until the page has counted real playback time), answers
each step, reloads the page halfway to resume, uses the keyboard on one trial, reads the
completion code, downloads the CSV export from the admin page, and checks that the database
holds exactly the answers it gave.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest

from audiogen.listening import experiment as E
from listening_helpers import experiment_yaml, free_port, start_server

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow]
# AUDIOGEN_SCREENSHOTS=DIR keeps the participant-page screenshot (docs/img is made this way)
SHOTS = os.environ.get("AUDIOGEN_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run 'bash install.sh' (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def _play_all(page, card):
    """Play every sound on the step until the page has counted >= 0.25 s of it, then stop it."""
    for btn in card.query_selector_all("button.play"):
        sid = btn.get_attribute("data-sid")
        btn.click()
        page.wait_for_function(
            "sid => Number(document.querySelector(`.player[data-sid='${sid}']`).dataset.listened || 0) >= 0.25",
            arg=sid, timeout=15000)
        if "playing" in (card.query_selector(f".player[data-sid='{sid}']").get_attribute("class") or ""):
            btn.click()


def _answer(page, step_no: int, keyboard: bool = False) -> dict:
    """Answer the step on screen like a participant; returns the response the server should store."""
    card = page.wait_for_selector("section.card[data-slot]")
    design, kind = card.get_attribute("data-design"), card.get_attribute("data-kind")
    if keyboard and design == "2afc":
        heard = "i => Number(document.querySelectorAll('.player')[i].dataset.listened || 0) >= 0.25"
        page.keyboard.press("a")  # shortcuts: a/b play (or stop) clip A/B
        page.wait_for_function(heard, arg=0, timeout=15000)
        page.keyboard.press("b")
        page.wait_for_function(heard, arg=1, timeout=15000)
        page.keyboard.press("b")
        page.focus("input[name=choice][value=B]")
        page.keyboard.press("Space")
        page.focus("input[name='q-familiar'][value=no]")
        page.keyboard.press("Space")
        response = {"choice": "B", "questions": {"familiar": "no"}}
        page.wait_for_selector("#next:not([disabled])")
        page.focus("#next")
        page.keyboard.press("Enter")
        return {"slot": int(card.get_attribute("data-slot")), "kind": kind, "response": response}
    _play_all(page, card)
    if design == "screening":
        v = 1 + step_no % 3
        page.check(f"input[name=choice][value='{v}']")
        response = {"choice": v}
    elif design == "calibration":
        page.check("#calibrated")
        response = {"confirmed": True}
    elif design == "count":
        page.check("input[name=count][value='3']")
        response = {"count": 3}
    elif design == "2afc":
        v = "AB"[step_no % 2]
        page.check(f"input[name=choice][value={v}]")
        response = {"choice": v}
    elif design == "single":
        v = ["human", "ai"][step_no % 2]
        page.check(f"input[name=origin][value={v}]")
        page.check("input[name=confidence][value='4']")
        response = {"origin": v, "confidence": 4}
    elif design == "mos":
        page.check("input[name=rating][value='4']")
        response = {"rating": 4}
    else:
        ratings = {}
        for i, slider in enumerate(card.query_selector_all("input[type=range]")):
            slider.fill(str(20 + 15 * i))
            ratings[slider.get_attribute("data-sid")] = 20 + 15 * i
        response = {"ratings": ratings}
    if kind == "trial" and card.query_selector("input[name='q-familiar']"):
        page.check("input[name='q-familiar'][value=yes]")
        response["questions"] = {"familiar": "yes"}
    page.wait_for_selector("#next:not([disabled])")
    page.click("#next")
    return {"slot": int(card.get_attribute("data-slot")), "kind": kind, "response": response}


def _run_flow(browser, base: str, design: str, shots: str | None = None) -> tuple[list[dict], str, object]:
    ctx = browser.new_context(viewport={"width": 900, "height": 760})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/?PROLIFIC_PID=pw-{design}")
    page.click("#consent-yes")
    given, n = [], 0
    while True:
        page.wait_for_selector("section.card[data-slot], #done")
        if page.query_selector("#done"):
            break
        slot = int(page.get_attribute("section.card[data-slot]", "data-slot"))
        if n == 6:  # a reload halfway: the session resumes at the same step
            page.reload()
            page.wait_for_selector(f"section.card[data-slot='{slot}']")
        kind = page.get_attribute("section.card", "data-kind")
        if shots and kind == "trial" and design == "2afc" and not any(g["kind"] == "trial" for g in given):
            card = page.query_selector("section.card")
            _play_all(page, card)
            page.check("input[name=choice][value=A]")
            page.screenshot(path=str(Path(shots) / "listen_participant.png"))
            page.reload()  # back to the untouched step (the answer was not submitted)
            page.wait_for_selector(f"section.card[data-slot='{slot}']")
        given.append(_answer(page, n, keyboard=(design == "2afc" and kind == "trial"
                                                and sum(g["kind"] == "trial" for g in given) == 1)))
        page.wait_for_function("s => !document.querySelector(`section.card[data-slot='${s}']`)", arg=slot)
        n += 1
    code = page.text_content("#completion-code")
    assert not errors, errors
    return given, code, page


def _db_answers(exp_dir: Path, external_id: str) -> dict:
    """The stored answers by slot, with stimulus ids put back into the session's own (as the page saw them)."""
    con = sqlite3.connect(exp_dir / "listen.db")
    rows = con.execute("SELECT a.slot, a.kind, a.response, a.plays, a.listened FROM answers a JOIN participants p "
                       "ON p.token = a.participant WHERE p.external_id = ? ORDER BY a.slot", (external_id,)).fetchall()
    plan = json.loads(con.execute("SELECT plan FROM participants WHERE external_id = ?", (external_id,)).fetchone()[0])
    con.close()
    out = {}
    for slot, kind, response, plays, listened in rows:
        st = plan["steps"][slot]
        pub = dict(zip(st["stimuli"], st["pub"]))
        response = json.loads(response)
        if "ratings" in response:
            response["ratings"] = {pub[k]: v for k, v in response["ratings"].items()}
        out[slot] = {"kind": kind, "response": response, "plays": json.loads(plays), "listened": json.loads(listened)}
    return out


def test_participant_flow_2afc_then_admin_export(browser, tmp_path):
    src = experiment_yaml(tmp_path / "src", extra="questions:\n  - {id: familiar, text: 'Have you heard this before?', "
                          "options: ['yes', 'no'], required: true}")
    exp_dir = tmp_path / "exp"
    E.create_experiment(src, exp_dir, log=lambda *_: None)
    port = free_port()
    proc = start_server(exp_dir, port)
    try:
        base = f"http://127.0.0.1:{port}"
        given, code, page = _run_flow(browser, base, "2afc", SHOTS)
        assert code == "CODE123"
        assert page.get_attribute("#return-link", "href") == "https://example.org/done?cc=CODE123"

        # the database holds exactly the answers given, with real play counts and listening time
        db = _db_answers(exp_dir, "pw-2afc")
        assert sorted(db) == sorted(g["slot"] for g in given) == list(range(len(given)))
        for g in given:
            row = db[g["slot"]]
            assert row["kind"] == g["kind"] and row["response"] == g["response"], g
            assert row["plays"] and all(v >= 1 for v in row["plays"].values())
            assert all(v >= 0.2 for v in row["listened"].values()), row
        plan_kinds = [s["kind"] for s in E.participant_plan(E.read_manifest(exp_dir), 0)["steps"]]
        assert [g["kind"] for g in given] == plan_kinds

        # admin: the token from create, live progress, CSV export through the page
        page.goto(f"{base}/admin")
        page.fill("#token", "wrong-token")
        page.click("#login-btn")
        page.wait_for_selector("#status:has-text('Wrong admin token')")
        page.fill("#token", E.read_admin_token(exp_dir))
        page.click("#login-btn")
        page.wait_for_selector("#panel:not([hidden])")
        assert page.text_content("td[data-key=completed]") == "1"
        assert page.text_content("td[data-key=answers]") == str(len(given))
        with page.expect_download() as dl:
            page.click("#export-csv")
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert len(rows) == len(given)
        for g, r in zip(given, rows):
            assert int(r["slot"]) == g["slot"] and json.loads(r["response"]) == g["response"]
            assert r["participant"] == "P0000" and r["external_id"] == "pw-2afc"
        trials = [r for r in rows if r["kind"] == "trial"]
        assert all(r["ai_position"] in "AB" and r["system"] in ("sysA", "sysB") for r in trials)
        # a real browser fetches what it plays: the server saw every answer's audio sent first
        assert all(r["audio_fetched"] == "True" for r in rows), [r["audio_fetched"] for r in rows]
        page.context.close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("design", ["single", "mushra", "mos"])
def test_participant_flow_other_designs(browser, tmp_path, design):
    src = experiment_yaml(tmp_path / "src", design, n_human=2, n_gen=2)
    exp_dir = tmp_path / "exp"
    E.create_experiment(src, exp_dir, log=lambda *_: None)
    port = free_port()
    proc = start_server(exp_dir, port)
    try:
        given, code, page = _run_flow(browser, f"http://127.0.0.1:{port}", design)
        assert code == "CODE123"
        db = _db_answers(exp_dir, f"pw-{design}")
        assert {s: (r["kind"], r["response"]) for s, r in db.items()} == \
               {g["slot"]: (g["kind"], g["response"]) for g in given}
        assert any(r["kind"] == "trial" for r in db.values())
        page.context.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_page_is_usable_on_a_phone_sized_screen(browser, tmp_path):
    src = experiment_yaml(tmp_path / "src", "mushra", n_human=1, n_gen=2)
    exp_dir = tmp_path / "exp"
    E.create_experiment(src, exp_dir, log=lambda *_: None)
    port = free_port()
    proc = start_server(exp_dir, port)
    try:
        ctx = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#consent-yes")
        page.wait_for_selector("section.card[data-slot]")
        # nothing wider than the screen, buttons big enough to tap
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
        for box in [b.bounding_box() for b in page.query_selector_all("button")]:
            assert box["height"] >= 40
        ctx.close()
    finally:
        proc.terminate()
        proc.wait(10)
