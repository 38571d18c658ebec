"""``--codec default``: the embedded default model's codec, resolved through that model's config.

Everywhere a codec is named (``load_codec``, ``audiogen prep``, ``audiogen codec``) accepts it,
and it is prep's default, so a first ``audiogen prep`` works offline.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from audiogen.audio.io import write_audio
from audiogen.errors import AudiogenError


def _default_model_codec():
    from audiogen.generation.pipeline import DEFAULT_MODEL_DIR
    from audiogen.models.checkpoint import load_codec_for, read_config

    return load_codec_for(read_config(DEFAULT_MODEL_DIR), DEFAULT_MODEL_DIR)


def test_load_codec_default_is_the_default_models_codec():
    from audiogen.codec.base import load_codec

    want = _default_model_codec().describe()
    assert load_codec("default").describe() == want
    assert want["weights_sha256"]  # trained weights, not a random codec
    # --bandwidth still chooses the codebooks
    assert load_codec("default", num_codebooks=2).num_codebooks == 2


def test_default_follows_the_default_models_config_not_a_fixed_folder(tmp_path, monkeypatch):
    """A default model dir whose config names another codec folder: 'default' loads that one."""
    from audiogen.codec.base import load_codec, save_codec
    from audiogen.generation import pipeline

    model = tmp_path / "model"
    shutil.copytree(pipeline.DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("codec"))
    save_codec(load_codec("tiny", seed=3), model / "other_codec")
    cfg = yaml.safe_load((model / "config.yaml").read_text())
    cfg["codec"]["spec"] = "other_codec"
    cfg["codec"]["num_codebooks"] = 4  # the tiny codec has 4
    (model / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setattr(pipeline, "DEFAULT_MODEL_DIR", model)
    got = load_codec("default")
    assert got.name == "tiny-seed3" and got.num_codebooks == cfg["codec"]["num_codebooks"]
    monkeypatch.setattr(pipeline, "DEFAULT_MODEL_DIR", tmp_path / "none")
    with pytest.raises(AudiogenError, match="no embedded default model"):
        load_codec("default")


def test_prep_defaults_to_the_default_codec_offline(tmp_path, make_music, monkeypatch):
    """No --codec: the dataset is tokenized with the default model's codec, with no weights to fetch."""
    import datasets

    from audiogen.cli import main

    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(tmp_path / "no-weights"))  # no pretrained EnCodec anywhere
    src = tmp_path / "audio"
    src.mkdir()
    write_audio(src / "a.wav", make_music(4.0, 24000, 1, seed=1), 24000)
    assert main(["prep", str(src), "--out", str(tmp_path / "d"), "--segment", "2", "--workers", "0",
                 "--no-progress"]) == 0
    dd = datasets.load_from_disk(str(tmp_path / "d"))
    assert json.loads(dd["train"][0]["codec"]) == _default_model_codec().describe()
    # the pretrained EnCodec is one flag away (and says where its weights go)
    assert main(["prep", str(src), "--out", str(tmp_path / "e"), "--codec", "encodec_24khz", "--workers", "0"]) == 1


def test_codec_command_accepts_default(tmp_path, make_music, capsys):
    import soundfile as sf

    from audiogen.cli import main

    wav = tmp_path / "in.wav"
    write_audio(wav, make_music(1.0, 24000, 1, seed=2), 24000)
    assert main(["codec", "encode", str(wav), str(tmp_path / "t.npy"), "--codec", "default"]) == 0
    assert f"{_default_model_codec().num_codebooks} codebooks" in capsys.readouterr().out
    assert main(["codec", "roundtrip", str(wav), str(tmp_path / "o.wav")]) == 0  # the default model's codec
    assert sf.info(str(tmp_path / "o.wav")).samplerate == _default_model_codec().sample_rate
