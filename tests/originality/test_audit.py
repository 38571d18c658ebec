"""Originality audit: the token index, near-replication measures, verdicts, the CLI and the generate guard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiogen.audio import io as A
from audiogen.errors import AudiogenError
from audiogen.originality import tokens as T
from audiogen.originality.calibration import plant, write_token_dataset
from audiogen.originality.tokens import TokenIndex, build_token_index


def _rows(rng, n, K=4, card=64, frames=300):
    return [rng.integers(0, card, (K, frames)) for _ in range(n)]


@pytest.fixture
def token_data(tmp_path, tiny_codec):
    rng = np.random.default_rng(0)
    rows = _rows(rng, 12)
    d = write_token_dataset(tmp_path / "data", rows, tiny_codec.describe(), valid_rows=2)
    build_token_index(d, progress=False)
    return d, rows


def test_token_index_finds_the_exact_planted_run_with_its_item_and_timestamps(token_data):
    d, rows = token_data
    idx = TokenIndex(d)
    fr = idx.frame_rate
    q = np.random.default_rng(1).integers(0, 64, (4, 400))
    q[:, 100:220] = rows[7][:, 50:170]  # 120 frames of row 7 (train) ...
    q[1, 160] = (q[1, 160] + 1) % 64  # ... with one fine-codebook token changed at frame 60 of the copy
    runs = {name: idx.runs(q, name) for name in ("all", "cb0")}
    best = idx.describe_run(runs["all"][0])
    assert best["item"] == "synthetic-000007" and best["split"] == "train"
    assert best["frames"] == 60  # all codebooks: exact up to the changed token, not past it
    assert best["query_start_s"] == round(100 / fr, 3) and best["source_start_s"] == round(50 / fr, 3)
    cb0 = idx.describe_run(runs["cb0"][0])
    assert cb0["frames"] == 120 and cb0["item"] == "synthetic-000007"  # codebook 0 was untouched
    assert cb0["agreement"] == 1.0
    # a re-encoded copy keeps most, not all, codebook-0 tokens: exact runs break, the gapped cb0 chain holds
    r = np.random.default_rng(3)
    noisy = q.copy()
    changed = r.choice(np.arange(100, 220), 8, replace=False)
    noisy[:, changed] = (noisy[:, changed] + 1) % 64
    assert max(run.frames for run in idx.runs(noisy, "all")) < 60
    chain = idx.runs(noisy, "cb0")[0]
    assert chain.item == 7 and chain.frames >= 100 and 0.85 <= chain.agreement < 1.0
    # the valid split is indexed too (a copy of held-out data is still a copy)
    q2 = np.random.default_rng(2).integers(0, 64, (4, 400))
    q2[:, 0:50] = rows[11][:, 200:250]
    run = idx.runs(q2, "all")[0]
    assert run.frames == 50 and idx.items[run.item]["split"] == "valid"


def test_unrelated_tokens_and_shared_silence_are_not_runs(tmp_path, tiny_codec):
    rng = np.random.default_rng(0)
    rows = _rows(rng, 40)
    for r in rows:  # every item holds the same "silence" frame for 40 frames
        r[:, 10:50] = 3
    d = write_token_dataset(tmp_path / "data", rows, tiny_codec.describe())
    build_token_index(d, progress=False)
    idx = TokenIndex(d)
    q = np.random.default_rng(5).integers(0, 64, (4, 400))
    assert idx.runs(q, "all") == []
    q[:, 100:140] = 3  # the silence: found in more than stop_df places, so no evidence
    assert len(rows) * (40 - 8 + 1) > idx.settings["stop_df"]
    assert idx.runs(q, "all") == []
    q[:, 200:240] = rows[4][:, 100:140]  # a real excerpt still is
    assert idx.runs(q, "all")[0].frames == 40


def test_index_spilled_over_many_buckets_and_chunks_equals_a_single_pass(tmp_path, tiny_codec, monkeypatch):
    rng = np.random.default_rng(3)
    rows = _rows(rng, 20, frames=500)
    d1 = write_token_dataset(tmp_path / "one", rows, tiny_codec.describe())
    d2 = write_token_dataset(tmp_path / "many", rows, tiny_codec.describe())
    build_token_index(d1, progress=False)
    monkeypatch.setattr(T, "CHUNK_ENTRIES", 700)  # a spill every ~2 rows
    monkeypatch.setattr(T, "BUCKET_ENTRIES", 300)  # ~32 buckets
    s2 = build_token_index(d2, progress=False)
    assert s2["bucket_bits"] >= 4  # the premise: really many buckets
    for name in ("all", "cb0"):
        for part in ("hashes", "postings"):
            a = np.load(d1 / T.INDEX_DIR / f"{name}.{part}.npy")
            b = np.load(d2 / T.INDEX_DIR / f"{name}.{part}.npy")
            assert np.array_equal(a, b), (name, part)
        h = np.load(d1 / T.INDEX_DIR / f"{name}.hashes.npy")
        n = next(s.n for s in TokenIndex(d1).specs if s.name == name)
        assert np.all(h[1:] >= h[:-1]) and len(h) == len(rows) * (500 - n + 1)
    assert not (d2 / T.INDEX_DIR / ".spill").exists()


def test_audit_without_an_index_says_how_to_build_it(tmp_path, tiny_codec):
    from audiogen.originality.audit import Auditor

    d = write_token_dataset(tmp_path / "data", _rows(np.random.default_rng(0), 3), tiny_codec.describe())
    with pytest.raises(AudiogenError, match="audiogen audit index"):
        Auditor(d)


# ------------------------------------------------------------------- real music, the CLI, the verdicts


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "audiogen", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def music_data(tmp_path_factory, real_tracks, tiny_codec):
    """Two 15 s excerpts of real tracks prepared with the tiny codec (one segment each) and indexed (tokens + audio);
    a third track stays unseen."""
    from audiogen.data.prep import PrepConfig, prepare
    from audiogen.originality.audit import build_index

    root = tmp_path_factory.mktemp("audit")
    src = root / "src"
    src.mkdir()
    for i, t in enumerate(real_tracks[:2]):
        wav, sr = A.load_audio(t, 24000, 1, offset_s=30, duration_s=15)
        A.write_audio(src / f"track{i}.flac", wav, sr)
    unseen, _ = A.load_audio(real_tracks[2], 24000, 1, offset_s=30, duration_s=15)
    data = root / "data"
    prepare(PrepConfig(str(src), str(data), segment_s=15.0, workers=0, progress=False), codec=tiny_codec)
    build_index(data, progress=False)
    return root, data, unseen


def test_cli_flags_a_planted_copy_and_passes_unseen_music(music_data):
    root, data, unseen = music_data
    sr = 24000
    copy, _ = A.load_audio(root / "src" / "track1.flac", sr, 1, offset_s=4, duration_s=8)
    planted = plant(unseen[0], copy[0], 6 * sr + 77, sr)  # off the frame grid: tokens do not line up
    A.write_audio(root / "planted.wav", planted[None], sr)
    A.write_audio(root / "unseen.wav", unseen, sr)
    out = _cli("audit", str(root / "planted.wav"), str(root / "unseen.wav"), "--against", str(data),
               "--json", str(root / "r.json"), "--html", str(root / "r.html"))
    assert out.returncode == 4, out.stderr  # a copy among them
    res = {Path(r["file"]).name: r for r in json.loads((root / "r.json").read_text())}
    p, u = res["planted.wav"], res["unseen.wav"]
    assert p["verdict"] == "copy" and u["verdict"] == "original", (p["reasons"], u)
    m = p["embedding"]["match"]
    assert m["source"] == "track1.flac" and abs(m["query_start_s"] - 6) <= 2 and abs(m["source_start_s"] - 4) <= 2
    c = p["chroma"]["match"]
    assert c["source"] == "track1.flac" and c["transpose_semitones"] == 0 and c["seconds"] > 5
    page = (root / "r.html").read_text()
    assert "planted.wav" in page and page.count("data:image/png;base64,") >= 1


def test_a_copy_of_decoded_training_tokens_is_found_by_the_round_trip_index(music_data, tiny_codec):
    """What a model that memorised a row emits, re-encoded inside another clip: few tokens survive against
    the row's own tokens, but the row's codec round trip (``rt``) shares nearly all of them."""
    import torch

    from audiogen.originality.audit import Auditor

    root, data, unseen = music_data
    auditor = Auditor(data, codec=tiny_codec)
    tok = auditor.tokens
    assert "rt" in tok.names
    fr, hop = tok.frame_rate, tiny_codec.hop_length
    item = next(i for i, it in enumerate(tok.items) if it["source"] == "track1.flac")
    codes = tok.item_codes(item)[:, int(3 * fr) : int(8 * fr)]  # 5 s of the row's tokens
    wav = tiny_codec.decode(torch.from_numpy(codes.astype(np.int64))[None])[0, 0].numpy()
    at = int(6 * fr) * hop  # on the frame grid of the 15 s host
    r = auditor.audit(plant(unseen[0], wav, at, tiny_codec.sample_rate)[None], tiny_codec.sample_rate)
    run = r["tokens"]["rt"][0]
    assert r["verdict"] == "copy" and run["item"] == tok.items[item]["id"], r["reasons"]
    assert run["seconds"] >= 4.0 and abs(run["query_start_s"] - 6) < 0.5 and abs(run["source_start_s"] - 3) < 0.5
    assert max([x["seconds"] for x in r["tokens"]["all"]] or [0]) < run["seconds"]  # the row's own tokens: far less
    clean = auditor.audit(unseen, tiny_codec.sample_rate)
    assert max([x["seconds"] for x in clean["tokens"]["rt"]] or [0]) < 0.5 and clean["verdict"] == "original"
    assert max([x["seconds"] for x in clean["tokens"]["rt0"]] or [0]) < 1.0
    # 3 dB quieter (as loudness normalisation does): exact runs break, codebook 0's gapped chain (rt0) holds
    quiet = auditor.audit(plant(unseen[0], wav * np.float32(10 ** (-3 / 20)), at, tiny_codec.sample_rate)[None],
                          tiny_codec.sample_rate)
    chain = quiet["tokens"]["rt0"][0]
    assert chain["item"] == tok.items[item]["id"] and chain["seconds"] >= 3.0, quiet["tokens"]
    assert quiet["verdict"] == "copy", quiet["reasons"]


@pytest.mark.parametrize("semitones", [1, 2])
def test_a_transposed_copy_is_found_by_the_chroma_alignment(music_data, semitones):
    import librosa

    from audiogen.originality.audit import Auditor

    root, data, unseen = music_data
    sr = 24000
    copy, _ = A.load_audio(root / "src" / "track0.flac", sr, 1, offset_s=2, duration_s=10)
    up = librosa.effects.pitch_shift(copy[0], sr=sr, n_steps=semitones)
    auditor = Auditor(data)
    r = auditor.audit(plant(unseen[0], up, 5 * sr, sr)[None], sr)
    c = r["chroma"]["match"]
    assert c["source"] == "track0.flac" and c["transpose_semitones"] == 12 - semitones  # rolled back down
    assert c["seconds"] >= 7.0, c  # most of the 10 s (it was ~2.4 s a semitone up before the delay embedding)
    assert abs(c["query_start_s"] - 5) < 2 and abs(c["source_start_s"] - 2) < 2
    assert c["seconds"] >= auditor.thresholds.similar_chroma_s and r["verdict"] in ("similar", "copy"), r["reasons"]


def test_unrelated_music_and_noise_get_no_long_chroma_alignment(music_data, real_tracks):
    """Other tracks of the corpus, and noise, align with the indexed tracks for far less than the chroma
    thresholds at every transposition, while a transposed copy planted in the same clip does not."""
    import librosa

    from audiogen.originality.audit import Auditor

    root, data, unseen = music_data
    sr = 24000
    auditor = Auditor(data)
    th = auditor.thresholds
    clips = [A.load_audio(t, sr, 1, offset_s=30, duration_s=15)[0][0] for t in real_tracks[3:7]]
    clips.append(0.1 * np.random.default_rng(0).standard_normal(15 * sr).astype(np.float32))
    for clip in clips:
        r = auditor.audit(clip[None], sr)
        c = r["chroma"]["match"]
        assert r["chroma"]["shortlist"] == 2 and c is not None  # the measure ran against both tracks
        assert c["seconds"] < th.similar_chroma_s / 2 and r["verdict"] == "original", (c, r["reasons"])
    copy, _ = A.load_audio(root / "src" / "track1.flac", sr, 1, offset_s=3, duration_s=10)
    up = librosa.effects.pitch_shift(copy[0], sr=sr, n_steps=1)
    c = auditor.audit(plant(clips[0], up, 3 * sr, sr)[None], sr)["chroma"]["match"]
    assert c["source"] == "track1.flac" and c["seconds"] >= th.similar_chroma_s, c


def _fake_audio_index(ref: np.ndarray, items: list[dict]):
    """An AudioIndex over reference window embeddings ``ref[W, D]`` (0.5 s hop, 20 windows per 10 s
    item), without building one from audio."""
    from types import SimpleNamespace

    from audiogen.originality.near import AudioIndex

    ai = AudioIndex.__new__(AudioIndex)
    per_item = len(ref) // len(items)
    ai.tokens = SimpleNamespace(items=items)
    ai.emb = ref.astype(np.float16)
    ai.emb_items = np.stack([np.repeat(np.arange(len(items)), per_item),
                             np.tile(np.arange(per_item) * 50, len(items))], 1).astype(np.int32)
    ai.mean, ai.std = np.zeros(ref.shape[1], np.float32), np.ones(ref.shape[1], np.float32)
    ai._rows, ai._sources, ai._recordings = None, {}, {}
    return ai


def test_an_embedding_streak_must_keep_the_copys_timing():
    """A copy keeps its timing: query windows that each match the training recording, but at
    scattered times, are music that sounds alike here and there, not a streak; the same windows in
    order are, across the recording's row boundary, and so is a copy whose source repeats."""
    from audiogen.originality.near import HOP_S

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((60, 32)).astype(np.float32)  # one 30 s recording: 3 items of 10 s
    items = [{"source": "a.ogg", "start_s": 10.0 * i} for i in range(3)]
    ai = _fake_audio_index(ref, items)
    noise = rng.standard_normal((40, 32)).astype(np.float32)
    starts = np.arange(40) * HOP_S

    def streak(q):
        best, _, per_item = ai.nearest(q)
        assert best.max() > 0.99  # the premise: windows do match the recording
        m = ai.embedding_match(starts, q, per_item, 0.9)
        return m

    in_order = noise.copy()
    in_order[10:30] = ref[15:35]  # 20 windows from 7.5 s on: crosses the 10 s row boundary
    m = streak(in_order)
    assert m.seconds == pytest.approx(19 * HOP_S + 3.0) and m.query_start_s == 5.0
    assert (m.item, m.ref_start_s) == (0, 7.5)

    scattered = noise.copy()
    scattered[10:30] = ref[np.arange(20) * 7 % 60]  # the same windows, each 3.5 s on from the last
    m = streak(scattered)
    assert m.seconds == 3.0  # each window alone (it was a 12.5 s streak when any time counted)

    repeat = noise.copy()  # a copy of a passage the source plays twice (a chorus)
    ref_rep = ref.copy()
    ref_rep[40:50] = ref_rep[5:15]
    ai_rep = _fake_audio_index(ref_rep, items)
    repeat[0:20] = ref_rep[35:55]  # runs through the repeat: every window has two equal matches
    best, _, per_item = ai_rep.nearest(repeat)
    m = ai_rep.embedding_match(starts, repeat, per_item, 0.9)
    assert m.seconds == pytest.approx(19 * HOP_S + 3.0) and m.query_start_s == 0.0


def test_an_embedding_match_in_a_held_texture_is_no_streak():
    """Where a recording holds one texture (every window like every other), a query that sounds like
    it matches at every offset; it is only a copy when it is closer to a window than the recording
    is to itself elsewhere. In the default model's corpus 48 % of the builtin embedder's windows are
    within cosine 0.9 of a window 3-15 s away in their own track (docs/audit.md)."""
    from audiogen.originality.near import HOP_S

    rng = np.random.default_rng(1)
    texture = rng.standard_normal(32).astype(np.float32)
    ref = rng.standard_normal((60, 32)).astype(np.float32)
    ref[20:60] = texture + 0.1 * rng.standard_normal((40, 32))  # 20-30 s of one held texture
    ai = _fake_audio_index(ref, [{"source": "a.ogg", "start_s": 10.0 * i} for i in range(3)])
    starts = np.arange(40) * HOP_S
    alike = rng.standard_normal((40, 32)).astype(np.float32)
    alike[0:30] = texture + 0.3 * rng.standard_normal((30, 32))  # sounds like it, closer to no window
    best, _, per_item = ai.nearest(alike)
    assert best[:30].min() > 0.9  # the premise: every window would pass the cosine threshold
    assert ai.embedding_match(starts, alike, per_item, 0.9) is None
    copied = alike.copy()
    copied[0:30] = ref[25:55]  # the passage itself
    best, _, per_item = ai.nearest(copied)
    m = ai.embedding_match(starts, copied, per_item, 0.9)
    assert m.seconds == pytest.approx(29 * HOP_S + 3.0) and m.ref_start_s == 2.5


def test_cli_errors_are_one_line(tmp_path):
    out = _cli("audit", "x.wav", "--against", str(tmp_path))
    assert out.returncode == 1 and "audiogen audit index" in out.stderr and "Traceback" not in out.stderr
    out = _cli("audit", "x.wav")
    assert out.returncode == 1 and "--against" in out.stderr
    out = _cli("audit", "index")
    assert out.returncode == 1 and "usage: audiogen audit index DATA_DIR" in out.stderr


# ---------------------------------------------------------------------------- the generate guard


def test_generate_originality_regenerates_a_copy_and_never_writes_it(tmp_path, tiny_codec, monkeypatch):
    pytest.importorskip("audiogen.models.lm")
    import audiogen.generation.sampling as G
    from audiogen.audio.finishing import read_tags, sidecar_path
    from audiogen.generation.pipeline import GenerateJob, run_job

    model = _tiny_model(tmp_path, tiny_codec)
    sampled = []
    real = G.generate_codes
    monkeypatch.setattr(G, "generate_codes", lambda *a, **k: sampled.append(real(*a, **k)) or sampled[-1])

    def job(out, seed, **kw):
        return GenerateJob.from_options("x", 2.0, out, model_dir=model, seed=seed, progress=False, top_k=50, **kw)

    run_job(job(tmp_path / "seed1.wav", 1))
    run_job(job(tmp_path / "seed2.wav", 2))
    # "training data" that holds the seed-1 take's tokens exactly, among unrelated rows
    rng = np.random.default_rng(0)
    rows = _rows(rng, 5, frames=200) + [sampled[0][0].cpu().numpy()]
    data = write_token_dataset(tmp_path / "data", rows, tiny_codec.describe(), valid_rows=1)
    build_token_index(data, progress=False)

    with pytest.raises(AudiogenError, match="judged a copy .* 1 seeds"):
        run_job(job(tmp_path / "refused.wav", 1, originality=str(data), originality_tries=1))
    assert not (tmp_path / "refused.wav").exists() and not sidecar_path(tmp_path / "refused.wav").exists()

    meta = run_job(job(tmp_path / "guarded.wav", 1, originality=str(data)))[0]
    side = json.loads(sidecar_path(tmp_path / "guarded.wav").read_text())
    assert side["originality"]["verdict"] == "original" and side["originality"]["seed"] == 2
    assert side["originality"]["tries"] == 2 and meta["path"].endswith("guarded.wav")
    assert np.array_equal(A.load_audio(tmp_path / "guarded.wav")[0], A.load_audio(tmp_path / "seed2.wav")[0])
    assert read_tags(tmp_path / "guarded.wav")["audiogen_originality"].startswith("original")


def _tiny_model(tmp_path, tiny_codec) -> Path:
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path / "model", tiny_codec)


def test_generate_originality_is_checked_before_any_model_loads(tmp_path):
    from audiogen.generation.pipeline import GenerateJob

    job = GenerateJob.from_options("x", 2.0, tmp_path / "a.wav", model_dir=tmp_path / "nothing",
                                   originality=str(tmp_path))
    with pytest.raises(AudiogenError, match="no audit index"):
        job.validate()


@pytest.mark.slow
def test_a_model_that_memorised_a_track_continues_it_as_a_copy_and_the_fresh_model_does_not(tmp_path, tiny_codec,
                                                                                             make_music):
    """Fine-tune a tiny LM on one 3 s track until it has memorised it; its greedy continuation of the
    track's first second is judged a copy, the same model before fine-tuning is not."""
    import torch

    from audiogen.generation.pipeline import condition_batch
    from audiogen.generation.sampling import SamplingParams, generate_codes
    from audiogen.models.conditioning import Conditions, ConditionEncoder, ConditionerConfig
    from audiogen.models.lm import LM, named_config
    from audiogen.originality.audit import Auditor
    from audiogen.train.lm import ConditionedLM, codebook_ce_sums, delay_inputs

    torch.manual_seed(0)
    track = tiny_codec.encode(torch.from_numpy(make_music(3.0, seed=11))[None])  # [1, K, T]
    K, card, fr = tiny_codec.num_codebooks, tiny_codec.cardinality, tiny_codec.frame_rate
    rows = _rows(np.random.default_rng(0), 4, K=K, card=card, frames=track.shape[-1]) + [track[0].numpy()]
    data = write_token_dataset(tmp_path / "data", rows, tiny_codec.describe(), valid_rows=1)
    build_token_index(data, progress=False)
    auditor = Auditor(data, codec=tiny_codec, tokens_only=True)

    lm = LM(named_config("tiny", num_codebooks=K, cardinality=card, cond_dim=32, max_positions=512))
    conditioner = ConditionEncoder(ConditionerConfig(text_encoder="none", dim=32))
    conds = [Conditions()]
    opening = int(fr)  # the first second is the prompt; the rest is the model's

    def continuation() -> dict:
        lm.eval()
        cond, mask = condition_batch(conditioner, conds, False, "cpu")
        new = track.shape[-1] - opening
        codes = generate_codes(lm, cond, mask, new, SamplingParams(0.0, 0, 0.0, 1.0), None, 400, 200,
                                 prompt=track[..., :opening], engine="eager")
        wav = tiny_codec.decode(codes)[0].numpy()
        return auditor.audit(wav, tiny_codec.sample_rate, codes=codes[0].numpy())

    before = continuation()
    assert before["verdict"] == "original", before["reasons"]

    model = ConditionedLM(lm, conditioner).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs, targets, tmask = delay_inputs(track, torch.ones_like(track, dtype=torch.bool), card)
    for step in range(600):
        sums, counts = codebook_ce_sums(model(inputs, conds), targets, tmask)
        loss = (sums / counts).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"the premise: the model memorised the track (loss {loss.item():.3f})"

    after = continuation()
    assert after["verdict"] == "copy", after["reasons"]
    run = after["tokens"]["all"][0]
    assert run["item"] == "synthetic-000004" and run["seconds"] >= 1.0
