"""music21 -> FluidSynth rendering: exact labels, license record, resumability."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audiogen.data import render as R

pytestmark = pytest.mark.skipif(shutil.which("fluidsynth") is None or not R.SOUNDFONT.is_file(),
                                reason="needs fluidsynth and fluid-soundfont-gm (install.sh)")


def test_plan_is_deterministic_and_covers_the_collections():
    a = R.plan_corpus(variants=2, seed=3, collections=["bach_chorales", "joplin"])
    assert a == R.plan_corpus(variants=2, seed=3, collections=["bach_chorales", "joplin"])
    assert {j.collection for j in a} == {"bach_chorales", "joplin"} and len(a) == 2 * (408 + 1)
    assert a[0].name.endswith("__v0") and a[1].name.endswith("__v1")
    assert all(-3 <= j.transpose <= 3 for j in a)
    with pytest.raises(Exception, match="unknown collection"):
        R.plan_corpus(collections=["essen"])


def test_every_planned_track_has_its_own_output_file():
    # the quartets' movement1.mxl of Haydn, Mozart and Beethoven once shared one file: the first
    # render counted as done for the others, which were never rendered
    jobs = R.plan_corpus(variants=2, seed=0)
    paths = [R.output_paths(j, Path("out"))[0] for j in jobs]
    assert len(set(paths)) == len(jobs)
    quartets = [j for j in jobs if j.collection == "string_quartets"]
    assert len({j.source for j in quartets}) == len(quartets) // 2 > 40
    assert {j.name for j in quartets if j.source.endswith("/movement1.mxl")} >= {
        n + "__v0" for n in ("haydn_opus74no1_movement1", "mozart_k155_movement1")}


def test_transposed_key_names():
    assert R.transposed_key("D minor", 1) == "Eb minor"
    assert R.transposed_key("Bb major", -3) == "G major"
    assert R.transposed_key("F# minor", 0) == "F# minor"


def test_render_writes_audio_with_exact_labels_and_resumes(tmp_path):
    job = R.Job("ryans_mammoth", "ryansMammoth/" + sorted(p.name for p in (R.corpus_dir() / "ryansMammoth").glob("*.abc"))[0],
                None, "flute", 100, 2, 0)
    summary = R.render_corpus(tmp_path, [job], progress=False, max_seconds=6.0)
    assert summary["rendered_now"] == 1 and summary["failed_now"] == 0
    audio, side = R.output_paths(job, tmp_path)
    labels = json.loads(side.read_text())
    assert labels["instruments"] == ["flute"] and labels["programs"] == [73]
    assert labels["beat_bpm"] == 100 and labels["transpose"] == 2
    assert labels["key"] == R.transposed_key(labels["notated_key"], 2)
    assert "public domain" in labels["license"] and labels["genre"] == "irish and american fiddle tune"
    assert 1.0 < labels["duration_s"] <= 6.0
    from audiogen.audio.io import audio_info

    assert audio_info(audio).sample_rate == R.SAMPLE_RATE
    rows = [json.loads(x) for x in (tmp_path / "tracks.jsonl").read_text().splitlines()]
    assert rows[0]["path"] == audio.relative_to(tmp_path).as_posix()
    mtime = audio.stat().st_mtime_ns
    assert R.render_corpus(tmp_path, [job], progress=False)["rendered_now"] == 0  # resumed: nothing redone
    assert audio.stat().st_mtime_ns == mtime


def test_debian_midi_tracks_are_rendered_to_flac(tmp_path):
    import mido

    from audiogen.audio.io import audio_info
    from audiogen.data.debian_music import PACKAGES, _render_midi

    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0),
                            mido.Message("program_change", program=0, time=0)])
    for note in (60, 64, 67):
        track += [mido.Message("note_on", note=note, velocity=90, time=0),
                  mido.Message("note_off", note=note, velocity=0, time=480)]
    mid.tracks.append(track)
    mid.save(str(tmp_path / "t.mid"))
    _render_midi(tmp_path / "t.mid", tmp_path / "t.flac")
    info = audio_info(tmp_path / "t.flac")
    assert info.sample_rate == R.SAMPLE_RATE and 1.4 < info.duration_s < 4.0  # 3 beats at 120 bpm + release
    assert PACKAGES["openttd-openmsx"]["license"] == "GPL-2.0"


def test_tag_command_names_the_rendered_instruments(tmp_path, capsys):
    """The issue's check: solo piano -> "piano" in MTT's top 3; a string quartet -> "strings" or "violin"."""
    from audiogen.cli import main

    src = sorted(p.relative_to(R.corpus_dir()).as_posix() for p in (R.corpus_dir() / "bach").glob("bwv*.mxl"))[1]
    files = {}
    for ens in ("piano", "string quartet"):
        job = R.Job("bach_chorales", src, None, ens, 80, 0, 0)
        R.render_job(job, tmp_path / ens.replace(" ", "_"), max_seconds=30.0)
        files[ens] = str(R.output_paths(job, tmp_path / ens.replace(" ", "_"))[0])
    assert main(["tag", files["piano"], files["string quartet"], "--top", "3", "--json"]) == 0
    rows = {r["path"]: [t for t, _ in r["top"]] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "piano" in rows[files["piano"]], rows
    assert {"strings", "violin"} & set(rows[files["string quartet"]]), rows


def test_interleave_takes_the_collections_in_turn():
    jobs = R.plan_corpus(variants=1, seed=0, collections=["bach_chorales", "joplin", "monteverdi"])
    order = R.interleave(jobs)
    assert sorted(order, key=jobs.index) == jobs  # same jobs, none lost
    assert [j.collection for j in order[:5]] == ["bach_chorales", "monteverdi", "joplin", "bach_chorales", "monteverdi"]
    assert [j for j in order if j.collection == "bach_chorales"] == [j for j in jobs if j.collection == "bach_chorales"]


def test_ensembles_can_be_drawn_from_a_list_of_ones_own():
    # folk tunes played by guitar and flute, which the collections' own draws rarely give
    jobs = R.plan_corpus(collections=["oneills"], ensembles=["guitar", "flute"])
    assert {j.ensemble for j in jobs} == {"guitar", "flute"}
    own = R.plan_corpus(collections=["oneills"])
    assert [(j.source, j.tune) for j in jobs] == [(j.source, j.tune) for j in own]  # the same pieces
    with pytest.raises(Exception, match="unknown ensemble.*banjo"):
        R.plan_corpus(collections=["oneills"], ensembles=["banjo"])
    with pytest.raises(Exception, match="unknown ensemble"):
        R.plan_corpus(ensembles=[])


def test_a_corpus_can_skip_the_pieces_others_hold(tmp_path, capsys):
    # a second corpus rendered beside the first adds other scores, not the same scores in other ensembles (the
    # same music on both sides of a per-corpus split); premise: the skipped piece is the one rendered, in any variant
    import importlib.util

    tune = R.plan_corpus(collections=["ryans_mammoth"])[0]
    first = tmp_path / "first"
    assert R.render_corpus(first, [tune], progress=False, max_seconds=4.0)["rendered_now"] == 1
    assert R.pieces_in([first]) == {R.piece_of(tune)}
    plan = R.plan_corpus(variants=2, seed=5, collections=["ryans_mammoth"])
    same = [j for j in plan if j.source == tune.source and j.tune == tune.tune]
    assert sorted(j.variant for j in same) == [0, 1]  # the same piece in this plan's own draws
    kept = R.without_pieces(plan, R.pieces_in([first]))
    assert len(kept) == len(plan) - 2 and not [j for j in kept if R.piece_of(j) == R.piece_of(tune)]

    spec = importlib.util.spec_from_file_location("render_music21", Path(__file__).parents[2] / "data_prep" /
                                                  "render_music21.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--out", str(tmp_path / "second"), "--collections", "ryans_mammoth", "--variants", "2", "--plan-only"]
    assert cli.main(args) == 0 and cli.main([*args, "--skip-pieces-in", str(first)]) == 0
    counts = [json.loads(line)["tracks"] for line in capsys.readouterr().out.splitlines()]
    assert counts == [len(plan), len(plan) - 2]
    assert cli.main([*args, "--skip-pieces-in", str(tmp_path / "missing")]) == 1
    assert "no tracks.jsonl" in capsys.readouterr().err
    listing = (first / "tracks.jsonl").read_text()
    assert cli.main(["--out", str(first), "--collections", "ryans_mammoth", "--skip-pieces-in", str(first)]) == 1
    assert "names the output folder" in capsys.readouterr().err
    assert (first / "tracks.jsonl").read_text() == listing  # nothing rendered, nothing dropped from the listing


def test_a_later_run_with_another_plan_keeps_what_earlier_runs_listed(tmp_path):
    # the listing is rewritten at the end of every run: a run with other collections (or other skipped pieces) into
    # the same folder once listed only its own plan's tracks: the label validation (--corpus) and --skip-pieces-in,
    # which read the listing, lost the earlier ones
    a, b = R.plan_corpus(collections=["ryans_mammoth"])[:2]
    assert R.render_corpus(tmp_path, [a], progress=False, max_seconds=3.0)["rendered_now"] == 1
    second = R.render_corpus(tmp_path, [b], progress=False, max_seconds=3.0)
    assert second["rendered_now"] == 1 and second["planned"] == 1 and second["done"] == 2
    paths = [json.loads(x)["path"] for x in (tmp_path / "tracks.jsonl").read_text(encoding="utf-8").splitlines()]
    path_a, path_b = (R.output_paths(j, tmp_path)[0].relative_to(tmp_path).as_posix() for j in (a, b))
    assert paths == [path_b, path_a]  # this plan's, then the earlier run's
    rows = R.listed_tracks(tmp_path / "tracks.jsonl")
    assert rows[1] == {"path": path_a, **json.loads(R.output_paths(a, tmp_path)[1].read_text())}
    # --hours counts the earlier run's audio as done in the folder: nothing more to render for one track's worth
    hours = rows[0]["duration_s"] / 3600
    c = R.plan_corpus(collections=["ryans_mammoth"])[2]
    assert R.render_corpus(tmp_path, [c], progress=False, hours=hours)["rendered_now"] == 0
    # a listed track whose files are gone leaves the listing
    R.output_paths(a, tmp_path)[0].unlink()
    assert R.render_corpus(tmp_path, [b], progress=False)["done"] == 1
    assert [r["path"] for r in R.listed_tracks(tmp_path / "tracks.jsonl")] == [path_b]
    (tmp_path / "tracks.jsonl").write_text('{"path": "x.flac", "source": "s"}\nnot json\n', encoding="utf-8")
    with pytest.raises(Exception, match=r"tracks.jsonl:2: not a track record"):
        R.render_corpus(tmp_path, [b], progress=False)
