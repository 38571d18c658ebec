"""Tagger labels for prep: the MTT -> genre/mood/instruments mapping, the per-file cache, and prep --tag-labels
on rendered audio whose instrument is known."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audiogen.metrics import tagger as T


def test_labels_from_tags_thresholds_and_records_confidence_and_source():
    p = np.zeros(50)
    for tag, v in (("piano", 0.8), ("classical", 0.6), ("quiet", 0.3), ("violin", 0.2), ("strings", 0.26)):
        p[T.MTT_LABELS.index(tag)] = v
    out = T.labels_from_tags(p)
    assert out["genre"] == "classical" and out["mood"] == "quiet"
    assert out["instruments"] == ["piano", "strings"]  # violin is under the 0.25 threshold
    assert out["label_confidence"] == {"genre": 0.6, "mood": 0.3, "instruments": {"piano": 0.8, "strings": 0.26}}
    assert set(out["label_source"]) == {"genre", "mood", "instruments"}
    assert T.labels_from_tags(np.full(50, 0.1)) == {"label_confidence": {}, "label_source": {}}


def test_fill_missing_labels_keeps_metadata_and_caches(tmp_path, monkeypatch):
    clip = T.Path(__file__).parents[1] / "fixtures" / "musicnn" / "chord_16k.flac"
    full = {"genre": "folk", "mood": "calm", "instruments": ["fiddle"]}
    assert T.fill_missing_labels(full, clip, tmp_path, "abc") == full  # nothing missing: no tagging
    assert not list(tmp_path.iterdir())
    out = T.fill_missing_labels({"genre": "folk"}, clip, tmp_path, "abc")
    assert out["genre"] == "folk" and "genre" not in out.get("label_source", {})
    cached = json.loads((tmp_path / "abc.tags.json").read_text())
    assert cached["mood"] == "slow" and out["mood"] == "slow"  # the chord's top tag (see test_tagger)
    assert out["label_source"]["mood"].startswith("musicnn")
    monkeypatch.setattr(T, "_cached_tagger", lambda: pytest.fail("tagged again despite the cache"))
    assert T.fill_missing_labels({}, clip, tmp_path, "abc")["mood"] == "slow"


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="needs fluidsynth (install.sh)")
def test_prep_tag_labels_on_rendered_piano_without_metadata(tmp_path):
    from datasets import load_from_disk

    from audiogen.data import render as R
    from audiogen.data.prep import PrepConfig, prepare

    src = sorted(p.relative_to(R.corpus_dir()).as_posix() for p in (R.corpus_dir() / "bach").glob("bwv*.mxl"))[0]
    job = R.Job("bach_chorales", src, None, "piano", 80, 0, 0)
    R.render_job(job, tmp_path / "render", max_seconds=12.0)
    audio, side = R.output_paths(job, tmp_path / "render")
    music = tmp_path / "music"
    music.mkdir()
    shutil.copy(audio, music / "piece.flac")  # the audio alone: no sidecar, no tags
    cfg = PrepConfig(str(music), str(tmp_path / "data"), codec="tiny", segment_s=6.0, workers=0, progress=False,
                     tag_labels=True)
    prepare(cfg)
    ds = load_from_disk(str(tmp_path / "data"))
    rows = [r for split in ds.values() for r in split]
    assert rows and all("piano" in r["instruments"] for r in rows)
    assert all("piano" in r["caption"] for r in rows)  # captions are composed from the labels
    cache = next((tmp_path / "data" / ".work").glob("*.tags.json"))
    rec = json.loads(cache.read_text())
    assert rec["label_confidence"]["instruments"]["piano"] >= T.LABEL_THRESHOLD
    assert rec["label_source"]["instruments"] == "musicnn MTT_musicnn tagger"
