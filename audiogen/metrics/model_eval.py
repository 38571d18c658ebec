"""Does a trained model follow its conditions, and how close is its audio to real music?

Two measurements for a model directory, used for the default model's card
(``eval/model_report.py``):

- ``tempo_response``: generate clips at several requested tempi and estimate each clip's
  tempo with the same librosa estimator ``audiogen prep`` uses; report the per-request
  medians and the Spearman rank correlation between requested and estimated bpm.
- ``generate_clips`` + ``audiogen.metrics.fad``: FAD of generated clips against held-out real
  tracks with any embedder (the built-in one works offline).
- ``tag_conditioning``: with the musicnn MTT tagger (when its weights are installed), the
  KL divergence between the tag distributions of each generated clip and the held-out
  track whose caption prompted it, and how often the track's genre, mood and instrument
  words are among the generated clip's top tags (MusicGen's conditioning check).
- ``sample_codes`` + ``heldout_hold_rates``: how often each codebook of the generated codes repeats the
  frame before's code, beside the held-out tokens' rates (``audio_checks.hold_rates``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from audiogen.generation.sampling import SamplingParams, SilenceGuard, frames_for, generate_codes


@torch.inference_mode()
def sample_codes(loaded, conds: list, seconds: float, params: SamplingParams, seed: int,
                 window_s: float | None = None, capped_rows: list[bool] | None = None) -> torch.Tensor:
    """``LongTensor[B, K, T]`` of codes, one row per condition, sampled as ``audiogen generate`` samples: in the
    model's own window (``window_s`` overrides it), each later window prompted with the end of the one before.
    ``capped_rows``: which rows ``params.cap_quiet`` caps (:func:`capped_rows`); None: as ``cap_quiet`` says.
    (Until 2026-12-05 this used a 10 s window whatever the model: clips up to 10 s came from one window, twice
    the 5 s the default model was trained on and generates in.)"""
    from audiogen.generation.pipeline import CONTEXT_FRACTION, guided_batch, window_frames

    codec = loaded.codec
    device = next(loaded.lm.parameters()).device
    params = params.for_conditions(conds)
    cond, mask, beat_step = guided_batch(loaded, conds, params, device)
    W = window_frames(loaded, codec.frame_rate, window_s)
    gen = torch.Generator(device=device).manual_seed(seed)
    guard = SilenceGuard.for_codec(codec, params, device, capped_rows)
    return generate_codes(loaded.lm, cond, mask, frames_for(seconds, codec.frame_rate), params, gen, W,
                          max(1, int(W * CONTEXT_FRACTION)), guard=guard, beat_step=beat_step,
                          frame_rate=codec.frame_rate)


@torch.inference_mode()
def sample_waveforms(loaded, conds: list, seconds: float, params: SamplingParams, seed: int,
                     window_s: float | None = None, capped_rows: list[bool] | None = None,
                     semitones: list[int] | None = None) -> np.ndarray:
    """``float32[B, C, N]`` of raw (unfinished) audio, one row per condition: :func:`sample_codes`, decoded
    (each row transposed by its ``semitones``, when given: :func:`audiogen.generation.pipeline.played_key`)."""
    codes = sample_codes(loaded, conds, seconds, params, seed, window_s, capped_rows)
    wav = loaded.codec.decode(codes, semitones) if semitones and any(semitones) else loaded.codec.decode(codes)
    return wav.float().cpu().numpy()


def capped_rows(params: SamplingParams, asked: list, played: list) -> list[bool]:
    """Which requests ``params.cap_quiet`` caps, as ``audiogen generate`` would cap each alone: ``asked``, the
    requests' Conditions as given, ``played`` the same with the tempo they play at
    (:func:`audiogen.generation.pipeline.requested_conditions`)."""
    from audiogen.generation.pipeline import names_tempo

    return [params.capped(names_tempo(a), p.bpm) for a, p in zip(asked, played)]


def estimate_tempo(wav: np.ndarray, sample_rate: int) -> float | None:
    """Tempo (bpm) of ``wav: [C, N]`` with the estimator ``audiogen prep`` uses."""
    from audiogen.data.labels import _analysis_features, estimate_bpm

    env, chroma = _analysis_features(wav.mean(axis=0), sample_rate)
    return estimate_bpm(env, chroma=chroma)


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def tempo_response(loaded, bpms=(70.0, 100.0, 140.0), per_bpm: int = 4, seconds: float = 8.0, text: str | None = None,
                   params: SamplingParams | None = None, seed: int = 0) -> dict:
    """Generate ``per_bpm`` clips at each requested bpm; estimate their tempi."""
    from audiogen.models.conditioning import Conditions

    params = params or SamplingParams.for_model(loaded.config)  # what generate uses
    rows, requested, estimated = [], [], []
    for i, bpm in enumerate(bpms):
        conds = [Conditions(text=text, bpm=float(bpm)) for _ in range(per_bpm)]
        wavs = sample_waveforms(loaded, conds, seconds, params, seed + i, capped_rows=capped_rows(params, conds, conds))
        ests = [estimate_tempo(w, loaded.codec.sample_rate) for w in wavs]
        ok = [e for e in ests if e is not None and math.isfinite(e)]
        rows.append({"requested_bpm": bpm, "estimated_bpm": ests,
                     "median_estimated_bpm": float(np.median(ok)) if ok else None})
        requested += [float(bpm)] * len(ok)
        estimated += ok
    return {"clips_per_bpm": per_bpm, "seconds": seconds, "cfg_scale": params.cfg_scale, "per_bpm": rows,
            "spearman_requested_vs_estimated": spearman(requested, estimated)}


def generate_clips(loaded, out_dir: str | Path, prompts: list[str], seconds: float = 10.0, seed: int = 0,
                   params: SamplingParams | None = None, batch: int = 4, codes_out: list | None = None) -> list[Path]:
    """Write one raw clip per prompt to ``out_dir`` (wav), conditioned as ``audiogen generate`` would
    condition the prompt alone; returns the paths. ``codes_out``, a list, gets each clip's codes ``[K, T]``."""
    from audiogen.audio.io import write_audio
    from audiogen.files import make_dir
    from audiogen.models.conditioning import Conditions

    from audiogen.generation.pipeline import prompt_labels, requested_conditions

    params = params or SamplingParams.for_model(loaded.config)  # what generate uses
    out = make_dir(out_dir)
    paths = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s : s + batch]
        # the labels the prompt names in their slots, the tempo generate would play it at (written in it, or the
        # model's default) and its harmony
        asked = [prompt_labels(Conditions(text=p), loaded.config)[0] for p in chunk]
        conds = [requested_conditions(c, loaded.config) for c in asked]
        codes = sample_codes(loaded, conds, seconds, params, seed + s, capped_rows=capped_rows(params, asked, conds))
        if codes_out is not None:
            codes_out.extend(c.cpu().numpy() for c in codes)
        wavs = loaded.codec.decode(codes).float().cpu().numpy()
        for j, w in enumerate(wavs):
            peak = float(np.abs(w).max(initial=0.0))
            w = w / peak * 0.9 if peak > 0.9 else w  # raw model output; keep it from clipping the file
            paths.append(write_audio(out / f"gen_{s + j:04d}.wav", w, loaded.codec.sample_rate))
    return paths


def heldout_hold_rates(data_dir: str | Path, num_codebooks: int, max_rows: int = 64) -> list[float]:
    """:func:`audiogen.metrics.audio_checks.hold_rates` of the first ``num_codebooks`` codebooks over a dataset's
    held-out (valid) rows, up to ``max_rows`` of them, spread over the split."""
    from audiogen.data.loader import load_prepared
    from audiogen.metrics.audio_checks import hold_rates

    valid = load_prepared(data_dir)["valid"]
    step = max(1, len(valid) // max_rows)
    rows = valid.select(range(0, len(valid), step)[:max_rows]).select_columns(["codes"]).with_format("numpy")
    codes = [c for c in (np.asarray(r["codes"])[:num_codebooks] for r in rows) if c.shape[1] >= 2]
    return hold_rates(codes) if codes else []


@torch.inference_mode()
def heldout_loss_vs_unigram(loaded, data_dir: str | Path, segment_s: float = 5.0, max_rows: int = 64,
                            batch: int = 8) -> dict:
    """The LM's held-out cross-entropy and perplexity per codebook, next to a unigram model of the
    train split's tokens (add-one smoothed) scored on exactly the same held-out crops.

    An LM that has learned nothing about sequence gets the unigram's figures; the gap is what
    the context and conditions buy.
    """
    from audiogen.data.loader import eval_batches, load_prepared
    from audiogen.train.lm import ConditionedLM, beat_frame_rate, codebook_ce_sums, delay_inputs

    ds = load_prepared(data_dir)
    lm = loaded.lm
    K, V = lm.cfg.num_codebooks, lm.cfg.cardinality
    counts = np.ones((K, V))
    for row in ds["train"].select_columns(["codes"]).with_format("numpy"):
        codes = np.asarray(row["codes"])[:K].astype(np.int64)
        for k in range(K):
            counts[k] += np.bincount(codes[k], minlength=V)[:V]
    logp = torch.from_numpy(np.log(counts / counts.sum(1, keepdims=True))).float()  # [K, V]
    model = ConditionedLM(lm, loaded.conditioner).eval()
    device = next(lm.parameters()).device
    frames = max(1, round(segment_s * loaded.codec.frame_rate))
    lm_sums, uni_sums, n = torch.zeros(K), torch.zeros(K), torch.zeros(K)
    beat_rate = beat_frame_rate(lm, loaded.codec.frame_rate)
    for b in eval_batches(ds["valid"], frames, V, batch, max_rows, frame_rate=beat_rate):
        b = b.to(device)
        inputs, targets, tmask = delay_inputs(b.codes, b.mask, V)
        s, c = codebook_ce_sums(model(inputs, b.conds, b.beat), targets, tmask)
        lm_sums += s.cpu()
        n += c.cpu()
        t = targets.clamp(max=V - 1).cpu()
        uni = -logp.gather(1, t.permute(1, 0, 2).reshape(K, -1)).view(K, t.shape[0], -1).permute(1, 0, 2)
        uni_sums += (uni * tmask.cpu()).sum(dim=(0, 2))
    lm_ce, uni_ce = (lm_sums / n.clamp(min=1)).tolist(), (uni_sums / n.clamp(min=1)).tolist()
    return {"rows": int(min(len(ds["valid"]), max_rows)), "segment_s": segment_s, "tokens_per_codebook": int(n[0]),
            "lm_loss_nats": sum(lm_ce) / K, "unigram_loss_nats": sum(uni_ce) / K,
            "lm_perplexity": [math.exp(x) for x in lm_ce], "unigram_perplexity": [math.exp(x) for x in uni_ce]}


def heldout_tracks(data_dir: str | Path, audio_dir: str | Path) -> list[dict]:
    """One entry per held-out source file of a prepared dataset: ``{path, caption}``."""
    from audiogen.data.loader import load_prepared
    from audiogen.errors import AudiogenError

    ds = load_prepared(data_dir)
    if "valid" not in ds or len(ds["valid"]) == 0:
        raise AudiogenError(f"{data_dir}: the dataset has no held-out (valid) rows")
    seen: dict[str, dict] = {}
    cols = [c for c in ("source", "caption", "genre", "mood", "instruments") if c in ds["valid"].column_names]
    for row in ds["valid"].select_columns(cols):
        if row["source"] not in seen:
            p = Path(audio_dir) / row["source"]
            if not p.is_file():
                raise AudiogenError(f"held-out track {p} not found (is --audio-dir the folder the dataset was prepared from?)")
            words = [w for w in (row.get("genre"), row.get("mood")) if w] + list(row.get("instruments") or [])
            seen[row["source"]] = {"path": p, "caption": row["caption"], "words": words}
    return list(seen.values())


def tag_conditioning(tagger, gen: list[np.ndarray], ref: list[np.ndarray], sample_rate: int,
                     words: list[list[str]], k: int = 5) -> dict:
    """MusicGen's conditioning check with a musicnn tagger: ``gen[i]`` and ``ref[i]`` (``[C, N]`` at
    ``sample_rate``) come from the same prompt, ``words[i]`` are that prompt's genre, mood and
    instruments. KL(ref || gen) of the tag distributions per pair and between the sets' means
    (lower: closer), and how often a requested word is among the generated clip's top ``k`` tags
    (:mod:`audiogen.metrics.tag_metrics`)."""
    from audiogen.metrics import tag_metrics as M

    g = np.stack([tagger.tag_probabilities(w, sample_rate) for w in gen])
    r = np.stack([tagger.tag_probabilities(w, sample_rate) for w in ref])
    agree = M.tag_agreement(g, tagger.labels, words, k=k)
    return {"tagger": tagger.name, "pairs": len(gen), "paired_kl_ref_to_gen": M.paired_kl(r, g),
            "set_kl_ref_to_gen": M.set_kl(r, g), "tag_agreement_top_k": agree["agreement"], "k": k,
            "words_scored": agree["scored"], "words_unscored": agree["unscored"]}


def excerpt_start(wav: np.ndarray, sample_rate: int, seconds: float) -> int:
    """Where a ``seconds`` excerpt of a real track starts: 30 s in (past any intro), or earlier in a short track."""
    return max(0, min(30 * sample_rate, wav.shape[1] - int(seconds * sample_rate)))


def excerpt(wav: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """The ``seconds`` of ``wav [C, N]`` from :func:`excerpt_start`."""
    start = excerpt_start(wav, sample_rate, seconds)
    return wav[:, start : start + int(seconds * sample_rate)]


def model_report(model_dir: str | Path, data_dir: str | Path, audio_dir: str | Path, work_dir: str | Path,
                 clips: int = 16, seconds: float = 10.0, bpm_clips: int = 4, seed: int = 0, device: str = "cpu",
                 figure: str | Path | None = None) -> dict:
    """FAD (built-in embedder) of generated clips vs held-out real tracks, with the codec's own
    resynthesis of those tracks as the ceiling; the tempo response; music-likeness figures of the
    generated clips (:mod:`audiogen.metrics.audio_checks`); the LM's held-out loss against a unigram model;
    and, with ``figure``, a spectrogram picture: a held-out track, its codec roundtrip, a generated clip."""
    # Long on purpose: one report, a few lines per figure, each figure reusing what the previous
    # ones loaded.
    from audiogen.audio.io import load_audio, write_audio
    from audiogen.codec.base import roundtrip_array
    from audiogen.errors import AudiogenError
    from audiogen.metrics.audio_checks import (HELD_CHORD_MOVEMENT, dropouts_per_minute, harmonic_movement,
                                               hold_rates, music_likeness, pulse_strength, tonal_clarity)
    from audiogen.metrics.embedders import load_embedder
    from audiogen.metrics.fad import EmbeddingCache, fad, load_set
    from audiogen.models.checkpoint import load_model

    loaded = load_model(model_dir, device=device)
    codec = loaded.codec
    work = Path(work_dir)
    held = heldout_tracks(data_dir, audio_dir)
    prompts = [held[i % len(held)]["caption"] for i in range(clips)]
    gen_dir = work / "generated"
    gen_codes: list = []
    generate_clips(loaded, gen_dir, prompts, seconds=seconds, seed=seed, codes_out=gen_codes)
    ref_dir, resyn_dir = work / "heldout", work / "heldout_codec"
    for d in (ref_dir, resyn_dir):
        d.mkdir(parents=True, exist_ok=True)
    # ``seconds`` from 30 s in, as the figure shows
    heldout_pulse, heldout_movement, heldout_clarity, heldout_dropouts = [], [], [], []
    for i, h in enumerate(held):
        wav, _ = load_audio(h["path"], codec.sample_rate, codec.channels)
        write_audio(ref_dir / f"ref_{i:03d}.wav", wav, codec.sample_rate)
        part = excerpt(wav, codec.sample_rate, seconds)
        heldout_pulse.append(pulse_strength(part, codec.sample_rate))
        heldout_movement.append(harmonic_movement(part, codec.sample_rate))
        heldout_clarity.append(tonal_clarity(part, codec.sample_rate))
        heldout_dropouts.append(dropouts_per_minute(part, codec.sample_rate))
        write_audio(resyn_dir / f"ref_{i:03d}.wav", np.clip(roundtrip_array(codec, wav), -1, 1), codec.sample_rate)
    likeness = [music_likeness(load_audio(p, codec.sample_rate, codec.channels)[0], codec.sample_rate, codec.frame_rate)
                for p in sorted(gen_dir.glob("gen_*.wav"))]
    if figure is not None:
        ref0 = load_audio(ref_dir / "ref_000.wav", codec.sample_rate, codec.channels)[0]
        rt0 = load_audio(resyn_dir / "ref_000.wav", codec.sample_rate, codec.channels)[0]
        gen0 = load_audio(sorted(gen_dir.glob("gen_*.wav"))[0], codec.sample_rate, codec.channels)[0]
        start = excerpt_start(ref0, codec.sample_rate, seconds)
        name = held[0]["path"].name
        spectrogram_figure([(f"held-out real music ({name}, from {start / codec.sample_rate:g} s)", ref0[:, start:]),
                            (f"codec roundtrip ({codec.num_codebooks} codebooks, {codec.describe()['bandwidth_kbps']:g} kbps)",
                             rt0[:, start:]),
                            (f"generated: \"{prompts[0][:60]}\"", gen0)], codec.sample_rate, figure, seconds)
    try:
        from audiogen.metrics.tagger import load_tagger

        tagger = load_tagger("MTT")
    except AudiogenError as e:  # the musicnn weights are an optional install
        tags = {"skipped": str(e)}
    else:
        gens = [load_audio(p, codec.sample_rate, codec.channels)[0] for p in sorted(gen_dir.glob("gen_*.wav"))]
        refs = [load_audio(ref_dir / f"ref_{i % len(held):03d}.wav", codec.sample_rate, codec.channels)[0]
                [:, : int(seconds * codec.sample_rate)] for i in range(len(gens))]
        tags = tag_conditioning(tagger, gens, refs, codec.sample_rate, [held[i % len(held)]["words"] for i in range(len(gens))])
    emb = load_embedder("builtin")
    cache = EmbeddingCache(work / "embeddings")
    ref = load_set(ref_dir, emb, cache, progress=False)
    gen = load_set(gen_dir, emb, cache, progress=False)
    resyn = load_set(resyn_dir, emb, cache, progress=False)
    return {
        "model_dir": str(model_dir),
        "heldout_tracks": len(held),
        "generated_clips": clips,
        "clip_seconds": seconds,
        "fad_builtin_generated_vs_heldout": fad(ref.stats, gen.stats),
        "fad_builtin_codec_resynthesis_vs_heldout": fad(ref.stats, resyn.stats),
        "tempo": tempo_response(loaded, per_bpm=bpm_clips, seconds=seconds, seed=seed + 1000),
        "heldout_loss": heldout_loss_vs_unigram(loaded, data_dir),
        "tag_conditioning": tags,
        # how often each codebook repeats the frame before's code, generated against the held-out tokens: a sampler
        # that truncates the distribution (top-k) holds codes far more often than the music it learned from
        "code_hold_rates": {"generated": hold_rates(gen_codes),
                            "heldout": heldout_hold_rates(data_dir, codec.num_codebooks)},
        "generated_music_likeness": {
            "temporal_variation_db": [x["temporal_variation_db"] for x in likeness],
            "frame_rate_harmonic_fraction": [x["frame_rate_harmonic_fraction"] for x in likeness],
            "frame_jump_ratio": [x["frame_jump_ratio"] for x in likeness],
            # beside the held-out tracks' (``seconds`` from 30 s in): held chords and clicks have little pulse
            "pulse": [x["pulse"] for x in likeness],
            "heldout_pulse": heldout_pulse,
            # ... and chords that change (one chord held under hits has a pulse but no movement)
            "harmonic_movement": [x["harmonic_movement"] for x in likeness],
            "heldout_harmonic_movement": heldout_movement,
            "clips_holding_one_chord": sum(1 for x in likeness if x["harmonic_movement"] < HELD_CHORD_MOVEMENT),
            # ... and pitch classes held long enough to stand out (moving partials and hits spread the chroma)
            "tonal_clarity": [x["tonal_clarity"] for x in likeness],
            "heldout_tonal_clarity": heldout_clarity,
            # ... and short holes in the sound
            "dropouts_per_minute": [x["dropouts_per_minute"] for x in likeness],
            "heldout_dropouts_per_minute": heldout_dropouts,
            "clips_failing": sum(1 for x in likeness if x["failures"]),
            "failures": [x["failures"] for x in likeness],
        },
        "embedder": emb.describe(),
    }


def spectrogram_figure(panels: list[tuple[str, np.ndarray]], sample_rate: int, out_path: str | Path,
                       seconds: float = 10.0) -> Path:
    """One log-mel spectrogram per ``(title, wav [C, N] or [N])`` panel, stacked, on one dB scale
    (each panel relative to its own loudest bin, 80 dB shown), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import librosa
    import matplotlib.pyplot as plt

    from audiogen.files import atomic_path

    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), squeeze=False)
    for ax, (title, wav) in zip(axes[:, 0], panels):
        y = np.asarray(wav, dtype=np.float32)
        y = (y.mean(axis=0) if y.ndim == 2 else y)[: int(seconds * sample_rate)]
        mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, n_fft=2048, hop_length=sample_rate // 50, n_mels=128)
        db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                  extent=(0, y.shape[0] / sample_rate, 0, 128))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mel band")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out


def attribution_markdown(data_dir: str | Path, title: str = "Training data: tracks, licenses, attribution") -> str:
    """A Markdown list of every source track of a prepared dataset with its license and credit line."""
    from audiogen.data.loader import load_prepared

    ds = load_prepared(data_dir)
    tracks: dict[str, tuple[str, str, str]] = {}
    for split in ds:
        for row in ds[split].select_columns(["source", "license", "attribution"]):
            tracks.setdefault(row["source"], (row["license"] or "unknown", row["attribution"] or row["source"], split))
    counts: dict[str, int] = {}
    for lic, _, _ in tracks.values():
        counts[lic] = counts.get(lic, 0) + 1
    lines = [f"# {title}", "", f"{len(tracks)} tracks. Licenses: "
             + "; ".join(f"{k} ({v} tracks)" for k, v in sorted(counts.items())) + ".", ""]
    for src in sorted(tracks):
        lic, credit, split = tracks[src]
        lines.append(f"- {credit} [{lic}]" + (" (held out)" if split != "train" else ""))
    return "\n".join(lines) + "\n"
