"""LM training throughput: audio tokens per second and model FLOPs utilisation (MFU).

Times ``audiogen.train.lm.train_step`` (the step the recipe runs: delay pattern, per-codebook
loss, AdamW, clipping, bf16 autocast on GPUs) on random tokens shaped like
encodec_24khz's (4 codebooks x 2048 codes, 75 frames per second), with
attribute conditions (no text encoder: it runs once per distinct caption and is cached).
``tiny`` runs on CPU; ``small`` on CUDA when a GPU is present. Prints one JSON object.

    python benchmarks/train.py [--steps 5] [--devices cpu cuda] [--threads N] [--cpu-segment-s 10] [--gpu-segment-s 30]
    python benchmarks/train.py --ranks 1 2 [--devices cpu]     # data-parallel scaling

``--ranks 1 2 ...`` measures each device at each number of processes (a ``torchrun`` job per
count: gloo on CPU, NCCL on GPUs), each rank with the per-rank batch given (weak scaling),
and reports tokens/s over all ranks and the scaling efficiency
``tokens_per_s(N) / (N * tokens_per_s(1))``. On a GPU node, ``--devices cuda --ranks 1 8``.

FLOPs per optimizer step (PaLM appendix B convention, forward + backward = 3x forward,
no credit for causal masking, embedding lookups free)::

    B * ( 6 * N_pos * S            # every weight matrix applied at each of S pattern positions
        + 6 * N_kv  * L_c          # cross-attention K/V projections, applied to the L_c condition slots
        + 12 * n_layers * dim * S * S      # self-attention scores and mixing
        + 12 * n_layers * dim * S * L_c )  # cross-attention scores and mixing

with ``S = T + K - 1`` (delay pattern), ``N_kv`` the cross-attention K/V weights and
``N_pos`` every other non-embedding weight (including the K output heads).
MFU = FLOPs per step / step time / peak. Peak: 989 TFLOP/s for an H100 SXM (bf16 dense);
on CPU, the best fp32 rate of a 2048^3 matmul measured here in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

H100_BF16_PEAK = 989e12


def flops_per_step(lm, batch: int, positions: int, cond_len: int) -> dict:
    cfg = lm.cfg
    kv = sum(p.numel() for layer in lm.layers for p in (layer.encoder_attn.k_proj.weight, layer.encoder_attn.v_proj.weight))
    emb = sum(p.numel() for p in lm.embed_tokens.parameters())
    non_emb = sum(p.numel() for p in lm.parameters()) - emb
    n_pos = non_emb - kv - sum(p.numel() for p in lm.cond_proj.parameters())
    n_cond = kv + sum(p.numel() for p in lm.cond_proj.parameters())
    S, L, D = positions, cfg.num_layers, cfg.dim
    per_seq = 6 * n_pos * S + 6 * n_cond * cond_len + 12 * L * D * S * S + 12 * L * D * S * cond_len
    return {"flops_per_step": batch * per_seq, "params": non_emb + emb, "params_non_embedding": non_emb}


def cpu_peak_flops(n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def bench(model_name: str, device: str, batch: int, segment_s: float, steps: int) -> dict:
    from accelerate import Accelerator

    from audiogen.data.loader import Batch
    from audiogen.models.conditioning import Conditions, ConditionEncoder, ConditionerConfig, bpm_bucket_centres
    from audiogen.models.lm import LM, named_config
    from audiogen.train.lm import ConditionedLM, TrainConfig, make_optimizer, resolve_mixed_precision, train_step
    from audiogen.train.loop import make_accelerator

    K, card, frame_rate = 4, 2048, 75.0
    T = int(segment_s * frame_rate)
    torch.manual_seed(0)
    ccfg = ConditionerConfig(text_encoder="none", genres=["ambient", "rock"], moods=["calm", "dark"],
                             keys=["C major"], instruments=["piano", "strings"], bpm_buckets=bpm_bucket_centres(),
                             dim=768 if model_name != "tiny" else 64)
    cond = ConditionEncoder(ccfg)
    lm = LM(named_config(model_name, num_codebooks=K, cardinality=card, cond_dim=ccfg.dim))
    cfg = TrainConfig(data_dir="-", model=model_name, max_steps=steps + 2, lr=1e-4, warmup_steps=0)
    mp = resolve_mixed_precision("auto") if device == "cuda" else "no"
    acc = make_accelerator(mixed_precision=mp) if launched() else Accelerator(mixed_precision=mp, cpu=device == "cpu")
    world = acc.num_processes
    model = ConditionedLM(lm, cond)
    model, opt = acc.prepare(model, make_optimizer(model, cfg))
    conds = [Conditions(genre="ambient", mood="calm", bpm=90.0, key="C major", instruments=["piano"])] * batch
    micro = [Batch(torch.randint(0, card, (batch, K, T)), torch.ones(batch, K, T, dtype=torch.bool), conds)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    train_step(model, opt, acc, micro, 0, cfg, card)  # warm-up (allocations, kernels)
    sync()
    acc.wait_for_everyone()
    t = time.perf_counter()
    for s in range(steps):
        stats = train_step(model, opt, acc, micro, s + 1, cfg, card)
    sync()
    acc.wait_for_everyone()
    step_s = (time.perf_counter() - t) / steps
    cond_len = cond([conds[0]])[0].shape[1]
    f = flops_per_step(lm, batch * world, T + K - 1, cond_len)
    peak = (H100_BF16_PEAK if device == "cuda" else cpu_peak_flops()) * world
    achieved = f["flops_per_step"] / step_s
    row = {
        "model": model_name, "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "ranks": world, "mixed_precision": mp, "batch_per_rank": batch, "segment_s": segment_s, "codebooks": K,
        "cardinality": card, "params": f["params"], "params_non_embedding": f["params_non_embedding"],
        "step_s": round(step_s, 4), "tokens_per_s": round(batch * world * T * K / step_s, 1),
        "frames_per_s": round(batch * world * T / step_s, 1), "achieved_tflops": round(achieved / 1e12, 4),
        "peak_tflops": round(peak / 1e12, 4),
        "peak_source": "H100 bf16 dense spec" if device == "cuda" else "measured fp32 2048^3 matmul",
        "mfu": round(achieved / peak, 4), "final_loss": round(stats["loss"], 4),
    }
    if device == "cpu":
        row["threads"] = torch.get_num_threads()
    return row


def launched() -> bool:
    """Inside a torchrun job started by ``--ranks``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_ranks(ranks: int, device: str, argv: list[str]) -> dict:
    """This script as a ``torchrun`` job of ``ranks`` processes measuring ``device``; rank 0's result row."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port),
           __file__, *argv, "--devices", device, "--ranks", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{ranks}-rank job failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout[r.stdout.index("{"):])["results"][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after one warm-up step)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1],
                   help="numbers of data-parallel processes to measure (a torchrun job each for more than 1)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process (0 = torch's default)")
    p.add_argument("--cpu-batch", type=int, default=4, help="sequences per rank per step on CPU")
    p.add_argument("--cpu-segment-s", type=float, default=10.0, help="sequence length in seconds on CPU")
    p.add_argument("--gpu-model", default="small", help="named LM config measured on CUDA")
    p.add_argument("--gpu-batch", type=int, default=8, help="sequences per rank per step on CUDA")
    p.add_argument("--gpu-segment-s", type=float, default=30.0, help="sequence length in seconds on CUDA")
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"],
                   help="where to measure: tiny on cpu, --gpu-model on cuda (when present)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"benchmark": "lm_train_step", "host": platform.node(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "load_average_1_5_15min": os.getloadavg(), "results": []}
    runs = {"cpu": ("tiny", args.cpu_batch, args.cpu_segment_s),
            "cuda": (args.gpu_model, args.gpu_batch, args.gpu_segment_s)}
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            out["cuda"] = "not available on this machine: small-on-GPU figures not measured"
            continue
        model, batch, segment_s = runs[device]
        rows = [bench(model, device, batch, segment_s, args.steps) if n == 1 else
                run_ranks(n, device, sys_argv_without(("--devices", "--ranks"))) for n in args.ranks]
        one = next((r for r in rows if r["ranks"] == 1), None)
        for r in rows:
            if one is not None:
                r["scaling_efficiency"] = round(r["tokens_per_s"] / (r["ranks"] * one["tokens_per_s"]), 3)
        out["results"].extend(rows)
    if launched() and int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 reports for the job
    print(json.dumps(out, indent=2))


def sys_argv_without(flags: tuple[str, ...]) -> list[str]:
    """The command line minus ``flags`` and their values (the job gets its own)."""
    import sys

    out, skip = [], False
    for a in sys.argv[1:]:
        if a in flags:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()
