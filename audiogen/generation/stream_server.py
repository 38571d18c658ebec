"""``audiogen serve``: the adaptive stream over a WebSocket, with a small page to play and steer it.

FastAPI on uvicorn, as the listening app. ``GET /`` is the page; ``GET /healthz`` answers
ok; ``WS /ws`` streams. On a WebSocket the server first sends a JSON text message
``{"type": "hello", "sample_rate", "channels", "chunk_s"}``, then for every chunk a JSON
``{"type": "chunk", "index", "start_s", "state", "changes"}`` (the request in effect at
the chunk's last frame, and how many changes took effect up to it) followed by one binary
message of interleaved float32 little-endian PCM. The client sends control messages in
the ``audiogen stream`` format (``{"mood": "tense", "intensity": 0.8, "glide_s": 4}``); a
bad one gets ``{"type": "error", "message"}`` back and the stream carries on.

Each connection gets its own :class:`~audiogen.generation.stream.MusicStream` (one model, loaded
once, shared; generation runs in a worker thread so the event loop keeps receiving
controls). The server stays at most ``lead_s`` seconds of audio ahead of real time, so a
change is heard within about that plus the chunk length.
"""


import asyncio
import dataclasses
import json
import threading
import time
from pathlib import Path

from audiogen.errors import AudiogenError

PAGE = Path(__file__).resolve().parents[1] / "static" / "stream.html"


def build_app(loaded, settings, start: dict | None = None, lead_s: float = 3.0):
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from fastapi.responses import HTMLResponse, PlainTextResponse

    from audiogen.generation.stream import MusicStream, state_from

    start_state = state_from(start or {})
    app = FastAPI(title="audiogen stream", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one model: one stream generates at a time

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.websocket("/ws")
    async def ws(sock: WebSocket) -> None:
        await sock.accept()
        with lock:
            stream = MusicStream(loaded, start_state, dataclasses.replace(settings))
        await sock.send_text(json.dumps({"type": "hello", "sample_rate": stream.sr, "channels": stream.channels,
                                         "chunk_s": stream.chunk_samples / stream.sr, "moods": stream.moods,
                                         "state": _state(stream.state)}))

        async def receive() -> None:
            while True:
                text = await sock.receive_text()
                try:
                    msg = json.loads(text)
                    stream.control(msg)
                except json.JSONDecodeError as e:
                    await sock.send_text(json.dumps({"type": "error", "message": f"not JSON: {e.msg}"}))
                except AudiogenError as e:
                    await sock.send_text(json.dumps({"type": "error", "message": str(e)}))

        def generate():
            with lock:
                return stream.next_chunk()

        receiver = asyncio.create_task(receive())
        t0 = time.perf_counter()
        sent = 0.0
        try:
            index = 0
            while not receiver.done():
                ahead = sent - (time.perf_counter() - t0)
                if ahead > lead_s:  # do not run far ahead of playback: changes would wait behind it
                    await asyncio.sleep(ahead - lead_s)
                chunk = await asyncio.to_thread(generate)
                last = (index + 1) * stream.chunk_frames - 1  # the chunk's last frame
                await sock.send_text(json.dumps({"type": "chunk", "index": index, "start_s": sent,
                                                 "state": _state(stream.state_at(last)),
                                                 "changes": _changes_before(stream, index + 1)}))
                await sock.send_bytes(chunk.T.astype("<f4").tobytes())
                sent += chunk.shape[1] / stream.sr
                index += 1
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            receiver.cancel()

    return app


def _state(state) -> dict:
    d = dataclasses.asdict(state)
    d["instruments"] = list(d["instruments"]) if d["instruments"] else None
    return d


def _changes_before(stream, chunks: int) -> int:
    """Changes that took effect at a frame inside the first ``chunks`` chunks."""
    end = chunks * stream.chunk_frames
    return sum(frame < end for _, frame in stream.stats.changes)


def serve(loaded, settings, start: dict | None, host: str, port: int, lead_s: float = 3.0,
          log_level: str = "warning") -> None:
    """Bind first (a port in use is one clear error), then run uvicorn until interrupted."""
    import uvicorn

    from audiogen.listening.server import bind_socket

    app = build_app(loaded, settings, start, lead_s)
    sock = bind_socket(host, port)
    print(f"audiogen stream: open http://{host}:{sock.getsockname()[1]}/", flush=True)
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level, server_header=False,
                            ws="websockets")
    uvicorn.Server(config).run(sockets=[sock])
