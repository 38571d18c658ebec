"""Codec speed as a real-time factor (seconds of audio per second of wall time).

Compares audiogen's windowed, batched encode/decode with the ``encodec`` package's own
``EncodecModel.encode``/``decode`` (the peer; for MusicGen's 32 kHz EnCodec, ``musicgen_32khz``,
transformers' ``EncodecModel``) on the same weights, same machine, same run: the four timings (ours and the peer's encode and decode) are interleaved ``--repeats``
times and the medians compared, so a change in the machine's load hits both; the load
average is recorded. Real architectures with random weights: speed does not depend on weight
values. Prints one JSON object.

    python benchmarks/codec.py [--seconds 30] [--repeats 3] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from audiogen.codec.base import NAMED_CONFIGS, EncodecCodec, build_encodec_model, num_codebooks_for_bandwidth


def _interleaved(fns: dict, repeats: int, sync) -> dict:
    """Median wall seconds of each of ``fns`` ({name: fn}), run in turn ``repeats`` times after a warm-up."""
    import statistics

    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    sync()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def musicgen_codec(bandwidth: float, device: str):
    """MusicGen's EnCodec (``facebook/encodec_32khz``'s architecture, random weights) in transformers, the peer,
    and as our ``HFEncodecCodec``."""
    from transformers import EncodecConfig, EncodecModel

    from audiogen.codec.base import HFEncodecCodec

    cfg = EncodecConfig(sampling_rate=32_000, audio_channels=1, num_filters=64, hidden_size=128,
                        upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, num_lstm_layers=2, target_bandwidths=[2.2],
                        normalize=False, use_causal_conv=False, norm_type="weight_norm", chunk_length_s=None,
                        overlap=None, use_conv_shortcut=False, pad_mode="reflect")
    torch.manual_seed(0)
    model = EncodecModel(cfg).to(device).eval()
    k = round(bandwidth * 1000 / (11 * 50))  # 11 bits a code, 50 frames a second
    codec = HFEncodecCodec(model, k, name="musicgen_32khz")
    return codec, (lambda w: model.encode(w, bandwidth=bandwidth)), (lambda f: model.decode(f.audio_codes, f.audio_scales))


def bench(name: str, bandwidth: float, seconds: float, repeats: int, device: str) -> dict:
    if name == "musicgen_32khz":  # the peer: transformers' EncodecModel (MusicGen's codec as transformers runs it)
        codec, peer_encode, peer_decode = musicgen_codec(bandwidth, device)
        channels, rate = 1, codec.sample_rate
    else:
        cfg = NAMED_CONFIGS[name]
        torch.manual_seed(0)
        model = build_encodec_model(cfg).to(device).eval()
        model.set_target_bandwidth(bandwidth)
        if name == "encodec_48khz":  # the peer's pretrained 48 kHz setup: 1 s segments, normalised
            model.segment, model.normalize = 1.0, True
        codec = EncodecCodec(model, cfg, name, num_codebooks_for_bandwidth(cfg, bandwidth))
        peer_encode, peer_decode, channels, rate = model.encode, model.decode, cfg.channels, cfg.sample_rate
    wav = 0.1 * torch.randn(1, channels, int(seconds * rate), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    codes = codec.encode(wav)
    row = {"codec": name, "bandwidth_kbps": bandwidth, "device": device, "audio_s": seconds,
           "peer": "transformers EncodecModel" if name == "musicgen_32khz" else "encodec package"}
    with torch.inference_mode():
        frames = peer_encode(wav)
        med = _interleaved({
            "audiogen_encode_rtf": lambda: codec.encode(wav), "encodec_pkg_encode_rtf": lambda: peer_encode(wav),
            "audiogen_decode_rtf": lambda: codec.decode(codes), "encodec_pkg_decode_rtf": lambda: peer_decode(frames),
        }, repeats, sync)
    row.update({k: seconds / v for k, v in med.items()})
    for k in list(row):
        if k.endswith("_rtf"):
            row[k] = round(row[k], 2)
    row["encode_speedup_vs_encodec_pkg"] = round(row["audiogen_encode_rtf"] / row["encodec_pkg_encode_rtf"], 2)
    row["decode_speedup_vs_encodec_pkg"] = round(row["audiogen_decode_rtf"] / row["encodec_pkg_decode_rtf"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--codecs", nargs="+", default=["encodec_24khz:6", "encodec_48khz:6", "musicgen_32khz:2.2"],
                    help="NAME:KBPS; musicgen_32khz is MusicGen's EnCodec, against transformers' EncodecModel "
                         "(the row's encodec_pkg_* figures are then transformers')")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc as it is (by default both sides run with "
                         "audiogen.devices.keep_freed_memory, as `audiogen codec` and prep do)")
    args = ap.parse_args()
    if not args.malloc_default:
        from audiogen.devices import keep_freed_memory

        keep_freed_memory()
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    results = []
    load_start = [round(x, 1) for x in os.getloadavg()]
    for dev in devices:
        for spec in args.codecs:
            name, bw = spec.split(":")
            results.append(bench(name, float(bw), args.seconds, args.repeats, dev))
    print(json.dumps({
        "benchmark": "codec",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "torch": torch.__version__, "keep_freed_memory": not args.malloc_default,
        "load_average_start": load_start, "load_average_end": [round(x, 1) for x in os.getloadavg()],
        "results": results,
        "skipped": [d for d in args.devices if d not in devices],
    }))


if __name__ == "__main__":
    main()
