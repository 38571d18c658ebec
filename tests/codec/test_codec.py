"""The codec layer: contract shapes, bandwidths, chunked == whole, determinism, loading, errors."""

from __future__ import annotations

import math
import time

import pytest
import torch

from audiogen.codec import base as C
from audiogen.errors import AudiogenError


def test_tiny_codec_round_trip_shapes_and_frame_rate(tiny_codec, make_music):
    wav = torch.from_numpy(make_music(1.3))[None]  # [1, 1, 31200]: not a multiple of the hop
    codes = tiny_codec.encode(wav)
    assert codes.dtype == torch.long
    assert codes.shape == (1, tiny_codec.num_codebooks, math.ceil(wav.shape[-1] / tiny_codec.hop_length))
    assert tiny_codec.frame_rate == 75.0 and tiny_codec.sample_rate == 24000
    assert 0 <= int(codes.min()) and int(codes.max()) < tiny_codec.cardinality
    out = tiny_codec.decode(codes)
    assert out.shape == (1, 1, codes.shape[-1] * tiny_codec.hop_length) and torch.isfinite(out).all()


def test_tiny_codec_codes_follow_the_input(tiny_codec, make_music):
    a = tiny_codec.encode(torch.from_numpy(make_music(2.0, seed=1))[None])
    b = tiny_codec.encode(torch.from_numpy(make_music(2.0, seed=2))[None])
    assert len(torch.unique(a[0, 0])) > 8  # not collapsed onto one code
    assert (a != b).float().mean() > 0.3


@pytest.mark.parametrize(
    "name,expected",
    [("encodec_24khz", {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}),
     ("encodec_48khz", {3.0: 2, 6.0: 4, 12.0: 8, 24.0: 16})],
)
def test_codebook_count_per_bandwidth_matches_encodec(name, expected):
    cfg = C.NAMED_CONFIGS[name]
    for bw, k in expected.items():
        assert C.num_codebooks_for_bandwidth(cfg, bw) == k
    with pytest.raises(AudiogenError, match="not one this codec was trained for"):
        C.num_codebooks_for_bandwidth(cfg, 5.0)


@pytest.fixture(scope="module")
def fake_pretrained_weights(tmp_path_factory):
    """A checkpoint with the real 24 kHz architecture (random values), where the loader looks."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = C.build_encodec_model(C.NAMED_CONFIGS["encodec_24khz"])
    torch.save(model.state_dict(), d / C.PRETRAINED_FILES["encodec_24khz"])
    return d


def test_pretrained_24khz_loads_from_a_local_file(fake_pretrained_weights, monkeypatch):
    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(fake_pretrained_weights))
    for bw, k in [(1.5, 2), (6.0, 8), (24.0, 32)]:
        codec = C.load_codec("encodec_24khz", bandwidth=bw)
        assert (codec.num_codebooks, codec.cardinality, codec.frame_rate, codec.channels) == (k, 1024, 75.0, 1)
        codes = codec.encode(torch.zeros(2, 1, 24000))
        assert codes.shape == (2, k, 75)
        assert codec.decode(codes).shape == (2, 1, 24000)
    assert codec.describe()["weights_sha256"]


def test_pretrained_48khz_architecture_is_stereo_at_150_hz():
    cfg = C.NAMED_CONFIGS["encodec_48khz"]
    codec = C.EncodecCodec(C.build_encodec_model(cfg), cfg, "encodec_48khz", C.num_codebooks_for_bandwidth(cfg, 6.0))
    codes = codec.encode(torch.zeros(1, 2, 48000))
    assert codes.shape == (1, 4, 150) and codec.decode(codes).shape == (1, 2, 48000)


def test_missing_pretrained_weights_fail_fast_with_path_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(AudiogenError) as e:
        C.load_codec("encodec_48khz")
    msg = str(e.value)
    assert str(tmp_path / "encodec_48khz-7e698e3e.th") in msg and "https://" in msg and "never downloads" in msg
    assert time.monotonic() - t0 < 5  # no network attempt, no hang


def test_corrupt_weights_file_is_a_user_error(tmp_path):
    bad = tmp_path / "encodec_24khz-d7cc33bc.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AudiogenError, match="not a valid encodec_24khz checkpoint"):
        C.load_codec("encodec_24khz", weights=bad)


def test_unknown_codec_names_the_choices():
    with pytest.raises(AudiogenError, match="unknown codec 'nope'.*encodec_24khz"):
        C.load_codec("nope")


def test_chunked_encoding_equals_whole_encoding(make_music):
    whole = C.load_codec("tiny")
    whole.window_s, whole.cpu_window_s = 1e9, None  # one window: the whole signal at once
    chunked = C.load_codec("tiny")
    chunked.window_s, chunked.context_s, chunked.cpu_window_s = 2.0, 0.5, None
    wav = torch.from_numpy(make_music(11.7, seed=3))[None]
    a, b = chunked.encode(wav), whole.encode(wav)
    assert len(chunked._windows(a.shape[-1])) > 4
    assert torch.equal(a, b)
    ya, yb = chunked.decode(a), whole.decode(b)
    assert torch.allclose(ya, yb, atol=1e-5 * float(yb.abs().max()) + 1e-9)


def test_a_causal_codec_on_cpu_cuts_30s_windows_with_left_context_only(make_music):
    """On CPU a causal codec's windows are 30 s (cpu_window_s): a 30 s prep segment is one window, with no
    context computed and thrown away; a longer input gets windows with context on the left only."""
    codec = C.load_codec("tiny")
    assert codec.causal and codec.window_seconds == 30.0 and codec.window_s == 10.0
    fr = codec.frame_rate
    assert codec._windows(int(30 * fr)) == [(0, 0, int(30 * fr), int(30 * fr))]
    windows = codec._windows(int(70 * fr))
    assert [(a, b) for _, a, b, _ in windows] == [(0, 2250), (2250, 4500), (4500, 5250)]
    assert all(ce == b and cs == max(0, a - int(codec.context_s * fr)) for cs, a, b, ce in windows)
    # and the codes equal one pass over the whole input (the tiny codec sees less than 1 s back)
    wav = torch.from_numpy(make_music(70.0, seed=2))[None]
    whole = C.load_codec("tiny")
    whole.cpu_window_s = 1e9
    assert torch.equal(codec.encode(wav), whole.encode(wav))


def test_long_inputs_are_processed_in_bounded_windows(monkeypatch):
    """A one-hour file never reaches the network in one piece: window size is independent of length."""
    codec = C.load_codec("tiny")
    seen = []

    def fake_encode(wav):
        seen.append(wav.shape[-1])
        return torch.zeros(wav.shape[0], codec.num_codebooks, wav.shape[-1] // codec.hop_length, dtype=torch.long)

    monkeypatch.setattr(codec, "_encode_window", fake_encode)
    hour = torch.zeros(1, 1, 3600 * codec.sample_rate)
    codes = codec.encode(hour)
    assert codes.shape[-1] == 3600 * 75
    bound = (codec.window_seconds + 2 * codec.context_s) * codec.sample_rate * codec.windows_per_call
    assert max(seen) <= bound and max(seen) < hour.shape[-1] / 100


def test_batched_encoding_equals_one_by_one(tiny_codec, make_music):
    wavs = torch.stack([torch.from_numpy(make_music(3.0, seed=s)) for s in range(3)])
    together = tiny_codec.encode(wavs)
    alone = torch.cat([tiny_codec.encode(w[None]) for w in wavs])
    assert torch.equal(together, alone)


def test_a_cpu_batch_goes_through_the_convolutions_row_by_row_and_through_the_lstm_together(tiny_lstm_codec, make_music,
                                                                                            monkeypatch):
    codec = tiny_lstm_codec
    layers = list(codec.model.encoder.model)
    lstm = next(layer for layer in layers if C._is_lstm(layer))
    lstm_rows, conv_rows = [], []
    lstm.register_forward_pre_hook(lambda m, a: lstm_rows.append(a[0].shape[0]))
    run_chunked = C.run_chunked

    def counted(run, x):  # the encoder's first convolutions (the runs after the LSTM are not counted)
        if run[0] is layers[0]:
            conv_rows.append(x.shape[0])
        return run_chunked(run, x)

    monkeypatch.setattr(C, "run_chunked", counted)
    wavs = torch.stack([torch.from_numpy(make_music(3.0, seed=s)) for s in range(4)])

    together = codec.encode(wavs)
    assert lstm_rows == [4] and conv_rows == [1, 1, 1, 1]  # the premise: the split was taken
    with torch.inference_mode():
        emb_split = C.rows_around_lstm(layers, wavs)
        emb_whole = torch.nn.Sequential(*layers)(wavs)
    assert torch.allclose(emb_split, emb_whole, atol=1e-5 * float(emb_whole.abs().max()))
    alone = torch.cat([codec.encode(w[None]) for w in wavs])
    assert (together[0] != together[1]).float().mean() > 0.3  # codes that follow the input, not a constant
    assert (together == alone).float().mean() > 0.99  # the same codes up to float rounding

    # padding rows: their convolutions are skipped, and the real rows' codes are exactly the full batch's
    lstm_rows.clear(), conv_rows.clear()
    padded = codec.encode(torch.cat([wavs[:2], torch.zeros_like(wavs[2:])]), rows=2)
    assert lstm_rows == [4] and conv_rows == [1, 1]
    assert torch.equal(padded[:2], together[:2])
    with pytest.raises(AudiogenError, match="rows must lie in"):
        codec.encode(wavs, rows=5)


def test_codec_is_deterministic_across_loads(make_music):
    wav = torch.from_numpy(make_music(2.0))[None]
    assert torch.equal(C.load_codec("tiny").encode(wav), C.load_codec("tiny").encode(wav))
    assert not torch.equal(C.load_codec("tiny", seed=1).encode(wav), C.load_codec("tiny").encode(wav))


def test_saved_codec_folder_round_trips(tiny_codec, tmp_path, make_music):
    C.save_codec(tiny_codec, tmp_path / "c")
    loaded = C.load_codec(tmp_path / "c")
    wav = torch.from_numpy(make_music(1.0))[None]
    assert torch.equal(loaded.encode(wav), tiny_codec.encode(wav))
    (tmp_path / "c" / C.CODEC_WEIGHTS).unlink()
    with pytest.raises(AudiogenError, match="codec.safetensors is missing"):
        C.load_codec(tmp_path / "c")


def test_bad_shapes_and_codes_are_user_errors(tiny_codec):
    with pytest.raises(AudiogenError, match="expects audio shaped"):
        tiny_codec.encode(torch.zeros(1, 2, 100))
    with pytest.raises(AudiogenError, match="codes must lie in"):
        tiny_codec.decode(torch.full((1, 4, 5), 64))
    with pytest.raises(AudiogenError, match="zero frames"):
        tiny_codec.decode(torch.zeros((1, 4, 0), dtype=torch.long))


def test_token_files_that_are_not_integer_npy_are_user_errors(tmp_path):
    import numpy as np

    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("not tokens")
    np.save(tmp_path / "float.npy", np.full((4, 10), np.nan))
    np.save(tmp_path / "flat.npy", np.zeros(10, np.int16))
    np.save(tmp_path / "ok.npy", np.ones((4, 10), np.int16))
    for name, msg in [("missing.npy", "no such file"), ("empty.npy", "not a .npy token file"),
                      ("text.npy", "not a .npy token file"), ("float.npy", "expected integer tokens"),
                      ("flat.npy", "expected integer tokens")]:
        with pytest.raises(AudiogenError, match=msg):
            C.load_codes(tmp_path / name)
    codes = C.load_codes(tmp_path / "ok.npy")
    assert codes.dtype == torch.long and codes.shape == (1, 4, 10)


def test_unknown_or_absent_device_is_a_user_error(monkeypatch):
    with pytest.raises(AudiogenError, match="'tpu' is not a device"):
        C.load_codec("tiny", device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AudiogenError, match="no CUDA GPU"):
        C.load_codec("tiny", device="cuda")


@pytest.mark.gpu
def test_cuda_encoding_matches_cpu(make_music):
    wav = torch.from_numpy(make_music(3.0))[None]
    cpu = C.load_codec("tiny").encode(wav)
    gpu = C.load_codec("tiny", device="cuda").encode(wav.cuda())
    assert (gpu.cpu() == cpu).float().mean() > 0.99
