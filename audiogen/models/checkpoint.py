"""Model directories: what training exports and ``audiogen generate`` loads.

A model directory is self-describing::

    MODEL_DIR/
      config.yaml          format/version, lm (LMConfig), conditioner (ConditionerConfig),
                           codec (spec + codebooks + description), generation defaults,
                           free-form provenance (training, import)
      model.safetensors    lm.* and conditioner.* weights (the frozen text encoder is not saved)
      codec/               optional: a codec saved with audiogen.codec.base.save_codec

``codec.spec`` is a codec name (``tiny``, ``encodec_24khz``, ...) or a path relative to
the model directory. ``conditioner.text_encoder: text_encoder`` names a text encoder
stored inside the model directory (``MODEL_DIR/text_encoder/``, e.g. an imported
MusicGen's T5); saving such a model copies that folder along. Loading checks that the
codec, the text encoder and the LM agree (codebooks, cardinality, widths) and says which
part is wrong when they do not.
A directory is written into a temporary sibling and renamed into place, so a crash
never leaves a half-written model.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from audiogen.errors import AudiogenError, yaml_problem

FORMAT = "audiogen-model"
VERSION = 1
CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
#: the ``conditioner.text_encoder`` value meaning "the folder of that name inside the model directory"
LOCAL_TEXT_ENCODER = "text_encoder"


@dataclass
class LoadedModel:
    lm: torch.nn.Module
    conditioner: torch.nn.Module
    codec: object
    config: dict = field(default_factory=dict)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an old one (two renames)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_state(lm: torch.nn.Module, conditioner: torch.nn.Module, dtype: torch.dtype | None = None) -> dict:
    state = {}
    for prefix, module in (("lm.", lm), ("conditioner.", conditioner)):
        for k, v in module.state_dict().items():
            v = v.detach().cpu()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            state[prefix + k] = v.contiguous()
    return state


def save_model_dir(out: str | os.PathLike, lm, conditioner, codec_info: dict, codec=None,
                   generation: dict | None = None, extra: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a model directory atomically.

    ``codec_info``: ``{"spec": NAME_OR_RELATIVE_PATH, "num_codebooks": K, "describe": {...}}``.
    With ``codec`` (an ``EncodecCodec``) the codec's weights are saved into ``out/codec``
    and ``spec`` becomes ``"codec"``. ``dtype`` (e.g. ``torch.float16``) shrinks the
    shipped weights; loading upcasts to float32.
    """
    from safetensors.torch import save_file

    from audiogen.codec.base import save_codec

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        codec_info = dict(codec_info)
        if codec is not None:
            save_codec(codec, tmp / "codec", dtype=dtype)
            codec_info.update(spec="codec", num_codebooks=codec.num_codebooks, describe=codec.describe())
        config = {
            "format": FORMAT,
            "version": VERSION,
            "lm": lm.cfg.to_dict(),
            "conditioner": conditioner.cfg.to_dict(),
            "codec": codec_info,
            "generation": {"window_s": 30.0, **(generation or {})},
            **(extra or {}),
        }
        te = getattr(conditioner, "text_encoder", None)
        if conditioner.cfg.text_encoder == LOCAL_TEXT_ENCODER and te is not None:
            shutil.copytree(te.path, tmp / LOCAL_TEXT_ENCODER)
        save_file(model_state(lm, conditioner, dtype), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_config(model_dir: str | os.PathLike) -> dict:
    d = Path(model_dir)
    if not d.is_dir():
        raise AudiogenError(f"{d}: a file, not a model directory" if d.exists()
                            else f"model directory {d} does not exist")
    cfg_file = d / CONFIG
    if not cfg_file.is_file():
        raise AudiogenError(f"{d} is not an audiogen model directory ({CONFIG} is missing)")
    try:
        config = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError as e:
        raise AudiogenError(f"{cfg_file}: not valid YAML ({yaml_problem(e)})") from None
    except UnicodeDecodeError:
        raise AudiogenError(f"{cfg_file}: not a UTF-8 text file") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AudiogenError(f"{cfg_file}: not an audiogen model config (format: {FORMAT} expected)")
    if int(config.get("version", 0)) > VERSION:
        raise AudiogenError(f"{cfg_file}: model format version {config['version']} is newer than this audiogen "
                            f"understands ({VERSION}); upgrade audiogen")
    for part in ("lm", "conditioner", "codec"):
        if not isinstance(config.get(part), dict):
            raise AudiogenError(f"{cfg_file}: the '{part}' section is missing")
    check_generation_section(config, cfg_file)
    return config


#: the settings a model config's ``generation`` section may hold (read by audiogen.generation)
GENERATION_KEYS = ("window_s", "sampling", "key_shift", "default_bpm", "default_bpm_by")


def check_generation_section(config: dict, where) -> None:
    """A clear error for a ``generation`` section that is not a mapping, holds a key nothing reads, or for one of
    its settings placed at the top level of the config: each would otherwise be ignored without a word (a
    ``sampling:`` written beside ``generation:`` leaves the model sampling as before)."""
    gen = config.get("generation")
    if gen is not None and not isinstance(gen, dict):
        raise AudiogenError(f"{where}: 'generation' must be a mapping, got {gen!r}")
    misplaced = [k for k in GENERATION_KEYS if k in config]
    if misplaced:
        raise AudiogenError(f"{where}: {', '.join(misplaced)} belong{'s' if len(misplaced) == 1 else ''} under "
                            f"'generation:', not at the top level (where nothing reads them)")
    unknown = sorted(set(gen or {}) - set(GENERATION_KEYS))
    if unknown:
        raise AudiogenError(f"{where}: unknown generation setting{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(str, unknown))} (known: {', '.join(GENERATION_KEYS)})")


def read_model_configs(model_dir: str | os.PathLike):
    """``(config, LMConfig, ConditionerConfig)`` of a model directory whose weights file is there; nothing loaded."""
    from audiogen.models.conditioning import ConditionerConfig
    from audiogen.models.lm import LMConfig

    d = Path(model_dir)
    config = read_config(d)
    if not (d / WEIGHTS).is_file():
        raise AudiogenError(f"{d}: {WEIGHTS} is missing")
    try:
        return config, LMConfig.from_dict(config["lm"]), ConditionerConfig.from_dict(config["conditioner"])
    except TypeError as e:
        raise AudiogenError(f"{d / CONFIG}: invalid model config ({e})") from None


def load_codec_for(config: dict, model_dir: Path, device="cpu"):
    from audiogen.codec.base import load_codec

    info = config["codec"]
    spec = str(info.get("spec", ""))
    local = model_dir / spec
    if spec and local.is_dir():
        spec = str(local)
    return load_codec(spec, num_codebooks=info.get("num_codebooks"), device=device)


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu", text_encoder=None) -> LoadedModel:
    """Load LM, conditioner and codec from a model directory and check that they fit together."""
    from safetensors.torch import load_file

    from audiogen.models.conditioning import ConditionEncoder
    from audiogen.models.lm import LM

    d = Path(model_dir)
    config, lm_cfg, c_cfg = read_model_configs(d)
    w = d / WEIGHTS
    codec = load_codec_for(config, d, device)
    if codec.num_codebooks != lm_cfg.num_codebooks or codec.cardinality != lm_cfg.cardinality:
        raise AudiogenError(
            f"{d}: the LM expects {lm_cfg.num_codebooks} codebooks x {lm_cfg.cardinality} codes but the codec "
            f"'{config['codec'].get('spec')}' gives {codec.num_codebooks} x {codec.cardinality}"
        )
    if c_cfg.dim != lm_cfg.cond_dim:
        raise AudiogenError(f"{d / CONFIG}: conditioner dim {c_cfg.dim} != lm cond_dim {lm_cfg.cond_dim}")
    if text_encoder is None and c_cfg.text_encoder == LOCAL_TEXT_ENCODER:
        from audiogen.models.conditioning import TextEncoder

        local = d / LOCAL_TEXT_ENCODER
        if not (local / "config.json").is_file():
            raise AudiogenError(f"{d}: the text encoder folder {LOCAL_TEXT_ENCODER}/ named in {CONFIG} is missing")
        text_encoder = TextEncoder(local, c_cfg.max_text_tokens)
    conditioner = ConditionEncoder(c_cfg, text_encoder=text_encoder)
    lm = LM(lm_cfg)
    try:
        state = load_file(str(w))
    except Exception as e:
        raise AudiogenError(f"{w}: unreadable weights ({type(e).__name__}: {e})") from None
    for prefix, module in (("lm.", lm), ("conditioner.", conditioner)):
        part = {k[len(prefix):]: v.float() if v.is_floating_point() else v
                for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part)
        except RuntimeError as e:
            raise AudiogenError(f"{w}: weights do not match {CONFIG} ({str(e).splitlines()[0]})") from None
    lm.to(device).eval()
    conditioner.to(device).eval()
    return LoadedModel(lm=lm, conditioner=conditioner, codec=codec, config=config)
