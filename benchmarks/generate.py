"""Sampling speed: audiogen's generate vs transformers' MusicgenForConditionalGeneration.

Same decoder size (dim, layers, heads, FFN, 4 codebooks x 2048), same guidance scale
and top-k, random weights (speed does not depend on weight values), same machine, same
run. The peer gets a tiny T5 and a tiny EnCodec so that its time is the decoder's, as
ours is (text encoder ``none``, no codec decode). Reported: new frames per second per
sequence batch and the real-time factor at MusicGen's 50 Hz frame rate (frames/s / 50:
seconds of audio per second of wall time, per sequence). Prints one JSON object.

Each of our decode engines is timed on a built, warmed decoder (its one-time setup,
CUDA-graph capture or ``torch.compile``, is reported separately as ``setup_s``); the
peer's ``generate()`` is timed after one warm-up call; both report the median of
``--repeats`` runs. Each engine's tokens are also compared with the fixed-shape step run
eagerly from the same seed (``same_tokens_as_static``; 1.0 = identical).

    python benchmarks/generate.py [--config tiny|small|bench_cpu] [--frames N] [--batches 1 8] [--devices cpu cuda]
                                  [--engines eager graph compile]

On CPU the default decoder is ``bench_cpu`` (dim 512, 8 layers) so that a run takes
minutes, not hours; on CUDA it is ``small`` (MusicGen-small sized, ~300M).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from audiogen.generation.sampling import Decoder, SamplingParams
from audiogen.models.lm import LM, named_config

SIZES = {
    "tiny": dict(dim=64, num_layers=2, num_heads=4, ffn_dim=256),
    "bench_cpu": dict(dim=512, num_layers=8, num_heads=8, ffn_dim=2048),
    "small": dict(dim=1024, num_layers=24, num_heads=16, ffn_dim=4096),
}
K, CARD, FRAME_RATE, COND_LEN = 4, 2048, 50.0, 12


def build(size: dict, batch: int, frames: int, device: str, dtype):
    """The random LM (built on ``device`` directly) and a batch of guided conditions."""
    torch.manual_seed(0)
    with torch.device(device):
        lm = LM(named_config("tiny", **size, num_codebooks=K, cardinality=CARD, cond_dim=size["dim"],
                             max_positions=frames + K + 8))
    lm = lm.to(dtype).eval()
    cond = torch.randn(2 * batch, COND_LEN, size["dim"], device=device, dtype=dtype)
    mask = torch.ones(2 * batch, COND_LEN, dtype=torch.bool, device=device)
    mask[batch:] = False  # unconditional rows
    return lm, cond, mask


def ours(lm, cond, mask, frames: int, params: SamplingParams, device: str, engine: str, repeats: int,
         reference: torch.Tensor) -> dict:
    """Median frames/s of a decode window over ``repeats``, the one-time setup (cache, graph
    capture, compile), and how the tokens from seed 1 compare with ``reference`` (the
    fixed-shape step run eagerly, ``static``, from the same seed).

    ``same_tokens_as_static`` is the share of equal tokens and ``first_divergent_frame``
    where they first differ (null: never). ``graph`` replays exactly the static step's
    kernels, so anything below 1.0 there is a bug. ``eager`` (attention over the filled
    cache only) and ``compile`` (fused kernels) round differently; in bfloat16 a single
    flipped token early on makes every later one differ, so read their share as a rounding
    effect, not a failure (in float32 on CPU they match exactly at batch 1).
    """
    gen = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    t = time.perf_counter()
    decoder = Decoder(lm, cond, mask, frames, params, gen, engine)
    decoder.window(8)  # warm-up (first-call allocations, autotuning)
    _sync(device)
    setup = time.perf_counter() - t
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        decoder.window(frames)
        _sync(device)
        rates.append(frames / (time.perf_counter() - t))
    gen.manual_seed(1)
    tokens = decoder.window(frames)
    return {"frames_per_s": round(statistics.median(rates), 2), "setup_s": round(setup, 2), **agreement(tokens, reference)}


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> dict:
    """``[B, K, T]`` token grids: share equal, and the first frame where any row differs."""
    differs = (tokens != reference).flatten(0, 1).any(0)
    first = int(differs.nonzero()[0]) if bool(differs.any()) else None
    return {"same_tokens_as_static": round((tokens == reference).double().mean().item(), 4),
            "first_divergent_frame": first}


def peer(size: dict, batch: int, frames: int, params: SamplingParams, device: str, dtype, repeats: int) -> float:
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              T5Config)

    torch.manual_seed(0)
    t5 = T5Config(vocab_size=100, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
    codec = EncodecConfig(codebook_size=CARD, num_filters=4, hidden_size=16, codebook_dim=16,
                          upsampling_ratios=[8, 5, 4, 4], num_lstm_layers=1, sampling_rate=32000,
                          target_bandwidths=[2.2], audio_channels=1)
    dec = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=size["dim"], num_hidden_layers=size["num_layers"],
                                num_attention_heads=size["num_heads"], ffn_dim=size["ffn_dim"], num_codebooks=K,
                                max_position_embeddings=frames + K + 8, pad_token_id=CARD, bos_token_id=CARD)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec.to_dict(), decoder=dec.to_dict())
    cfg.decoder_start_token_id = CARD
    cfg.pad_token_id = CARD
    model = MusicgenForConditionalGeneration(cfg).to(device, dtype).eval()
    ids = torch.randint(0, 100, (batch, COND_LEN), device=device)
    attn = torch.ones_like(ids)
    kw = dict(do_sample=True, guidance_scale=params.cfg_scale, top_k=params.top_k, temperature=params.temperature)
    rates = []
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=8, **kw)  # warm-up
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=frames + K - 1,
                           min_new_tokens=frames + K - 1, **kw)
            _sync(device)
            rates.append(frames / (time.perf_counter() - t))
    return statistics.median(rates)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=list(SIZES), default=None, help="decoder size (default: per device)")
    ap.add_argument("--frames", type=int, default=None,
                    help="new frames per run (default: 100 = 2 s on CPU; 500 = 10 s on CUDA, whose cache spans "
                         "two CUDA-graph buckets, as a long window does)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine; the median is reported")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--engines", nargs="+", default=None,
                    help="audiogen decode engines to time (default: eager and compile on CPU; eager, graph and "
                         "compile on CUDA)")
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--top-k", type=int, default=250)
    args = ap.parse_args()
    params = SamplingParams(temperature=1.0, top_k=args.top_k, cfg_scale=args.cfg_scale)
    result = {"benchmark": "generate", "torch": torch.__version__, "machine": platform.machine(),
              "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "frame_rate_hz": FRAME_RATE,
              "cfg_scale": args.cfg_scale, "top_k": args.top_k, "runs": []}
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            result["cuda"] = "not available on this machine"
            continue
        name = args.config or ("small" if device == "cuda" else "bench_cpu")
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        engines = args.engines or (["eager", "graph", "compile"] if device == "cuda" else ["eager", "compile"])
        frames = args.frames or (500 if device == "cuda" else 100)
        for batch in args.batches:
            run = {"config": name, **SIZES[name], "device": device, "dtype": str(dtype).replace("torch.", ""),
                   "batch": batch, "frames": frames, "audiogen": {}}
            lm, cond, mask = build(SIZES[name], batch, frames, device, dtype)
            reference = Decoder(lm, cond, mask, frames, params, torch.Generator(device=device).manual_seed(1),
                                "static").window(frames)
            for engine in engines:  # ours first: a failing peer must not cost our figures
                try:
                    run["audiogen"][engine] = ours(lm, cond, mask, frames, params, device, engine, args.repeats,
                                                   reference)
                except Exception as e:  # noqa: BLE001 -- reported in the JSON, the other engines still run
                    run["audiogen"][engine] = {"error": f"{type(e).__name__}: {e}"[:500]}
                print(json.dumps({engine: run["audiogen"][engine]}), flush=True, file=sys.stderr)
            del lm, cond, mask, reference
            try:
                b = peer(SIZES[name], batch, frames, params, device, dtype, args.repeats)
            except Exception as e:  # noqa: BLE001
                b, run["transformers_error"] = float("nan"), f"{type(e).__name__}: {e}"[:500]
            run["transformers_frames_per_s"] = round(b, 2)
            run["transformers_realtime_x"] = round(b / FRAME_RATE, 3)
            for r in run["audiogen"].values():
                if "frames_per_s" in r:
                    r["realtime_x"] = round(r["frames_per_s"] / FRAME_RATE, 3)
                    r["speedup_vs_transformers"] = round(r["frames_per_s"] / b, 2)
            timed = [e for e, r in run["audiogen"].items() if "frames_per_s" in r]
            if timed:
                run["best_engine"] = max(timed, key=lambda e: run["audiogen"][e]["frames_per_s"])
                run["speedup"] = run["audiogen"][run["best_engine"]]["speedup_vs_transformers"]
            result["runs"].append(run)
            print(json.dumps(run), flush=True, file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
