"""Import a released MusicGen checkpoint into an audiogen model directory.

Two source layouts are understood:

- **transformers** (``MusicgenForConditionalGeneration.save_pretrained``, e.g. the
  ``facebook/musicgen-small`` repository on the Hugging Face hub): ``config.json`` plus
  ``model.safetensors`` / ``pytorch_model.bin`` (or sharded with an ``.index.json``)
  holding ``text_encoder.*`` (T5), ``audio_encoder.*`` (EnCodec 32 kHz),
  ``decoder.*`` (the LM) and ``enc_to_dec_proj.*``; the T5 tokenizer files sit beside
  them.
- **AudioCraft** (``facebook/musicgen-small`` as AudioCraft ships it): ``state_dict.bin``
  (``best_state``: the LM and the T5 conditioner's ``output_proj``; ``xp.cfg``: the
  training config) and ``compression_state_dict.bin`` (EnCodec in AudioCraft's SEANet/RVQ
  layout, converted here; or just the name of a pretrained codec). T5 is not included:
  its folder is given with ``--t5``. ``--codec`` (a transformers-layout EnCodec folder,
  ``facebook/encodec_32khz``) replaces the codec file.

What is written (see ``audiogen.models.checkpoint``): the LM (MusicgenDecoder's computation,
weights renamed), a conditioner whose sequence is the T5 token states alone (identity
``text_proj``, no attribute slots; the LM's ``cond_proj`` is MusicGen's
``enc_to_dec_proj``), the T5 encoder and tokenizer in ``MODEL_DIR/text_encoder/``, and
the codec in ``MODEL_DIR/codec/`` as an :class:`audiogen.codec.base.HFEncodecCodec`.

The result computes what transformers' ``MusicgenForConditionalGeneration`` computes:
the same logits for the same codes and text, the same greedy tokens under classifier-
free guidance (the unconditional row is an all-masked condition, which gives exactly
zero cross-attention in both), the same decoded audio. Nothing here downloads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from audiogen.errors import AudiogenError, yaml_problem

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
AUDIOCRAFT_LM = "state_dict.bin"
AUDIOCRAFT_CODEC = "compression_state_dict.bin"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
#: MusicGen trains with 30 s segments; generation windows follow
WINDOW_S = 30.0


def detect_layout(src: Path) -> str:
    """``"transformers"`` or ``"audiocraft"``; a clear error for anything else."""
    if not src.is_dir():
        raise AudiogenError(f"{src}: {'a file' if src.exists() else 'no such folder'} "
                            "(expected a MusicGen checkpoint folder)")
    if (src / "config.json").is_file() and any((src / f).is_file() for f in HF_WEIGHT_FILES):
        return "transformers"
    if (src / AUDIOCRAFT_LM).is_file():
        return "audiocraft"
    if (src / "config.json").is_file():
        raise AudiogenError(f"{src}: config.json is there but no weights ({' or '.join(HF_WEIGHT_FILES)}); "
                            "the download is incomplete")
    raise AudiogenError(
        f"{src}: not a MusicGen checkpoint folder: expected config.json + model.safetensors (transformers "
        f"layout) or {AUDIOCRAFT_LM} + {AUDIOCRAFT_CODEC} (AudioCraft layout)"
    )


# ------------------------------------------------------------------------------ reading files


def _load_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file is a user error
        raise AudiogenError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise AudiogenError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from None
    return _load_torch(path)


def read_hf_state(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers checkpoint folder (single file or shards)."""
    for name in HF_WEIGHT_FILES:
        f = src / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as e:
                raise AudiogenError(f"{f}: invalid shard index ({e})") from None
            state = {}
            for shard in shards:
                if not (src / shard).is_file():
                    raise AudiogenError(f"{src}: shard {shard} listed in {name} is missing (incomplete download)")
                state.update(_load_weights_file(src / shard))
            return state
        return _load_weights_file(f)
    raise AudiogenError(f"{src}: no weights file ({', '.join(HF_WEIGHT_FILES)})")


def _prefixed(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _weight_norm_names(state: dict) -> dict:
    """Old-style weight-norm names (``weight_g``/``weight_v``) as torch parametrizations."""
    out = {}
    for k, v in state.items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1")
        out[k] = v
    return out


def _strict_load(module: torch.nn.Module, state: dict, what: str, src: Path, allow_missing=()) -> None:
    # older transformers saved some constant buffers (conv strides, paddings) that are now non-persistent:
    # accept them where they equal the module's own
    buffers, persistent = dict(module.named_buffers()), set(module.state_dict())
    state = {k: v for k, v in state.items() if k not in buffers or k in persistent
             or not (buffers[k].shape == v.shape and torch.equal(buffers[k].to(v.dtype), v))}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:300])
        raise AudiogenError(f"{src}: the {what} weights do not match its config ({detail})") from None
    missing = [k for k in result.missing_keys if k not in allow_missing]
    if missing or result.unexpected_keys:
        detail = (f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else
                  f"unexpected {', '.join(result.unexpected_keys[:4])}")
        raise AudiogenError(f"{src}: the {what} weights do not match its config ({detail})")


# ------------------------------------------------------------------------------ the parts


def lm_config_from_hf(dec: dict, text_dim: int):
    """An ``LMConfig`` for a transformers ``MusicgenDecoderConfig`` dict; rejects what the LM cannot compute."""
    from audiogen.models.lm import LMConfig

    card, K = int(dec["vocab_size"]), int(dec["num_codebooks"])
    if dec.get("audio_channels", 1) != 1:
        raise AudiogenError("stereo MusicGen checkpoints (audio_channels: 2) are not supported; use a mono one")
    if dec.get("activation_function", "gelu") != "gelu":
        raise AudiogenError(f"decoder activation {dec.get('activation_function')!r}: only 'gelu' (MusicGen's) is supported")
    for key in ("pad_token_id", "bos_token_id"):
        if dec.get(key) is not None and int(dec[key]) != card:
            raise AudiogenError(f"decoder {key} is {dec[key]}, expected {card} (= vocab_size, MusicGen's special token)")
    # scale_embedding is not applied by transformers' MusicgenDecoder (nor by AudioCraft), so it is ignored here too
    return LMConfig(num_codebooks=K, cardinality=card, dim=int(dec["hidden_size"]), num_layers=int(dec["num_hidden_layers"]),
                    num_heads=int(dec["num_attention_heads"]), ffn_dim=int(dec["ffn_dim"]), cond_dim=text_dim,
                    max_positions=int(dec.get("max_position_embeddings", 2048)), dropout=0.0)


def _conditioner_config(text_dim: int, p_drop_all: float):
    from audiogen.models.checkpoint import LOCAL_TEXT_ENCODER
    from audiogen.models.conditioning import ConditionerConfig

    # MusicGen drops the whole description (p = 0.2) for classifier-free guidance; nothing else
    return ConditionerConfig(text_encoder=LOCAL_TEXT_ENCODER, dim=text_dim, max_text_tokens=512, max_instruments=0,
                             p_drop_attr=0.0, p_drop_text=0.0, p_drop_all=p_drop_all, text_dim=text_dim,
                             attribute_slots=False)


def _write_t5(t5_model, tokenizer, out: Path) -> None:
    t5_model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise AudiogenError(f"{path}: could not load the T5 tokenizer ({e})") from None


def _load_t5_dir(path: Path):
    """``(T5EncoderModel, tokenizer)`` from a local T5 folder (t5-base as MusicGen uses, or any T5)."""
    from transformers import AutoConfig, T5EncoderModel

    if not (path / "config.json").is_file():
        raise AudiogenError(f"--t5 {path}: not a T5 model folder (config.json is missing)")
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise AudiogenError(f"--t5 {path}: unreadable config ({e})") from None
    if cfg.model_type not in ("t5", "mt5", "umt5"):
        raise AudiogenError(f"--t5 {path}: a {cfg.model_type!r} model, not T5")
    try:
        model = T5EncoderModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise AudiogenError(f"--t5 {path}: could not load the T5 weights ({e})") from None
    return model.float().eval(), _load_tokenizer(path)


def _identity_text_proj(conditioner) -> None:
    with torch.no_grad():
        conditioner.text_proj.weight.copy_(torch.eye(conditioner.text_proj.weight.shape[0]))
        conditioner.text_proj.bias.zero_()


def _hf_codec(codec_cfg: dict, state: dict, src: Path, num_codebooks: int, name: str):
    from transformers import EncodecConfig, EncodecModel

    from audiogen.codec.base import HFEncodecCodec

    cfg = EncodecConfig(**{k: v for k, v in codec_cfg.items() if k not in ("architectures", "transformers_version")})
    model = EncodecModel(cfg)
    _strict_load(model, _weight_norm_names(state), "EnCodec", src)
    return HFEncodecCodec(model.float().eval(), num_codebooks, name=name)


def load_codec_dir(path: Path, num_codebooks: int):
    """A transformers ``EncodecModel`` folder (``facebook/encodec_32khz``) as an ``HFEncodecCodec``."""
    if not (path / "config.json").is_file():
        raise AudiogenError(f"--codec {path}: not an EnCodec model folder (config.json is missing)")
    try:
        cfg = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise AudiogenError(f"--codec {path}/config.json: invalid JSON ({e})") from None
    if cfg.get("model_type") != "encodec":
        raise AudiogenError(f"--codec {path}: a {cfg.get('model_type')!r} model, not EnCodec (transformers layout)")
    return _hf_codec(cfg, read_hf_state(path), path, num_codebooks, name=path.name)


# ------------------------------------------------------------------------------ transformers layout


def build_from_transformers(src: Path, t5_dir: Path | None, work: Path):
    """``(lm, conditioner, codec, provenance)`` from a ``MusicgenForConditionalGeneration`` folder."""
    from transformers import T5Config, T5EncoderModel

    from audiogen.models.conditioning import ConditionEncoder, TextEncoder
    from audiogen.models.lm import LM

    try:
        config = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise AudiogenError(f"{src}/config.json: invalid JSON ({e})") from None
    if config.get("model_type") != "musicgen":
        raise AudiogenError(f"{src}: config.json describes a {config.get('model_type')!r} model, not 'musicgen' "
                            "(MusicGen-Melody and stereo variants are not supported)")
    for part in ("text_encoder", "audio_encoder", "decoder"):
        if not isinstance(config.get(part), dict):
            raise AudiogenError(f"{src}/config.json: the '{part}' section is missing")
    t5_cfg, codec_cfg, dec = config["text_encoder"], config["audio_encoder"], config["decoder"]
    if t5_cfg.get("model_type") not in ("t5", "mt5", "umt5"):
        raise AudiogenError(f"{src}: the text encoder is {t5_cfg.get('model_type')!r}, not T5")
    if codec_cfg.get("model_type") != "encodec":
        raise AudiogenError(f"{src}: the audio encoder is {codec_cfg.get('model_type')!r}, not EnCodec")
    tok_src = t5_dir if t5_dir is not None else src
    if not any((tok_src / f).is_file() for f in TOKENIZER_FILES):
        raise AudiogenError(f"{tok_src}: no T5 tokenizer files ({', '.join(TOKENIZER_FILES)}); pass --t5 DIR with a "
                            "local copy of the T5 the model was trained with (t5-base for MusicGen)")
    state = read_hf_state(src)
    for prefix in ("text_encoder.", "audio_encoder.", "decoder."):
        if not any(k.startswith(prefix) for k in state):
            raise AudiogenError(f"{src}: the checkpoint holds no {prefix}* weights (a partial export?)")

    text_dim = int(t5_cfg["d_model"])
    lm_cfg = lm_config_from_hf(dec, text_dim)
    if int(codec_cfg["codebook_size"]) != lm_cfg.cardinality:
        raise AudiogenError(f"{src}: the decoder predicts {lm_cfg.cardinality} codes per codebook but the EnCodec has "
                            f"{codec_cfg['codebook_size']}")
    codec = _hf_codec(codec_cfg, _prefixed(state, "audio_encoder."), src, lm_cfg.num_codebooks,
                      name=f"{src.name}-encodec")

    # T5: weights from the checkpoint, tokenizer from beside it (or from --t5)
    t5 = T5EncoderModel(T5Config(**{k: v for k, v in t5_cfg.items() if k not in ("architectures", "transformers_version")}))
    t5_state = _prefixed(state, "text_encoder.")
    if "shared.weight" not in t5_state and "encoder.embed_tokens.weight" in t5_state:  # tied: either may be saved
        t5_state["shared.weight"] = t5_state["encoder.embed_tokens.weight"]
    _strict_load(t5, t5_state, "T5 text encoder", src, allow_missing=("encoder.embed_tokens.weight",))
    te_dir = work / "t5"
    _write_t5(t5.eval(), _load_tokenizer(tok_src), te_dir)

    conditioner = ConditionEncoder(_conditioner_config(text_dim, 0.2), TextEncoder(te_dir, 512))
    _identity_text_proj(conditioner)
    lm = LM(lm_cfg)
    lm_state = {k.replace("model.decoder.", "", 1): v for k, v in _prefixed(state, "decoder.").items()}
    positions = lm_state.pop("embed_positions.weights", None)  # saved by older transformers versions
    if positions is not None:
        from audiogen.models.lm import sinusoidal_positions

        ours = sinusoidal_positions(torch.arange(positions.shape[0]), positions.shape[1])
        if positions.shape[1] != lm_cfg.dim or (positions.float() - ours).abs().max() > 1e-4:
            raise AudiogenError(f"{src}: decoder.model.decoder.embed_positions.weights is not MusicGen's sinusoidal table")
    if "enc_to_dec_proj.weight" in state:
        lm_state["cond_proj.weight"] = state["enc_to_dec_proj.weight"]
        lm_state["cond_proj.bias"] = state["enc_to_dec_proj.bias"]
    else:  # transformers skips the projection when T5 and decoder widths agree
        if text_dim != lm_cfg.dim:
            raise AudiogenError(f"{src}: enc_to_dec_proj.* is missing (T5 width {text_dim} != decoder {lm_cfg.dim})")
        lm_state["cond_proj.weight"] = torch.eye(lm_cfg.dim)
        lm_state["cond_proj.bias"] = torch.zeros(lm_cfg.dim)
    _strict_load(lm, {k: v.float() for k, v in lm_state.items()}, "decoder", src)
    provenance = {"source": "transformers", "path": str(src), "name_or_path": config.get("_name_or_path")}
    return lm, conditioner, codec, provenance


# ------------------------------------------------------------------------------ AudioCraft layout


def _resolve_interpolations(cfg: dict) -> dict:
    """Replace ``${a.b}`` values (OmegaConf interpolations, left unresolved by ``to_yaml``) with what they name."""
    import re

    ref = re.compile(r"^\$\{([\w.]+)\}$")

    def fix(node, depth=0):
        if isinstance(node, dict):
            return {k: fix(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v, depth) for v in node]
        m = ref.match(node) if isinstance(node, str) else None
        if m and depth < 8:
            return fix(_ac_setting(cfg, m.group(1), node), depth + 1)
        return node

    return fix(cfg)


def _read_xp_cfg(pkg: dict, path: Path) -> dict:
    import yaml

    cfg = pkg.get("xp.cfg")
    if isinstance(cfg, str):
        try:
            cfg = yaml.safe_load(cfg)
        except yaml.YAMLError as e:
            raise AudiogenError(f"{path}: xp.cfg is not valid YAML ({yaml_problem(e)})") from None
    if not isinstance(cfg, dict):
        raise AudiogenError(f"{path}: xp.cfg is missing or not a mapping")
    return _resolve_interpolations(cfg)


def _ac_setting(cfg: dict, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def lm_config_from_audiocraft(cfg: dict, state: dict, src: Path):
    """Check an AudioCraft ``xp.cfg`` describes what audiogen's LM computes; return ``(LMConfig, text conditioner name)``."""
    from audiogen.models.lm import LMConfig

    tl = cfg.get("transformer_lm")
    if cfg.get("lm_model", "transformer_lm") != "transformer_lm" or not isinstance(tl, dict):
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: not a MusicGen transformer LM (lm_model: {cfg.get('lm_model')})")
    fuser = cfg.get("fuser", {}) or {}
    cross = list(fuser.get("cross", []) or [])
    expect = {"norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False, "activation": "gelu",
              "norm": "layer_norm", "positional_embedding": "sin", "layer_scale": None, "qk_layer_norm": False,
              "qk_layer_norm_cross": False, "kv_repeat": 1, "cross_attention": True, "xpos": False,
              "causal": True, "past_context": None}
    for key, want in expect.items():
        got = tl.get(key, want)
        if key == "cross_attention" and cross:
            # AudioCraft's get_lm_model turns cross-attention on in code whenever the fuser routes a
            # condition to 'cross', whatever transformer_lm.cross_attention says; its default LM config
            # (and so released MusicGen's xp.cfg) says false
            got = True
        if got != want:
            raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: transformer_lm.{key} is {got!r}; audiogen's LM computes "
                                f"MusicGen's {want!r} only")
    if float(tl.get("positional_scale", 1.0)) != 1.0 or float(tl.get("max_period", 10000)) != 10000:
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: positional_scale/max_period differ from MusicGen's (1, 10000)")
    K, card = int(tl["n_q"]), int(tl["card"])
    pattern = cfg.get("codebooks_pattern", {})
    delays = _ac_setting(pattern, "delay.delays", list(range(K)))
    if pattern.get("modeling") != "delay" or list(delays) != list(range(K)) or _ac_setting(pattern, "delay.flatten_first", 0) \
            or _ac_setting(pattern, "delay.empty_initial", 0):
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: codebooks_pattern must be the delay pattern 0..{K - 1} "
                            f"(got {pattern.get('modeling')!r} {list(delays)})")
    if len(cross) != 1 or fuser.get("sum") or fuser.get("prepend") or fuser.get("cross_attention_pos_emb"):
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: only one text condition fed by cross-attention is supported "
                            f"(fuser: {fuser}); melody/style conditioning is not")
    name = cross[0]
    if _ac_setting(cfg, f"conditioners.{name}.model") != "t5":
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: condition '{name}' is not a T5 conditioner")
    w = state.get(f"condition_provider.conditioners.{name}.output_proj.weight")
    if w is None:
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: best_state lacks the T5 output projection of '{name}'")
    dim = int(tl["dim"])
    lm_cfg = LMConfig(num_codebooks=K, cardinality=card, dim=dim, num_layers=int(tl["num_layers"]),
                      num_heads=int(tl["num_heads"]), ffn_dim=int(float(tl.get("hidden_scale", 4)) * dim),
                      cond_dim=int(w.shape[1]), max_positions=2048, dropout=0.0)
    return lm_cfg, name


def audiocraft_to_lm_state(state: dict, name: str, num_layers: int, src: Path) -> dict[str, torch.Tensor]:
    """Rename an AudioCraft LM ``best_state`` (fused ``in_proj_weight``) to audiogen's LM parameter names."""
    out, used = {}, set()

    def take(key):
        if key not in state:
            raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: best_state lacks {key} (a partial or different checkpoint)")
        used.add(key)
        return state[key].float()

    K = sum(1 for k in state if k.startswith("emb.") and k.endswith(".weight"))
    for k in range(K):
        out[f"embed_tokens.{k}.weight"] = take(f"emb.{k}.weight")
        out[f"lm_heads.{k}.weight"] = take(f"linears.{k}.weight")
    out["layer_norm.weight"], out["layer_norm.bias"] = take("out_norm.weight"), take("out_norm.bias")
    out["cond_proj.weight"] = take(f"condition_provider.conditioners.{name}.output_proj.weight")
    out["cond_proj.bias"] = take(f"condition_provider.conditioners.{name}.output_proj.bias")
    norms = {"norm1": "self_attn_layer_norm", "norm_cross": "encoder_attn_layer_norm", "norm2": "final_layer_norm"}
    for i in range(num_layers):
        a, b = f"transformer.layers.{i}.", f"layers.{i}."
        for theirs, ours in (("self_attn", "self_attn"), ("cross_attention", "encoder_attn")):
            key = a + f"{theirs}.in_proj_weight"
            if key not in state and a + f"{theirs}.mha.in_proj_weight" in state:  # torch MHA (custom: false)
                key = a + f"{theirs}.mha.in_proj_weight"
            q, k_, v = take(key).chunk(3, dim=0)
            out[b + f"{ours}.q_proj.weight"], out[b + f"{ours}.k_proj.weight"], out[b + f"{ours}.v_proj.weight"] = q, k_, v
            out_key = key.replace("in_proj_weight", "out_proj.weight")
            out[b + f"{ours}.out_proj.weight"] = take(out_key)
        for theirs, ours in norms.items():
            out[b + f"{ours}.weight"], out[b + f"{ours}.bias"] = take(a + f"{theirs}.weight"), take(a + f"{theirs}.bias")
        out[b + "fc1.weight"], out[b + "fc2.weight"] = take(a + "linear1.weight"), take(a + "linear2.weight")
    left = sorted(set(state) - used)
    if left:
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: weights audiogen's LM has no place for: {', '.join(left[:4])}"
                            f"{' ...' if len(left) > 4 else ''}")
    return out


def build_from_audiocraft(src: Path, t5_dir: Path | None, codec_dir: Path | None, work: Path):
    """``(lm, conditioner, codec, provenance)`` from AudioCraft's ``state_dict.bin`` + a local T5 and EnCodec."""
    from audiogen.models.conditioning import ConditionEncoder, TextEncoder
    from audiogen.models.lm import LM

    pkg = _load_torch(src / AUDIOCRAFT_LM)
    if not isinstance(pkg, dict) or "best_state" not in pkg or "xp.cfg" not in pkg:
        raise AudiogenError(f"{src}/{AUDIOCRAFT_LM}: not an exported AudioCraft LM (needs 'best_state' and 'xp.cfg')")
    cfg = _read_xp_cfg(pkg, src / AUDIOCRAFT_LM)
    state = pkg["best_state"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # an unexported training checkpoint's best_state
    lm_cfg, name = lm_config_from_audiocraft(cfg, state, src)
    t5_name = _ac_setting(cfg, f"conditioners.{name}.t5.name", "t5-base")
    if t5_dir is None:
        raise AudiogenError(f"AudioCraft checkpoints do not contain the T5 text encoder: download {t5_name} on a machine "
                            "with network access (e.g. huggingface-cli download google-t5/t5-base) and pass --t5 DIR")
    if codec_dir is not None:
        codec = load_codec_dir(codec_dir, lm_cfg.num_codebooks)
    else:
        cpkg = _load_torch(src / AUDIOCRAFT_CODEC) if (src / AUDIOCRAFT_CODEC).is_file() else {}
        if not isinstance(cpkg, dict) or "best_state" not in cpkg:
            what = (f"its {AUDIOCRAFT_CODEC} only names {cpkg['pretrained']!r}" if isinstance(cpkg, dict)
                    and cpkg.get("pretrained") else f"{AUDIOCRAFT_CODEC} is missing")
            raise AudiogenError(f"{src}: {what}; pass --codec DIR, a transformers-layout EnCodec folder "
                                "(facebook/encodec_32khz for MusicGen)")
        codec = codec_from_audiocraft(cpkg, src / AUDIOCRAFT_CODEC, lm_cfg.num_codebooks)
        codec_dir = src / AUDIOCRAFT_CODEC
    if codec.cardinality != lm_cfg.cardinality or codec.sample_rate != int(cfg.get("sample_rate", codec.sample_rate)):
        raise AudiogenError(f"{codec_dir}: the codec gives {codec.cardinality} codes at {codec.sample_rate} Hz, but the LM was "
                            f"trained on {lm_cfg.cardinality} codes at {cfg.get('sample_rate')} Hz")
    t5, tok = _load_t5_dir(t5_dir)
    if int(t5.config.d_model) != lm_cfg.cond_dim:
        raise AudiogenError(f"--t5 {t5_dir}: {t5.config.d_model}-wide states, but the checkpoint's T5 projection takes "
                            f"{lm_cfg.cond_dim} ({t5_name})")
    te_dir = work / "t5"
    _write_t5(t5, tok, te_dir)
    p_drop = float(_ac_setting(cfg, "classifier_free_guidance.training_dropout", 0.2))
    conditioner = ConditionEncoder(_conditioner_config(lm_cfg.cond_dim, p_drop), TextEncoder(te_dir, 512))
    _identity_text_proj(conditioner)
    lm = LM(lm_cfg)
    _strict_load(lm, audiocraft_to_lm_state(state, name, lm_cfg.num_layers, src), "LM", src / AUDIOCRAFT_LM)
    provenance = {"source": "audiocraft", "path": str(src), "t5": str(t5_dir), "codec": str(codec_dir),
                  "audiocraft_version": pkg.get("version")}
    return lm, conditioner, codec, provenance


def audiocraft_codec_config(cfg: dict, path: Path) -> dict:
    """transformers ``EncodecConfig`` settings for an AudioCraft EnCodec (SEANet + RVQ) ``xp.cfg``."""
    enc, sn, rvq = cfg.get("encodec") or {}, dict(cfg.get("seanet") or {}), cfg.get("rvq") or {}
    if cfg.get("compression_model", "encodec") != "encodec" or enc.get("autoencoder", "seanet") != "seanet" \
            or enc.get("quantizer", "rvq") != "rvq" or not sn or not rvq:
        raise AudiogenError(f"{path}: not an AudioCraft SEANet/RVQ EnCodec (compression_model: "
                            f"{cfg.get('compression_model')})")
    dec_over, enc_over = dict(sn.pop("decoder", None) or {}), dict(sn.pop("encoder", None) or {})
    expect = {"activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {},
              "disable_norm_outer_blocks": 0}
    for key, want in expect.items():
        if sn.get(key, want) != want:
            raise AudiogenError(f"{path}: seanet.{key} is {sn.get(key)!r}; only EnCodec's {want!r} is supported")
    if enc_over or dec_over.get("final_activation") or set(dec_over) - {"trim_right_ratio", "final_activation",
                                                                         "final_activation_params"}:
        raise AudiogenError(f"{path}: encoder/decoder-specific SEANet settings are not supported ({enc_over or dec_over})")
    if enc.get("renormalize"):
        raise AudiogenError(f"{path}: EnCodec with renormalize: true is not supported (MusicGen's does not renormalize)")
    sr, ratios, n_q, bins = int(cfg["sample_rate"]), [int(r) for r in sn["ratios"]], int(rvq["n_q"]), int(rvq["bins"])
    hop = 1
    for r in ratios:
        hop *= r
    frame_rate = -(-sr // hop)
    nbits = (bins - 1).bit_length()
    return dict(sampling_rate=sr, audio_channels=int(cfg.get("channels", 1)), normalize=False, chunk_length_s=None,
                overlap=None, hidden_size=int(sn["dimension"]), codebook_dim=int(sn["dimension"]),
                num_filters=int(sn["n_filters"]), num_residual_layers=int(sn["n_residual_layers"]),
                upsampling_ratios=ratios, norm_type="weight_norm", kernel_size=int(sn.get("kernel_size", 7)),
                last_kernel_size=int(sn.get("last_kernel_size", 7)), residual_kernel_size=int(sn.get("residual_kernel_size", 3)),
                dilation_growth_rate=int(sn.get("dilation_base", 2)), use_causal_conv=bool(sn.get("causal", False)),
                pad_mode=str(sn.get("pad_mode", "reflect")), compress=int(sn.get("compress", 2)),
                num_lstm_layers=int(sn.get("lstm", 2)), trim_right_ratio=float(dec_over.get("trim_right_ratio", 1.0)),
                codebook_size=bins, use_conv_shortcut=not bool(sn.get("true_skip", False)),
                target_bandwidths=[n_q * nbits * frame_rate / 1000])


def audiocraft_codec_state(state: dict) -> dict[str, torch.Tensor]:
    """AudioCraft EnCodec keys (``encoder.model.N.conv.conv.weight_g``, ``quantizer.vq.layers.N._codebook.embed``)
    as transformers ``EncodecModel`` keys (``encoder.layers.N.conv.parametrizations.weight.original0``, ...)."""
    import re

    out = {}
    for k, v in state.items():
        k = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", k)
        k = k.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".conv.")
        k = re.sub(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook.", k)
        out[k] = v
    return _weight_norm_names(out)


def codec_from_audiocraft(pkg: dict, path: Path, num_codebooks: int):
    """The EnCodec of an AudioCraft ``compression_state_dict.bin`` (``best_state`` + ``xp.cfg``) as an ``HFEncodecCodec``."""
    from transformers import EncodecConfig, EncodecModel

    from audiogen.codec.base import HFEncodecCodec

    model = EncodecModel(EncodecConfig(**audiocraft_codec_config(_read_xp_cfg(pkg, path), path)))
    state = pkg["best_state"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    _strict_load(model, audiocraft_codec_state(state), "EnCodec", path)
    return HFEncodecCodec(model.float().eval(), num_codebooks, name=f"{path.parent.name}-encodec")


# ------------------------------------------------------------------------------ entry point


def import_musicgen(src: str | os.PathLike, out: str | os.PathLike, t5: str | os.PathLike | None = None,
                    codec: str | os.PathLike | None = None) -> Path:
    """Convert a MusicGen checkpoint folder into the audiogen model directory ``out`` (written atomically)."""
    from audiogen.models.checkpoint import save_model_dir

    src, out = Path(src).expanduser(), Path(out).expanduser()
    t5_dir = Path(t5).expanduser() if t5 is not None else None
    codec_dir = Path(codec).expanduser() if codec is not None else None
    if t5_dir is not None and not t5_dir.is_dir():
        raise AudiogenError(f"--t5 {t5_dir}: no such folder")
    if codec_dir is not None and not codec_dir.is_dir():
        raise AudiogenError(f"--codec {codec_dir}: no such folder")
    if out.resolve() == src.resolve():
        raise AudiogenError("--out must differ from the source folder")
    layout = detect_layout(src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        from audiogen.models.checkpoint import read_config

        try:  # an existing model directory is replaced (atomically); anything else is left alone
            read_config(out)
        except AudiogenError:
            raise AudiogenError(f"--out {out} exists and is not an audiogen model directory; choose a new folder") from None
    from audiogen.files import make_dir

    make_dir(out.parent)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.import-", dir=out.parent) as work:
        work = Path(work)
        if layout == "transformers":
            if codec_dir is not None:
                raise AudiogenError("--codec is for AudioCraft checkpoints; a transformers checkpoint carries its EnCodec")
            lm, conditioner, codec_obj, provenance = build_from_transformers(src, t5_dir, work)
        else:
            lm, conditioner, codec_obj, provenance = build_from_audiocraft(src, t5_dir, codec_dir, work)
        info = {"spec": "codec", "num_codebooks": codec_obj.num_codebooks, "describe": codec_obj.describe()}
        save_model_dir(out, lm, conditioner, info, codec=codec_obj, generation={"window_s": WINDOW_S},
                       extra={"import": provenance})
    return out


# ------------------------------------------------------------------------------ checking an import


@torch.no_grad()
def parity_with_transformers(src: str | os.PathLike, model_dir: str | os.PathLike,
                             texts: tuple[str, ...] = ("80s pop track with bassy drums and synth", "calm piano"),
                             steps: int = 16, cfg_scale: float = 3.0, seed: int = 0) -> dict:
    """Compare an imported model with transformers' MusicGen loaded from the (local) source folder.

    Returns the max abs logit differences (conditional and unconditional rows, ``steps``
    random codes), whether greedy guided generation of ``steps`` tokens gives the same
    codes as ``MusicgenForConditionalGeneration.generate``, and the max abs difference
    of decoding those codes.
    """
    from transformers import MusicgenForConditionalGeneration

    from audiogen.generation.pipeline import condition_batch
    from audiogen.generation.sampling import SamplingParams, generate_window
    from audiogen.models.checkpoint import load_model
    from audiogen.models.conditioning import Conditions

    src = Path(src)
    if detect_layout(src) != "transformers":
        raise AudiogenError(f"{src}: parity is checked against a transformers-layout checkpoint")
    ref = MusicgenForConditionalGeneration.from_pretrained(src, local_files_only=True).float().eval()
    loaded = load_model(model_dir)
    lm, conditioner = loaded.lm, loaded.conditioner
    K, card, B = lm.cfg.num_codebooks, lm.cfg.cardinality, len(texts)
    if steps < K:
        raise AudiogenError(f"steps must be at least the number of codebooks ({K})")
    enc = conditioner.text_encoder.tokenizer(list(texts), padding=True, truncation=True,
                                             max_length=conditioner.cfg.max_text_tokens, return_tensors="pt")
    codes = torch.randint(0, card + 1, (B, K, steps), generator=torch.Generator().manual_seed(seed))
    want = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
               decoder_input_ids=codes.reshape(B * K, steps)).logits.reshape(B, K, steps, card)
    cond, mask = conditioner([Conditions(text=t) for t in texts])
    got = lm(codes, cond, mask)
    text_dim = ref.config.text_encoder.hidden_size
    uwant = ref(encoder_outputs=(torch.zeros(B, 1, text_dim),), attention_mask=torch.zeros(B, 1, dtype=torch.long),
                decoder_input_ids=codes.reshape(B * K, steps)).logits.reshape(B, K, steps, card)
    ucond, umask = conditioner.unconditional(B)
    ugot = lm(codes, ucond, umask)

    seen = {}
    decode = ref.audio_encoder.decode

    def capture(audio_codes, *a, **kw):
        seen["codes"] = audio_codes.clone()
        return decode(audio_codes, *a, **kw)

    ref.audio_encoder.decode = capture
    try:
        ref.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                     guidance_scale=cfg_scale, max_new_tokens=steps)
    finally:
        ref.audio_encoder.decode = decode
    frames = steps + 1 - K  # transformers counts BOS in max_length
    cb, mb = condition_batch(conditioner, [Conditions(text=t) for t in texts], True, "cpu")
    ours = generate_window(lm, cb, mb, frames, SamplingParams(temperature=0.0, cfg_scale=cfg_scale), None)
    theirs = seen["codes"][0]
    wav_ref = decode(theirs[None], [None]).audio_values
    wav = loaded.codec.decode(theirs)
    return {
        "logits_max_abs_diff": (got - want).abs().max().item(),
        "logits_max_abs": want.abs().max().item(),
        "uncond_logits_max_abs_diff": (ugot - uwant).abs().max().item(),
        "greedy_frames": frames,
        "greedy_tokens_equal": bool(torch.equal(ours, theirs)),
        "greedy_tokens_mismatched": int((ours != theirs).sum()) if ours.shape == theirs.shape else -1,
        "decode_max_abs_diff": (wav - wav_ref).abs().max().item(),
        "decode_max_abs": wav_ref.abs().max().item(),
    }
