"""musicnn port: the TF checkpoint reader, parity with the original TensorFlow model, the front end's edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiogen.errors import AudiogenError
from audiogen.metrics import tagger as T
from audiogen.metrics.tf_checkpoint import read_checkpoint

FIX = Path(__file__).parents[1] / "fixtures" / "musicnn"
PARITY_CLIPS = ["chord_16k", "beat_16k", "corpus_48k"]


@pytest.fixture(scope="module")
def reference():
    return np.load(FIX / "reference.npz")


@pytest.fixture(scope="module", params=["MTT", "MSD"])
def tagger(request):
    return T.load_tagger(request.param)


def read_clip(name: str) -> tuple[np.ndarray, int]:
    x, sr = sf.read(FIX / f"{name}.flac", dtype="float32")
    return x, sr


def test_checkpoint_reader_gives_musicnn_variables_with_their_shapes():
    t = read_checkpoint(T.find_checkpoint("MTT"))
    assert t["conv2d/kernel"].shape == (7, 38, 1, 204)  # timbral 7 x 0.4*96, 1.6*128 filters
    assert t["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert t["dense_1/kernel"].shape == (200, 50)
    assert t["conv2d/kernel"].dtype == np.float32
    # Adam slots are stored too: the reader walks every block of the table, not only the first
    assert "dense_1/kernel/Adam_1" in t


def test_checkpoint_reader_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.index").write_bytes(b"not an sstable at all, just some bytes" * 3)
    with pytest.raises(AudiogenError, match="not a TensorFlow checkpoint index"):
        read_checkpoint(tmp_path / "x")
    with pytest.raises(AudiogenError, match="not found"):
        read_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize("clip", PARITY_CLIPS)
def test_port_equals_original_musicnn_taggram(tagger, reference, clip):
    key = f"{tagger.name.split('_')[0]}/{clip}"
    x, sr = read_clip(clip)
    inp = T.to_model_input(x, sr)
    ref_inp = reference[f"{key}/input"].astype(np.float32)
    assert inp.shape == ref_inp.shape and np.isfinite(ref_inp).all()  # premise: no overflow in these clips
    # the front end, resampling included, matches to the last bit of its float16 output, except where a
    # value sits on a rounding boundary: float32 sums round differently across CPUs (SIMD width, FMA),
    # so a few elements (0.006-0.04 % on this project's machines) land one float16 step away
    step = np.spacing(np.abs(ref_inp).astype(np.float16)).astype(np.float32)
    off = inp != ref_inp
    assert (np.abs(inp - ref_inp) <= step).all() and off.mean() < 1e-3, (off.sum(), np.abs(inp - ref_inp).max())
    probs, pen = tagger.forward_patches(inp)
    np.testing.assert_allclose(probs, reference[f"{key}/taggram"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(pen, reference[f"{key}/penultimate"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(tagger.taggram(x, sr), probs, rtol=0, atol=0)


def test_overflowing_bins_are_clipped_not_inf(reference):
    x, sr = read_clip("loud_sine_16k")
    inp = T.to_model_input(x, sr)
    ref = reference["MTT/loud_sine_16k/input"].astype(np.float32)
    inf = np.isinf(ref)
    assert inf.any()  # premise: the original overflows here
    step = np.spacing(np.abs(ref[~inf]).astype(np.float16)).astype(np.float32)  # one float16 step, as above
    assert (np.abs(inp[~inf] - ref[~inf]) <= step).all()
    assert np.allclose(inp[inf], np.log10(np.finfo(np.float16).max), atol=1e-3)
    # the original's output on overflowing audio is one constant taggram (the same for the
    # loud sine and for the beat clip at full level, see README.md); ours depends on the audio
    probs = T.load_tagger("MTT").forward_patches(inp)[0]
    assert np.isfinite(probs).all()
    assert np.abs(probs - reference["MTT/loud_sine_16k/taggram"]).max() > 0.05


def test_short_audio_is_repeat_padded_to_one_patch():
    x, sr = read_clip("chord_16k")
    inp = T.to_model_input(x[: sr // 2], sr)
    assert inp.shape == (1, T.PATCH_FRAMES, T.N_MELS)
    np.testing.assert_array_equal(inp[0, :10], inp[0, 32:42])  # 0.5 s = 32 frames, then it repeats
    with pytest.raises(AudiogenError, match="non-empty"):
        T.to_model_input(np.zeros(0, np.float32), sr)


def test_top_tags_of_a_chord_are_calm_and_sorted():
    x, sr = read_clip("chord_16k")
    top = T.load_tagger("MTT").top_tags(x, sr, n=5)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and len(top) == 5
    assert top[0][0] == "slow"  # what the original says too (README.md)


def test_missing_weights_name_the_path_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(AudiogenError, match=r"pip install --no-deps musicnn.*--weights"):
        T.find_checkpoint("MTT", weights=tmp_path / "nowhere")
    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(T, "_musicnn_package_dir", lambda: None)
    with pytest.raises(AudiogenError, match=str(tmp_path / "musicnn" / "MTT_musicnn")):
        T.load_tagger("MTT")
    with pytest.raises(AudiogenError, match="choose MTT or MSD"):
        T.load_tagger("GTZAN")


def test_weights_folder_under_audiogen_weights_is_used(tmp_path, monkeypatch):
    import shutil

    src = Path(T.find_checkpoint("MSD"))
    shutil.copytree(src, tmp_path / "musicnn" / "MSD_musicnn")
    monkeypatch.setenv("AUDIOGEN_WEIGHTS", str(tmp_path))
    assert T.find_checkpoint("MSD") == f"{tmp_path / 'musicnn' / 'MSD_musicnn'}/"
    assert T.load_tagger("msd").labels[0] == "rock"


# ------------------------------------------------------------------------- uses of the tagger


def test_tag_command_prints_top_tags_and_json(capsys):
    import json

    from audiogen.cli import main

    clip = str(FIX / "chord_16k.flac")
    assert main(["tag", clip, "--top", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(clip + ": slow 0.47, ")
    assert main(["tag", str(FIX), "--model", "msd", "--json", "--top", "2"]) == 0
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all(r["model"] == "MSD_musicnn" and len(r["top"]) == 2 for r in rows)
    chord = next(r for r in rows if r["path"].endswith("chord_16k.flac"))
    assert chord["top"][0][0] == "ambient" and len(chord["probabilities"]) == 50


def test_tag_command_errors_are_one_line(tmp_path, capsys):
    from audiogen.cli import main

    assert main(["tag", str(tmp_path)]) == 1
    assert "no audio files" in capsys.readouterr().err
    assert main(["tag", str(FIX / "chord_16k.flac"), "--weights", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "weights not found" in err and len(err.strip().splitlines()) == 1


def test_musicnn_fad_embedder_gives_overlapping_penultimate_frames():
    from audiogen.metrics.embedders import load_embedder

    emb = load_embedder("musicnn")
    x, sr = read_clip("beat_16k")  # 6.5 s: 407 frames -> patches at 0, 94, 188 (+187 <= 407)
    frames = emb.embed(x[None], sr)
    assert frames.shape == (3, 200) and not emb.comparable
    # the first patch is also musicnn's own first one: the original's penultimate features
    ref = np.load(FIX / "reference.npz")["MTT/beat_16k/penultimate"]
    np.testing.assert_allclose(frames[0], ref[0], atol=1e-4)
    assert np.abs(frames[1] - ref[0]).max() > 0.01  # the half-overlapping patch is another input
    assert emb.cache_key.startswith("musicnn-MTT_musicnn-")
