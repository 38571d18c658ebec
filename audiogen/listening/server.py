"""The listening-test web app: FastAPI on uvicorn, answers in SQLite.

Participants: ``/`` (one page, static/app.js), ``/api/session`` (create or resume),
``/api/consent``, ``/api/answer``, ``/api/complete``, ``/audio/<id>?s=<session>``.
Admin: ``/admin`` page, ``/api/admin/progress|export.csv|export.json`` with
``Authorization: Bearer <token>`` (the token written by ``listen create``).

What a participant can see: opaque stimulus ids (only those in their own plan), files of
equal size served with HTTP range support and no dates, and their own answered slots.
Never: sources, origins, systems, or which answer is correct.
"""


import csv
import errno
import hmac
import io
import json
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
    max_participants: int | None = None
    trust_proxy: bool = False
    log_level: str = "info"

    def __post_init__(self):
        if not 0 <= self.port <= 65535:  # uvicorn would bind port % 65536 and print the wrong one
            raise AudiogenError(f"--port must be 0..65535, got {self.port}")


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
    """Pure ASGI: body-size cap, rate limits, security headers on every response."""

    def __init__(self, app, opts: ServeOptions):
        self.app = app
        self.opts = opts
        self.requests = TokenBuckets(opts.rate, opts.burst)
        self.sessions = TokenBuckets(opts.new_sessions_per_minute / 60.0, max(1.0, opts.new_sessions_per_minute))

    def client_ip(self, scope) -> str:
        if self.opts.trust_proxy:
            for k, v in scope.get("headers", []):
                if k == b"x-forwarded-for":
                    return v.decode("latin1").split(",")[0].strip()
        c = scope.get("client")
        return c[0] if c else "?"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = MAX_BODY + 1
        if length > MAX_BODY:
            return await _send_json(send, 413, {"detail": "request body too large"})
        ip = self.client_ip(scope)
        session = headers.get(b"x-session", b"").decode("latin1")
        if not session:
            q = scope.get("query_string", b"").decode("latin1")
            m = re.search(r"(?:^|&)s=([A-Za-z0-9_-]{20,64})(?:&|$)", q)
            session = m.group(1) if m else ""
        key = f"s:{session}" if TOKEN_RE.match(session or "") else f"ip:{ip}"
        path = scope["path"]
        if path == "/api/session" and scope["method"] == "POST":  # new sessions: their own per-IP budget
            limited = not self.sessions.allow(f"ip:{ip}")
        else:
            limited = not self.requests.allow(key)
        if limited:
            return await _send_json(send, 429, {"detail": "too many requests; wait a moment and retry"},
                                    [(b"retry-after", b"2")])

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


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
    from fastapi import Body, FastAPI, Header, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from audiogen.listening.db import AnswerStore
    from audiogen.listening.experiment import public_step, read_admin_token, read_manifest
    from audiogen.listening.report import answer_rows

    opts = opts or ServeOptions()
    exp_dir = Path(exp_dir)
    manifest = read_manifest(exp_dir)
    admin_token = read_admin_token(exp_dir)
    store = AnswerStore(exp_dir / "listen.db", manifest)
    exp = manifest["experiment"]
    stim_dir = exp_dir / "stimuli"
    # stimulus id -> file: ids come from the manifest only, so no request string ever becomes a path
    files = {sid: stim_dir / f"{sid}.wav" for sid in manifest["stimuli"]}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise AudiogenError(f"{exp_dir}: {len(missing)} stimulus file(s) missing, e.g. {missing[0]}")
    static = {p.name: p.read_bytes() for p in STATIC_DIR.iterdir() if p.is_file()}
    allowed_cache: dict[str, frozenset] = {}

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
            "consented": p["consent_at"] is not None, "steps": [public_step(s) for s in steps],
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
        ext = body.get("external_id") if isinstance(body, dict) else None
        if ext is not None and not (isinstance(ext, str) and re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", ext)):
            raise HTTPException(422, "external_id: 1-128 letters, digits or _.:@-")
        if opts.max_participants is not None and store.progress()["participants"] >= opts.max_participants:
            raise HTTPException(403, "this study is full; thank you for your interest")
        ua = request.headers.get("user-agent", "")[:300]
        token, _ = store.create_participant(ext, ua)
        return session_view(session(token))

    @app.get("/api/session")
    def get_session(x_session: str | None = Header(default=None)):
        return session_view(session(x_session))

    @app.post("/api/consent")
    def consent(x_session: str | None = Header(default=None)):
        p = session(x_session, with_answered=False)
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
        why = validate_response(step, body.get("response"), exp["questions"])
        if why:
            raise HTTPException(422, why)
        plays, listened = body.get("plays", {}), body.get("listened", {})
        if not _validate_counters(plays, step["stimuli"], int) or not _validate_counters(
                listened, step["stimuli"], (int, float)):
            raise HTTPException(422, "plays/listened: objects keyed by this step's stimulus ids")
        cms = body.get("client_ms")
        if cms is not None and not (isinstance(cms, int) and 0 <= cms < 10**9):
            raise HTTPException(422, "client_ms: a non-negative integer")
        status = store.add_answer(p["token"], aid, slot, step["kind"], body["response"], plays,
                                  {k: round(float(v), 3) for k, v in listened.items()}, cms)
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

    @app.get("/audio/{sid}")
    async def audio(sid: str, request: Request, s: str | None = None):
        # async: no thread hop for the commonest request; the work is a dict lookup and one small pread
        if not ID_RE.match(sid) or sid not in files:
            raise HTTPException(404, "not found")
        if not s or not TOKEN_RE.match(s):
            raise HTTPException(401, "no session")
        allowed = allowed_cache.get(s)
        if allowed is None:
            p = session(s, with_answered=False)
            allowed = frozenset(x for st in p["plan"]["steps"] for x in st["stimuli"] + [st.get("reference")] if x)
            if len(allowed_cache) > 10_000:
                allowed_cache.clear()
            allowed_cache[s] = allowed
        if sid not in allowed:
            raise HTTPException(404, "not found")
        return _range_response(files[sid], sid, request.headers.get("range"))

    def require_admin(authorization: str | None):
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "admin token required (Authorization: Bearer TOKEN)")

    @app.get("/api/admin/progress")
    def admin_progress(authorization: str | None = Header(default=None)):
        require_admin(authorization)
        return {"experiment": exp["name"], "design": exp["design"], **store.progress()}

    def rows():
        from audiogen.listening.db import load_all

        parts, answers = load_all(store.read())
        return parts, answer_rows(manifest, parts, answers)

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

    return GuardMiddleware(app, opts)


def _range_response(path: Path, sid: str, range_header: str | None):
    """The file, or the byte range asked for (one range; RFC 9110), with no dates in the headers."""
    from fastapi.responses import Response

    size = path.stat().st_size
    base = {"accept-ranges": "bytes", "cache-control": "private, max-age=3600", "etag": f'"{sid}"'}
    start, end = 0, size - 1
    status = 200
    if range_header:
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if not m or (m.group(1) == "" and m.group(2) == ""):
            return Response(status_code=416, headers={**base, "content-range": f"bytes */{size}"})
        if m.group(1) == "":  # suffix range: the last N bytes
            start = max(0, size - int(m.group(2)))
        else:
            start = int(m.group(1))
            end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
        if start >= size or start > end:
            return Response(status_code=416, headers={**base, "content-range": f"bytes */{size}"})
        status = 206
        base["content-range"] = f"bytes {start}-{end}/{size}"
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), end - start + 1, start)
    return Response(data, status_code=status, media_type="audio/wav", headers=base)


def serve(exp_dir: str | os.PathLike, opts: ServeOptions) -> None:
    """Run the app with uvicorn until interrupted.

    The socket is bound here, before uvicorn starts, so a port in use is one clear error
    (not uvicorn's log lines) and ``--port 0`` prints the port the system picked.
    """
    import socket

    import uvicorn

    app = build_app(exp_dir, opts)
    sock = socket.socket(socket.AF_INET6 if ":" in opts.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((opts.host, opts.port))
    except (OSError, OverflowError) as e:
        sock.close()
        reason = getattr(e, "strerror", None) or str(e)
        raise AudiogenError(f"cannot listen on {opts.host}:{opts.port}: {reason}"
                            + (" (another server has it: pick another --port)" if isinstance(e, OSError)
                               and e.errno == errno.EADDRINUSE else "")) from None
    port = sock.getsockname()[1]
    print(f"listening test '{exp_dir}': participants http://{opts.host}:{port}/  "
          f"admin http://{opts.host}:{port}/admin", flush=True)
    config = uvicorn.Config(app, host=opts.host, port=port, log_level=opts.log_level, server_header=False,
                            access_log=opts.log_level in ("info", "debug"))
    uvicorn.Server(config).run(sockets=[sock])
