"""benchmarks/codec_quality.py and audiogen.metrics.codec_benchmark: a codec scored next to its anchors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from audiogen.metrics.codec_benchmark import codec_quality, nearest_levels, read_excerpts

REPO = Path(__file__).resolve().parents[2]
SR = 24000


def _benchmark():
    spec = importlib.util.spec_from_file_location("codec_quality", REPO / "benchmarks" / "codec_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_anchors_follow_real_music_and_a_random_codec_does_not(tiny_codec, real_tracks):
    excerpts = read_excerpts(real_tracks[:2], SR, 4.0, 30.0)
    assert [len(w) for _, w in excerpts] == [4 * SR, 4 * SR]
    rep = codec_quality(tiny_codec, excerpts, SR, encodec=False)
    res = rep["results"]
    assert rep["codec_kbps"] == [0.9, 1.8] and {"codec_0.9kbps", "codec_1.8kbps"} <= set(res)
    for anchor in ("vorbis", "mp3", "opus"):
        assert any(k.startswith(f"{anchor}_level") for k in res), (anchor, sorted(res))
    # the ceiling and 8-bit mu-law follow every change of the input ...
    for name in ("griffin_lim_from_mel", "mulaw_8bit"):
        assert res[name]["failures"] == [] and res[name]["band_correlation"] > 0.9, (name, res[name])
    # ... a random codec does not, and its bitrate and token usage are reported
    assert res["codec_0.9kbps"]["failures"], res["codec_0.9kbps"]
    books = res["codec_1.8kbps"]["codebooks"]
    assert len(books) == 4 and all(1 <= b["distinct_min"] <= 64 for b in books)
    assert res["codec_1.8kbps"]["kbps"] == 1.8 and "si_sdr_db" in res["codec_1.8kbps"]
    assert rep["input"]["variation_db"] > 3 and rep["encodec_24khz"].startswith("absent")
    json.dumps(rep)  # the benchmark prints it


def test_compressed_anchors_take_the_level_nearest_each_target_bitrate(make_music):
    wav = make_music(3.0, SR)[0]
    levels = nearest_levels(wav, SR, "mp3", [8.0, 400.0])
    assert levels[8.0] > levels[400.0] == 0.0  # 8 kbps: a high compression level; 400 kbps: the best quality


def test_the_benchmark_wants_two_held_out_tracks(real_tracks, capsys):
    assert _benchmark().main(["--codec", "tiny", "--audio", str(real_tracks[0]), "--seconds", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: need at least 2 held-out tracks, got 1"]


def test_the_benchmark_prints_one_json_object(real_tracks, capsys):
    args = ["--codec", "tiny", "--audio", *map(str, real_tracks[:2]), "--seconds", "2", "--no-griffin-lim",
            "--no-encodec"]
    assert _benchmark().main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["held_out_tracks"] == [t.name for t in real_tracks[:2]]
    assert out["encodec_24khz"] == "absent: not requested (--no-encodec)"
    assert "griffin_lim_from_mel" not in out["results"] and np.isfinite(out["results"]["mulaw_8bit"]["mel_error_db"])
