"""Shared fixtures: synthesized audio, the tiny random codec, and real CC music from Debian."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _module_leaves_torch_threads_as_it_found_them():
    """A module that changes torch's thread count and keeps it changed makes later in-process runs
    compute differently from their subprocesses (a codec kill-9/resume bit-identity test failed
    that way, after the adherence tests set one thread): such a module errors here."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"this test module changed torch's thread count from {before} to {after} and left it so; "
                    f"restore it (see tests/train/test_training.py's one_thread fixture)")


def synth_music(seconds: float = 3.0, sr: int = 24000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A few seconds of deterministic 'music': decaying harmonic notes over a pulse. float32 [C, N]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    note_len = 0.25
    for i in range(int(seconds / note_len)):
        f0 = 220.0 * 2 ** (rng.integers(0, 12) / 12)
        s = int(i * note_len * sr)
        e = min(n, s + int(note_len * sr))
        tt = t[: e - s]
        env = np.exp(-6 * tt)
        out[s:e] += sum(np.sin(2 * np.pi * f0 * h * tt) / h for h in (1, 2, 3)) * env * 0.2
    out += 0.01 * rng.standard_normal(n)
    wav = np.stack([out * (1 - 0.1 * c) for c in range(channels)]).astype(np.float32)
    return wav


@pytest.fixture
def make_music():
    return synth_music


@pytest.fixture(scope="session")
def tiny_codec():
    from audiogen.codec.base import load_codec

    return load_codec("tiny")


def save_rows_dataset(data_dir: Path, codec, rows: list[dict]) -> Path:
    """A prepared dataset (train and valid splits) at ``data_dir`` of one row per ``rows`` item: each gives
    ``source`` and ``split`` and any label (``genre``, ``key``, ...) or ``duration_s`` (4 s) it needs; the
    rest (codes, license) is filled in. Returns ``data_dir``."""
    import json

    import datasets

    from audiogen.data.prep import dataset_features

    base = dict(start_s=0.0, duration_s=4.0, codec=json.dumps(codec.describe()), caption=None, genre=None,
                mood=None, bpm=None, key=None, instruments=[], beats=[], license="CC0", title=None, artist=None,
                attribution=None)
    full = [{**base, "id": f"r{i}", "sha256": f"{i:064d}", "codes": [[1] * 8] * codec.num_codebooks, **r}
            for i, r in enumerate(rows)]
    f = dataset_features(codec.num_codebooks)
    datasets.DatasetDict({s: datasets.Dataset.from_list([r for r in full if r["split"] == s], features=f)
                          for s in ("train", "valid")}).save_to_disk(str(data_dir))
    return data_dir


def louder_labels(conditioner) -> None:
    """``conditioner_init`` for :func:`save_tiny_model`: a random model hears its labels only when their embeddings
    are large (its tables' are otherwise too small to move a random LM)."""
    for table in conditioner.tables.values():
        table.weight.mul_(50.0)


def save_tiny_model(directory: Path, codec, ccfg=None, beat_harmonics: int = 0, lm_init=None, conditioner_init=None,
                    seed: int = 0) -> Path:
    """A random tiny LM (32-d conditions, 512 positions) with ``ConditionEncoder(ccfg)`` (default: no text encoder,
    no labels) and ``codec``'s description, saved as a model directory. From ``torch.manual_seed(seed)``: the LM
    is drawn, ``lm_init(lm)`` adjusts it, then the conditioner is drawn and ``conditioner_init(conditioner)``
    adjusts it (the order fixes the random weights the tests were written against)."""
    import torch

    from audiogen.models.checkpoint import save_model_dir
    from audiogen.models.conditioning import ConditionEncoder, ConditionerConfig
    from audiogen.models.lm import LM, named_config

    torch.manual_seed(seed)
    lm = LM(named_config("tiny", num_codebooks=codec.num_codebooks, cardinality=codec.cardinality, cond_dim=32,
                         max_positions=512, beat_harmonics=beat_harmonics))
    with torch.no_grad():
        if lm_init is not None:
            lm_init(lm)
        conditioner = ConditionEncoder(ccfg or ConditionerConfig(text_encoder="none", dim=32))
        if conditioner_init is not None:
            conditioner_init(conditioner)
    return save_model_dir(directory, lm, conditioner, {"spec": "tiny", "num_codebooks": codec.num_codebooks,
                                                       "describe": codec.describe()})


@pytest.fixture(scope="session")
def tiny_lstm_codec():
    """The tiny codec's shape with a 2-layer LSTM between encoder and quantizer, as the 24 kHz EnCodec has."""
    import dataclasses

    import torch

    from audiogen.codec import base as C

    cfg = dataclasses.replace(C.NAMED_CONFIGS["tiny"], lstm=2)
    torch.manual_seed(0)
    model = C.build_encodec_model(cfg)
    C._init_random_codec(model, cfg)
    return C.EncodecCodec(model, cfg, "tiny-lstm")


@pytest.fixture(scope="session")
def debian_music_dir() -> Path:
    """Real CC-BY-SA music (Debian singularity-music), fetched by install.sh."""
    d = Path(os.environ.get("AUDIOGEN_MUSIC_DIR", REPO / ".cache" / "debian-music"))
    tracks = sorted(d.rglob("*.ogg")) if d.exists() else []
    if not tracks:
        pytest.fail(f"no Debian music under {d}: run 'bash install.sh' (it fetches singularity-music)")
    return d


@pytest.fixture(scope="session")
def real_tracks(debian_music_dir) -> list[Path]:
    return sorted(debian_music_dir.rglob("*.ogg"))
