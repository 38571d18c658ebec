"""The listening-test web app: FastAPI on uvicorn, answers in SQLite.

Participants: ``/`` (one page, static/app.js), ``/api/session`` (POST with consent: create, or
resume by external id; GET: resume by token), ``/api/answer``, ``/api/complete``, ``/audio/<id>``.
The session token travels in the ``X-Session`` header only, never in a URL (so never in a log).
Admin: ``/admin`` page, ``/api/admin/progress|export.csv|export.json`` with
``Authorization: Bearer <token>`` (the token written by ``listen create``).

What a participant can see, after consenting: ids that mean nothing outside their own session
(a fresh random id for every stimulus of every step), files of equal size whose bytes are their
session's own (inaudible dither, see ``dither``), served with HTTP range support and no dates,
and their own answered slots. Never: sources, origins, systems, or which answer is correct.
Every audio range sent is recorded, so the report can flag answers given without the audio.
"""


import csv
import errno
import hmac
import io
import json
import math
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from audiogen.errors import AudiogenError
from audiogen.listening.experiment import RATING_SCALES

STATIC_DIR = Path(__file__).parent / "static"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{16}$")
RANGE_RE = re.compile(r"bytes=(\d{0,15})-(\d{0,15})")  # 15 digits: ranges beyond any file are 416, not huge ints
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
ANSWER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_BODY = 64 * 1024
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; media-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"),
]


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    rate: float = 20.0  # requests per second per session (or per IP without one)
    burst: int = 60
    new_sessions_per_minute: float = 30.0  # per client IP
    max_participants: int | None = None  # consented sessions
    sessions_per_ip: int | None = 50  # consented sessions per client IP while the server runs
    trust_proxy: int = 0  # reverse proxies in front of the server: X-Forwarded-For entries trusted from the right
    log_level: str = "info"

    def __post_init__(self):
        if not 0 <= self.port <= 65535:  # uvicorn would bind port % 65536 and print the wrong one
            raise AudiogenError(f"--port must be 0..65535, got {self.port}")
        self.trust_proxy = int(self.trust_proxy)  # True (the old flag) is one proxy
        if not 0 <= self.trust_proxy <= 10:
            raise AudiogenError(f"--trust-proxy must be 0..10 proxies, got {self.trust_proxy}")


class TokenBuckets:
    """Token-bucket rate limiter keyed by a string; thread-safe, prunes idle keys."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.state: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()
        self.last_prune = time.monotonic()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self.lock:
            tokens, t = self.state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - t) * self.rate)
            ok = tokens >= cost
            self.state[key] = (tokens - cost if ok else tokens, now)
            if now - self.last_prune > 60:
                idle = self.burst / self.rate
                self.state = {k: v for k, v in self.state.items() if now - v[1] < idle}
                self.last_prune = now
        return ok


class GuardMiddleware:
    """Pure ASGI: body-size cap (while reading), finite-JSON check, rate limits, security headers."""

    def __init__(self, app, opts: ServeOptions, session_of_path=lambda path: None):
        self.app = app
        self.opts = opts
        self.session_of_path = session_of_path  # /audio/<id> -> its session's token (rate limits per session)
        self.requests = TokenBuckets(opts.rate, opts.burst)
        self.sessions = TokenBuckets(opts.new_sessions_per_minute / 60.0, max(1.0, opts.new_sessions_per_minute))

    def client_ip(self, scope) -> str:
        """The peer's address; behind ``trust_proxy`` proxies, the address the outermost of them saw:
        X-Forwarded-For's n-th entry from the right (entries further left are the client's to forge)."""
        c = scope.get("client")
        peer = c[0] if c else "?"
        n = self.opts.trust_proxy
        if n:
            hops = [h.strip() for k, v in scope.get("headers", []) if k == b"x-forwarded-for"
                    for h in v.decode("latin1").split(",")]
            if len(hops) >= n and hops[-n]:
                return hops[-n][:64]
        return peer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        try:
            length = int(headers.get(b"content-length", b"0")[:12])
        except ValueError:
            length = MAX_BODY + 1
        if length > MAX_BODY:
            return await _send_json(send, 413, {"detail": "request body too large"})
        ip = self.client_ip(scope)
        path = scope["path"]
        session = headers.get(b"x-session", b"").decode("latin1")
        if not session and path.startswith("/audio/"):
            session = self.session_of_path(path) or ""
        key = f"s:{session}" if TOKEN_RE.match(session or "") else f"ip:{ip}"
        if path == "/api/session" and scope["method"] == "POST":  # new sessions: their own per-IP budget
            limited = not self.sessions.allow(f"ip:{ip}")
        else:
            limited = not self.requests.allow(key)
        if limited:
            return await _send_json(send, 429, {"detail": "too many requests; wait a moment and retry"},
                                    [(b"retry-after", b"2")])
        scope = dict(scope, state={**scope.get("state", {}), "client_ip": ip})
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            # read the body here, stopping at the limit: a chunked body has no Content-Length to check
            body, more = b"", True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > MAX_BODY:
                    return await _send_json(send, 413, {"detail": "request body too large"})
            ctype = headers.get(b"content-type", b"")
            why = _json_problem(body) if not ctype or b"json" in ctype else None  # FastAPI reads both as JSON
            if why:
                return await _send_json(send, 422, {"detail": why})
            outer, sent = receive, False

            async def receive():  # the app reads the buffered body, then waits on the connection as before
                nonlocal sent
                if sent:
                    return await outer()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json_problem(body: bytes) -> str | None:
    """Why a JSON body is refused (NaN, Infinity, numbers that overflow, nesting too deep), or None."""
    def constant(name):
        raise ValueError(f"{name} is not a number JSON allows")

    def number(text):
        if not math.isfinite(float(text)):
            raise ValueError(f"number {text[:20]} is out of range")
        return float(text)

    if not body.strip():
        return None
    try:
        json.loads(body, parse_constant=constant, parse_float=number)
    except RecursionError:
        return "JSON nested too deeply"
    except ValueError as e:  # JSONDecodeError included: one line, without the input echoed back
        return f"malformed JSON body: {str(e).splitlines()[0][:120]}"
    return None


async def _send_json(send, status: int, body: dict, extra=()):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *SECURITY_HEADERS, *extra]})
    await send({"type": "http.response.body", "body": data})


# --------------------------------------------------------------------------- validation


def validate_response(step: dict, response: dict, questions: list[dict]) -> str | None:
    """None when ``response`` is a well-formed answer to ``step``; else the reason."""
    if not isinstance(response, dict):
        return "response must be an object"
    design = step["design"]

    def int_in(key, lo, hi):
        v = response.get(key)
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    allowed = {"questions"}
    if design == "screening":
        ok, allowed = int_in("choice", 1, 3), allowed | {"choice"}
    elif design == "calibration":
        ok, allowed = response.get("confirmed") is True, allowed | {"confirmed"}
    elif design == "count":
        ok, allowed = int_in("count", 0, 9), allowed | {"count"}
    elif design == "2afc":
        ok, allowed = response.get("choice") in ("A", "B"), allowed | {"choice"}
    elif design == "single":
        ok = response.get("origin") in ("human", "ai") and int_in("confidence", 1, 5)
        allowed |= {"origin", "confidence"}
    elif design == "mos":
        ok, allowed = int_in("rating", *RATING_SCALES["mos"]), allowed | {"rating"}
    elif design == "mushra":
        r, (lo, hi) = response.get("ratings"), RATING_SCALES["mushra"]
        ok = (isinstance(r, dict) and set(r) == set(step["stimuli"])
              and all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in r.values()))
        allowed |= {"ratings"}
    else:
        return f"unknown design {design}"
    if not ok:
        return f"malformed answer for a {design} step"
    if set(response) - allowed:
        return f"unexpected fields: {', '.join(sorted(set(response) - allowed))}"
    q = response.get("questions", {})
    if step["kind"] == "trial" and questions:
        if not isinstance(q, dict) or set(q) - {x["id"] for x in questions}:
            return "questions must be an object keyed by question id"
        for x in questions:
            v = q.get(x["id"])
            if v in (None, ""):
                if x["required"]:
                    return f"question {x['id']} is required"
            elif x["type"] == "choice" and v not in x["options"]:
                return f"question {x['id']}: not one of the options"
            elif x["type"] == "text" and (not isinstance(v, str) or len(v) > 1000):
                return f"question {x['id']}: text of at most 1000 characters"
    elif q not in ({}, None):
        return "questions are asked only on trials"
    return None


def _validate_counters(d, stimuli: list[str], kind) -> bool:
    return (isinstance(d, dict) and len(d) <= len(stimuli) and set(d) <= set(stimuli)
            and all(isinstance(v, kind) and not isinstance(v, bool) and 0 <= v <= 100_000 for v in d.values()))


# --------------------------------------------------------------------------- the app


def build_app(exp_dir: str | os.PathLike, opts: ServeOptions | None = None):
    # Long on purpose: the app's route table; the routes are closures over this experiment's
    # manifest, store and options.
    from fastapi import Body, FastAPI, Header, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from audiogen.listening.db import AnswerStore, make_private
    from audiogen.listening.dither import dithered_range, wav_data_span
    from audiogen.listening.experiment import public_step, read_admin_token, read_manifest
    from audiogen.listening.report import answer_rows

    opts = opts or ServeOptions()
    exp_dir = Path(exp_dir)
    manifest = read_manifest(exp_dir)
    admin_token = read_admin_token(exp_dir)
    make_private(exp_dir / "listen.db")  # experiments made before the database was created private
    store = AnswerStore(exp_dir / "listen.db", manifest)
    exp = manifest["experiment"]
    stim_dir = exp_dir / "stimuli"
    # stimulus id -> file: ids come from the manifest only, so no request string ever becomes a path
    files = {sid: stim_dir / f"{sid}.wav" for sid in manifest["stimuli"]}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise AudiogenError(f"{exp_dir}: {len(missing)} stimulus file(s) missing, e.g. {missing[0]}")
    spans = {sid: wav_data_span(p) for sid, p in files.items()}
    static = {p.name: p.read_bytes() for p in STATIC_DIR.iterdir() if p.is_file()}
    # per-session audio id -> (session token, slot, position in the step (-1: reference), stimulus, dither seed)
    audio_ids: dict[str, tuple[str, int, int, str, int]] = {}
    ip_sessions: dict[str, int] = {}  # consented sessions handed out per client IP
    pending = [0]  # sessions being created now (counted against --max-participants before they commit)
    lock = threading.Lock()

    def learn_ids(token: str, plan: dict) -> None:
        for st in plan["steps"]:
            for pos, (pub, sid) in enumerate(zip(st["pub"], st["stimuli"])):
                audio_ids[pub] = (token, st["slot"], pos, sid, plan["dither_seed"])
            if st.get("reference"):
                audio_ids[st["pub_reference"]] = (token, st["slot"], -1, st["reference"], plan["dither_seed"])

    for token, plan in store.plans():
        learn_ids(token, plan)

    app = FastAPI(title="audiogen listening test", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    def session(token: str | None, with_answered: bool = True) -> dict:
        if not token or not TOKEN_RE.match(token):
            raise HTTPException(401, "no or malformed session")
        p = store.participant(token, with_answered)
        if p is None:
            raise HTTPException(401, "unknown session")
        return p

    def session_view(p: dict) -> dict:
        steps = p["plan"]["steps"]
        done = p["completed_at"] is not None
        return {
            "token": p["token"], "title": exp["title"], "design": exp["design"], "consent": exp["consent"],
            "instructions": exp["instructions"], "questions": exp["questions"], "min_plays": exp["min_plays"],
            # the plan only after consent: a session that has not consented sees no ids at all
            "consented": p["consent_at"] is not None,
            "steps": [public_step(s) for s in steps] if p["consent_at"] is not None else [],
            "answered": p["answered"], "completed": done,
            **(_completion(p["completion_code"]) if done else {}),
        }

    def _completion(code: str) -> dict:
        url = exp["completion"].get("redirect_url")
        return {"completion_code": code, "redirect_url": url.replace("{code}", code) if url else None}

    def page(name: str) -> Response:
        return HTMLResponse(static[name], headers={"cache-control": "no-store"})

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/")
    def index():
        return page("index.html")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/admin")
    def admin_page():
        return page("admin.html")

    @app.get("/static/{name}")
    def static_file(name: str):
        if name not in static or name.endswith(".html"):
            raise HTTPException(404, "not found")
        kind = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}.get(name.rsplit(".", 1)[-1],
                                                                                       "application/octet-stream")
        return Response(static[name], media_type=kind, headers={"cache-control": "no-cache"})

    @app.get("/api/info")
    def info():
        """What the consent page needs before a session exists."""
        return {"title": exp["title"], "design": exp["design"], "consent": exp["consent"]}

    @app.post("/api/session")
    def new_session(request: Request, body: dict = Body(default={})):
        """A consented session (``{"consent": true}``; consent first, so a plan costs a participant);
        an ``external_id`` seen before resumes its session and plan."""
        ext = body.get("external_id")
        if ext is not None and not (isinstance(ext, str) and re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", ext)):
            raise HTTPException(422, "external_id: 1-128 letters, digits or _.:@-")
        if body.get("consent") is not True:
            raise HTTPException(409, "consent first: POST {\"consent\": true} once the participant has agreed")
        ip = getattr(request.state, "client_ip", None) or (request.client.host if request.client else "?")
        resuming = bool(ext) and store.has_external_id(ext)
        # check and reserve under the lock, create outside it: a commit's fsync must not hold up
        # every other new session (they would hold the server's worker threads while they wait)
        with lock:
            if opts.max_participants is not None and not resuming \
                    and store.progress()["participants"] + pending[0] >= opts.max_participants:
                raise HTTPException(403, "this study is full; thank you for your interest")
            if opts.sessions_per_ip is not None and ip_sessions.get(ip, 0) >= opts.sessions_per_ip:
                raise HTTPException(429, "too many sessions from this address")
            ip_sessions[ip] = ip_sessions.get(ip, 0) + 1
            pending[0] += 1
        try:
            token, plan = store.create_participant(ext, request.headers.get("user-agent", "")[:300])
        except BaseException:
            with lock:
                ip_sessions[ip] -= 1
            raise
        finally:
            with lock:
                pending[0] -= 1
        learn_ids(token, plan)
        return session_view(session(token))

    @app.get("/api/session")
    def get_session(x_session: str | None = Header(default=None)):
        return session_view(session(x_session))

    @app.post("/api/consent")
    def consent(x_session: str | None = Header(default=None)):
        """Sessions made before consent came first (older servers) consent here."""
        p = session(x_session, with_answered=False)
        if p["consent_at"] is None and opts.max_participants is not None \
                and store.progress()["participants"] >= opts.max_participants:
            raise HTTPException(403, "this study is full; thank you for your interest")
        store.consent(p["token"])
        return {"ok": True}

    @app.post("/api/answer")
    def answer(body: dict = Body(...), x_session: str | None = Header(default=None)):
        p = session(x_session, with_answered=False)
        if p["consent_at"] is None:
            raise HTTPException(409, "consent first")
        aid, slot = body.get("answer_id"), body.get("slot")
        if not isinstance(aid, str) or not ANSWER_ID_RE.match(aid):
            raise HTTPException(422, "answer_id: 8-64 letters, digits, _ or -")
        steps = p["plan"]["steps"]
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(steps):
            raise HTTPException(422, "slot out of range")
        step = steps[slot]
        # the browser names stimuli by this session's ids; stored answers use the experiment's
        real = dict(zip(step.get("pub", step["stimuli"]), step["stimuli"]))
        response = body.get("response")
        if step["design"] == "mushra" and isinstance(response, dict) and isinstance(response.get("ratings"), dict):
            response = {**response, "ratings": {real.get(k, "?"): v for k, v in response["ratings"].items()}}
        why = validate_response(step, response, exp["questions"])
        if why:
            raise HTTPException(422, why)
        plays, listened = body.get("plays", {}), body.get("listened", {})
        if not _validate_counters(plays, list(real), int) or not _validate_counters(listened, list(real),
                                                                                    (int, float)):
            raise HTTPException(422, "plays/listened: objects keyed by this step's stimulus ids")
        cms = body.get("client_ms")
        if cms is not None and not (isinstance(cms, int) and 0 <= cms < 10**9):
            raise HTTPException(422, "client_ms: a non-negative integer")
        status = store.add_answer(p["token"], aid, slot, step["kind"], response,
                                  {real[k]: v for k, v in plays.items()},
                                  {real[k]: round(float(v), 3) for k, v in listened.items()}, cms)
        if status == "conflict":
            return JSONResponse({"status": "conflict", "detail": "this step was already answered"}, 409)
        return {"status": status, "slot": slot}

    @app.post("/api/complete")
    def complete(x_session: str | None = Header(default=None)):
        p = session(x_session)
        missing = sorted(set(range(len(p["plan"]["steps"]))) - set(p["answered"]))
        if missing:
            raise HTTPException(409, f"{len(missing)} step(s) not answered yet (first: {missing[0]})")
        code = store.complete(p["token"], exp["completion"].get("code") or secrets.token_hex(4).upper())
        return _completion(code)

    @app.get("/audio/{pub}")
    async def audio(pub: str, request: Request):
        # async: no thread hop for the commonest request (answers hold pool threads while their commit
        # waits); the work is a dict lookup, a small pread and the dither of the blocks asked for
        found = audio_ids.get(pub) if ID_RE.match(pub) else None
        if found is None:
            raise HTTPException(404, "not found")
        token, slot, pos, sid, seed = found
        path = files[sid]
        size = path.stat().st_size
        base = {"accept-ranges": "bytes", "cache-control": "private, max-age=3600", "etag": f'"{pub}"'}
        got = _parse_range(request.headers.get("range"), size)
        if got is None:
            return Response(status_code=416, headers={**base, "content-range": f"bytes */{size}"})
        first, last, partial = got
        data = dithered_range(path, spans[sid], (seed, slot, pos + 1), first, last)
        store.record_served(token, slot, pos, first, last, size)  # what the report counts as fetched
        if partial:
            base["content-range"] = f"bytes {first}-{last}/{size}"
        return Response(data, status_code=206 if partial else 200, media_type="audio/wav", headers=base)

    def require_admin(authorization: str | None):
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "admin token required (Authorization: Bearer TOKEN)")

    @app.get("/api/admin/progress")
    def admin_progress(authorization: str | None = Header(default=None)):
        require_admin(authorization)
        return {"experiment": exp["name"], "design": exp["design"], **store.progress()}

    def rows():
        from audiogen.listening.db import load_all, load_served

        parts, answers = load_all(store.read())
        return parts, answer_rows(manifest, parts, answers, load_served(store.read()))

    @app.get("/api/admin/export.json")
    def export_json(authorization: str | None = Header(default=None)):
        require_admin(authorization)
        parts, table = rows()
        people = [{"participant": f"P{p['idx']:04d}", "external_id": p["external_id"], "seed": p["seed"],
                   "created_at": p["created_at"], "consent_at": p["consent_at"], "completed_at": p["completed_at"],
                   "completion_code": p["completion_code"], "user_agent": p["user_agent"]} for p in parts]
        return JSONResponse({"experiment": exp, "participants": people, "answers": table},
                            headers={"content-disposition": 'attachment; filename="answers.json"'})

    @app.get("/api/admin/export.csv")
    def export_csv(authorization: str | None = Header(default=None)):
        require_admin(authorization)
        _, table = rows()
        buf = io.StringIO()
        cols = list(table[0]) if table else ["participant"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in table:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"content-disposition": 'attachment; filename="answers.csv"'})

    def session_of_path(path: str) -> str | None:
        found = audio_ids.get(path.removeprefix("/audio/"))
        return found[0] if found else None

    return GuardMiddleware(app, opts, session_of_path)


def _parse_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(first, last, partial?) of the one byte range asked for (RFC 9110), the whole file without a
    Range header, None when the range cannot be served (416)."""
    if not header:
        return 0, size - 1, False
    m = RANGE_RE.fullmatch(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":  # suffix range: the last N bytes
        first, last = max(0, size - int(m.group(2))), size - 1
    else:
        first = int(m.group(1))
        last = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
    if first >= size or first > last:
        return None
    return first, last, True


def bind_socket(host: str, port: int):
    """A bound listening socket; a port in use (or a bad address) is one clear :class:`AudiogenError`."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        reason = getattr(e, "strerror", None) or str(e)
        raise AudiogenError(f"cannot listen on {host}:{port}: {reason}"
                            + (" (another server has it: pick another --port)" if isinstance(e, OSError)
                               and e.errno == errno.EADDRINUSE else "")) from None
    return sock


def serve(exp_dir: str | os.PathLike, opts: ServeOptions) -> None:
    """Run the app with uvicorn until interrupted.

    The socket is bound here, before uvicorn starts, so a port in use is one clear error
    (not uvicorn's log lines) and ``--port 0`` prints the port the system picked.
    """
    import uvicorn

    app = build_app(exp_dir, opts)
    sock = bind_socket(opts.host, opts.port)
    port = sock.getsockname()[1]
    print(f"listening test '{exp_dir}': participants http://{opts.host}:{port}/  "
          f"admin http://{opts.host}:{port}/admin", flush=True)
    config = uvicorn.Config(app, host=opts.host, port=port, log_level=opts.log_level, server_header=False,
                            access_log=opts.log_level in ("info", "debug"))
    uvicorn.Server(config).run(sockets=[sock])
