"""The codec's trainer: its config, data crops, trainable model pieces, codebook monitoring, and
the step, evaluation and export that :func:`audiogen.train.loop.run_loop` runs.

:func:`train_codec` is the whole run (``recipes/train_codec.py`` calls it); checkpoints, resume,
logging and stop requests are the shared loop's. The step follows the EnCodec paper (Défossez
et al., 2022), with the objectives of :mod:`audiogen.train.codec_losses`:

- reconstruction: time-domain L1 and multi-scale log-mel L1 + L2,
- adversarial: the multi-scale STFT discriminator (``encodec.msstftd``), hinge losses,
  plus relative feature matching,
- the RVQ commitment loss (straight into the encoder, not balanced),
- a gradient balancer: each loss's gradient w.r.t. the decoder output is normalised by
  an EMA of its norm and weighted by its lambda, so the lambdas mean shares of the
  gradient, whatever the losses' scales.

Quantizer dropout samples the number of codebooks per batch from the target bandwidths;
dead codes (EMA cluster size under a threshold) are restarted from random embeddings of
the current batch, and codebook usage/perplexity are logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audiogen.codec.base import EncodecConfig, build_encodec_model, num_codebooks_for_bandwidth
from audiogen.codec.stft import STFTCodecConfig, STFTCodecModel
from audiogen.errors import AudiogenError
from audiogen.train.codec_losses import (Balancer, MultiScaleMelLoss, disc_hinge_loss, feature_matching_loss,
                                   gen_hinge_loss)
from audiogen.train.loop import lr_at

#: codec architectures this trainer builds: ``backend`` in the config picks one
BACKENDS = {"encodec": EncodecConfig, "stft": STFTCodecConfig}

# ------------------------------------------------------------------------------ config


@dataclass
class CodecTrainConfig:
    """Everything a codec training run needs; YAML keys are these field names."""

    name: str = "audiogen-codec"
    #: ``encodec`` (SEANet + RVQ, :class:`EncodecConfig`) or ``stft`` (log-mel encoder, factorized RVQ,
    #: iSTFT decoder, :class:`STFTCodecConfig`: the one that trains on a CPU)
    backend: str = "encodec"
    #: the backend's config fields (architecture); unspecified ones keep its defaults
    codec: dict = field(default_factory=dict)
    # data
    data_dir: str = ".cache/debian-music"
    holdout_tracks: int = 2
    max_tracks: int = 0  #: 0 = all training tracks (small values for CI)
    segment_s: float = 1.0
    batch_size: int = 8
    num_workers: int = 0
    #: decoded-audio cache (mono int16 at the codec rate); empty = OUT_DIR/audio_cache
    cache_dir: str = ""
    # optimisation (EnCodec: Adam, lr 3e-4, betas (0.5, 0.9) for both networks)
    max_steps: int = 1000
    lr: float = 3e-4
    #: ``constant``, or ``cosine``: linear warm-up over ``warmup_steps``, then cosine decay to
    #: ``min_lr_ratio * lr`` at ``max_steps`` (the LM trainer's schedule)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.5, 0.9)
    seed: int = 0
    mixed_precision: str = "no"
    # discriminator
    disc_filters: int = 32
    disc_n_ffts: tuple[int, ...] = (1024, 2048, 512)
    disc_hop_lengths: tuple[int, ...] = (256, 512, 128)
    disc_win_lengths: tuple[int, ...] = (1024, 2048, 512)
    #: adversarial and feature losses (and discriminator updates) start at this step
    disc_start_step: int = 0
    #: steps trained as a plain autoencoder (quantizer bypassed); at this step k-means
    #: initialises the codebooks on the learned embeddings. Short runs need it: codebooks
    #: k-means-initialised on a random encoder collapse to a few codes as the encoder moves.
    quantizer_warmup_steps: int = 0
    # loss weights (EnCodec paper values)
    lambda_time: float = 0.1
    lambda_mel: float = 1.0
    lambda_adv: float = 3.0
    lambda_feat: float = 3.0
    lambda_commit: float = 1.0
    #: stft backend: L1 between the decoder's predicted log-magnitude STFT and the input's
    lambda_spec: float = 0.0
    balancer: bool = True
    balancer_ema: float = 0.999
    #: mel loss window sizes are 2**i for i in this range (EnCodec: 5..11, 64 mels)
    mel_min_log2: int = 6
    mel_max_log2: int = 11
    n_mels: int = 64
    # codebooks
    dead_code_threshold: float = 2.0
    # bookkeeping
    out_dir: str = "runs/codec"
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    #: every this many steps, score fixed crops of the held-out tracks (0 = never)
    eval_every: int = 0
    eval_crops: int = 8
    export_dtype: str = "float16"

    #: keys that must not change when a run is resumed
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("codec", "seed", "batch_size", "segment_s", "data_dir",
                                              "holdout_tracks", "max_tracks")

    def codec_config(self) -> EncodecConfig | STFTCodecConfig:
        if self.backend not in BACKENDS:
            raise AudiogenError(f"backend={self.backend!r}: choose one of {', '.join(BACKENDS)}")
        return BACKENDS[self.backend].from_dict(self.codec)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def validate(self) -> None:
        """Impossible values and combinations are user errors (:class:`AudiogenError`); the codec section is
        checked now, not after the data is prepared."""
        if self.lambda_spec > 0 and (self.backend != "stft" or self.balancer):
            raise AudiogenError("lambda_spec is the stft backend's decoder-magnitude loss: it needs backend: stft and balancer: false")
        if self.lr_schedule not in ("constant", "cosine"):
            raise AudiogenError(f"lr_schedule={self.lr_schedule!r}: choose constant or cosine")
        ecfg = self.codec_config()
        if max(bandwidth_codebooks(ecfg)) > ecfg.n_q:
            raise AudiogenError(f"codec.target_bandwidths {list(ecfg.target_bandwidths)} need "
                                f"{max(bandwidth_codebooks(ecfg))} codebooks; codec.n_q is {ecfg.n_q}")
        frames = self.batch_size * self.segment_s * ecfg.sample_rate / ecfg.hop_length
        if self.dead_code_threshold > 0.5 * frames / ecfg.bins:
            # the EMA cluster size is a per-batch count: above half the uniform share, healthy
            # codes count as dead and the codebooks are reshuffled every step
            raise AudiogenError(
                f"dead_code_threshold={self.dead_code_threshold} is too high for {frames:.0f} frames per batch and "
                f"{ecfg.bins} codes (a code used uniformly gets {frames / ecfg.bins:.2f} per batch); "
                f"use at most {0.5 * frames / ecfg.bins:.3g}, e.g. {0.1 * frames / ecfg.bins:.2g}"
            )
        if self.segment_s * self.codec_config().sample_rate < max(self.disc_win_lengths):
            raise AudiogenError(f"segment_s={self.segment_s} is shorter than the discriminator's largest window")


# ------------------------------------------------------------------------------ data


def split_tracks(files: list[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """Deterministic train/held-out split by a hash of the file name (stable as files are added)."""
    if holdout and len(files) <= holdout:
        raise AudiogenError(f"need more than {holdout} tracks to hold {holdout} out; found {len(files)}")
    ranked = sorted(files, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    held = sorted(ranked[:holdout])
    return sorted(ranked[holdout:]), held


def decode_to_cache(path: Path, sample_rate: int, cache_dir: Path) -> Path:
    """Decode ``path`` once to mono int16 at ``sample_rate`` (``.npy``, memory-mappable); returns the cache file.

    Random crops from compressed files need seeking and resampling per crop (~0.2 s each);
    from the cache they cost nothing. The file is decoded a block at a time
    (:func:`audiogen.audio.io.iter_audio`), so a file of any length needs no more memory than
    a block.
    """
    import shutil

    from audiogen.audio.io import iter_audio
    from audiogen.files import atomic_path, make_dir

    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{sample_rate}".encode()).hexdigest()[:16]
    out = cache_dir / f"{path.stem[:40]}-{key}.npy"
    if out.is_file():
        return out
    make_dir(cache_dir)
    with atomic_path(out) as tmp:
        raw, n = Path(f"{tmp}.raw"), 0
        try:
            with open(raw, "wb") as f:
                for block in iter_audio(path, sample_rate=sample_rate, channels=1):
                    f.write(np.clip(np.round(block[0] * 32767), -32768, 32767).astype("<i2").tobytes())
                    n += block.shape[1]
            with open(tmp, "wb") as f, open(raw, "rb") as src:  # the .npy header needs the length: write it last
                np.lib.format.write_array_header_1_0(f, {"descr": "<i2", "fortran_order": False, "shape": (n,)})
                shutil.copyfileobj(src, f, 1 << 22)
        finally:
            raw.unlink(missing_ok=True)
    return out


def decode_corpus(files: list[Path], sample_rate: int, cache_dir: Path, progress: bool = True
                  ) -> tuple[dict[Path, Path], list[tuple[Path, str]]]:
    """Decode every file to the cache (:func:`decode_to_cache`), like prep skipping what cannot be read.

    Returns ``({file: cache_file}, [(skipped_file, reason), ...])``: one corrupt file in a
    corpus costs that file, not the run.
    """
    from audiogen.progress import progress_bar

    from audiogen.errors import AudiogenError

    caches, skipped = {}, []
    for f in progress_bar(files, desc="decoding corpus", disable=not progress):
        try:
            caches[f] = decode_to_cache(f, sample_rate, cache_dir)
        except AudiogenError as e:
            skipped.append((f, str(e)))
    return caches, skipped


class RandomCrops(torch.utils.data.Dataset):
    """Item ``i`` is a crop ``FloatTensor[1, L]`` whose track and offset depend only on ``(seed, i)``.

    So the data position after a resume is just the step number, whatever the workers do.
    Tracks are drawn in proportion to their length; near-silent crops are re-drawn.
    """

    def __init__(self, cache_files: list[Path], segment: int, seed: int, length: int):
        self.files = [str(f) for f in cache_files]
        self.segment = segment
        self.seed = seed
        self.length = length
        lens = np.array([np.load(f, mmap_mode="r").shape[0] for f in self.files], dtype=np.float64)
        if (lens < segment).all():
            raise AudiogenError(f"every training track is shorter than the {segment}-sample segment")
        self.weights = np.where(lens >= segment, lens, 0) / lens[lens >= segment].sum()
        self._arrays: list | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._arrays is None:  # opened lazily: each worker maps the files itself
            self._arrays = [np.load(f, mmap_mode="r") for f in self.files]
        rng = np.random.default_rng([self.seed, int(i)])
        for _ in range(8):
            t = rng.choice(len(self.files), p=self.weights)
            a = self._arrays[t]
            start = int(rng.integers(0, a.shape[0] - self.segment + 1))
            crop = np.asarray(a[start : start + self.segment], dtype=np.float32) / 32768.0
            if np.sqrt(np.mean(crop**2)) > 1e-3:
                break
        return torch.from_numpy(crop).unsqueeze(0)


class StepSampler(torch.utils.data.Sampler):
    """Indices ``start, start+1, ...`` of one process's share: resuming at step s is ``start = s * batch``."""

    def __init__(self, start: int, stop: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __iter__(self):
        return iter(range(self.start * self.world + self.rank, self.stop * self.world, self.world))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# ------------------------------------------------------------------------------ model pieces


class TrainableCodec(nn.Module):
    """The ``encodec`` model as one module (so Accelerate/DDP see a single forward).

    ``forward(wav: FloatTensor[B, C, N], n_q) -> (recon FloatTensor[B, C, N], codes LongTensor[n_q, B, T], commit scalar)``

    The residual VQ loop is written out here (same as ``encodec``'s) so each codebook's
    dead codes are restarted from that codebook's own input, the residual.
    """

    def __init__(self, cfg: EncodecConfig, dead_code_threshold: float = 2.0):
        super().__init__()
        self.config = cfg
        self.model = build_encodec_model(cfg)
        self.dead_code_threshold = dead_code_threshold
        for layer in self.model.quantizer.vq.layers:
            # encodec's own restart is undone by its EMA update a few lines later (it resets
            # only ``embed``, not ``embed_avg``/``cluster_size``); ours replaces it
            layer._codebook.threshold_ema_dead_code = 0
        self.last_restarted = 0

    def forward(self, wav: torch.Tensor, n_q: int, bypass: bool = False):
        emb = self.model.encoder(wav)  # [B, D, T]
        if bypass:  # quantizer warm-up: a plain autoencoder
            recon = self.model.decoder(emb)[..., : wav.shape[-1]]
            codes = torch.zeros(n_q, emb.shape[0], emb.shape[-1], dtype=torch.long, device=emb.device)
            self.last_restarted = 0
            return recon, codes, emb.new_zeros(())
        residual, quantized = emb, torch.zeros_like(emb)
        codes, commits = [], []
        restarted = 0
        for layer in self.model.quantizer.vq.layers[:n_q]:
            if self.training and self.dead_code_threshold > 0:
                restarted += restart_dead_codes(layer._codebook, residual.detach().transpose(1, 2).flatten(0, 1),
                                                self.dead_code_threshold)
            q, idx, commit = layer(residual)
            residual = residual - q
            quantized = quantized + q
            codes.append(idx)
            commits.append(commit)
        self.last_restarted = restarted
        recon = self.model.decoder(quantized)[..., : wav.shape[-1]]
        return recon, torch.stack(codes), torch.cat(commits).mean()

    def reset_codebooks(self) -> None:
        """k-means initialises every codebook again on the next training batch."""
        for layer in self.model.quantizer.vq.layers:
            layer._codebook.inited.fill_(False)


@torch.no_grad()
def restart_dead_codes(codebook, samples: torch.Tensor, threshold: float) -> int:
    """Replace codes whose EMA cluster size is under ``threshold`` with random rows of ``samples: [N, D]``.

    The EMA statistics are reset with them (``cluster_size = threshold``,
    ``embed_avg = threshold * embed``) so the codebook's next EMA update keeps the new
    entries instead of pulling them back. Returns how many codes were restarted.
    """
    if not bool(codebook.inited):  # k-means init on this batch comes first
        return 0
    dead = codebook.cluster_size < threshold
    n = int(dead.sum())
    if n == 0:
        return 0
    pick = torch.randint(0, samples.shape[0], (n,), device=samples.device)
    new = samples[pick].to(codebook.embed.dtype)
    codebook.embed[dead] = new
    codebook.embed_avg[dead] = new * threshold
    codebook.cluster_size[dead] = threshold
    return n


def build_discriminator(cfg: CodecTrainConfig, channels: int) -> nn.Module:
    import warnings

    from encodec.msstftd import MultiScaleSTFTDiscriminator

    with warnings.catch_warnings():  # old weight_norm API inside encodec
        warnings.simplefilter("ignore", FutureWarning)
        disc = MultiScaleSTFTDiscriminator(
            filters=cfg.disc_filters, in_channels=channels, n_ffts=list(cfg.disc_n_ffts),
            hop_lengths=list(cfg.disc_hop_lengths), win_lengths=list(cfg.disc_win_lengths),
        )
    # torch.hann_window(n) is a view of an (n+1)-long storage, which safetensors refuses to save
    for sub in disc.discriminators:
        sub.spec_transform.window = sub.spec_transform.window.clone()
    return disc


def bandwidth_codebooks(cfg: EncodecConfig) -> list[int]:
    """Number of codebooks for each target bandwidth (the choices of quantizer dropout)."""
    return sorted({num_codebooks_for_bandwidth(cfg, b) for b in cfg.target_bandwidths})


def sample_num_codebooks(choices: list[int], seed: int, step: int) -> int:
    """Quantizer dropout: the codebook count of ``step``, a function of (seed, step) only (resume-safe)."""
    rng = np.random.default_rng([seed, step, 0xB4])
    return int(choices[int(rng.integers(len(choices)))])


@torch.no_grad()
def codebook_usage(codes: torch.Tensor, bins: int) -> dict[str, float]:
    """``codes: LongTensor[K, B, T]`` -> mean usage fraction and mean perplexity over the K codebooks."""
    usage, ppl = [], []
    for k in range(codes.shape[0]):
        counts = torch.bincount(codes[k].flatten(), minlength=bins).double()
        p = counts / counts.sum()
        usage.append(float((counts > 0).double().mean()))
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        ppl.append(float(ent.exp()))
    return {"codebook_usage": float(np.mean(usage)), "codebook_perplexity": float(np.mean(ppl))}


# ------------------------------------------------------------------------------ the step


@dataclass
class StepParts:
    """What one training step needs (prepared by Accelerate in the recipe)."""

    codec: nn.Module  # TrainableCodec (maybe wrapped)
    disc: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    mel_loss: MultiScaleMelLoss
    balancer: Balancer
    cfg: CodecTrainConfig
    choices: list[int]
    accelerator: object = None


def train_step(parts: StepParts, wav: torch.Tensor, step: int) -> dict[str, float]:
    """One generator + discriminator update on ``wav: FloatTensor[B, C, N]``; returns metrics."""
    cfg, acc = parts.cfg, parts.accelerator
    backward = acc.backward if acc is not None else (lambda loss: loss.backward())
    unwrapped = acc.unwrap_model(parts.codec) if acc is not None else parts.codec
    n_q = sample_num_codebooks(parts.choices, cfg.seed, step)
    adversarial = step >= cfg.disc_start_step and (cfg.lambda_adv > 0 or cfg.lambda_feat > 0)

    bypass = step < cfg.quantizer_warmup_steps
    if step == cfg.quantizer_warmup_steps > 0:  # warm-up over: k-means on this batch's embeddings
        unwrapped.reset_codebooks()
    recon, codes, commit = parts.codec(wav, n_q, bypass)
    losses = {"time": F.l1_loss(recon, wav), "mel": parts.mel_loss(wav, recon)}
    if cfg.lambda_spec > 0:
        losses["spec"] = unwrapped.magnitude_loss(wav)
    if adversarial:
        # the generator's view of the discriminator: frozen, unwrapped (no DDP hooks, one
        # DDP forward per step, in the discriminator update below)
        disc = acc.unwrap_model(parts.disc) if acc is not None else parts.disc
        disc.requires_grad_(False)
        fake_logits, fake_fmaps = disc(recon)
        with torch.no_grad():
            _, real_fmaps = disc(wav)
        disc.requires_grad_(True)
        if cfg.lambda_adv > 0:
            losses["adv"] = gen_hinge_loss(fake_logits)
        if cfg.lambda_feat > 0:
            losses["feat"] = feature_matching_loss(real_fmaps, fake_fmaps)
    weights = {"time": cfg.lambda_time, "mel": cfg.lambda_mel, "adv": cfg.lambda_adv, "feat": cfg.lambda_feat,
               "spec": cfg.lambda_spec}
    losses = {k: v for k, v in losses.items() if weights[k] > 0}
    metrics: dict[str, float] = {f"loss/{k}": v.item() for k, v in losses.items()}

    parts.opt_g.zero_grad(set_to_none=True)
    for group in parts.opt_g.param_groups:  # a function of the step: resumes need no scheduler state
        group["lr"] = cfg.lr if cfg.lr_schedule == "constant" else lr_at(step, cfg)
    if cfg.balancer:
        parts.balancer.weights = weights
        grad, norms = parts.balancer.gradient(losses, recon)
        metrics.update({f"grad_norm/{k}": v for k, v in norms.items()})
        # surrogate whose gradient w.r.t. recon is the balanced one, so Accelerate's backward applies
        surrogate = (recon * grad.detach()).sum()
    else:
        surrogate = sum(weights[k] * v for k, v in losses.items())
    backward(surrogate + cfg.lambda_commit * commit)
    parts.opt_g.step()

    if adversarial and cfg.lambda_adv > 0:
        parts.opt_d.zero_grad(set_to_none=True)
        logits, _ = parts.disc(torch.cat([wav, recon.detach()]))  # real and fake in one forward
        B = wav.shape[0]
        d_loss = disc_hinge_loss([x[:B] for x in logits], [x[B:] for x in logits])
        backward(d_loss)
        parts.opt_d.step()
        metrics["loss/disc"] = d_loss.item()

    metrics["loss/commit"] = commit.item()
    metrics["num_codebooks"] = n_q
    metrics["dead_codes_restarted"] = unwrapped.last_restarted
    metrics.update(codebook_usage(codes, unwrapped.config.bins))
    return metrics


@torch.no_grad()
def evaluate(codec: TrainableCodec, mel_loss: MultiScaleMelLoss, crops: torch.Tensor, n_q: int) -> dict[str, float]:
    """Reconstruction of held-out ``crops: FloatTensor[N, C, L]`` at ``n_q`` codebooks: mel loss and SI-SDR (dB).

    Runs in eval mode (no codebook updates, no randomness), so it leaves training untouched.
    """
    was_training = codec.training
    codec.eval()
    try:
        recon, codes, _ = codec(crops, n_q)
    finally:
        codec.train(was_training)
    ref = crops - crops.mean(-1, keepdim=True)
    est = recon - recon.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + 1e-12) * ref
    sdr = 10 * torch.log10(target.pow(2).sum(-1) / ((est - target).pow(2).sum(-1) + 1e-12) + 1e-12)
    usage = codebook_usage(codes, codec.config.bins)
    return {"eval/mel": mel_loss(crops, recon).item(), "eval/si_sdr_db": sdr.mean().item(),
            "eval/codebook_usage": usage["codebook_usage"], "eval/codebook_perplexity": usage["codebook_perplexity"]}


def make_parts(cfg: CodecTrainConfig, accelerator=None) -> StepParts:
    """Build codec, discriminator, optimizers, losses and balancer from a config (not yet prepared)."""
    ecfg = cfg.codec_config()
    if isinstance(ecfg, STFTCodecConfig):
        codec = STFTCodecModel(ecfg, cfg.dead_code_threshold)
    else:
        codec = TrainableCodec(ecfg, cfg.dead_code_threshold)
    disc = build_discriminator(cfg, ecfg.channels)
    opt_g = torch.optim.Adam(codec.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    mel = MultiScaleMelLoss(ecfg.sample_rate, cfg.mel_min_log2, cfg.mel_max_log2, cfg.n_mels)
    balancer = Balancer({}, ema_decay=cfg.balancer_ema)
    return StepParts(codec, disc, opt_g, opt_d, mel, balancer, cfg, bandwidth_codebooks(ecfg), accelerator)


def export_codec(codec: TrainableCodec | STFTCodecModel, name: str, out_dir: str | os.PathLike,
                 dtype: str = "float16") -> Path:
    """Save the trained codec with :func:`audiogen.codec.base.save_codec` (``load_codec(out_dir)`` loads it)."""
    from audiogen.codec.base import EncodecCodec, STFTCodec, save_codec

    if dtype not in ("float16", "bfloat16", "float32"):
        raise AudiogenError(f"export_dtype must be float16, bfloat16 or float32, not {dtype!r}")
    if isinstance(codec, STFTCodecModel):
        with torch.random.fork_rng(devices=[]):
            model = STFTCodecModel(codec.config)
        model.load_state_dict({k: v.detach().cpu() for k, v in codec.state_dict().items()})
        return save_codec(STFTCodec(model.eval(), codec.config, name), out_dir, dtype=None if dtype == "float32" else getattr(torch, dtype))
    # a fresh model + state dict, not deepcopy: weight_norm's computed weights refuse to be deep-copied
    with torch.random.fork_rng(devices=[]):  # building draws random init weights; training's RNG must not move
        model = build_encodec_model(codec.config)
    model.load_state_dict({k: v.detach().cpu() for k, v in codec.model.state_dict().items()})
    model.eval()
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    return save_codec(EncodecCodec(model, codec.config, name), out_dir)


def bits_per_second(cfg: EncodecConfig, n_q: int) -> float:
    return n_q * math.log2(cfg.bins) * cfg.sample_rate / cfg.hop_length


# ------------------------------------------------------------------------------ the run


def train_codec(cfg: CodecTrainConfig) -> int:
    """The whole codec training run (``recipes/train_codec.py``): decode the corpus to the cache, split
    tracks, train with Accelerate (:func:`audiogen.train.loop.run_loop`), export ``OUT_DIR/codec``."""
    import yaml
    from accelerate.utils import set_seed

    from audiogen.files import atomic_write_text, make_dir
    from audiogen.train.loop import check_resumable, make_accelerator, restore, resume_point, run_loop

    out = Path(cfg.out_dir)
    accelerator = make_accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out))
    ecfg = cfg.codec_config()
    check_resumable(cfg)  # the run's config must match a run being resumed
    caches, held_caches, split = prepare_corpus(cfg, accelerator, ecfg.sample_rate)
    latest = resume_point(accelerator, out / "checkpoints")  # also: every rank has read the run's state before any writes
    if accelerator.is_main_process:
        make_dir(out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(out / "split.json", json.dumps(split, indent=2))

    set_seed(cfg.seed)
    parts = make_parts(cfg, accelerator)
    parts.codec, parts.disc, parts.opt_g, parts.opt_d = accelerator.prepare(
        parts.codec, parts.disc, parts.opt_g, parts.opt_d)
    parts.mel_loss.to(accelerator.device)
    start = restore(accelerator, latest)
    if latest is not None:
        restore_balancer(parts.balancer, latest, accelerator.process_index)

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

    parts.codec.train()
    parts.disc.train()
    return run_loop(accelerator, cfg, CodecTrainer(cfg, accelerator, parts, loader, out, eval_crops), start)


def prepare_corpus(cfg: CodecTrainConfig, accelerator, sample_rate: int) -> tuple[list[Path], list[Path], dict]:
    """Split ``cfg.data_dir``'s tracks and decode them to the cache (the main process first, the others then
    read its cache): ``(training cache files, held-out cache files, the content of OUT_DIR/split.json)``."""
    from audiogen.audio.io import find_audio_files

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
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out_dir) / "audio_cache"
        to_decode = train_files + (held_out if cfg.eval_every else [])
        cache_of, skipped = decode_corpus(to_decode, sample_rate, cache_dir, accelerator.is_main_process)
    if accelerator.is_main_process:
        for f, why in skipped:
            print(f"skipped: {why}", file=sys.stderr)
    train_files = [f for f in train_files if f in cache_of]
    held_out = [f for f in held_out if f in cache_of or not cfg.eval_every]
    if not train_files:
        raise AudiogenError(f"none of the {len(to_decode)} audio files under data_dir={data_dir} could be decoded "
                            "for training (each is listed above)")
    split = {"train": [str(f) for f in train_files], "held_out": [str(f) for f in held_out],
             "skipped": [{"file": str(f), "reason": why} for f, why in skipped]}
    return [cache_of[f] for f in train_files], [cache_of[f] for f in held_out if f in cache_of], split


def restore_balancer(balancer: Balancer, ckpt: Path, rank: int) -> None:
    """Each rank's balancer saw its own batches: it is restored from that rank's own file in ``ckpt``."""
    from audiogen.train.loop import load_rank_state

    state = load_rank_state(ckpt, rank)
    if state is None and (ckpt / "custom_checkpoint_0.pkl").is_file():  # a checkpoint from before
        state = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=True)
    if state is not None:
        balancer.load_state_dict(state)


@dataclass
class CodecTrainer:
    """The codec's step, evaluation and export: the :class:`audiogen.train.loop.Trainer` of one run."""

    cfg: CodecTrainConfig
    accelerator: object
    parts: StepParts
    loader: torch.utils.data.DataLoader
    out: Path
    eval_crops: torch.Tensor | None  #: fixed held-out crops ``[N, C, L]`` (None: no evaluation)
    name: str = "codec"
    progress: bool = True
    tokens_per_step: int = 0  # no tokens_per_s in the log
    _batches: object = field(default=None, init=False, repr=False)  # the loader's iterator, from the first step

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.accelerator.num_processes  # batch_size is per process

    @property
    def export_dir(self) -> Path:
        return self.out / "codec"

    def step(self, step: int) -> dict:
        if self._batches is None:
            self._batches = iter(self.loader)
        return train_step(self.parts, next(self._batches).to(self.accelerator.device), step)

    def bar_figures(self, stats: dict) -> dict:
        return {"mel": f"{stats['loss/mel']:.3f}", "usage": f"{stats['codebook_usage']:.2f}"}

    def evaluate(self, step: int) -> tuple[dict, str]:
        acc = self.accelerator
        if self.eval_crops is None or not acc.is_main_process:  # the main process scores the crops alone
            return {}, ""
        s = evaluate(acc.unwrap_model(self.parts.codec), self.parts.mel_loss, self.eval_crops, max(self.parts.choices))
        return s, (f"step {step}: held-out mel {s['eval/mel']:.3f}, SI-SDR {s['eval/si_sdr_db']:.2f} dB, "
                   f"codebook usage {s['eval/codebook_usage']:.3f}")

    def rank_state(self) -> dict:
        return self.parts.balancer.state_dict()

    def export(self, step: int) -> Path:
        """``OUT_DIR/codec``: the codec (``save_codec`` format) plus ``training.json`` (steps, data split, config)."""
        from audiogen.files import atomic_write_text

        acc, cfg, path = self.accelerator, self.cfg, self.export_dir
        if acc.is_main_process:
            export_codec(acc.unwrap_model(self.parts.codec), cfg.name, path, cfg.export_dtype)
            split = json.loads((self.out / "split.json").read_text())
            atomic_write_text(path / "training.json", json.dumps(
                {"steps": step, "samples_seen": step * self.global_batch,
                 "segment_s": cfg.segment_s, **split, "config": cfg.to_dict()}, indent=2))
        acc.wait_for_everyone()
        return path
