"""Importing MusicGen checkpoints: numerical parity with transformers on tiny random models.

A tiny ``MusicgenForConditionalGeneration`` (T5 + EnCodec 32 kHz layout + decoder) is
built offline with random weights and saved with ``save_pretrained``; the same weights
are also laid out as an AudioCraft ``state_dict.bin``. The imported audiogen model must
compute what transformers computes: logits, greedy guided generation, codec decode.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from audiogen.errors import AudiogenError  # noqa: E402

K, CARD, TEXT_DIM = 4, 64, 16
WORDS = "calm piano jazz drums loud rock slow fast guitar with and a".split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_musicgen(seed: int = 0):
    """A random tiny MusicGen whose logits are far from uniform (so greedy ties cannot hide a bug)."""
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              T5Config)

    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=len(WORDS) + 3, d_model=TEXT_DIM, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    # 32 kHz, hop 640 (50 Hz) like MusicGen's EnCodec; 1.2 kbps = 4 codebooks of 64 codes
    ec = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, hidden_size=8, codebook_dim=8,
                       upsampling_ratios=[8, 5, 4, 4], codebook_size=CARD, num_lstm_layers=1, target_bandwidths=[1.2],
                       normalize=False, use_causal_conv=False, norm_type="weight_norm", chunk_length_s=None,
                       overlap=None, use_conv_shortcut=False)
    dec = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                num_codebooks=K, max_position_embeddings=256, pad_token_id=CARD, bos_token_id=CARD,
                                decoder_start_token_id=CARD)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=ec.to_dict(), decoder=dec.to_dict())
    model = MusicgenForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("decoder.", "enc_to_dec_proj.", "text_encoder.")) and "layer_norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
        for layer in model.audio_encoder.quantizer.layers:  # EnCodec codebooks start at zero
            layer.codebook.embed.copy_(torch.randn(layer.codebook.embed.shape, generator=g))
    model.generation_config.pad_token_id = CARD
    model.generation_config.decoder_start_token_id = CARD
    model.generation_config.bos_token_id = CARD
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """``(model, tokenizer, hf_dir, imported_dir)``"""
    from audiogen.models.musicgen_import import import_musicgen

    root = tmp_path_factory.mktemp("musicgen")
    model, tok = build_tiny_musicgen(), _tokenizer()
    src = root / "musicgen-tiny"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = import_musicgen(src, root / "imported")
    return model, tok, src, out


@pytest.fixture(scope="module")
def loaded(hf):
    from audiogen.models.checkpoint import load_model

    return load_model(hf[3])


TEXTS = ["calm piano", "loud rock with drums and guitar"]


def test_import_writes_a_self_contained_model_dir(hf, loaded):
    out = hf[3]
    assert sorted(p.name for p in out.iterdir()) == ["codec", "config.yaml", "model.safetensors", "text_encoder"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".imported")]  # no temp leftovers
    assert loaded.lm.cfg.num_codebooks == K and loaded.lm.cfg.cardinality == CARD and loaded.lm.cfg.cond_dim == TEXT_DIM
    assert loaded.codec.sample_rate == 32000 and loaded.codec.frame_rate == 50 and loaded.codec.num_codebooks == K
    assert loaded.config["import"]["source"] == "transformers"
    w = loaded.conditioner.text_proj.weight
    assert torch.equal(w, torch.eye(TEXT_DIM))


def test_lm_logits_match_transformers(hf, loaded):
    from audiogen.models.conditioning import Conditions

    model, tok = hf[0], hf[1]
    g = torch.Generator().manual_seed(1)
    B, S = len(TEXTS), 9
    codes = torch.randint(0, CARD + 1, (B, K, S), generator=g)  # includes the special token
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    decoder_input_ids=codes.reshape(B * K, S)).logits.reshape(B, K, S, CARD)
        cond, mask = loaded.conditioner([Conditions(text=t) for t in TEXTS])
        ours = loaded.lm(codes, cond, mask)
        # the unconditional (CFG null) row: transformers feeds zero states with an all-zero mask
        uref = model(encoder_outputs=(torch.zeros(B, 1, TEXT_DIM),), attention_mask=torch.zeros(B, 1, dtype=torch.long),
                     decoder_input_ids=codes.reshape(B * K, S)).logits.reshape(B, K, S, CARD)
        ucond, umask = loaded.conditioner.unconditional(B)
        uours = loaded.lm(codes, ucond, umask)
    assert ref.abs().max() > 1.0  # far from a trivial model
    assert (ours - ref).abs().max().item() < 1e-4
    assert (uours - uref).abs().max().item() < 1e-4
    assert (ref - uref).abs().max() > 0.1  # the text matters


def _capture_hf_codes(model):
    """Wrap the audio decoder so generate's final codes ``[1, B, K, T]`` can be read back."""
    seen = {}
    orig = model.audio_encoder.decode

    def decode(audio_codes, *a, **kw):
        seen["codes"] = audio_codes.clone()
        return orig(audio_codes, *a, **kw)

    model.audio_encoder.decode = decode
    return seen, orig


def test_greedy_guided_generation_gives_transformers_tokens(hf, loaded):
    from audiogen.generation.pipeline import condition_batch
    from audiogen.generation.sampling import SamplingParams, generate_window
    from audiogen.models.conditioning import Conditions

    model, tok = hf[0], hf[1]
    N = 12  # new tokens = pattern positions; frames = N + 1 - K (transformers counts the BOS in max_length)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    seen, orig = _capture_hf_codes(model)
    try:
        model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                       guidance_scale=3.0, max_new_tokens=N)
    finally:
        model.audio_encoder.decode = orig
    ref = seen["codes"][0]
    assert ref.shape == (len(TEXTS), K, N + 1 - K)
    cond, mask = condition_batch(loaded.conditioner, [Conditions(text=t) for t in TEXTS], True, "cpu")
    ours = generate_window(loaded.lm, cond, mask, N + 1 - K, SamplingParams(temperature=0.0, cfg_scale=3.0), None)
    assert torch.equal(ours, ref)
    assert len(torch.unique(ref)) > 4  # not a degenerate constant sequence


def test_a_negative_prompt_on_an_imported_model_is_its_text_encoded_in_place_of_the_null_row(hf, loaded):
    """MusicGen reads text alone (no attribute slots): ``--negative`` is T5's encoding of its text as CFG's contrast."""
    from audiogen.generation.pipeline import condition_batch, negative_conditions
    from audiogen.generation.sampling import SamplingParams, generate_window
    from audiogen.models.checkpoint import read_config
    from audiogen.models.conditioning import Conditions

    neg = negative_conditions("loud rock with drums and guitar", read_config(hf[3]))
    assert neg == Conditions(text="loud rock with drums and guitar")
    request = [Conditions(text="calm piano")]
    cond, mask = condition_batch(loaded.conditioner, request, True, "cpu", negative=neg)
    own, own_mask = loaded.conditioner([neg])
    assert torch.equal(cond[1:, : own.shape[1]], own) and torch.equal(mask[1:, : own.shape[1]], own_mask)
    plain = generate_window(loaded.lm, *condition_batch(loaded.conditioner, request, True, "cpu"), 8,
                            SamplingParams(temperature=0.0, cfg_scale=3.0), None)
    pushed = generate_window(loaded.lm, cond, mask, 8, SamplingParams(temperature=0.0, cfg_scale=3.0), None)
    assert not torch.equal(plain, pushed)


def test_encodec_32khz_decode_and_encode_match_transformers(hf, loaded):
    model = hf[0]
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, CARD, (2, K, 25), generator=g)
    with torch.no_grad():
        ref = model.audio_encoder.decode(codes[None], [None]).audio_values
    ours = loaded.codec.decode(codes)
    assert ours.shape == ref.shape == (2, 1, 25 * 640)
    assert ref.abs().max() > 1e-3
    assert (ours - ref).abs().max().item() < 1e-5
    wav = torch.randn(2, 1, 32000, generator=g) * 0.1
    with torch.no_grad():
        ref_codes = model.audio_encoder.encode(wav, bandwidth=1.2).audio_codes[0]
    assert torch.equal(loaded.codec.encode(wav), ref_codes)
    # the codec folder also loads by bandwidth, as transformers counts it (0.3 kbps per 64-code codebook at 50 Hz)
    from audiogen.codec.base import load_codec

    assert load_codec(hf[3] / "codec", bandwidth=0.6).num_codebooks == 2
    with pytest.raises(AudiogenError, match="whole number"):
        load_codec(hf[3] / "codec", bandwidth=0.5)


# ------------------------------------------------------------------------------ AudioCraft layout


AUDIOCRAFT_CFG = """\
sample_rate: 32000
lm_model: transformer_lm
codebooks_pattern:
  modeling: delay
  delay: {delays: [0, 1, 2, 3], flatten_first: 0, empty_initial: 0}
transformer_lm:
  dim: 32
  num_heads: 4
  num_layers: 2
  hidden_scale: 2
  n_q: 4
  card: 64
  activation: gelu
  norm_first: true
  bias_ff: false
  bias_attn: false
  bias_proj: false
  custom: false
  memory_efficient: true
  layer_scale: null
  positional_embedding: sin
  xpos: false
  norm: layer_norm
  cross_attention: true
  qk_layer_norm: false
  qk_layer_norm_cross: false
  kv_repeat: 1
conditioners:
  description:
    model: t5
    t5: {name: t5-base, finetune: false, word_dropout: 0.3, normalize_text: false}
fuser:
  cross_attention_pos_emb: false
  cross_attention_pos_emb_scale: 1
  sum: []
  prepend: []
  cross: [description]
classifier_free_guidance: {training_dropout: 0.2, inference_coef: 3.0}
"""


def audiocraft_state(model) -> dict:
    """The tiny model's decoder and projection under AudioCraft's LM key names (fused in_proj_weight)."""
    d = {k.replace("decoder.model.decoder.", ""): v for k, v in model.state_dict().items()
         if k.startswith("decoder.model.decoder.")}
    out = {}
    for k in range(K):
        out[f"emb.{k}.weight"] = d[f"embed_tokens.{k}.weight"]
        out[f"linears.{k}.weight"] = model.state_dict()[f"decoder.lm_heads.{k}.weight"]
    out["out_norm.weight"], out["out_norm.bias"] = d["layer_norm.weight"], d["layer_norm.bias"]
    for i in range(2):
        a, b = f"transformer.layers.{i}.", f"layers.{i}."
        for theirs, ours in (("self_attn", "self_attn"), ("cross_attention", "encoder_attn")):
            out[a + f"{theirs}.in_proj_weight"] = torch.cat([d[b + f"{ours}.{p}_proj.weight"] for p in "qkv"])
            out[a + f"{theirs}.out_proj.weight"] = d[b + f"{ours}.out_proj.weight"]
        for theirs, ours in (("norm1", "self_attn_layer_norm"), ("norm_cross", "encoder_attn_layer_norm"),
                             ("norm2", "final_layer_norm")):
            out[a + f"{theirs}.weight"], out[a + f"{theirs}.bias"] = d[b + f"{ours}.weight"], d[b + f"{ours}.bias"]
        out[a + "linear1.weight"], out[a + "linear2.weight"] = d[b + "fc1.weight"], d[b + "fc2.weight"]
    out["condition_provider.conditioners.description.output_proj.weight"] = model.enc_to_dec_proj.weight.detach()
    out["condition_provider.conditioners.description.output_proj.bias"] = model.enc_to_dec_proj.bias.detach()
    return {k: v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def audiocraft_dirs(hf, tmp_path_factory):
    """``(src, t5_dir, codec_dir)``: AudioCraft files + separately downloaded T5 and EnCodec folders."""
    model, tok = hf[0], hf[1]
    root = tmp_path_factory.mktemp("audiocraft")
    src = root / "musicgen-ac"
    src.mkdir()
    torch.save({"best_state": audiocraft_state(model), "xp.cfg": AUDIOCRAFT_CFG, "version": "1.3.0", "exported": True},
               src / "state_dict.bin")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               src / "compression_state_dict.bin")
    t5_dir, codec_dir = root / "t5-base", root / "encodec_32khz"
    model.text_encoder.save_pretrained(t5_dir)
    tok.save_pretrained(t5_dir)
    model.audio_encoder.save_pretrained(codec_dir)
    return src, t5_dir, codec_dir


def test_audiocraft_layout_imports_to_the_same_model(hf, audiocraft_dirs, tmp_path):
    from safetensors.torch import load_file

    from audiogen.models.musicgen_import import import_musicgen

    src, t5_dir, codec_dir = audiocraft_dirs
    out = import_musicgen(src, tmp_path / "ac", t5=t5_dir, codec=codec_dir)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(hf[3] / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = load_file(str(out / "codec" / "codec.safetensors")), load_file(str(hf[3] / "codec" / "codec.safetensors"))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    cfg_a = (out / "config.yaml").read_text()
    assert "source: audiocraft" in cfg_a


def audiocraft_released_cfg() -> str:
    """What a released MusicGen checkpoint's xp.cfg holds: AudioCraft's config/model/lm/default.yaml with
    config/model/lm/musicgen_lm.yaml and config/conditioner/text2music.yaml over it, values as they are
    there (note transformer_lm.cross_attention: false, from default.yaml); the model scale (dim, heads,
    layers, hidden_scale, card) is the tiny test model's, as in AUDIOCRAFT_CFG."""
    import yaml

    cfg = yaml.safe_load(AUDIOCRAFT_CFG)
    cfg["transformer_lm"].update(
        dropout=0.0, emb_lr=None, past_context=None, causal=True, attention_as_float32=False, checkpointing="none",
        weight_init="gaussian", depthwise_init="current", zero_bias_init=True, cross_attention=False,
        attention_dropout=None, two_step_cfg=False)
    cfg["codebooks_pattern"].update(unroll={"flattening": [0, 1, 2, 3], "delays": [0, 0, 0, 0]},
                                    music_lm={"group_by": 2}, coarse_first={"delays": [0, 0, 0]})
    cfg["classifier_free_guidance"]["training_dropout"] = 0.3
    cfg["attribute_dropout"] = {}
    cfg["fuser"]["input_interpolate"] = []
    return yaml.safe_dump(cfg, sort_keys=False)


def test_audiocraft_released_config_with_cross_attention_false_imports(hf, audiocraft_dirs, tmp_path):
    """AudioCraft turns cross-attention on whenever the fuser routes a condition to 'cross' (get_lm_model),
    so its released configs say cross_attention: false; such a checkpoint imports to the same model."""
    from safetensors.torch import load_file

    from audiogen.models.musicgen_import import import_musicgen

    src, t5_dir, codec_dir = audiocraft_dirs
    released = tmp_path / "released"
    released.mkdir()
    torch.save({"best_state": audiocraft_state(hf[0]), "xp.cfg": audiocraft_released_cfg(), "version": "1.3.0",
                "exported": True}, released / "state_dict.bin")
    out = import_musicgen(released, tmp_path / "out", t5=t5_dir, codec=codec_dir)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(hf[3] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # with nothing routed to 'cross' AudioCraft would build no cross-attention: that is still refused
    no_cross = audiocraft_released_cfg().replace("prepend: []", "prepend:\n  - description").replace(
        "cross:\n  - description", "cross: []")
    torch.save({"best_state": audiocraft_state(hf[0]), "xp.cfg": no_cross}, released / "state_dict.bin")
    with pytest.raises(AudiogenError, match="cross_attention is False"):
        import_musicgen(released, tmp_path / "out2", t5=t5_dir, codec=codec_dir)


def test_audiocraft_import_names_the_missing_t5_and_codec(audiocraft_dirs, tmp_path):
    from audiogen.models.musicgen_import import import_musicgen

    src, t5_dir, codec_dir = audiocraft_dirs
    with pytest.raises(AudiogenError, match="T5.*t5-base.*--t5"):
        import_musicgen(src, tmp_path / "x", codec=codec_dir)
    with pytest.raises(AudiogenError, match="only names 'facebook/encodec_32khz'.*--codec"):
        import_musicgen(src, tmp_path / "x", t5=t5_dir)
    assert not (tmp_path / "x").exists()


def test_audiocraft_config_that_differs_from_musicgen_is_rejected(hf, audiocraft_dirs, tmp_path):
    from audiogen.models.musicgen_import import import_musicgen

    src, t5_dir, codec_dir = audiocraft_dirs
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"best_state": audiocraft_state(hf[0]), "xp.cfg": AUDIOCRAFT_CFG.replace("bias_ff: false", "bias_ff: true")},
               bad / "state_dict.bin")
    with pytest.raises(AudiogenError, match="bias_ff"):
        import_musicgen(bad, tmp_path / "out", t5=t5_dir, codec=codec_dir)
    torch.save({"best_state": audiocraft_state(hf[0]), "xp.cfg": AUDIOCRAFT_CFG.replace("hidden_scale: 2", "hidden_scale: 4")},
               bad / "state_dict.bin")
    with pytest.raises(AudiogenError, match="LM weights do not match.*size mismatch"):
        import_musicgen(bad, tmp_path / "out", t5=t5_dir, codec=codec_dir)
    state = audiocraft_state(hf[0])
    del state["transformer.layers.1.linear2.weight"]
    torch.save({"best_state": state, "xp.cfg": AUDIOCRAFT_CFG}, bad / "state_dict.bin")
    with pytest.raises(AudiogenError, match="lacks transformer.layers.1.linear2.weight"):
        import_musicgen(bad, tmp_path / "out", t5=t5_dir, codec=codec_dir)
    assert not (tmp_path / "out").exists()


AUDIOCRAFT_CODEC_CFG = """\
sample_rate: 32000
channels: 1
compression_model: encodec
encodec:
  autoencoder: seanet
  quantizer: rvq
  sample_rate: ${sample_rate}
  channels: ${channels}
  causal: false
  renormalize: false
seanet:
  dimension: 8
  channels: ${channels}
  causal: ${encodec.causal}
  n_filters: 4
  n_residual_layers: 1
  ratios: [8, 5, 4, 4]
  activation: ELU
  activation_params: {alpha: 1.0}
  norm: weight_norm
  norm_params: {}
  kernel_size: 7
  residual_kernel_size: 3
  last_kernel_size: 7
  dilation_base: 2
  pad_mode: constant
  true_skip: true
  compress: 2
  lstm: 1
  disable_norm_outer_blocks: 0
  decoder: {trim_right_ratio: 1.0, final_activation: null, final_activation_params: null}
  encoder: {}
rvq: {n_q: 4, q_dropout: false, bins: 64, decay: 0.99, kmeans_init: true, kmeans_iters: 50, threshold_ema_dead_code: 2}
"""


def test_audiocraft_encodec_is_converted_and_decodes_like_the_original(hf, audiocraft_dirs, tmp_path):
    """AudioCraft's SEANet/RVQ keys come from the encodec package's modules: build one there, import, compare."""
    import warnings

    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    from audiogen.models.checkpoint import load_model
    from audiogen.models.musicgen_import import import_musicgen

    torch.manual_seed(5)
    kw = dict(channels=1, dimension=8, n_filters=4, n_residual_layers=1, ratios=[8, 5, 4, 4], norm="weight_norm",
              causal=False, lstm=1, true_skip=True, pad_mode="constant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder, decoder = SEANetEncoder(**kw).eval(), SEANetDecoder(**kw).eval()
    quantizer = ResidualVectorQuantizer(dimension=8, n_q=4, bins=CARD).eval()
    with torch.no_grad():
        for layer in quantizer.vq.layers:
            layer._codebook.embed.normal_()
            layer._codebook.inited.fill_(1)
    state = {f"{n}.{k}": v for n, m in (("encoder", encoder), ("decoder", decoder), ("quantizer", quantizer))
             for k, v in m.state_dict().items()}
    src = tmp_path / "musicgen-ac"
    src.mkdir()
    (src / "state_dict.bin").write_bytes((audiocraft_dirs[0] / "state_dict.bin").read_bytes())
    torch.save({"best_state": state, "xp.cfg": AUDIOCRAFT_CODEC_CFG, "version": "1.3.0", "exported": True},
               src / "compression_state_dict.bin")
    out = import_musicgen(src, tmp_path / "out", t5=audiocraft_dirs[1])
    codec = load_model(out).codec
    assert codec.sample_rate == 32000 and codec.frame_rate == 50 and codec.num_codebooks == K

    codes = torch.randint(0, CARD, (2, K, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = decoder(quantizer.decode(codes.transpose(0, 1)))
    ours = codec.decode(codes)
    assert ours.shape == ref.shape and ref.abs().max() > 1e-3
    assert (ours - ref).abs().max().item() < 1e-5
    wav = torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(7)) * 0.1
    with torch.no_grad():
        ref_codes = quantizer.vq.encode(encoder(wav), n_q=K).transpose(0, 1)
    assert torch.equal(codec.encode(wav), ref_codes)


# ------------------------------------------------------------------------------ user errors


def test_wrong_or_partial_source_dirs_are_clear_errors(hf, tmp_path):
    from safetensors.torch import load_file, save_file

    from audiogen.models.musicgen_import import import_musicgen

    src = hf[2]
    with pytest.raises(AudiogenError, match="no such folder"):
        import_musicgen(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(AudiogenError, match="model.safetensors: a file"):
        import_musicgen(tmp_path / "model.safetensors", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudiogenError, match="not a MusicGen checkpoint folder"):
        import_musicgen(tmp_path / "empty", tmp_path / "out")

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(AudiogenError, match="no weights"):
        import_musicgen(partial, tmp_path / "out")
    state = load_file(str(src / "model.safetensors"))
    save_file(state, str(partial / "model.safetensors"))
    with pytest.raises(AudiogenError, match="no T5 tokenizer.*--t5"):  # nothing beside the weights, no --t5
        import_musicgen(partial, tmp_path / "out")
    for f in src.glob("tokenizer*"):
        (partial / f.name).write_bytes(f.read_bytes())
    save_file({k: v for k, v in state.items() if not k.startswith("audio_encoder.")}, str(partial / "model.safetensors"))
    with pytest.raises(AudiogenError, match="no audio_encoder"):
        import_musicgen(partial, tmp_path / "out")
    # weights that do not fit the config: one decoder matrix missing
    save_file({k: v for k, v in state.items() if "layers.1.fc1" not in k}, str(partial / "model.safetensors"))
    with pytest.raises(AudiogenError, match="decoder weights do not match"):
        import_musicgen(partial, tmp_path / "out")
    # a config that does not describe the weights: another decoder width
    cfg = json.loads((src / "config.json").read_text())
    cfg["decoder"]["ffn_dim"] = 48
    (partial / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(partial / "model.safetensors"))
    with pytest.raises(AudiogenError, match="decoder weights do not match.*size mismatch"):
        import_musicgen(partial, tmp_path / "out")
    # config that disagrees with itself: EnCodec codebook size != decoder vocabulary
    cfg = json.loads((src / "config.json").read_text())
    cfg["audio_encoder"]["codebook_size"] = 128
    (partial / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AudiogenError, match="128"):
        import_musicgen(partial, tmp_path / "out")
    # older transformers versions saved the sinusoidal table: accepted when it is MusicGen's, refused otherwise
    from audiogen.models.lm import sinusoidal_positions

    table = sinusoidal_positions(torch.arange(256), 32)
    old_buffers = {"decoder.model.decoder.embed_positions.weights": table,
                   "audio_encoder.encoder.layers.0.padding_total": torch.tensor(6)}  # (= kernel 7 - stride 1)
    save_file({**state, **old_buffers}, str(partial / "model.safetensors"))
    cfg["audio_encoder"]["codebook_size"] = CARD
    (partial / "config.json").write_text(json.dumps(cfg))
    import_musicgen(partial, tmp_path / "ok")
    save_file({**state, **old_buffers, "decoder.model.decoder.embed_positions.weights": table.flip(1)},
              str(partial / "model.safetensors"))
    with pytest.raises(AudiogenError, match="embed_positions"):
        import_musicgen(partial, tmp_path / "out")
    save_file({**state, "audio_encoder.encoder.layers.0.padding_total": torch.tensor(5)}, str(partial / "model.safetensors"))
    with pytest.raises(AudiogenError, match="EnCodec weights do not match.*padding_total"):
        import_musicgen(partial, tmp_path / "out")
    # a stereo checkpoint
    cfg["audio_encoder"]["codebook_size"] = CARD
    cfg["decoder"]["audio_channels"] = 2
    (partial / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AudiogenError, match="stereo"):
        import_musicgen(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_import_replaces_a_model_dir_but_never_another_folder(hf, tmp_path):
    from audiogen.models.musicgen_import import import_musicgen

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(AudiogenError, match="not an audiogen model directory"):
        import_musicgen(hf[2], other)
    assert (other / "todo.txt").read_text() == "keep me"
    out = import_musicgen(hf[2], tmp_path / "m")
    (out / "stale.txt").write_text("from an older import")
    import_musicgen(hf[2], out)
    assert not (out / "stale.txt").exists() and (out / "config.yaml").is_file()


def test_failed_import_leaves_an_existing_model_dir_untouched(hf, tmp_path):
    from audiogen.models.musicgen_import import import_musicgen

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.yaml").write_text("old")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudiogenError):
        import_musicgen(tmp_path / "empty", out)
    assert (out / "config.yaml").read_text() == "old"


def test_cli_import_then_generate(hf, tmp_path):
    import soundfile as sf

    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "audiogen.cli", "import-musicgen", str(hf[2]), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wav = tmp_path / "t.wav"
    r = subprocess.run([sys.executable, "-m", "audiogen.cli", "generate", "calm piano", "--duration", "1",
                        "--model", str(out), "--out", str(wav), "--seed", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = sf.info(str(wav))
    assert info.samplerate == 32000 and abs(info.duration - 1.0) < 0.01
    r = subprocess.run([sys.executable, "-m", "audiogen.cli", "import-musicgen", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "m2")], capture_output=True, text=True)
    assert r.returncode == 1 and "no such folder" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ fine-tuning


def test_imported_model_fine_tunes_through_the_lm_recipe(hf, tmp_path):
    """init_from an imported model: a few steps on a tiny dataset tokenized with its codec, exported loadable."""
    import datasets
    import soundfile as sf
    from safetensors.torch import load_file

    from audiogen.codec.base import load_codec
    from audiogen.data.prep import PrepConfig, prepare
    from audiogen.generation.pipeline import condition_batch
    from audiogen.generation.sampling import SamplingParams, generate_window
    from audiogen.models.checkpoint import load_model
    from tests.conftest import synth_music

    imported = hf[3]
    codec = load_codec(imported / "codec")
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(5):
        sf.write(str(audio / f"track{i}.wav"), synth_music(2.0, sr=32000, seed=i)[0], 32000)
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"path": f"track{i}.wav", "caption": TEXTS[i % 2]}) + "\n" for i in range(5)))
    data = tmp_path / "data"
    prepare(PrepConfig(audio_dir=str(audio), out=str(data), codec=str(imported / "codec"), segment_s=1.0, workers=0,
                       valid_fraction=0.2, captions=str(captions), progress=False))
    dd = datasets.load_from_disk(str(data))
    assert json.loads(dd["train"][0]["codec"])["sample_rate"] == 32000 and len(dd["train"]) >= 4
    assert set(dd["train"]["caption"]) <= set(TEXTS)
    run = tmp_path / "run"
    config = tmp_path / "finetune.yaml"  # no model/conditioner keys: those come from init_from
    config.write_text(f"""\
data_dir: {data}
codec: {imported / "codec"}
init_from: {imported}
out_dir: {run}
max_steps: 3
save_every: 3
log_every: 1
eval_every: 0
progress: false
batch_size: 2
segment_s: 0.5
warmup_steps: 1
lr: 1.0e-3
mixed_precision: "no"
export_dtype: float32
""")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "train_lm.py"
    r = subprocess.run([sys.executable, str(recipe), "--config", str(config)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines() if "loss" in x]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)

    tuned = run / "model"
    assert (tuned / "text_encoder" / "config.json").is_file() and (tuned / "codec" / "codec.json").is_file()
    before, after = load_file(str(imported / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("lm."))  # it trained
    m = load_model(tuned)
    assert m.codec.describe()["weights_sha256"] == codec.describe()["weights_sha256"]
    from audiogen.models.conditioning import Conditions

    cond, mask = condition_batch(m.conditioner, [Conditions(text="calm piano")], True, "cpu")
    codes = generate_window(m.lm, cond, mask, 5, SamplingParams(temperature=1.0, top_k=10), torch.Generator().manual_seed(0))
    assert codes.shape == (1, K, 5) and int(codes.max()) < CARD


def test_parity_report_on_the_tiny_checkpoint(hf):
    from audiogen.models.musicgen_import import parity_with_transformers

    r = parity_with_transformers(hf[2], hf[3], texts=tuple(TEXTS), steps=10)
    assert r["logits_max_abs"] > 1.0 and r["logits_max_abs_diff"] < 1e-4 and r["uncond_logits_max_abs_diff"] < 1e-4
    assert r["greedy_tokens_equal"] and r["greedy_frames"] == 7
    assert r["decode_max_abs"] > 1e-3 and r["decode_max_abs_diff"] < 1e-5
