"""LM training: data determinism, the delay-pattern loss, 1 vs 2 processes, overfitting one real
clip, exact resume after kill -9, SIGTERM, conditioning, export + generate, config errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audiogen.errors import AudiogenError
from distributed_helpers import LAUNCH_TIMEOUT_S, assert_ranks, free_port_in, kill_env, node_launcher, two_ranks

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "train_lm.py"
TINY = REPO / "recipes" / "configs" / "tiny.yaml"
GENRES = ["ambient", "rock", "ambient", "rock", "ambient", "rock"]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs single-threaded like the subprocesses: on a shared 2-core machine,
    oversubscribed OpenMP threads make a tiny step 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory, tiny_codec) -> Path:
    """The tiny codec saved as a folder: subprocesses load it in milliseconds."""
    from audiogen.codec.base import save_codec

    return save_codec(tiny_codec, tmp_path_factory.mktemp("lm_codec") / "tiny")


@pytest.fixture(scope="module")
def codec(codec_dir):
    from audiogen.codec.base import load_codec

    return load_codec(codec_dir)


@pytest.fixture(scope="module")
def clips(codec, real_tracks) -> list[np.ndarray]:
    """Six real clips tokenized with the tiny codec: int16 [K, T]; the first is short (0.6 s), the others 2 s."""
    from audiogen.audio.io import load_audio

    out = []
    for i, t in enumerate(real_tracks[:6]):
        wav, _ = load_audio(t, sample_rate=codec.sample_rate, channels=1, offset_s=20.0, duration_s=0.6 if i == 0 else 2.0)
        out.append(codec.encode(torch.from_numpy(wav)[None])[0].numpy().astype(np.int16))
    return out


def make_dataset(path: Path, codec, train: list[np.ndarray], valid: list[np.ndarray], genres=GENRES) -> Path:
    """A prepared dataset (audiogen.data.prep's schema) from token arrays, with a few conditions per row."""
    import datasets

    from audiogen.data.prep import dataset_features

    desc = json.dumps(codec.describe(), sort_keys=True)

    def rows(arrays, split):
        return [dict(id=f"{split}{i}", source=f"{split}{i}.ogg", sha256=f"{i:064d}", start_s=0.0,
                     duration_s=a.shape[1] / codec.frame_rate, codec=desc, codes=a.tolist(),
                     caption=f"a {genres[i % 6]} piece", genre=genres[i % 6], mood=["calm", "dark"][i % 2],
                     bpm=80.0 + 20 * i, key="C major", instruments=["piano"] if i % 2 else ["synth"], beats=[],
                     license="CC-BY-SA-3.0", split=split, title=None, artist=None, attribution=None)
                for i, a in enumerate(arrays)]

    f = dataset_features(codec.num_codebooks)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(train, "train"), features=f),
                               "valid": datasets.Dataset.from_list(rows(valid, "valid"), features=f)})
    dd.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, codec, clips) -> Path:
    return make_dataset(tmp_path_factory.mktemp("lm_data") / "data", codec, clips[:5], clips[5:])


def overrides(data_dir: Path, codec_dir: Path, out: Path, **extra) -> list[str]:
    base = {"data_dir": data_dir, "codec": codec_dir, "out_dir": out, "max_steps": 8, "save_every": 3,
            "log_every": 1, "eval_every": 4, "progress": "false", "batch_size": 4, "vocab_min_count": 1,
            "segment_s": 0.8, "warmup_steps": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_recipe(args: list[str], launcher: list[str] | None = None, env_extra: dict | None = None,
               **kw) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(RECIPE), "--config", str(TINY), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=LAUNCH_TIMEOUT_S, **kw)


def train_in_process(args: list[str]) -> int:
    from audiogen.train.lm import TrainConfig, train
    from audiogen.train.loop import load_config

    return train(load_config(TrainConfig, TINY, args))


def log_records(out: Path) -> list[dict]:
    """The logged figures (the processes' start lines left out: a resumed run has one more)."""
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs  # wall-clock speed varies
            if r.get("event") != "start"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, codec_dir) -> Path:
    """An uninterrupted 8-step run (subprocess), exported in float32."""
    out = tmp_path_factory.mktemp("lm_runs") / "uninterrupted"
    r = run_recipe(overrides(data_dir, codec_dir, out, export_dtype="float32"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------ data and loss


def test_crops_depend_only_on_seed_and_index_and_short_rows_are_padded_and_masked(data_dir):
    from audiogen.data.loader import CropDataset, load_prepared

    ds = load_prepared(data_dir)["train"]
    a = CropDataset(ds, 60, special=64, seed=3)
    b = CropDataset(ds, 60, special=64, seed=3)
    for i in (0, 7, 123):
        assert torch.equal(a[i]["codes"], b[i]["codes"]) and a[i]["cond"] == b[i]["cond"]
    # one epoch visits every row once
    assert sorted(a.row_of(i) for i in range(len(ds))) == list(range(len(ds)))
    short = next(i for i in range(len(ds)) if a.row_of(i) == 0)  # row 0 holds 0.6 s = 45 frames
    item = a[short]
    assert item["codes"].shape == (4, 60)
    assert item["mask"][:, :45].all() and not item["mask"][:, 45:].any()
    assert (item["codes"][:, 45:] == 64).all()
    # condition dropout is drawn per sample: everything dropped at p_drop_all=1
    from audiogen.models.conditioning import Conditions, ConditionerConfig

    dropped = CropDataset(ds, 60, 64, 3, drop=ConditionerConfig(text_encoder="none", p_drop_all=1.0))
    assert dropped[5]["cond"] == Conditions() and a[5]["cond"].genre in ("ambient", "rock")


def test_a_source_mix_draws_each_dataset_by_its_weight_and_every_row_before_any_twice():
    from audiogen.data.loader import mix_rows

    sizes = [10, 3]
    even = mix_rows(5, 0, sizes, [1, 1])
    assert len(even) == 13 and np.array_equal(even, mix_rows(5, 0, sizes, [0.5, 0.5]))  # weights are normalised
    first, second = even[even < 10], even[even >= 10]
    assert len(first) == 7 and len(set(first.tolist())) == 7  # 6.5 each: the remainder to the first
    assert sorted(second.tolist()) == [10, 10, 11, 11, 12, 12]  # oversampled 2x: each row twice
    assert not np.array_equal(even, mix_rows(5, 1, sizes, [1, 1]))  # each epoch its own order
    only = mix_rows(5, 0, sizes, [1, 0])
    assert (only < 10).all() and set(only.tolist()) == set(range(10))
    with pytest.raises(AudiogenError, match="one weight >= 0 per dataset"):
        mix_rows(5, 0, sizes, [0, 0])


def test_a_step_covers_the_same_samples_for_any_number_of_processes_and_accumulation():
    from audiogen.data.loader import StepBatchSampler

    one = list(StepBatchSampler(2, 4, global_batch=8))
    assert one == [list(range(16, 24)), list(range(24, 32))]
    for world, accum in ((2, 1), (4, 2), (2, 4)):
        per_rank = [list(StepBatchSampler(2, 4, 8, world, r, accum)) for r in range(world)]
        for s in range(2):  # the union of all ranks' micro-batches of step s is the global batch
            got = sorted(i for r in range(world) for mb in per_rank[r][s * accum : (s + 1) * accum] for i in mb)
            assert got == one[s]
    with pytest.raises(AudiogenError, match="divisible"):
        StepBatchSampler(0, 1, 6, world=4)


def test_loss_targets_the_delay_pattern_with_bos_input_and_masks_special_and_padding():
    from audiogen.train.lm import codebook_ce_sums, delay_inputs

    K, T, special = 3, 5, 9
    codes = torch.arange(K * T).view(1, K, T) % 9
    mask = torch.ones(1, K, T, dtype=torch.bool)
    mask[..., 4:] = False  # last frame is padding
    inputs, targets, tmask = delay_inputs(codes, mask, special)
    assert inputs.shape == targets.shape == tmask.shape == (1, K, T + K - 1)
    assert (inputs[:, :, 0] == special).all() and torch.equal(inputs[:, :, 1:], targets[:, :, :-1])
    for k in range(K):
        assert torch.equal(targets[0, k, k : k + T], codes[0, k])
        assert tmask[0, k].tolist() == [k <= j < k + 4 for j in range(T + K - 1)]
    # a perfect prediction of the valid targets gives zero loss whatever sits at masked positions
    logits = torch.full((1, K, T + K - 1, 9), -1e4)
    logits.scatter_(-1, targets.clamp(max=8)[..., None], 1e4)
    logits[~tmask] = torch.randn(int((~tmask).sum()), 9)
    sums, counts = codebook_ce_sums(logits, targets, tmask)
    assert sums.abs().max() < 1e-3 and counts.tolist() == [4.0, 4.0, 4.0]


def test_lr_warms_up_then_decays_by_cosine_to_the_floor():
    from audiogen.train.lm import TrainConfig
    from audiogen.train.loop import lr_at

    cfg = TrainConfig(data_dir="x", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


# ------------------------------------------------------------------------------ the loop


@pytest.fixture(scope="module")
def trained_two_ranks(tmp_path_factory, data_dir, codec_dir) -> Path:
    """``trained`` again with 2 real processes (gloo on CPU), each 2 accumulated micro-batches of 1 sequence."""
    out = tmp_path_factory.mktemp("lm_runs") / "two_ranks"
    r = run_recipe(overrides(data_dir, codec_dir, out, export_dtype="float32", grad_accum=2), launcher=two_ranks())
    assert r.returncode == 0, r.stderr[-3000:]
    assert_ranks(out)
    return out


@pytest.mark.slow  # 2-process launches: ~40 s each on the shared 2-core machine
def test_two_ranks_match_one_process_with_the_same_global_batch(trained, trained_two_ranks):
    """2 processes x 2 accumulated micro-batches of 1 vs 1 process x 4: the same global batch, the same run."""
    assert_ranks(trained, world=1)
    one, two = log_records(trained), log_records(trained_two_ranks)
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) == 10  # 8 train + 2 eval lines
    for a, b in zip(one, two):
        for key in a:
            if key.startswith(("loss", "eval/")):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    from safetensors.torch import load_file

    w1, w2 = (load_file(str(d / "model" / "model.safetensors")) for d in (trained, trained_two_ranks))
    assert w1.keys() == w2.keys()
    # the two runs sum gradients in another order: on a fresh VM (2026-12-04) the first codebook's head, the
    # largest weights (max 0.52), differed by 1.4e-5 after 8 AdamW steps and every other tensor by < 2e-6; a
    # rank that did not sync would differ by about lr x steps (1e-3 and more)
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 5e-5, worst
    # one checkpoint per step for the whole job: the model once, each rank its RNG state
    ckpt = trained_two_ranks / "checkpoints" / "step_0000008"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                                      "random_states_1.pkl", "trainer.json"]
    assert json.loads((ckpt / "trainer.json").read_text())["world_size"] == 2


@pytest.mark.slow  # 2-process launches: ~40 s each on the shared 2-core machine
@pytest.mark.parametrize("rank, step", [(1, 5), (0, 6)])  # mid-interval; the main process right after a save
def test_kill_9_of_one_rank_then_rerun_is_bit_identical_to_an_uninterrupted_two_rank_run(
        trained_two_ranks, data_dir, codec_dir, tmp_path, rank, step):
    out = tmp_path / "killed"
    args = overrides(data_dir, codec_dir, out, export_dtype="float32", grad_accum=2)
    first = run_recipe(args, launcher=two_ranks(), env_extra=kill_env(step, rank))
    assert first.returncode != 0, first.stderr[-2000:]  # the launcher stops the other rank and fails
    saved = [f"step_{s:07d}" for s in range(3, step + 1, 3)][-2:]  # save_every=3, keep_checkpoints=2
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == saved
    resumed = run_recipe(args, launcher=two_ranks())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert_ranks(out, runs=2)
    assert (out / "model" / "model.safetensors").read_bytes() == \
        (trained_two_ranks / "model" / "model.safetensors").read_bytes()
    assert log_records(out) == log_records(trained_two_ranks)
    assert not list((out / "checkpoints").glob(".*"))  # no temp folder left behind


def test_overfits_one_real_clip_and_greedy_decoding_reproduces_its_tokens(codec, codec_dir, clips, tmp_path):
    from audiogen.generation.sampling import SamplingParams, generate_window
    from audiogen.models.checkpoint import load_model
    from audiogen.models.conditioning import Conditions

    clip = clips[1][:, :40]  # 40 frames (0.53 s) of real music
    data = make_dataset(tmp_path / "one_clip", codec, [clip], [clip])
    out = tmp_path / "overfit"
    code = train_in_process(overrides(
        data, codec_dir, out, segment_s=40 / codec.frame_rate, batch_size=2, max_steps=250, lr=0.01, warmup_steps=20,
        min_lr_ratio=0.05, eval_every=0, save_every=1000, log_every=50, export_dtype="float32",
        **{"conditioner.p_drop_all": 0.0, "conditioner.p_drop_attr": 0.0, "conditioner.p_drop_text": 0.0}))
    assert code == 0
    final = log_records(out)[-1]
    assert final["step"] == 250 and final["loss"] < 0.05, final
    loaded = load_model(out / "model")
    row = Conditions(text="a ambient piece", genre="ambient", mood="calm", bpm=80.0, key="C major", instruments=["synth"])
    cond, mask = loaded.conditioner([row])
    codes = generate_window(loaded.lm, cond, mask, clip.shape[1], SamplingParams(temperature=0, cfg_scale=1.0), None)
    assert torch.equal(codes[0], torch.from_numpy(clip.astype(np.int64)))


def test_kill_9_then_rerun_is_bit_identical_to_an_uninterrupted_run(trained, data_dir, codec_dir, tmp_path):
    out = tmp_path / "killed"
    args = overrides(data_dir, codec_dir, out, export_dtype="float32")
    first = run_recipe(args, env_extra=kill_env(5))
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000003"]
    resumed = run_recipe(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert (out / "model" / "model.safetensors").read_bytes() == (trained / "model" / "model.safetensors").read_bytes()
    assert log_records(out) == log_records(trained)  # the whole loss curve, bit for bit (JSON floats round-trip)
    # keep_checkpoints=2: the newest two survive
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000006", "step_0000008"]


def test_sigterm_saves_a_checkpoint_and_exits_0(data_dir, codec_dir, tmp_path):
    out = tmp_path / "term"
    cmd = [sys.executable, str(RECIPE), "--config", str(TINY),
           *overrides(data_dir, codec_dir, out, max_steps=100000, save_every=100000, eval_every=0)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = out / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    last = log_records(out)[-1]["step"]
    ckpts = [p.name for p in (out / "checkpoints").glob("step_*")]
    assert ckpts == [f"step_{last:07d}"] and 3 <= last < 100000
    assert (out / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ the result


def test_conditions_change_the_logits_and_an_all_dropped_row_still_runs(trained):
    from audiogen.models.checkpoint import load_model
    from audiogen.models.conditioning import Conditions

    m = load_model(trained / "model")
    tokens = torch.randint(0, m.lm.cfg.cardinality, (1, m.lm.cfg.num_codebooks, 12))
    a = Conditions(genre="ambient", mood="calm", bpm=80.0, key="C major", instruments=["synth"])
    b = Conditions(genre="rock", mood="dark", bpm=160.0, key="C major", instruments=["piano"])
    with torch.no_grad():
        la, lb, ln = (m.lm(tokens, *m.conditioner([c])) for c in (a, b, Conditions()))
    assert (la - lb).abs().max() > 1e-4
    assert torch.isfinite(ln).all() and (ln - la).abs().max() > 1e-4
    # the vocabularies came from the train split
    assert m.conditioner.vocab["genre"] == ["ambient", "rock"] and m.conditioner.cfg.bpm_buckets


def test_exported_model_dir_loads_and_audiogen_generate_uses_it(trained, codec, tmp_path):
    from audiogen.models.checkpoint import load_model, read_config

    config = read_config(trained / "model")
    assert config["codec"]["spec"] == "codec" and (trained / "model" / "codec" / "codec.json").is_file()
    assert config["training"]["steps"] == 8
    m = load_model(trained / "model")
    assert m.codec.num_codebooks == codec.num_codebooks and m.lm.cfg.cardinality == codec.cardinality
    wav = tmp_path / "out.wav"
    r = subprocess.run([sys.executable, "-m", "audiogen", "generate", "a calm ambient piece", "--genre", "ambient",
                        "--duration", "1", "--out", str(wav), "--model", str(trained / "model"), "--quiet"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert wav.is_file() and wav.stat().st_size > 1000


def test_training_draws_its_curves_at_every_checkpoint(trained, tmp_path):
    """``OUT_DIR/curves.png`` is drawn from ``log.jsonl`` (8 steps, eval at 4 and 8); the
    on-demand script redraws it and fails in one line where there is no log."""
    from audiogen.train.curves import read_log, series

    png = trained / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = series(read_log(trained / "log.jsonl"))
    assert s["loss"][0] == list(range(1, 9)) and s["eval/loss_0"][0] == [4, 8]
    ppl = [r["eval/ppl_0"] for r in log_records(trained) if "eval/ppl_0" in r]
    assert s["eval/loss_0"][1] == pytest.approx([math.log(p) for p in ppl])
    torn = tmp_path / "run"
    torn.mkdir()
    (torn / "log.jsonl").write_text((trained / "log.jsonl").read_text() + '{"step": 9, "lo')  # killed mid-line
    r = subprocess.run([sys.executable, "eval/plot_training.py", str(torn)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (torn / "curves.png").read_bytes()[:4] == b"\x89PNG"
    r = subprocess.run([sys.executable, "eval/plot_training.py", str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no training log here" in r.stderr


def test_fine_tune_from_a_model_dir_starts_from_its_weights(trained, data_dir, codec_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    assert train_in_process(overrides(data_dir, codec_dir, out, init_from=trained / "model", max_steps=1, lr=1e-12,
                                      warmup_steps=0, eval_every=0, export_dtype="float32")) == 0
    before, after = (load_file(str(d / "model.safetensors")) for d in (trained / "model", out / "model"))
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    with pytest.raises(AudiogenError, match="lm.dim=64, the config asks for 32"):
        train_in_process(overrides(data_dir, codec_dir, tmp_path / "ft2", init_from=trained / "model", **{"lm.dim": 32}))
    # regularisers may change: the LM's residual dropout as condition dropout does
    from audiogen.models.checkpoint import read_config

    assert train_in_process(overrides(data_dir, codec_dir, tmp_path / "ft3", init_from=trained / "model", max_steps=1,
                                      eval_every=0, **{"lm.dropout": 0.2, "sampling.cfg_scale": 1.5,
                                                       "sampling.top_k": 9})) == 0
    config = read_config(tmp_path / "ft3" / "model")
    assert config["lm"]["dropout"] == 0.2
    # the run's recommended sampling is the exported model's, which generate uses for options not given
    assert config["generation"]["sampling"] == {"cfg_scale": 1.5, "top_k": 9}
    assert "sampling" not in read_config(trained / "model")["generation"]


def test_training_on_a_mix_reads_both_datasets_and_records_the_mix(data_dir, codec, codec_dir, clips,
                                                                   tmp_path):
    from audiogen.models.checkpoint import read_config

    extra = make_dataset(tmp_path / "extra", codec, clips[1:6], clips[:1], genres=["folk"] * 6)
    out = tmp_path / "mix"
    assert train_in_process(overrides(data_dir, codec_dir, out, max_steps=3, eval_every=3,
                                      extra_data_dirs=extra, data_weights="[1, 3]")) == 0
    cfg = read_config(out / "model")
    # the extra dataset was read: its genre is in the vocabulary
    assert "folk" in cfg["conditioner"]["genres"] and "rock" in cfg["conditioner"]["genres"]
    assert cfg["training"]["extra_data_dirs"] == [str(extra)] and cfg["training"]["data_weights"] == [1, 3]
    with pytest.raises(AudiogenError, match="holds a run with different data_weights"):
        train_in_process(overrides(data_dir, codec_dir, out, max_steps=4, extra_data_dirs=extra,
                                   data_weights="[1, 1]"))
    with pytest.raises(AudiogenError, match="data_weights has 3 values for 2 datasets"):
        train_in_process(overrides(data_dir, codec_dir, tmp_path / "bad", extra_data_dirs=extra,
                                   data_weights="[1, 1, 1]"))


# ------------------------------------------------------------------------------ errors


def test_bad_config_gives_one_clear_error_without_traceback(data_dir, codec_dir, tmp_path):
    r = run_recipe(overrides(data_dir, codec_dir, tmp_path / "bad", learning_rate=0.1))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown config keys: learning_rate")
    from audiogen.train.lm import TrainConfig
    from audiogen.train.loop import load_config

    for bad, msg in [("batch_size=many", "batch_size: expected int"), ("lm.width=3", "unknown lm keys: width"),
                     ("model=huge", "valid names"), ("grad_accum=3", "divisible"),
                     ("sampling.cfg=1", "generation.sampling keys"), ("sampling.top_k=-1", "top-k must be >= 0")]:
        with pytest.raises(AudiogenError, match=msg):
            load_config(TrainConfig, TINY, [f"data_dir={data_dir}", bad])
    with pytest.raises(AudiogenError, match="not a prepared dataset"):
        train_in_process(overrides(tmp_path, codec_dir, tmp_path / "nodata"))



def test_broken_yaml_and_unmakeable_out_dir_are_one_line_errors(data_dir, codec_dir, tmp_path):
    from audiogen.models.checkpoint import read_config
    from audiogen.train.lm import TrainConfig
    from audiogen.train.loop import load_config

    (tmp_path / "bad.yaml").write_text("lr: [0.1,\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AudiogenError, match=r"invalid YAML \(line 2, column 1: .*\)$") as e:
        load_config(TrainConfig, tmp_path / "bad.yaml", [])
    assert "\n" not in str(e.value)
    with pytest.raises(AudiogenError, match="not a UTF-8 text file"):
        load_config(TrainConfig, tmp_path / "binary.yaml", [])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text("format: [unclosed\n")
    with pytest.raises(AudiogenError, match="not valid YAML") as e:
        read_config(model)
    assert "\n" not in str(e.value)
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(AudiogenError, match="cannot create the folder"):
        train_in_process(overrides(data_dir, codec_dir, tmp_path / "file" / "run"))


def test_resuming_with_a_different_seed_is_refused(trained, data_dir, codec_dir):
    with pytest.raises(AudiogenError, match="different seed"):
        train_in_process(overrides(data_dir, codec_dir, trained, seed=1))


# ------------------------------------------------------------------------------ SLURM plumbing


def _fake_slurm_bin(d: Path) -> Path:
    """srun runs its command here; scontrol names one host and records requeues; accelerate
    stands in for the recipe: it records its arguments and, like the recipe, stops (and
    deletes the file) once OUT_DIR/STOP appears."""
    d.mkdir()
    scripts = {
        "srun": '#!/bin/bash\nexport SLURM_NODEID=0\nexec bash -c "${@: -1}"\n',
        "scontrol": '#!/bin/bash\nif [[ $1 == show ]]; then echo node0; else echo "$@" >> "$FAKE_LOG/scontrol"; fi\n',
        "accelerate": '#!/bin/bash\necho "$@" > "$FAKE_LOG/launch"\nout=${FAKE_OUT}\n'
                      'for i in $(seq 600); do\n  if [[ -e $out/STOP ]]; then rm "$out/STOP"; echo stopped > "$FAKE_LOG/stopped"; exit 0; fi\n'
                      '  [[ -n ${FAKE_FINISH:-} ]] && exit 0\n  sleep 0.1\ndone\nexit 9\n',
    }
    for name, text in scripts.items():
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    return d


@pytest.mark.parametrize("signalled", [True, False])
def test_sbatch_launches_one_accelerate_per_node_and_requeues_after_a_checkpoint_on_usr1(tmp_path, signalled):
    bin_dir = _fake_slurm_bin(tmp_path / "bin")
    logs, out = tmp_path / "fake", tmp_path / "out"
    logs.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(logs), "FAKE_OUT": str(out),
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_SUBMIT_DIR": str(tmp_path)}
    if not signalled:
        env["FAKE_FINISH"] = "1"
    script = REPO / "recipes" / "slurm" / "train_lm.sbatch"
    proc = subprocess.Popen(["bash", str(script), str(TINY), f"out_dir={out}", "max_steps=5"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not (logs / "launch").is_file() and time.time() < deadline:
        time.sleep(0.05)
    if signalled:
        time.sleep(0.3)
        proc.send_signal(signal.SIGUSR1)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout
    launch = (logs / "launch").read_text().split()
    for flag, value in [("--num_machines", "2"), ("--num_processes", "16"), ("--machine_rank", "0"),
                        ("--main_process_ip", "node0"), ("--main_process_port", str(20000 + 4242))]:
        assert launch[launch.index(flag) + 1] == value, launch
    assert "recipes/train_lm.py" in launch and f"out_dir={out}" in launch
    if signalled:
        assert (logs / "stopped").is_file() and not (out / "STOP").exists()
        assert (logs / "scontrol").read_text().split() == ["requeue", "4242"]
    else:
        assert not (logs / "scontrol").exists()


def _run_nodes(launchers: list[list[str]], args: list[str], logs: Path,
               env_extra: dict | None = None) -> list[tuple[int, str]]:
    """Start one recipe process tree per "node" at once; their (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    logs.mkdir(exist_ok=True)
    errs = [logs / f"node{i}.err" for i in range(len(launchers))]  # files: a full pipe would block a rank
    procs = [subprocess.Popen([*launcher, str(RECIPE), "--config", str(TINY), *args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(err, "w"))
             for launcher, err in zip(launchers, errs)]
    return [(p.wait(timeout=LAUNCH_TIMEOUT_S), err.read_text()) for p, err in zip(procs, errs)]


@pytest.mark.slow
def test_two_nodes_over_loopback_form_one_job_and_resume_after_kill_9(trained_two_ranks, data_dir, codec_dir, tmp_path):
    """Two ``accelerate launch --num_machines 2 --machine_rank 0/1 --main_process_ip 127.0.0.1`` commands:
    one job of 2 ranks; the process of "node" 1 killed at step 5; both rerun; the same model as 2 ranks on one node."""
    out = tmp_path / "nodes"
    args = overrides(data_dir, codec_dir, out, export_dtype="float32", grad_accum=2)
    port = free_port_in(20000, 40000)
    killed = _run_nodes([node_launcher(0, port), node_launcher(1, port)], args, tmp_path / "killed_logs",
                        env_extra=kill_env(5, rank=1))
    assert all(rc != 0 for rc, _ in killed), [err[-1000:] for _, err in killed]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000003"]
    port = free_port_in(20000, 40000)
    resumed = _run_nodes([node_launcher(0, port), node_launcher(1, port)], args, tmp_path / "resumed_logs")
    assert all(rc == 0 for rc, _ in resumed), [err[-3000:] for _, err in resumed]
    assert_ranks(out, runs=2)
    assert (out / "model" / "model.safetensors").read_bytes() == \
        (trained_two_ranks / "model" / "model.safetensors").read_bytes()
    assert log_records(out) == log_records(trained_two_ranks)


@pytest.mark.slow
def test_the_slurm_script_launch_line_forms_one_job_over_loopback(trained_two_ranks, data_dir, codec_dir, tmp_path):
    """recipes/slurm/train_lm.sbatch as SLURM would run it on 2 nodes of 1 "GPU": SLURM's variables set here,
    srun starting the script's command once per node id, scontrol naming 127.0.0.1; the real accelerate."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\npids=()\nfor ((i = 0; i < SLURM_NNODES; i++)); do\n'
                                  '  SLURM_NODEID=$i bash -c "${@: -1}" & pids+=($!)\ndone\n'
                                  'rc=0\nfor p in "${pids[@]}"; do wait "$p" || rc=$?; done\nexit $rc\n')
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    submit = tmp_path / "submit"  # the script cds here and writes logs/ here; recipes/ is the repo's
    submit.mkdir()
    (submit / "recipes").symlink_to(REPO / "recipes")
    port = free_port_in(20000, 40000)  # the script listens on 20000 + SLURM_JOB_ID % 20000
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": str(port - 20000),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_GPUS_ON_NODE": "1",
           "SLURM_SUBMIT_DIR": str(submit), "ACCELERATE_CONFIG": "recipes/accelerate/multinode_ddp.yaml",
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "recipes" / "slurm" / "train_lm.sbatch"), str(TINY),
                        *overrides(data_dir, codec_dir, out, export_dtype="float32", grad_accum=2)],
                       env=env, cwd=submit, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert_ranks(out)
    assert (out / "model" / "model.safetensors").read_bytes() == \
        (trained_two_ranks / "model" / "model.safetensors").read_bytes()


def _fsdp2_job(out: Path, *args: str) -> subprocess.CompletedProcess:
    from listening_helpers import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "tests" / "fsdp2_job.py"), str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=LAUNCH_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_fsdp2_over_gloo_saves_sharded_checkpoints_resumes_after_kill_9_and_exports_a_loadable_model(tmp_path):
    """PyTorch's FSDP2 (fully_shard) on 2 CPU ranks through torchrun, with our checkpoint protocol, sharded
    save/load (audiogen.train.fsdp) and export: rank 1 killed at step 5, rerun, the same model as an uninterrupted run."""
    from safetensors.torch import load_file

    from audiogen.models.checkpoint import load_model

    whole, out = tmp_path / "whole", tmp_path / "killed"
    r = _fsdp2_job(whole)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_ranks(whole)
    ckpt = whole / "checkpoints" / "step_0000006"
    # each rank wrote its own shards and its own RNG state; rank 0 the metadata and the marker
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= {f.name for f in (ckpt / "sharded").iterdir()}
    assert {"rank_state_0.pt", "rank_state_1.pt", "trainer.json"} <= {f.name for f in ckpt.iterdir()}
    r = _fsdp2_job(out, "kill_at_step=5", "kill_rank=1")
    assert r.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000003"]
    r = _fsdp2_job(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_ranks(out, runs=2)
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (whole, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines() if '"event"' not in x] for d in (whole, out)]
    assert logs[0] == logs[1] and [r["step"] for r in logs[0]] == list(range(1, 7))
    loaded = load_model(out / "model")  # the gathered full state dict is a complete model directory
    assert loaded.lm.cfg.num_codebooks == 4 and sum(p.numel() for p in loaded.lm.parameters()) > 0


# the settings of recipes/accelerate/fsdp_8gpu.yaml, on one GPU
FSDP_ONE_GPU = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "bf16", "--dynamo_backend", "no", "--use_fsdp", "--fsdp_version", "1",
                "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                "--fsdp_transformer_layer_cls_to_wrap", "Layer", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
                "--fsdp_use_orig_params", "true", "--fsdp_sync_module_states", "true"]


@pytest.mark.gpu
def test_fsdp_run_resumes_after_kill_9_from_its_sharded_checkpoint_and_exports_a_loadable_model(
        data_dir, codec_dir, tmp_path):
    """The sharded-checkpoint path (save_state/load_state under FSDP, the full state dict gathered for export).
    Accelerate's FSDP plugin refuses to run without an accelerator, so this cannot run on CPU."""
    from audiogen.models.checkpoint import load_model

    whole = run_recipe(overrides(data_dir, codec_dir, tmp_path / "whole", max_steps=6, save_every=3),
                       launcher=FSDP_ONE_GPU)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    args = overrides(data_dir, codec_dir, out, max_steps=6, save_every=3)
    first = run_recipe(args, launcher=FSDP_ONE_GPU, env_extra=kill_env(5))
    assert first.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000003"]
    resumed = run_recipe(args, launcher=FSDP_ONE_GPU)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = log_records(tmp_path / "whole"), log_records(out)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in x:
            if key.startswith(("loss", "eval/")):
                assert x[key] == pytest.approx(y[key], rel=1e-2, abs=1e-3), (x["step"], key)
    loaded = load_model(out / "model")
    whole_model = load_model(tmp_path / "whole" / "model")
    for (name, p), q in zip(loaded.lm.state_dict().items(), whole_model.lm.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=2e-2), name
