"""Fréchet Audio Distance: the distance, FAD-inf, stats files, cache, embedders, CLI, real-music degradation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audiogen.audio.io import load_audio, write_audio
from audiogen.cli import main
from audiogen.errors import AudiogenError
from audiogen.metrics import fad as F
from audiogen.metrics.embedders import BuiltinEmbedder, EncodecEmbedder, VGGish, VGGishEmbedder, load_embedder


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small eigendecompositions are ~100x slower with 2 BLAS threads on a busy 2-core box."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def random_cov(rng, d, scale=1.0):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return scale * (a @ a.T) + 0.1 * np.eye(d)


def reference_fad(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The formula of fadtk and frechet_audio_distance (after pytorch-fid), recomputed here:
    scipy's sqrtm of the product, an eps*I retry if it is not finite, imaginary parts dropped."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


# ------------------------------------------------------------------------------ distance


def test_distance_is_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    y = rng.standard_normal((300, 16)) * 2 + 1
    sx, sy = F.embedding_stats(x), F.embedding_stats(y)
    assert F.fad(sx, F.embedding_stats(x.copy())) == pytest.approx(0.0, abs=1e-9)
    d_xy, d_yx = F.fad(sx, sy), F.fad(sy, sx)
    assert d_xy > 1.0
    assert d_xy == pytest.approx(d_yx, rel=1e-10)


def test_distance_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(1)
    # Commuting covariances (shared eigenvectors): FAD = |dm|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    expect = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = F.frechet_distance(m1, q @ np.diag(a) @ q.T, m2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expect, rel=1e-9)
    # Non-commuting 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M with non-negative eigenvalues.
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 3.0]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expect = 1.0**2 + 2.0**2 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert F.frechet_distance(np.zeros(2), s1, np.array([1.0, 2.0]), s2) == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("d,n", [(64, 2000), (128, 600)])
def test_distance_equals_fadtk_and_frechet_audio_distance_formula(d, n):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    y = np.tanh(rng.standard_normal((n, d)) @ rng.standard_normal((d, d))) + 0.2
    sx, sy = F.embedding_stats(x), F.embedding_stats(y)
    # their statistics: np.mean / np.cov(rowvar=False)
    np.testing.assert_allclose(sx.sigma, np.cov(x, rowvar=False), rtol=1e-12)
    ref = reference_fad(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert F.fad(sx, sy) == pytest.approx(ref, rel=1e-6)


def test_rank_deficient_covariance_gives_finite_non_negative_distance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 64))  # 20 frames in 64-d: covariance of rank 19
    y = rng.standard_normal((30, 64)) + 0.5
    d = F.fad(F.embedding_stats(x), F.embedding_stats(y))
    assert np.isfinite(d) and d > 0
    assert F.fad(F.embedding_stats(x), F.embedding_stats(x)) == pytest.approx(0.0, abs=1e-8)
    # An exactly singular covariance (Cholesky fails): the eigen fallback still factors it.
    v = rng.standard_normal((64, 3))
    singular = v @ v.T
    f = F.covariance_factor(singular)
    np.testing.assert_allclose(f @ f.T, singular, atol=1e-9)
    s2 = np.cov(y, rowvar=False)
    assert F.trace_sqrt_product(singular, s2, f) == pytest.approx(
        np.trace(np.real(__import__("scipy").linalg.sqrtm(singular @ s2))), rel=1e-5)


def test_fad_inf_recovers_known_limit_of_biased_estimate():
    # Reference: exactly N(0, I). Generated frames: a population whose mean is exactly m and
    # covariance exactly I (centred and whitened), so its true FAD is |m|^2 = 1. A random subset
    # of n frames is biased by ~c (1/n - 1/N_all) (sample mean/covariance noise, finite-population
    # corrected); c/N_all ~ 0.003 here, so FAD-inf must land within 0.02 of 1.
    rng = np.random.default_rng(4)
    d, n_all = 16, 6000
    ref = F.Stats(np.zeros(d), np.eye(d), 10**9)
    z = rng.standard_normal((n_all, d))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    frames = z + 1 / np.sqrt(d)
    assert F.fad(ref, F.embedding_stats(frames)) == pytest.approx(1.0, abs=1e-9)
    res = F.fad_inf(ref, frames, steps=20, min_n=200, seed=0)
    biased = F.fad(ref, F.embedding_stats(frames[rng.choice(n_all, 200, replace=False)]))
    assert biased - 1.0 > 0.1  # the small-n estimate is visibly biased upwards ...
    assert res.score == pytest.approx(1.0, abs=0.02)  # ... the extrapolation is not
    assert res.slope > 0 and len(res.points) == 20


def test_bootstrap_interval_is_reproducible_and_widens_with_fewer_files():
    rng = np.random.default_rng(5)
    ref = F.embedding_stats(rng.standard_normal((2000, 8)))
    files = [rng.standard_normal((40, 8)) + 0.3 * rng.standard_normal(8) for _ in range(30)]
    a = F.bootstrap_fad(ref, files, n_boot=100, seed=1)
    assert a == F.bootstrap_fad(ref, files, n_boot=100, seed=1)
    assert a["low"] < a["high"]
    few = F.bootstrap_fad(ref, files[:5], n_boot=100, seed=1)
    assert few["high"] - few["low"] > a["high"] - a["low"]


def test_per_song_fad_ranks_the_outlier_file_worst():
    rng = np.random.default_rng(6)
    ref = F.embedding_stats(rng.standard_normal((2000, 8)))
    files = [rng.standard_normal((200, 8)) for _ in range(4)] + [rng.standard_normal((200, 8)) + 2.0]
    scores = F.per_song_fad(ref, files)
    assert int(np.argmax(scores)) == 4


def test_stats_npz_roundtrip_and_mismatched_embedder_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    s = F.embedding_stats(rng.standard_normal((100, 6)), n_files=3, embedder="builtin-v1")
    p = F.save_stats(tmp_path / "ref.npz", s)
    s2, meta = F.load_stats(p)
    np.testing.assert_array_equal(s2.sigma, s.sigma)
    assert (s2.n_frames, s2.n_files, s2.embedder) == (100, 3, "builtin-v1")
    other = F.save_stats(tmp_path / "other.npz", F.Stats(s.mu, s.sigma, 100, 3, "vggish-abc"))
    with pytest.raises(AudiogenError, match="vggish-abc"):
        F.load_set(other, BuiltinEmbedder())
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(AudiogenError, match="not an audiogen FAD statistics file"):
        F.load_stats(tmp_path / "junk.npz")


# ------------------------------------------------------------------------- cache, embed


class CountingEmbedder(BuiltinEmbedder):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def embed(self, wav, sample_rate):
        self.calls += 1
        return super().embed(wav, sample_rate)


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, make_music):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(a, make_music(2.0, 16000, 1, seed=0), 16000)
    write_audio(b, make_music(2.0, 16000, 1, seed=1), 16000)
    cache = F.EmbeddingCache(tmp_path / "cache")
    emb = CountingEmbedder()
    first = F.embed_files([a, b], emb, cache, progress=False)
    assert emb.calls == 2
    again = F.embed_files([a, b], emb, cache, progress=False)
    assert emb.calls == 2  # both from the cache
    np.testing.assert_array_equal(first[0], again[0])
    write_audio(a, make_music(2.0, 16000, 1, seed=9), 16000)  # same name, new content
    changed = F.embed_files([a, b], emb, cache, progress=False)
    assert emb.calls == 3  # only the changed file was re-embedded
    assert not np.allclose(changed[0], first[0])
    np.testing.assert_array_equal(changed[1], first[1])


def test_file_list_input_resolves_relative_paths_and_reports_missing_ones(tmp_path, make_music):
    write_audio(tmp_path / "x.wav", make_music(1.0, 16000, 1), 16000)
    (tmp_path / "list.txt").write_text("# my set\nx.wav\n")
    assert F.resolve_audio_set(tmp_path / "list.txt") == [tmp_path / "x.wav"]
    (tmp_path / "bad.txt").write_text("x.wav\nmissing.wav\n")
    with pytest.raises(AudiogenError, match="line 2: missing.wav"):
        F.resolve_audio_set(tmp_path / "bad.txt")


def test_vggish_layout_matches_torchvggish_and_loads_weights_file(tmp_path, make_music):
    net = VGGish()
    keys = set(net.state_dict())
    # torchvggish's checkpoint names (features.{0,3,6,8,11,13}, embeddings.{0,2,4})
    assert {"features.0.weight", "features.13.bias", "embeddings.0.weight", "embeddings.4.bias"} <= keys
    assert net.state_dict()["embeddings.0.weight"].shape == (4096, 12288)
    import torch

    torch.save(net.state_dict(), tmp_path / "vggish.pth")
    emb = VGGishEmbedder(tmp_path / "vggish.pth")
    wav = make_music(3.0, 24000, 2)
    frames = emb.embed(wav, 24000)  # resampled to 16 kHz: three 0.96 s examples
    assert frames.shape == (3, 128) and frames.dtype == np.float32
    batch = emb.embed_batch([wav, wav[:, :24000]], 24000)
    np.testing.assert_allclose(batch[0], frames, rtol=1e-4, atol=1e-5)
    assert batch[1].shape == (1, 128)
    with pytest.raises(AudiogenError, match=r"VGGish weights not found at .*nope\.pth"):
        VGGishEmbedder(tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"junk")
    with pytest.raises(AudiogenError, match="not a VGGish checkpoint"):
        VGGishEmbedder(tmp_path / "bad.pth")


def test_clap_embedder_runs_a_local_tiny_checkpoint(tmp_path, make_music):
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor

    cfg = ClapAudioConfig(spec_size=256, window_size=8, num_mel_bins=64, depths=[1, 1], num_attention_heads=[1, 1],
                          patch_embeds_hidden_size=8, hidden_size=16, projection_dim=8, patch_size=4,
                          patch_stride=(4, 4))
    ClapAudioModelWithProjection(cfg).save_pretrained(tmp_path / "clap")
    ClapFeatureExtractor().save_pretrained(tmp_path / "clap")
    emb = load_embedder("clap", weights=tmp_path / "clap")
    frames = emb.embed(make_music(12.0, 24000, 1), 24000)  # 10 s chunk + 2 s tail (dropped: < 5 s)
    assert frames.shape == (1, 8) and np.isfinite(frames).all()
    assert emb.sample_rate == 48000 and emb.cache_key.startswith("clap-")
    with pytest.raises(AudiogenError, match="CLAP model folder not found"):
        load_embedder("clap", weights=tmp_path / "none")


def test_encodec_embedder_gives_one_frame_per_codec_hop(tiny_codec, make_music):
    emb = EncodecEmbedder("tiny")
    frames = emb.embed(make_music(2.0, 24000, 1), 24000)
    assert frames.shape == (2 * 75, tiny_codec.config.dimension)
    assert not emb.comparable  # random weights


# --------------------------------------------------------------------------------- CLI


@pytest.fixture
def two_sets(tmp_path, make_music):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_audio(ref / f"r{i}.wav", make_music(3.0, 22050, 2, seed=i), 22050)
        w = make_music(3.0, 24000, 1, seed=10 + i)
        write_audio(gen / f"g{i}.flac", w + 0.05 * rng.standard_normal(w.shape).astype(np.float32), 24000)
    return ref, gen


def test_cli_json_per_song_and_saved_reference_stats(two_sets, tmp_path, capsys):
    ref, gen = two_sets
    args = ["fad", str(ref), str(gen), "--cache", str(tmp_path / "c"), "--json"]
    assert main([*args, "--save-stats", str(tmp_path / "ref.npz"), "--per-song", str(tmp_path / "ps.csv"),
                 "--inf", "--bootstrap", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fad"] > 0 and out["embedder"]["name"] == "builtin"
    assert "not comparable with published" in out["warning"]
    assert out["gen"]["files"] == 3 and "score" in out["fad_inf"] and out["bootstrap"]["n_boot"] == 20
    rows = (tmp_path / "ps.csv").read_text().splitlines()
    assert rows[0] == "file,fad,frames" and len(rows) == 4
    assert (tmp_path / "ps.png").stat().st_size > 1000
    # the saved reference statistics give the same FAD without the reference audio
    shutil.rmtree(ref)
    assert main(["fad", str(tmp_path / "ref.npz"), str(gen), "--cache", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fad"] == pytest.approx(out["fad"], rel=1e-12)


def test_cli_table_and_readable_errors(two_sets, tmp_path, capsys, monkeypatch):
    ref, gen = two_sets
    assert main(["fad", str(ref), str(gen), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FAD ") and "WARNING" in out
    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(tmp_path / "w"))
    assert main(["fad", str(ref), str(gen), "--embedder", "vggish"]) == 1
    err = capsys.readouterr().err.strip()
    assert "vggish-10086976.pth" in err and "\n" not in err and "Traceback" not in err
    assert main(["fad", str(tmp_path / "stats.npz"), str(gen), "--no-cache"]) == 1
    assert "no such statistics file" in capsys.readouterr().err
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("not statistics")
    for name in ("empty.npz", "text.npz"):
        assert main(["fad", str(tmp_path / name), str(gen), "--no-cache"]) == 1
        assert "not an audiogen FAD statistics file" in capsys.readouterr().err
    assert main(["fad", str(ref), str(gen), "--no-cache", "--bootstrap", "5", "--seed", "-1"]) == 1
    assert "--seed must be >= 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("in the way")
    assert main(["fad", str(ref), str(gen), "--cache", str(tmp_path / "file" / "cache")]) == 1
    assert "cannot create the folder" in capsys.readouterr().err
    F.save_stats(tmp_path / "g.npz", F.embedding_stats(np.random.default_rng(0).standard_normal((50, 206)),
                                                       embedder="builtin-v1"))
    assert main(["fad", str(ref), str(tmp_path / "g.npz"), "--no-cache", "--inf"]) == 1
    assert "needs the audio files" in capsys.readouterr().err


# ----------------------------------------------------------------------- real music


def excerpts(paths, at, seconds=10.0, sr=16000):
    """``seconds`` of each file starting at fraction ``at`` of its duration, mono at ``sr``."""
    from audiogen.audio.io import audio_info

    return [load_audio(p, sr, 1, offset_s=at * audio_info(p).duration_s, duration_s=seconds)[0] for p in paths]


def add_noise(wav, snr_db, rng):
    p = float(np.mean(wav**2))
    return wav + rng.standard_normal(wav.shape).astype(np.float32) * np.sqrt(p / 10 ** (snr_db / 10))


def lowpass(wav, cutoff_hz, sr=16000):
    from scipy.signal import butter, sosfiltfilt

    return sosfiltfilt(butter(8, cutoff_hz, fs=sr, output="sos"), wav, axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def real_excerpts(real_tracks):
    # Reference and generated sets are *different* passages of the same 16 tracks.
    return excerpts(real_tracks, 0.25), excerpts(real_tracks, 0.6)


def test_fad_rises_monotonically_as_real_music_is_degraded(real_excerpts):
    # (The random-weight 'tiny' codec embedder is not used here: its FAD does not track
    # degradation, ~4e-7 for every SNR down to 10 dB, because its features carry no meaning.)
    emb = BuiltinEmbedder()
    ref_wavs, gen_wavs = real_excerpts

    def score(wavs):
        return F.fad(ref, F.embedding_stats(np.concatenate([emb.embed(w, 16000) for w in wavs])))

    ref = F.embedding_stats(np.concatenate([emb.embed(w, 16000) for w in ref_wavs]))
    rng = np.random.default_rng(0)
    noisy = [score(gen_wavs)] + [score([add_noise(w, snr, rng) for w in gen_wavs]) for snr in (30, 20, 10, 0)]
    assert all(b > a for a, b in zip(noisy, noisy[1:])), noisy
    lp = [noisy[0]] + [score([lowpass(w, fc) for w in gen_wavs]) for fc in (4000, 2000, 1000, 500)]
    assert all(b > a for a, b in zip(lp, lp[1:])), lp


@pytest.mark.gpu
def test_vggish_on_gpu_matches_cpu(make_music):
    cpu = VGGishEmbedder(random_init=True)
    gpu = VGGishEmbedder(random_init=True)
    gpu.model.load_state_dict(cpu.model.state_dict())
    gpu.model.to("cuda")
    gpu.device = __import__("torch").device("cuda")
    wav = make_music(3.0, 16000, 1)
    np.testing.assert_allclose(gpu.embed(wav, 16000), cpu.embed(wav, 16000), rtol=2e-2, atol=2e-3)  # TF32 convs
