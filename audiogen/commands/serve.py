"""``audiogen serve``: the adaptive stream in a browser (WebSocket + a small page)."""

from __future__ import annotations

import argparse

ORDER = 13


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page that plays the endless stream, with prompt, mood, intensity and bpm controls",
        description="Serve the adaptive stream (see 'audiogen stream') over a WebSocket, with a page at / to "
        "play it and steer it: prompt, mood, intensity and bpm sliders, glide time. Each browser tab gets its "
        "own stream; the model is loaded once. The WebSocket protocol is described in "
        "audiogen/generation/stream_server.py and docs/stream.md.",
        epilog="example: audiogen serve \"adventure game music\" --port 8765, then open http://127.0.0.1:8765/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default=None, help="text to start with (the page sends its own on Play)")
    p.add_argument("--model", default=None, metavar="DIR", help="model directory; default: the embedded model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (default %(default)s; 0 = any free port)")
    p.add_argument("--chunk", type=float, default=0.5, metavar="S", help="chunk length in seconds (default 0.5)")
    p.add_argument("--lead", type=float, default=3.0, metavar="S",
                   help="how far generation may run ahead of playback, in seconds (default 3)")
    p.add_argument("--window", type=float, default=None, metavar="S", help="LM window (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the stream (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no-prompt-labels", dest="prompt_labels", action="store_false",
                   help="read the page's prompts as text only; by default the labels the model knows that a prompt "
                        "names fill the slots the page leaves empty, as generate reads a prompt")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="the web server's log level (default warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiogen.errors import AudiogenError
    from audiogen.generation.pipeline import resolve_model_dir
    from audiogen.generation.stream import StreamSettings, state_from, stream_sampling
    from audiogen.models.checkpoint import load_model, read_config

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as e:
        raise AudiogenError(f"audiogen serve needs the web extras ({e.name} is missing): "
                            "pip install 'audiogen[listen]'") from None
    if not 0 <= args.port <= 65535:
        raise AudiogenError(f"--port must be 0..65535, got {args.port}")
    if not 0.5 <= args.lead <= 60:
        raise AudiogenError(f"--lead must be 0.5..60 s, got {args.lead}")
    start = {"text": args.prompt} if args.prompt else {}
    state_from(start)
    model_dir = resolve_model_dir(args.model)
    # the sampling the model recommends for a stream (its config's generation.sampling), as `audiogen stream` uses
    settings = StreamSettings(chunk_s=args.chunk, seed=args.seed, window_s=args.window, device=args.device,
                              sampling=stream_sampling(read_config(model_dir)), prompt_labels=args.prompt_labels)
    settings.validate()
    loaded = load_model(model_dir, device=args.device)
    from audiogen.generation.stream_server import serve

    serve(loaded, settings, start, args.host, args.port, args.lead, args.log_level)
    return 0
