"""audiogen.codec.seanet: the lean SEANet pass computes what the encodec package's (and transformers') modules compute."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from audiogen.codec import base as C
from audiogen.codec.seanet import run_layers

# The three layouts the project runs: the tiny test codec, the 24 kHz kind (causal, weight norm, an LSTM;
# fewer filters to keep the test quick: the same layer types and paddings) and the 48 kHz kind (non-causal,
# time group norm, odd padding splits)
LAYOUTS = {
    "tiny": C.NAMED_CONFIGS["tiny"],
    "24khz": dataclasses.replace(C.NAMED_CONFIGS["encodec_24khz"], n_filters=8, dimension=32),
    "48khz": dataclasses.replace(C.NAMED_CONFIGS["encodec_48khz"], n_filters=8, dimension=32),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def model(request):
    torch.manual_seed(0)
    cfg = LAYOUTS[request.param]
    m = C.build_encodec_model(cfg).eval()
    for p in m.parameters():  # weights away from their init, so every term of the sum matters
        p.data.add_(0.05 * torch.randn_like(p))
    return m, cfg


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=2e-5 * float(b.abs().max()) + 1e-9))


@pytest.mark.parametrize("frames", [1, 3, 40])
def test_the_lean_pass_equals_the_package_modules_encoder_and_decoder(model, frames):
    m, cfg = model
    g = torch.Generator().manual_seed(frames)
    # frames * hop samples as the codec feeds them, and a length that is not a whole hop (extra padding)
    for n in (frames * cfg.hop_length, frames * cfg.hop_length + 7):
        wav = 0.3 * torch.randn(2, cfg.channels, n, generator=g)
        with torch.inference_mode():
            want = m.encoder(wav)
            got = run_layers(list(m.encoder.model), wav)
            assert _close(got, want), (n, float((got - want).abs().max()), float(want.abs().max()))
            want_dec = m.decoder(want)
            got_dec = run_layers(list(m.decoder.model), want)
            assert _close(got_dec, want_dec), (n, float((got_dec - want_dec).abs().max()))
            with torch.autocast("cpu", dtype=torch.bfloat16):  # an LM's training loop decoding a sample
                in_autocast = run_layers(list(m.decoder.model), want)
            assert in_autocast.dtype == torch.float32 and _close(in_autocast, want_dec)


def test_a_long_input_never_goes_through_the_package_padding_a_tiny_one_does(model, monkeypatch):
    """The premise of the speed-up: no convolution pads through the package (reflection_pad1d) and no
    transposed convolution runs through torch's kernel on a real input; an input shorter than a
    convolution's padding is handed to the module itself, as the package pads it (zeros, then reflection)."""
    import encodec.modules.conv as conv_mod

    m, cfg = model
    calls, transposed = [], []
    pad1d, conv_transpose1d = conv_mod.pad1d, torch.nn.functional.conv_transpose1d

    def counted(x, paddings, mode="zero", value=0.0):
        calls.append(mode)
        return pad1d(x, paddings, mode, value)

    monkeypatch.setattr(conv_mod, "pad1d", counted)
    monkeypatch.setattr(torch.nn.functional, "conv_transpose1d", lambda *a, **k: transposed.append(1) or
                        conv_transpose1d(*a, **k))
    with torch.inference_mode():
        wav = 0.3 * torch.randn(1, cfg.channels, 20 * cfg.hop_length)
        run_layers(list(m.decoder.model), run_layers(list(m.encoder.model), wav))
        assert calls == [] and transposed == []
        short = 0.3 * torch.randn(1, cfg.channels, 3)  # shorter than the first convolution's padding
        assert _close(run_layers(list(m.encoder.model), short), m.encoder(short))
    assert "reflect" in calls


def test_codes_through_the_codec_match_the_package_forward(make_music):
    """End to end: EncodecCodec's codes (lean pass, windows) are the package's codes on the same audio."""
    codec = C.load_codec("tiny")
    wav = torch.from_numpy(make_music(4.0, seed=5))[None]
    got = codec.encode(wav)
    with torch.inference_mode():
        want = codec.model.quantizer.vq.encode(codec.model.encoder(wav), n_q=codec.num_codebooks).transpose(0, 1)
    assert (got != want).float().mean() < 0.01  # float rounding may flip a near tie, no more
    assert len(torch.unique(got[0, 0])) > 4  # codes that follow the music


def _runs(m) -> tuple[list, list]:
    """The encoder's layers before its LSTM and the decoder's after it (all of them without an LSTM)."""
    from audiogen.codec.base import _is_lstm

    enc, dec = list(m.encoder.model), list(m.decoder.model)
    i = next((n for n, layer in enumerate(enc) if _is_lstm(layer)), len(enc))
    j = next((n + 1 for n, layer in enumerate(dec) if _is_lstm(layer)), 0)
    return enc[:i], dec[j:]


@pytest.mark.parametrize("frames", [8, 9, 11])
def test_a_causal_run_in_chunks_with_carried_state_equals_one_pass(model, frames, monkeypatch):
    """run_chunked cuts a causal run into chunks of whole frames (here 8, 9 or 11, so that a 23-frame input
    has a last chunk of 7, 5 or 1) and carries each layer's state: the joined output is one pass's. A
    non-causal layout (the 48 kHz kind) is not cut."""
    from audiogen.codec import seanet

    m, cfg = model
    enc, dec = _runs(m)
    calls = []
    run_layers = seanet.run_layers
    monkeypatch.setattr(seanet, "run_layers", lambda *a, **k: calls.append(a[1].shape[-1]) or run_layers(*a, **k))
    g = torch.Generator().manual_seed(frames)
    wav = 0.3 * torch.randn(2, cfg.channels, 23 * cfg.hop_length, generator=g)
    with torch.inference_mode():
        want_enc = run_layers(enc, wav)
        calls.clear()
        got_enc = seanet.run_chunked(enc, wav, frames=frames)
        layers = list(m.decoder.model)
        emb = run_layers(layers[: len(layers) - len(dec)], m.encoder(wav))  # the decoder's input to `dec`
        want_dec = run_layers(dec, emb)
        enc_calls = list(calls)
        calls.clear()
        got_dec = seanet.run_chunked(dec, emb, frames=frames)
    assert _close(got_enc, want_enc) and _close(got_dec, want_dec)
    if cfg.causal:  # the premise: it was cut, into chunks of `frames` frames and a shorter last one
        assert seanet.can_run_chunked(enc) and seanet.can_run_chunked(dec)
        assert enc_calls == [frames * cfg.hop_length] * (23 // frames) + [23 % frames * cfg.hop_length] * (23 % frames > 0)
        assert len(calls) == -(-23 // frames)
        with pytest.raises(ValueError, match="too short"):  # a first chunk cannot pad as the whole input does
            seanet.run_layers(enc, wav[..., : cfg.hop_length], {})
    else:
        assert not seanet.can_run_chunked(enc) and enc_calls == [wav.shape[-1]]


@pytest.mark.gpu
def test_the_lean_pass_on_cuda_equals_the_package_modules():
    """On a GPU the codec runs the lean pass whole (no chunks): the same layers, the same result (TF32 off:
    cuDNN would round the package's 1x1 convolutions to it, cuBLAS does not round ours)."""
    torch.manual_seed(0)
    m = C.build_encodec_model(LAYOUTS["24khz"]).eval().cuda()
    wav = 0.3 * torch.randn(2, 1, 40 * m.encoder.hop_length, device="cuda")
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want = m.encoder(wav)
        got = run_layers(list(m.encoder.model), wav)
        assert got.is_cuda and _close(got, want)
        assert _close(run_layers(list(m.decoder.model), want), m.decoder(want))


@pytest.mark.parametrize("layout", [
    dict(use_causal_conv=False, norm_type="weight_norm", use_conv_shortcut=False),  # MusicGen's 32 kHz EnCodec
    dict(use_causal_conv=True, norm_type="weight_norm", use_conv_shortcut=True),
    dict(use_causal_conv=False, norm_type="time_group_norm", use_conv_shortcut=True),
])
def test_transformers_encodec_layers_take_the_lean_pass_too(layout, monkeypatch):
    """MusicGen's EnCodec (transformers' EncodecModel) has the same layers under other names: the lean pass
    and HFEncodecCodec's windows give its forward's result, with no padding or transposed convolution
    through torch's own kernels."""
    from transformers import EncodecConfig, EncodecModel

    from audiogen.codec import seanet

    torch.manual_seed(0)
    cfg = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, hidden_size=8, codebook_dim=8,
                        upsampling_ratios=[8, 5, 4, 4], codebook_size=64, num_lstm_layers=1, target_bandwidths=[1.2],
                        normalize=False, chunk_length_s=None, overlap=None, **layout)
    model = EncodecModel(cfg).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    for name, b in model.named_buffers():  # codebooks start at zero (k-means fills them in training)
        if name.endswith("codebook.embed"):
            b.copy_(0.05 * torch.randn_like(b))
    pads, transposed = [], []
    pad, conv_transpose1d = F.pad, F.conv_transpose1d
    monkeypatch.setattr(F, "pad", lambda *a, **k: pads.append(1) or pad(*a, **k))
    monkeypatch.setattr(F, "conv_transpose1d", lambda *a, **k: transposed.append(1) or conv_transpose1d(*a, **k))
    wav = 0.3 * torch.randn(2, 1, 37 * 640 + 11)
    with torch.inference_mode():
        enc = list(model.encoder.layers)
        got = seanet.run_layers(enc, wav)
        assert pads == [] and transposed == []  # the premise: the lean kernels ran
        want = model.encoder(wav)
        assert _close(got, want)
        assert _close(seanet.run_layers(list(model.decoder.layers), want), model.decoder(want))
    codec = C.HFEncodecCodec(model, name="tiny-hf")
    codes = codec.encode(wav[:1, :, : 37 * 640])
    with torch.inference_mode():
        ref = model.encode(wav[:1, :, : 37 * 640], bandwidth=1.2).audio_codes[0]
        ref_audio = model.decode(codes[None], [None])[0][:, :, : 37 * 640]
    assert (codes == ref).float().mean() > 0.99 and len(torch.unique(codes)) > 4
    assert _close(codec.decode(codes), ref_audio)


def test_the_codec_benchmark_prints_one_json_object_with_every_peer():
    """benchmarks/codec.py runs (1 s, one repeat) and reports each codec against its peer: the encodec package
    for the 24 kHz kind, transformers' EncodecModel for MusicGen's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "codec.py"), "--seconds", "1", "--repeats", "1",
                          "--devices", "cpu", "--codecs", "encodec_24khz:6", "musicgen_32khz:2.2"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    report = json.loads(out)
    rows = {r["codec"]: r for r in report["results"]}
    assert set(rows) == {"encodec_24khz", "musicgen_32khz"}
    assert rows["musicgen_32khz"]["peer"] == "transformers EncodecModel"
    assert rows["encodec_24khz"]["peer"] == "encodec package"
    for r in rows.values():
        assert r["audiogen_encode_rtf"] > 0 and r["encodec_pkg_decode_rtf"] > 0 and r["encode_speedup_vs_encodec_pkg"] > 0


@pytest.mark.parametrize("layout", ["tiny", "24khz"])
def test_rvq_encode_in_blocks_gives_the_package_codes(layout, monkeypatch):
    """seanet.rvq_encode scores blocks of frames (here 777, so the blocks straddle rows of the batch) with one
    product each and gives the codes of the package's ResidualVectorQuantization.encode."""
    from audiogen.codec import seanet

    if layout == "tiny":  # k-means-initialised codebooks (the tiny codec's own)
        vq, dim = C.load_codec("tiny").model.quantizer.vq, 16
    else:  # the 24 kHz layout's 1024-code books, filled at random (they start at zero until k-means)
        torch.manual_seed(1)
        vq, dim = C.build_encodec_model(LAYOUTS["24khz"]).quantizer.vq, 32
        for layer in vq.layers:
            layer._codebook.embed.copy_(torch.randn_like(layer._codebook.embed))
    blocks = []
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: blocks.append(a[1].shape[0]) or addmm(*a, **k))
    emb = torch.randn(3, dim, 1000, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = vq.encode(emb, n_q=4)
        got = seanet.rvq_encode(vq, emb, 4, rows=777)
    assert got.shape == want.shape == (4, 3, 1000)
    assert (got == want).float().mean() > 0.999  # float rounding may flip a near tie, no more
    assert len(torch.unique(got[0])) > 8  # codes that follow the input
    assert blocks == [777, 777, 777, 669] * 4  # the premise: 3000 frames scored in blocks, per codebook
