"""The stft codec (the default model's): windowed = whole-file, save/load, training learns, codebooks stay in use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from audiogen.codec import base as C
from audiogen.codec.stft import STFTCodecConfig, STFTCodecModel
from audiogen.train.codec import CodecTrainConfig, evaluate, make_parts, train_step
from audiogen.train.loop import load_config

REPO = Path(__file__).resolve().parents[2]
STFT = REPO / "recipes" / "configs" / "codec_stft.yaml"
#: the default config's shape, narrowed so a step takes milliseconds
SMALL = {"dim": 32, "encoder_layers": 1, "decoder_layers": 2, "latent_dim": 16, "n_q": 4, "bins": 32,
         "n_mels": 32, "target_bandwidths": (0.5, 1.0)}  # 2 or 4 codebooks of 5 bits


def _codec(seed: int = 0, **over) -> C.STFTCodec:
    torch.manual_seed(seed)
    cfg = STFTCodecConfig(**{**SMALL, **over})
    model = STFTCodecModel(cfg)
    model.train()
    with torch.no_grad():  # k-means init on a noise batch, so codes depend on the input
        model(torch.randn(2, 1, cfg.hop * 200) * 0.1, cfg.n_q)
    return C.STFTCodec(model.eval(), cfg, "stft-small")


def _small_train_cfg(tmp_path, **extra):
    over = {f"codec.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in SMALL.items()}
    over.update({"segment_s": 0.5, "batch_size": 2, "out_dir": tmp_path / "run", "mel_max_log2": 9,
                 "n_mels": 32, "dead_code_threshold": 0.01})
    over.update(extra)
    return load_config(CodecTrainConfig, STFT, [f"{k}={v}" for k, v in over.items()])


def test_frames_and_lengths_follow_the_hop(make_music):
    codec = _codec()
    wav = torch.from_numpy(make_music(2.01, seed=1))[None]
    codes = codec.encode(wav)
    assert codec.frame_rate == 50.0 and codes.shape == (1, 4, -(-wav.shape[-1] // 480))
    out = codec.decode(codes)
    assert out.shape == (1, 1, codes.shape[-1] * 480) and torch.isfinite(out).all()


@pytest.mark.parametrize("decode_phase", ["predicted", "codes"])
def test_windowed_encoding_and_decoding_equal_the_whole_file(make_music, decode_phase):
    whole, chunked = _codec(decode_phase=decode_phase), _codec(decode_phase=decode_phase)
    whole.window_s = 1e9
    chunked.window_s, chunked.context_s = 2.0, 1.0
    wav = torch.from_numpy(make_music(11.3, seed=3))[None]
    a, b = chunked.encode(wav), whole.encode(wav)
    assert len(chunked._windows(a.shape[-1])) > 4
    # the receptive field (encoder + decoder ConvNeXt stacks, STFT edges) lies inside the 1 s context
    assert (a == b).float().mean() > 0.999
    ya, yb = chunked.decode(b), whole.decode(b)
    assert torch.allclose(ya, yb, atol=1e-4 * float(yb.abs().max()))


def test_saved_folder_loads_the_same_codec(tmp_path, make_music):
    codec = _codec()
    C.save_codec(codec, tmp_path / "c")
    loaded = C.load_codec(tmp_path / "c", bandwidth=0.5)
    assert loaded.describe()["backend"] == "stft" and loaded.num_codebooks == 2
    wav = torch.from_numpy(make_music(1.5))[None]
    assert torch.equal(loaded.encode(wav), codec.encode(wav)[:, :2])
    with pytest.raises(Exception, match="not one this codec was trained for"):
        C.load_codec(tmp_path / "c", bandwidth=0.75)


def test_training_steps_lower_the_held_out_loss_and_use_many_codes(tmp_path, make_music):
    torch.manual_seed(0)
    cfg = _small_train_cfg(tmp_path, lr=3e-3, lr_schedule="constant")
    parts = make_parts(cfg)
    wav = torch.stack([torch.from_numpy(make_music(0.5, seed=s)) for s in range(2)])
    train_step(parts, wav, 0)  # k-means init happens here
    before = evaluate(parts.codec, parts.mel_loss, wav, 4)
    for step in range(1, 40):
        metrics = train_step(parts, wav, step)
    after = evaluate(parts.codec, parts.mel_loss, wav, 4)
    assert after["eval/mel"] < 0.7 * before["eval/mel"], (before, after)
    assert metrics["codebook_usage"] > 0.3  # k-means on the batch spreads the codes (a collapse gives 1/32)


def test_dead_codes_restart_from_the_current_batch():
    torch.manual_seed(0)
    model = STFTCodecModel(STFTCodecConfig(**SMALL), dead_code_threshold=0.5).train()
    stage = model.quantizers[0]
    wav = torch.randn(2, 1, 480 * 50) * 0.1
    model(wav, 4)
    stage.usage[:10] = 0.0  # ten codes that nobody picks
    before = stage.codebook.weight[:10].clone()
    model(wav, 4)
    assert model.last_restarted >= 10
    assert not torch.equal(before, stage.codebook.weight[:10])


def test_recipe_trains_the_stft_backend_and_exports_a_loadable_codec(tmp_path, debian_music_dir, real_tracks):
    from audiogen.audio.io import load_audio

    spec = importlib.util.spec_from_file_location("train_codec_recipe", REPO / "recipes" / "train_codec.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    over = {f"codec.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in SMALL.items()}
    over.update({"out_dir": tmp_path / "run", "data_dir": debian_music_dir, "cache_dir": tmp_path / "cache",
                 "max_tracks": 1, "holdout_tracks": 2, "max_steps": 4, "save_every": 2, "log_every": 2,
                 "eval_every": 2, "eval_crops": 2, "segment_s": 0.5, "batch_size": 2, "mel_max_log2": 9,
                 "n_mels": 32})
    assert recipe.main(["--config", str(STFT), *[f"{k}={v}" for k, v in over.items()]]) == 0
    codec = C.load_codec(tmp_path / "run" / "codec")
    assert codec.describe()["backend"] == "stft" and codec.num_codebooks == 4
    wav, _ = load_audio(real_tracks[0], sample_rate=24000, channels=1, offset_s=20, duration_s=2)
    codes = codec.encode(torch.from_numpy(wav)[None])
    assert codes.shape == (1, 4, 100) and codes[0, 0].unique().numel() > 1


def test_phases_drawn_from_codes_are_reproducible_and_differ_between_frames():
    from audiogen.codec.stft import codes_phase

    codes = torch.randint(0, 1024, (2, 6, 40))
    a, b = codes_phase(codes, 961), codes_phase(codes.clone(), 961)
    assert a.shape == (2, 961, 40) and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) < 2 * torch.pi
    # frames whose codes (or whose previous frame's codes) differ get different phases
    seq = torch.full((1, 6, 40), 7)
    seq[..., 5] = 8
    p = codes_phase(seq, 961)
    assert not torch.equal(p[..., 5], p[..., 4]) and not torch.equal(p[..., 6], p[..., 4])
    assert torch.equal(p[..., 10], p[..., 4])  # steady codes, steady phases (2.7 % of real frames repeat)
    # ... and frame t depends only on frames t and t - 1: the same in every decoding window
    assert torch.equal(codes_phase(codes[..., 10:], 961)[..., 1:], a[..., 11:])
    with pytest.raises(Exception, match="decode_phase"):
        STFTCodecConfig.from_dict({"decode_phase": "random"})
