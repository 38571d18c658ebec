"""benchmarks/codec_quality.py and audiogen.metrics.codec_benchmark: a codec scored next to its anchors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

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
            "--no-encodec", "--timbre-pieces", "0"]
    assert _benchmark().main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["timbre"] == "not requested (--timbre-pieces 0)"
    assert out["held_out_tracks"] == [t.name for t in real_tracks[:2]]
    assert out["encodec_24khz"] == "absent: not requested (--no-encodec)"
    assert "griffin_lim_from_mel" not in out["results"] and np.isfinite(out["results"]["mulaw_8bit"]["mel_error_db"])


def test_timbre_pieces_leave_out_what_a_rendered_corpus_holds(tmp_path):
    from audiogen.metrics.codec_benchmark import timbre_pieces

    first = timbre_pieces(3)
    assert [j.collection for j in first] == ["bach_chorales", "oneills", "bach_chorales"]  # in turn
    corpus = tmp_path / "rendered" / "bach_chorales"
    corpus.mkdir(parents=True)
    (corpus / f"{first[0].name.replace('__v0', '__v1')}.json").write_text("{}")  # any variant of the piece
    assert first[0] not in timbre_pieces(3, [tmp_path / "rendered", tmp_path / "absent"])


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="needs fluidsynth and fluid-soundfont-gm (install.sh)")
def test_the_timbre_check_renders_five_families_and_tags_them_through_the_codec():
    from audiogen.codec.base import load_codec
    from audiogen.metrics.codec_benchmark import TIMBRE_ENSEMBLES, render_timbre_clips, timbre_pieces, timbre_roundtrip
    from audiogen.metrics.tagger import load_tagger

    codec = load_codec(REPO / "audiogen" / "default_model" / "codec")
    clips = render_timbre_clips(timbre_pieces(1), SR, 6.0)
    assert [f for f, _, _ in clips] == list(TIMBRE_ENSEMBLES) and all(len(w) == 6 * SR for _, _, w in clips)
    assert all(np.abs(w).max() > 0.05 for _, _, w in clips)  # premise: something was rendered
    res = timbre_roundtrip(codec, clips, SR, load_tagger("MTT"))
    assert set(res) == {"input", "codec_1kbps", "codec_2kbps", "codec_3kbps", "codec_4kbps"}
    assert all(r["clips"] == 5 and sum(map(len, r["per_family"].values())) == 5 for r in res.values())
    # the tagger names most of the real renders' families: the check can tell a codec that keeps them
    assert res["input"]["top1"] >= 3, res["input"]
