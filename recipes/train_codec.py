#!/usr/bin/env python
"""Train an EnCodec codec (SEANet + RVQ) on a folder of audio with the EnCodec objectives.

    python recipes/train_codec.py --config recipes/configs/codec_tiny.yaml [key=value ...]
    accelerate launch recipes/train_codec.py --config recipes/configs/codec_default.yaml out_dir=runs/codec_default

Overrides are YAML values; nested codec keys use a dot: ``codec.n_filters=16 max_steps=200``.
Checkpoints go to ``OUT_DIR/checkpoints/step_NNNNNNN`` (Accelerate state: both networks,
both optimizers, the balancer's EMA, RNG) every ``save_every`` steps. Rerunning the same
command resumes exactly (the data position is the step number), also after ``kill -9``;
SIGTERM saves a checkpoint and exits 0. The codec is exported to ``OUT_DIR/codec``
(``load_codec(OUT_DIR/codec)`` / ``--codec OUT_DIR/codec``) at every checkpoint and at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(REPO))

from audiogen.errors import AudiogenError  # noqa: E402

#: config keys that must not change when a run is resumed
RESUME_KEYS = ("codec", "seed", "batch_size", "segment_s", "data_dir", "holdout_tracks", "max_tracks")


def train(cfg) -> int:
    import torch
    import yaml
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from audiogen.audio import atomic_write_text, find_audio_files, make_dir
    from audiogen.codec_training import RandomCrops, StepSampler, decode_corpus, make_parts, split_tracks
    from audiogen.training import check_resumable, latest_checkpoint

    out = Path(cfg.out_dir)
    ckpt_root = out / "checkpoints"
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out))
    ecfg = cfg.encodec_config()

    cfg_file = out / "config.yaml"
    check_resumable(out, cfg.to_dict(), RESUME_KEYS)  # the run's config must match a run being resumed

    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise AudiogenError(f"data_dir={data_dir} is not a folder" if data_dir.exists()
                            else f"data_dir={data_dir} does not exist")
    files = find_audio_files(data_dir)
    if not files:
        raise AudiogenError(f"no audio files under data_dir={data_dir}")
    train_files, held_out = split_tracks(files, cfg.holdout_tracks)
    if cfg.max_tracks:
        train_files = train_files[: cfg.max_tracks]
    with accelerator.main_process_first():  # decode once, on the main process first
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "audio_cache"
        to_decode = train_files + (held_out if cfg.eval_every else [])
        cache_of, skipped = decode_corpus(to_decode, ecfg.sample_rate, cache_dir, accelerator.is_main_process)
    if accelerator.is_main_process:
        for f, why in skipped:
            print(f"skipped: {why}", file=sys.stderr)
    train_files = [f for f in train_files if f in cache_of]
    held_out = [f for f in held_out if f in cache_of or not cfg.eval_every]
    if not train_files:
        raise AudiogenError(f"none of the {len(to_decode)} audio files under data_dir={data_dir} could be decoded "
                            "for training (each is listed above)")
    caches = [cache_of[f] for f in train_files]
    held_caches = [cache_of[f] for f in held_out if f in cache_of]
    if accelerator.is_main_process:
        make_dir(out)
        atomic_write_text(cfg_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(out / "split.json", json.dumps(
            {"train": [str(f) for f in train_files], "held_out": [str(f) for f in held_out],
             "skipped": [{"file": str(f), "reason": why} for f, why in skipped]}, indent=2))

    set_seed(cfg.seed)
    parts = make_parts(cfg, accelerator)
    parts.codec, parts.disc, parts.opt_g, parts.opt_d = accelerator.prepare(
        parts.codec, parts.disc, parts.opt_g, parts.opt_d)
    parts.mel_loss.to(accelerator.device)
    accelerator.register_for_checkpointing(parts.balancer)

    start = 0
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        accelerator.load_state(str(latest))
        start = json.loads((latest / "trainer.json").read_text())["step"]
        accelerator.print(f"resuming from {latest} (step {start})")

    segment = int(round(cfg.segment_s * ecfg.sample_rate))
    B, world = cfg.batch_size, accelerator.num_processes
    dataset = RandomCrops(caches, segment, cfg.seed, length=cfg.max_steps * B * world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=B, sampler=StepSampler(start * B, cfg.max_steps * B, accelerator.process_index, world),
        num_workers=cfg.num_workers, drop_last=True,
        # its own generator: iterating must not draw from the global RNG that resume restores
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    eval_crops = None
    if cfg.eval_every and held_caches:  # fixed held-out crops, the same at every evaluation
        held = RandomCrops(held_caches, segment, cfg.seed + 1, length=cfg.eval_crops)
        eval_crops = torch.stack([held[i] for i in range(cfg.eval_crops)]).to(accelerator.device)

    stop = {"requested": False}

    def on_sigterm(signum, frame):
        stop["requested"] = True

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _loop(cfg, accelerator, parts, loader, start, ckpt_root, out, stop, eval_crops)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _loop(cfg, accelerator, parts, loader, start, ckpt_root, out, stop, eval_crops) -> int:
    import torch
    from tqdm import tqdm

    from audiogen.codec_training import evaluate, train_step
    from audiogen.training import save_checkpoint

    accelerator.init_trackers("tensorboard")  # OUT_DIR/tensorboard
    parts.codec.train()
    parts.disc.train()
    bar = tqdm(total=cfg.max_steps, initial=start, desc="codec", disable=not accelerator.is_main_process)
    step = start
    for step, wav in zip(range(start, cfg.max_steps), loader):
        metrics = train_step(parts, wav.to(accelerator.device), step)
        done = step + 1
        bar.update(1)
        if accelerator.num_processes > 1:  # every rank must stop (and save) at the same step
            flag = torch.tensor(float(stop["requested"]), device=accelerator.device)
            stop["requested"] = bool(accelerator.reduce(flag, reduction="sum") > 0)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            accelerator.log(metrics, step=done)
            bar.set_postfix(mel=f"{metrics['loss/mel']:.3f}", usage=f"{metrics['codebook_usage']:.2f}")
        if eval_crops is not None and done % cfg.eval_every == 0 and accelerator.is_main_process:
            scores = evaluate(accelerator.unwrap_model(parts.codec), parts.mel_loss, eval_crops, max(parts.choices))
            accelerator.log(scores, step=done)
            bar.write(f"step {done}: held-out mel {scores['eval/mel']:.3f}, SI-SDR {scores['eval/si_sdr_db']:.2f} dB, "
                      f"codebook usage {scores['eval/codebook_usage']:.3f}")
        if done % cfg.save_every == 0 or done == cfg.max_steps or stop["requested"]:
            save_checkpoint(accelerator, ckpt_root, done, cfg.keep_checkpoints)
            export(accelerator, parts, cfg, out, done)  # a usable codec at every checkpoint
        if cfg.kill_at_step and done == cfg.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # tests: an abrupt death mid-run
        if stop["requested"]:
            bar.close()
            accelerator.end_training()
            accelerator.print(f"SIGTERM: checkpoint saved at step {done}; rerun the same command to resume")
            return 0
        step = done
    bar.close()
    accelerator.end_training()
    path = export(accelerator, parts, cfg, out, step)
    accelerator.print(f"trained {step} steps; codec exported to {path}")
    return 0


def export(accelerator, parts, cfg, out: Path, step: int) -> Path:
    """``OUT_DIR/codec``: the codec (``save_codec`` format) plus ``training.json`` (steps, data split, config)."""
    from audiogen.audio import atomic_write_text
    from audiogen.codec_training import export_codec

    path = out / "codec"
    if accelerator.is_main_process:
        export_codec(accelerator.unwrap_model(parts.codec), cfg.name, path, cfg.export_dtype)
        split = json.loads((out / "split.json").read_text())
        atomic_write_text(path / "training.json", json.dumps(
            {"steps": step, "samples_seen": step * cfg.batch_size * accelerator.num_processes,
             "segment_s": cfg.segment_s, **split, "config": cfg.to_dict()}, indent=2))
    accelerator.wait_for_everyone()
    return path


def main(argv=None) -> int:
    from audiogen.codec_training import load_train_config
    from audiogen.training import recipe_main

    return recipe_main(__doc__, load_train_config, train, argv,
                       config_help="YAML config (see recipes/configs/codec_*.yaml)")


if __name__ == "__main__":
    sys.exit(main())
