"""Codec training: balancer, dead-code restart, loss going down, the recipe end to end, exact resume."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiogen.audio import io as A
from audiogen.errors import AudiogenError
from audiogen.train.codec import CodecTrainConfig, TrainableCodec, decode_to_cache, evaluate, make_parts, train_step
from audiogen.train.codec_losses import Balancer
from audiogen.train.loop import load_config
from distributed_helpers import LAUNCH_TIMEOUT_S, assert_ranks, kill_env, start_records, two_ranks

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "train_codec.py"
TINY = REPO / "recipes" / "configs" / "codec_tiny.yaml"


def _recipe():
    spec = importlib.util.spec_from_file_location("train_codec_recipe", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def audio_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("codec_audio_cache")


def _overrides(out: Path, music: Path, cache: Path, **extra) -> list[str]:
    base = {"out_dir": out, "data_dir": music, "cache_dir": cache, "max_tracks": 1, "max_steps": 8,
            "save_every": 3, "log_every": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]



def _assert_same_final_state(a: Path, b: Path) -> None:
    """Runs ``a`` and ``b`` ended with bit-identical codec and discriminator weights and exports."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "model_1.safetensors"):  # codec, discriminator
        wa = load_file(str(a / "checkpoints" / "step_0000008" / name))
        wb = load_file(str(b / "checkpoints" / "step_0000008" / name))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert (a / "codec" / "codec.safetensors").read_bytes() == (b / "codec" / "codec.safetensors").read_bytes()

# ------------------------------------------------------------------------------ data


def test_crops_depend_only_on_their_index_and_skip_silence(tmp_path):
    import numpy as np

    from audiogen.train.codec import RandomCrops, StepSampler

    pcm = np.zeros(24000 * 4, dtype=np.int16)
    pcm[24000 * 2:] = (np.random.default_rng(0).standard_normal(24000 * 2) * 3000).astype(np.int16)
    np.save(tmp_path / "t.npy", pcm)  # first half silent
    a = RandomCrops([tmp_path / "t.npy"], 2400, seed=7, length=50)
    b = RandomCrops([tmp_path / "t.npy"], 2400, seed=7, length=50)
    assert torch.equal(a[13], b[13]) and not torch.equal(a[13], a[14])
    assert all(a[i].pow(2).mean().sqrt() > 1e-3 for i in range(20))
    assert a[0].shape == (1, 2400)
    assert list(StepSampler(3 * 2, 5 * 2)) == [6, 7, 8, 9]  # resuming at step 3, batch 2
    assert list(StepSampler(6, 10, rank=1, world=2)) == [13, 15, 17, 19]


# ------------------------------------------------------------------------------ balancer


def test_balancer_gives_each_loss_its_weight_share_whatever_its_scale():
    y = torch.randn(4, 1, 64, requires_grad=True)
    # two losses on disjoint halves of y, with wildly different gradient scales
    losses = {"big": 1e4 * (y[..., :32] ** 2).sum(), "small": 1e-4 * y[..., 32:].abs().sum()}
    bal = Balancer({"big": 3.0, "small": 1.0}, ema_decay=0.9)
    grad, norms = bal.gradient(losses, y)
    assert norms["big"] > 1e6 * norms["small"]
    per_item_big = grad[..., :32].flatten(1).norm(dim=1).mean()
    per_item_small = grad[..., 32:].flatten(1).norm(dim=1).mean()
    assert per_item_big == pytest.approx(0.75, rel=1e-4)
    assert per_item_small == pytest.approx(0.25, rel=1e-4)

    # the EMA state survives a checkpoint round trip and changes later gradients identically
    other = Balancer({"big": 3.0, "small": 1.0}, ema_decay=0.9)
    other.load_state_dict(bal.state_dict())
    losses2 = {"big": 1e4 * (y[..., :32] ** 3).sum(), "small": 1e-4 * y[..., 32:].abs().sum()}
    g1, _ = bal.gradient(losses2, y)
    g2, _ = other.gradient(losses2, y)
    assert torch.equal(g1, g2)
    fresh, _ = Balancer({"big": 3.0, "small": 1.0}, ema_decay=0.9).gradient(losses2, y)
    assert not torch.allclose(g1, fresh)


# ------------------------------------------------------------------------------ codebooks


def _tiny_cfg(**kw) -> CodecTrainConfig:
    return load_config(CodecTrainConfig, TINY, [f"{k}={v}" for k, v in kw.items()])


@pytest.mark.parametrize("threshold", [0.5, 0.0])
def test_dead_code_restart_revives_unused_codes(threshold, make_music):
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    codec = TrainableCodec(cfg.codec_config(), dead_code_threshold=threshold).train()
    wav = torch.from_numpy(make_music(seconds=1.0, seed=1)).unsqueeze(0).repeat(2, 1, 1)
    codec(wav, 4)  # k-means init on the first batch
    cb = codec.model.quantizer.vq.layers[0]._codebook
    dead = torch.arange(32)
    with torch.no_grad():  # half of codebook 0 parked far away from any embedding, never chosen
        cb.embed[dead] = 1e3
        cb.embed_avg[dead] = 1e3
        cb.cluster_size[dead] = 0.0
    def used_dead():
        codes = codec.model.quantizer.vq.encode(codec.model.encoder(wav), n_q=1)
        return int(torch.isin(codes.unique(), dead).sum())
    with torch.no_grad():
        assert used_dead() == 0
        codec(wav, 4)  # one training forward: the EMA update and dead-code restart
        revived = used_dead()
    if threshold > 0:
        assert (cb.embed[dead] != 1e3).all()
        assert revived > 0
    else:
        assert revived == 0


# ------------------------------------------------------------------------------ training


def test_reconstruction_loss_decreases_on_one_clip(make_music):
    torch.manual_seed(0)
    # reconstruction objectives only (the discriminator starts later), every codebook in use
    cfg = _tiny_cfg(disc_start_step=1000, lr=3e-3, **{"codec.target_bandwidths": "[1.8]"})
    parts = make_parts(cfg)
    wav = torch.from_numpy(make_music(seconds=0.5, seed=3)).unsqueeze(0)

    train_step(parts, wav, 0)  # k-means init happens here
    before = evaluate(parts.codec, parts.mel_loss, wav, 4)
    for step in range(1, 40):
        metrics = train_step(parts, wav, step)
    after = evaluate(parts.codec, parts.mel_loss, wav, 4)
    assert parts.codec.training  # evaluate() put it back
    assert after["eval/mel"] < 0.7 * before["eval/mel"], (before, after)
    assert after["eval/si_sdr_db"] > before["eval/si_sdr_db"]
    assert metrics["num_codebooks"] == 4
    assert 0 < metrics["codebook_usage"] <= 1


def test_adversarial_step_updates_the_discriminator(make_music):
    torch.manual_seed(0)
    parts = make_parts(_tiny_cfg())
    wav = torch.from_numpy(make_music(seconds=0.5, seed=4)).unsqueeze(0).repeat(2, 1, 1)
    before = [p.detach().clone() for p in parts.disc.parameters()]
    metrics = train_step(parts, wav, 0)
    assert {"loss/adv", "loss/feat", "loss/disc", "grad_norm/mel"} <= set(metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, parts.disc.parameters()))


def test_recipe_trains_on_real_music_and_exports_a_loadable_codec(tmp_path, debian_music_dir, audio_cache,
                                                                    real_tracks):
    from audiogen.audio.io import load_audio
    from audiogen.codec.base import load_codec

    out = tmp_path / "run"
    rc = _recipe().main(["--config", str(TINY), *_overrides(out, debian_music_dir, audio_cache, max_steps=6)])
    assert rc == 0
    codec = load_codec(out / "codec")
    assert codec.describe()["name"] == "codec-tiny"
    assert codec.num_codebooks == 4 and codec.cardinality == 64
    wav, sr = load_audio(real_tracks[0], sample_rate=codec.sample_rate, channels=1, offset_s=20, duration_s=2)
    codes = codec.encode(torch.from_numpy(wav)[None])
    assert codes.shape == (1, 4, 150)
    assert codes.unique().numel() > 1
    recon = codec.decode(codes)
    assert recon.shape == (1, 1, 150 * 320) and torch.isfinite(recon).all()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003", "step_0000006"]
    info = json.loads((out / "codec" / "training.json").read_text())
    assert info["steps"] == 6 and len(info["held_out"]) == 2 and len(info["train"]) == 1
    assert not set(info["held_out"]) & set(info["train"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss/mel" in r] == [2, 4, 6]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"  # redrawn at each checkpoint


def test_kill9_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, debian_music_dir, audio_cache):
    recipe = _recipe()
    a, b = tmp_path / "a", tmp_path / "b"
    assert recipe.main(["--config", str(TINY), *_overrides(a, debian_music_dir, audio_cache)]) == 0

    killed = subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(TINY),
         *_overrides(b, debian_music_dir, audio_cache)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **kill_env(5)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step_0000003"]  # steps 4-5 lost
    assert json.loads((b / "codec" / "training.json").read_text())["steps"] == 3  # exported with the checkpoint

    assert recipe.main(["--config", str(TINY), *_overrides(b, debian_music_dir, audio_cache)]) == 0
    _assert_same_final_state(a, b)
    # the resumed run dropped the killed run's lines after step 3 and logged the same figures again
    assert _figures(a) == _figures(b) and len(start_records(b / "log.jsonl")) == 2


def _figures(out: Path) -> list[str]:
    """``log.jsonl`` without its start lines (one per run: a resumed run has two)."""
    return [x for x in (out / "log.jsonl").read_text().splitlines() if '"event": "start"' not in x]


def _run_two_ranks(out: Path, music: Path, cache: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*two_ranks(), str(RECIPE), "--config", str(TINY), *_overrides(out, music, cache)],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})})


@pytest.mark.slow
def test_two_ranks_kill9_of_one_rank_then_resume_is_bit_identical_to_an_uninterrupted_two_rank_run(
        tmp_path, debian_music_dir, audio_cache):
    """The codec trainer as one gloo job of 2 processes: rank 1 killed at step 5, the job rerun."""
    a, b = tmp_path / "a", tmp_path / "b"
    whole = _run_two_ranks(a, debian_music_dir, audio_cache)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert_ranks(a)
    killed = _run_two_ranks(b, debian_music_dir, audio_cache, env_extra=kill_env(5, rank=1))
    assert killed.returncode != 0, killed.stderr[-2000:]
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step_0000003"]
    # each rank's own balancer statistics are saved by that rank
    assert {"rank_state_0.pt", "rank_state_1.pt"} <= {p.name for p in (b / "checkpoints" / "step_0000003").iterdir()}
    resumed = _run_two_ranks(b, debian_music_dir, audio_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_ranks(b, runs=2)
    _assert_same_final_state(a, b)
    assert _figures(a) == _figures(b)
    assert json.loads((b / "codec" / "training.json").read_text())["samples_seen"] == 8 * 2 * 2  # 2 ranks x batch 2


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, debian_music_dir, audio_cache):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(RECIPE), "--config", str(TINY),
         *_overrides(out, debian_music_dir, audio_cache, max_steps=100000, save_every=100000)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 90
    while not (out / "tensorboard").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # the loop has started once its logger exists
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: checkpoint saved" in stdout
    ckpts = list((out / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1 and (ckpts[0] / "trainer.json").is_file()


def test_config_errors_are_readable(tmp_path, capsys):
    with pytest.raises(AudiogenError, match="unknown config keys"):
        load_config(CodecTrainConfig, TINY, ["no_such_key=1"])
    with pytest.raises(AudiogenError, match="key=value"):
        load_config(CodecTrainConfig, TINY, ["max_steps"])
    with pytest.raises(AudiogenError, match="unknown codec config keys"):
        load_config(CodecTrainConfig, TINY, ["codec.bogus=3"])
    with pytest.raises(AudiogenError, match="max_steps: expected int"):
        load_config(CodecTrainConfig, TINY, ["max_steps=many"])
    assert load_config(CodecTrainConfig, TINY, ["lr=1e-3"]).lr == 1e-3
    assert load_config(CodecTrainConfig, TINY, ["lr=1", "codec.n_q=8", "betas=[0.8, 0.99]"]).betas == (0.8, 0.99)
    with pytest.raises(AudiogenError, match="need 4 codebooks"):
        load_config(CodecTrainConfig, TINY, ["codec.n_q=2"])
    with pytest.raises(AudiogenError, match="dead_code_threshold"):  # healthy codes would count as dead
        load_config(CodecTrainConfig, TINY, ["dead_code_threshold=2"])
    with pytest.raises(AudiogenError, match="not found"):
        load_config(CodecTrainConfig, tmp_path / "missing.yaml")
    rc = _recipe().main(["--config", str(TINY), f"data_dir={tmp_path}", f"out_dir={tmp_path / 'o'}"])
    assert rc == 1
    assert "no audio files" in capsys.readouterr().err
    rc = _recipe().main(["--config", str(TINY), f"data_dir={tmp_path / 'nope'}", f"out_dir={tmp_path / 'o'}"])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes(b"RIFF not really audio")
    (bad / "b.flac").write_bytes(b"")
    (bad / "c.ogg").write_text("not ogg")
    rc = _recipe().main(["--config", str(TINY), f"data_dir={bad}", f"out_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "none of the 3 audio files" in err
    assert "skipped:" in err and "a.wav" in err and "b.flac" in err and "Traceback" not in err


def test_a_corrupt_file_is_skipped_not_fatal(tmp_path, make_music):
    from audiogen.train.codec import decode_corpus

    good = A.write_audio(tmp_path / "good.wav", make_music(2.0, 24000, 1), 24000)
    broken = tmp_path / "broken.mp3"
    broken.write_text("this is not an mp3")
    caches, skipped = decode_corpus([good, broken], 24000, tmp_path / "cache", progress=False)
    assert list(caches) == [good] and caches[good].is_file()
    assert [f for f, _ in skipped] == [broken] and "broken.mp3" in skipped[0][1]


def test_quantizer_warmup_trains_an_autoencoder_then_kmeans_inits_on_learned_embeddings(make_music):
    torch.manual_seed(0)
    cfg = _tiny_cfg(disc_start_step=1000, lr=3e-3, quantizer_warmup_steps=5, **{"codec.target_bandwidths": "[1.8]"})
    parts = make_parts(cfg)
    layers = parts.codec.model.quantizer.vq.layers
    wav = torch.from_numpy(make_music(seconds=0.5, seed=3)).unsqueeze(0)
    for step in range(5):
        metrics = train_step(parts, wav, step)
        assert metrics["loss/commit"] == 0.0 and metrics["codebook_usage"] == pytest.approx(1 / cfg.codec_config().bins)
    assert not any(bool(layer._codebook.inited) for layer in layers)  # untouched during warm-up
    metrics = train_step(parts, wav, 5)
    assert all(bool(layer._codebook.inited) for layer in layers)
    assert metrics["codebook_usage"] > 1 / cfg.codec_config().bins


def test_decode_cache_is_the_whole_file_decoded_to_mono_int16(tmp_path, real_tracks, monkeypatch):
    """The training cache is written a block at a time, and equals decoding the whole file."""
    import numpy as np

    monkeypatch.setattr(A, "iter_audio", lambda *a, _real=A.iter_audio, **kw: _real(*a, **{**kw, "block_s": 2.0}))
    src = real_tracks[0]
    cache = decode_to_cache(src, 24000, tmp_path / "cache")
    got = np.load(cache, mmap_mode="r")
    wav, _ = A.load_audio(src, sample_rate=24000, channels=1)
    want = np.clip(np.round(wav[0] * 32767), -32768, 32767).astype(np.int16)
    assert got.dtype == np.int16 and got.shape == want.shape and np.abs(got.astype(np.int32) - want).max() <= 1
    assert decode_to_cache(src, 24000, tmp_path / "cache") == cache and os.listdir(tmp_path / "cache") == [cache.name]

