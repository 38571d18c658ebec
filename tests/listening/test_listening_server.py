"""The listening-test server: HTTP behaviour in-process, then load and crash tests on a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import pytest

from audiogen.listening import experiment as E
from audiogen.listening import loadtest as L
from listening_helpers import experiment_yaml, free_port, start_server


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("srv")
    E.create_experiment(experiment_yaml(d / "src", extra="questions:\n  - {id: familiar, text: 'Heard it before?', "
                                        "options: ['yes', 'no']}"), d / "out", log=lambda *_: None)
    return d / "out"


@pytest.fixture
def client(exp_dir):
    from fastapi.testclient import TestClient

    from audiogen.listening.server import ServeOptions, build_app

    with TestClient(build_app(exp_dir, ServeOptions(rate=1000, burst=1000, new_sessions_per_minute=1000))) as c:
        yield c


def _new(client, **body):
    r = client.post("/api/session", json={"consent": True, **body})
    assert r.status_code == 200, r.text
    s = r.json()
    return s, {"X-Session": s["token"]}


def _truth(client, s):
    """The session's plan as the server holds it (slot -> step with real ids and truth)."""
    return {st["slot"]: st for st in client.app.app.state.store.participant(s["token"])["plan"]["steps"]}


def test_session_shows_nothing_about_origins(client, exp_dir):
    s, h = _new(client)
    text = json.dumps(s)
    for word in ("human", "generated", "sys", "truth", "origin", "calm piano", ".flac", ".wav"):
        assert word not in text, word
    m = E.read_manifest(exp_dir)
    trial = next(st for st in s["steps"] if st["kind"] == "trial")
    sizes, headers, heads = set(), [], set()
    for sid in trial["stimuli"]:
        assert sid not in m["stimuli"]  # a per-session id, not the experiment's
        r = client.get(f"/audio/{sid}")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        sizes.add(len(r.content))
        heads.add(r.content[:44])
        headers.append({k: v for k, v in r.headers.items() if k not in ("etag", "date")})
        assert "last-modified" not in r.headers and sid in r.headers["etag"]
    assert len(sizes) == 1 and len(heads) == 1 and headers[0] == headers[1]
    real = _truth(client, s)[trial["slot"]]["stimuli"]
    assert {m["stimuli"][x]["origin"] for x in real} == {"human", "generated"}


def test_audio_supports_ranges_and_refuses_traversal_and_foreign_ids(client, exp_dir):
    s, _ = _new(client)
    trial = next(st for st in s["steps"] if st["kind"] == "trial")
    sid = trial["stimuli"][0]
    served = client.get(f"/audio/{sid}").content  # the session's own bytes: every range agrees with them
    full = (exp_dir / "stimuli" / f"{_truth(client, s)[trial['slot']]['stimuli'][0]}.wav").read_bytes()
    assert len(served) == len(full) and served[:44] == full[:44]
    r = client.get(f"/audio/{sid}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == served[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(full)}"
    r = client.get(f"/audio/{sid}", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == served[-10:]
    r = client.get(f"/audio/{sid}", headers={"Range": f"bytes={len(full)}-"})
    assert r.status_code == 416
    for bad in ("../private/manifest.json", "..%2Fprivate%2Fadmin_token", "%2e%2e/listen.db", "x" * 16):
        assert client.get(f"/audio/{bad}").status_code == 404, bad
    assert client.get("/static/../private/admin_token").status_code == 404
    assert client.get("/static/..%2Fserver.py").status_code == 404
    m = E.read_manifest(exp_dir)
    assert all(client.get(f"/audio/{x}").status_code == 404 for x in m["stimuli"])  # the experiment's ids: nothing


def test_answers_are_validated_idempotent_and_resumable(client):
    s, h = _new(client)
    trial = next(st for st in s["steps"] if st["kind"] == "trial")
    body = {"answer_id": uuid.uuid4().hex, "slot": trial["slot"], "response": {"choice": "A",
            "questions": {"familiar": "no"}}, "plays": {trial["stimuli"][0]: 2}, "listened": {trial["stimuli"][0]: 1.4}}
    for bad in ({**body, "response": {"choice": "C"}}, {**body, "slot": 999}, {**body, "answer_id": "../x"},
                {**body, "plays": {"someoneelse12345": 1}}, {**body, "response": {"choice": "A", "extra": 1}},
                {**body, "response": {"choice": "A", "questions": {"familiar": "maybe"}}}):
        r = client.post("/api/answer", headers=h, json=bad)
        assert r.status_code == 422, bad
    assert client.post("/api/answer", headers=h, json=body).json()["status"] == "stored"
    assert client.post("/api/answer", headers=h, json=body).json()["status"] == "duplicate"
    again = {**body, "answer_id": uuid.uuid4().hex, "response": {"choice": "B"}}
    assert client.post("/api/answer", headers=h, json=again).status_code == 409
    assert client.post("/api/complete", headers=h).status_code == 409  # not finished
    resumed = client.get("/api/session", headers=h).json()
    assert resumed["answered"] == [trial["slot"]] and resumed["steps"] == s["steps"]
    assert client.get("/api/session", headers={"X-Session": "A" * 24}).status_code == 401


def test_admin_needs_the_token_and_exports_csv_and_json(client, exp_dir):
    s, h = _new(client)
    step = s["steps"][0]
    client.post("/api/answer", headers=h, json={"answer_id": "abcdefgh12", "slot": 0, "response": {"choice": 2}})
    assert client.get("/api/admin/progress").status_code == 401
    assert client.get("/api/admin/progress", headers={"Authorization": "Bearer nope"}).status_code == 401
    auth = {"Authorization": f"Bearer {E.read_admin_token(exp_dir)}"}
    p = client.get("/api/admin/progress", headers=auth).json()
    assert p["participants"] >= 1 and p["answers"] >= 1
    rows = client.get("/api/admin/export.json", headers=auth).json()["answers"]
    mine = [r for r in rows if r["answer_id"] == "abcdefgh12"]
    assert len(mine) == 1 and mine[0]["kind"] == "screening" and mine[0]["stimuli"] == _truth(client, s)[0]["stimuli"][0]
    csv_text = client.get("/api/admin/export.csv", headers=auth).text
    assert "abcdefgh12" in csv_text.splitlines()[-1] or "abcdefgh12" in csv_text


def test_port_outside_0_to_65535_is_refused_not_wrapped():
    from audiogen.errors import AudiogenError
    from audiogen.listening.server import ServeOptions

    with pytest.raises(AudiogenError, match="--port must be 0..65535, got 99999"):
        ServeOptions(port=99999)


def test_port_in_use_is_one_clear_error(exp_dir):
    """A second server on a busy port exits 1 with one audiogen line, not uvicorn's log."""
    import subprocess
    import sys

    port = free_port()
    first = start_server(exp_dir, port)
    try:
        second = subprocess.run([sys.executable, "-m", "audiogen", "listen", "serve", str(exp_dir), "--port",
                                 str(port)], capture_output=True, text=True, timeout=60)
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr and "another server" in second.stderr
    assert "Traceback" not in second.stderr and "ERROR" not in second.stderr


def test_loadtest_refuses_nonsense_arguments(capsys):
    for args, msg in ((["--participants", "-1"], "--participants must be at least 1"),
                      (["--dup-rate", "2"], "--dup-rate must be in [0, 1]")):
        with pytest.raises(SystemExit) as e:
            L.main(["--url", "http://127.0.0.1:9", *args])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_rate_limit_answers_429(exp_dir):
    from fastapi.testclient import TestClient

    from audiogen.listening.server import ServeOptions, build_app

    with TestClient(build_app(exp_dir, ServeOptions(rate=1, burst=5, new_sessions_per_minute=2))) as c:
        codes = [c.get("/healthz").status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[-1] == 429
        sess = [c.post("/api/session", json={"consent": True}).status_code for _ in range(3)]
        assert sess == [200, 200, 429]
        assert c.post("/api/session", content=b"x" * 70000, headers={"content-type": "application/json"}).status_code == 413


def _fresh_copy(exp_dir, tmp_path):
    """The experiment with an empty answers database (other tests wrote to the shared one)."""
    import shutil

    from audiogen.listening.db import init_db

    d = tmp_path / "exp"
    shutil.copytree(exp_dir, d)
    (d / "listen.db").unlink()
    init_db(d / "listen.db", E.read_manifest(d))
    return d


@pytest.mark.slow
def test_load_200_concurrent_participants_lose_and_duplicate_nothing(exp_dir, tmp_path):
    d = _fresh_copy(exp_dir, tmp_path)
    port = free_port()
    proc = start_server(d, port, "--new-sessions-per-minute", "100000", "--sessions-per-ip", "0")
    try:
        results, lat, wall = asyncio.run(L.run_participants(f"http://127.0.0.1:{port}", 200, dup_rate=0.1))
    finally:
        proc.terminate()
        proc.wait(10)
    check = L.check_database(d / "listen.db", results)
    pct = L.percentiles(lat)
    print(f"\nload test: 200 participants, {pct['all']['n']} requests in {wall:.1f}s; latency "
          + json.dumps({k: {q: v[q] for q in ('p50_ms', 'p95_ms', 'p99_ms')} for k, v in pct.items()}))
    n_steps = len(results[0].acked)
    assert all(r.completed and len(r.acked) == n_steps for r in results)
    assert check["acknowledged"] == 200 * n_steps == check["answers_in_db"]
    assert check["lost_or_changed"] == check["duplicate_slots"] == check["duplicate_answer_ids"] == 0
    assert sum(r.duplicates_seen for r in results) > 50  # retried submissions were recognised, not stored twice


@pytest.mark.slow
def test_kill_9_mid_session_loses_no_acknowledged_answer_and_participants_resume(exp_dir, tmp_path):
    d = _fresh_copy(exp_dir, tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(d, port, "--new-sessions-per-minute", "100000", "--sessions-per-ip", "0")

    async def scenario():
        import httpx

        lat: dict = {}
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
            # 10 participants walk away halfway (tab closed) and come back after the crash;
            # 30 keep going through it, retrying what failed
            walked = await asyncio.gather(*(L.simulate_participant(client, i, lat, stop_after=6) for i in range(10)))
            running = [asyncio.create_task(L.simulate_participant(client, 100 + i, lat, think_s=0.6, retry_for=60))
                       for i in range(30)]
            await asyncio.sleep(1.5)
            acked_before = sum(len(r.acked) for r in walked)
            os.kill(proc_holder[0].pid, signal.SIGKILL)  # mid-session: requests are in flight
            proc_holder[0].wait()
            await asyncio.sleep(1.0)
            proc_holder[0] = start_server(d, port, "--new-sessions-per-minute", "100000", "--sessions-per-ip", "0")
            resumed = await asyncio.gather(*(L.simulate_participant(client, r.index, lat, resume=r) for r in walked))
            done = await asyncio.gather(*running)
        return walked, resumed, done, acked_before

    proc_holder = [proc]
    try:
        walked, resumed, done, acked_before = asyncio.run(scenario())
    finally:
        proc_holder[0].terminate()
        proc_holder[0].wait(10)
    results = list(resumed) + list(done)
    check = L.check_database(d / "listen.db", results)
    assert acked_before == 60
    assert sum(r.retries for r in done) > 0  # the crash really hit running sessions
    assert all(r.completed for r in results)
    assert check["lost_or_changed"] == 0 and check["duplicate_slots"] == 0 and check["unacknowledged_in_db"] == 0
    assert check["answers_in_db"] == check["acknowledged"] == 40 * len(results[0].acked)
