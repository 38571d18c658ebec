"""Keys played a semitone away: a ``--key`` whose tonic the model's ``generation.key_shift`` names is played by the
LM from a neighbouring key and decoded back (the mel codec transposes the magnitude its Griffin-Lim starts from),
so the audio is in the key asked for (``audiogen.generation.pipeline.played_key``, ``Codec.decode(semitones=)``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from audiogen.errors import AudiogenError
from audiogen.generation.pipeline import key_shifts, played_key
from audiogen.models.conditioning import Conditions

SHIFTS = {"generation": {"key_shift": {"C#": -1, "Eb": -1, "F#": -1, "G#": -1, "A#": -1}}}


@pytest.fixture(scope="module")
def mel_codec():
    from audiogen.codec.base import load_codec

    return load_codec("default")


def _chords(sr: int, tonic_hz: float, seconds: float = 8.0) -> np.ndarray:
    """i - iv - V - i in the minor key on ``tonic_hz``, 2 s a chord, each note with 6 decaying harmonics: music
    whose key prep's estimator names (D minor at 293.7 Hz)."""
    t = np.arange(int(2.0 * sr)) / sr
    out = []
    for chord in ((0, 3, 7), (5, 8, 12), (7, 11, 14), (0, 3, 7)):
        x = np.zeros_like(t)
        for semis in chord:
            f = tonic_hz * 2 ** (semis / 12)
            x += sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 7)) * np.exp(-t / 1.5)
        out.append(x)
    wav = np.concatenate(out)[: int(seconds * sr)]
    return (0.2 * wav / np.abs(wav).max()).astype(np.float32)


def test_shift_spectrum_moves_partials_by_the_ratio_and_leaves_zero_rows_alone():
    from audiogen.codec.mel import shift_spectrum

    mag = torch.zeros(3, 1025, 4)
    mag[:, 200] = 1.0  # one partial at bin 200
    out = shift_spectrum(mag, torch.tensor([0.0, 12.0, -12.0]))
    assert torch.equal(out[0], mag[0])
    # an octave up: bin 400 (its neighbours read halfway to the partial: a partial keeps its height, the stretch
    # widens it by the ratio, 6 % a semitone)
    assert out[1, 400].min() == 1.0 and out[1, 399].max() == out[1, 401].max() == 0.5 and out[1].sum() == 8.0
    assert out[2, 100].min() == 1.0 and out[2, 200].max() == 0.0  # an octave down: bin 100
    up = shift_spectrum(mag, torch.tensor([1.0, 1.0, 1.0]))[0, :, 0]
    centre = float((up * torch.arange(1025)).sum() / up.sum())
    assert centre == pytest.approx(200 * 2 ** (1 / 12), abs=0.05)
    # nothing is read from above Nyquist: a partial near the top shifted up leaves the band
    top = torch.zeros(1, 1025, 1)
    top[0, 1020] = 1.0
    assert shift_spectrum(top, torch.tensor([2.0])).abs().sum() == 0


def _cents_apart(a: np.ndarray, b: np.ndarray, sr: int) -> int:
    """How many cents ``b``'s spectrum lies above ``a``'s: the lag, on a 10-cent log-frequency grid from 100 Hz to
    4 kHz, at which their log-spectra correlate best."""
    grid = 100.0 * 2 ** (np.arange(0, 1200 * np.log2(40), 10) / 1200)

    def logspec(w):
        freqs = np.fft.rfftfreq(len(w), 1 / sr)
        return np.log(np.interp(grid, freqs, np.abs(np.fft.rfft(w * np.hanning(len(w))))) + 1e-6)

    x, y = logspec(a), logspec(b)
    lags = range(-40, 41)
    score = [np.corrcoef(x[max(0, -k): len(x) - max(0, k)], y[max(0, k): len(y) - max(0, -k)])[0, 1] for k in lags]
    return 10 * lags[int(np.argmax(score))]


def test_the_mel_codec_decodes_a_tone_transposed(mel_codec):
    """A harmonic tone on E4 through the shipped codec, decoded one semitone up and two down: its spectrum lies
    100 and -200 cents from the same codes decoded as coded."""
    sr = mel_codec.sample_rate
    t = np.arange(3 * sr) / sr
    tone = sum(np.sin(2 * np.pi * 329.63 * h * t) / h for h in range(1, 6))
    tone = (0.3 * tone / np.abs(tone).max()).astype(np.float32)
    codes = mel_codec.encode(torch.from_numpy(tone)[None, None]).repeat(3, 1, 1)
    wav = mel_codec.decode(codes, [0, 1, -2]).numpy()[:, 0, sr // 2: -sr // 2]
    assert _cents_apart(wav[0], wav[0], sr) == 0
    assert _cents_apart(wav[0], wav[1], sr) == pytest.approx(100, abs=10)
    assert _cents_apart(wav[0], wav[2], sr) == pytest.approx(-200, abs=10)
    # a row at 0 decodes exactly as without semitones
    assert torch.equal(mel_codec.decode(codes[:1], [0]), mel_codec.decode(codes[:1]))


def test_music_decoded_transposed_is_heard_in_the_moved_key(mel_codec):
    """The premise of played_key: a progression in D minor, coded and decoded a semitone up and two down, is heard
    in D# minor and C minor by prep's key estimator (the adherence report's), and decoded as coded, in D minor.
    (D minor is a key this codec keeps: of these progressions on the twelve tonics, its 3 kbps tokens keep the key
    of one, the unquantized mel of all twelve; such sparse tones are far from the music its codebooks were fitted on,
    14 dB of mel error against 3 on real music: docs/codec_training.md, "Notes between the bands".)"""
    from audiogen.metrics.adherence import analyse_clip

    sr = mel_codec.sample_rate
    music = _chords(sr, 220.0 * 2 ** (5 / 12))
    assert analyse_clip(music[None], sr, tempo=False)["key"] == "D minor"
    codes = mel_codec.encode(torch.from_numpy(music)[None, None]).repeat(3, 1, 1)
    wav = mel_codec.decode(codes, torch.tensor([0, 1, -2])).numpy()
    assert [analyse_clip(w, sr, tempo=False)["key"] for w in wav] == ["D minor", "D# minor", "C minor"]


def test_transposed_decoding_is_per_row_across_windows(mel_codec, monkeypatch):
    """Rows decoded together, over several windows batched together, each get their own shift: the same as
    decoding each row alone."""
    sr = mel_codec.sample_rate
    wav = torch.from_numpy(_chords(sr, 220.0, 6.0))[None, None]
    codes = torch.cat([mel_codec.encode(wav), mel_codec.encode(wav.flip(-1))])
    monkeypatch.setattr(mel_codec, "window_s", 2.0)
    monkeypatch.setattr(mel_codec, "context_s", 0.2)
    monkeypatch.setattr(mel_codec, "window_batch", 4)  # two windows of two rows in each call
    assert len(mel_codec._windows(codes.shape[-1])) == 3
    both = mel_codec.decode(codes, [2, -1])
    assert torch.allclose(both[0], mel_codec.decode(codes[:1], [2])[0], atol=1e-5)
    assert torch.allclose(both[1], mel_codec.decode(codes[1:], [-1])[0], atol=1e-5)


def test_a_codec_that_cannot_transpose_says_so(tiny_codec):
    codes = torch.zeros(1, tiny_codec.num_codebooks, 10, dtype=torch.long)
    with pytest.raises(AudiogenError, match="cannot decode transposed"):
        tiny_codec.decode(codes, [1])
    tiny_codec.decode(codes, [0])  # no shift asked: decodes as always
    with pytest.raises(AudiogenError, match="finite"):
        tiny_codec.decode(codes, [float("nan")])


def test_played_key_moves_the_slot_and_the_prompts_key_together():
    asked = Conditions(text="a slow piece in Bb minor, not in C major", key="A# minor", bpm=80.0)
    played, semitones = played_key(asked, SHIFTS)
    assert (played.key, semitones) == ("A minor", 1)
    assert played.text == "a slow piece in A minor, not in C major"  # the asked key however spelled; no other
    assert played.bpm == 80.0
    assert played_key(Conditions(text="in eb MAJOR", key="d# major"), SHIFTS)[0].text == "in D major"
    for natural in (Conditions(key="C minor"), Conditions(text="in A# minor"), Conditions()):
        assert played_key(natural, SHIFTS) == (natural, 0)  # no --key on a listed tonic: as asked
    assert played_key(asked, {}) == (asked, 0)
    # a model whose key slot lacks the neighbour plays the key asked for
    vocab = {**SHIFTS, "conditioner": {"keys": ["a# minor", "c major"]}}
    assert played_key(asked, vocab) == (asked, 0)


@pytest.mark.parametrize("table", [{"H": -1}, {"C#": 1.5}, {"C#": 7}, {"C#": True}, ["C#"]])
def test_a_bad_key_shift_table_is_a_clear_error(table):
    with pytest.raises(AudiogenError, match="key_shift"):
        key_shifts({"generation": {"key_shift": table}})


@pytest.fixture(scope="module")
def mel_model_dir(tmp_path_factory, mel_codec):
    """A random tiny LM on the shipped mel codec, with a key slot and the default model's key_shift."""
    from audiogen.models.checkpoint import save_model_dir
    from audiogen.models.conditioning import ConditionEncoder, ConditionerConfig
    from audiogen.models.lm import LM, named_config
    from conftest import louder_labels

    torch.manual_seed(0)
    lm = LM(named_config("tiny", num_codebooks=mel_codec.num_codebooks, cardinality=mel_codec.cardinality,
                         cond_dim=32, max_positions=512))
    cond = ConditionEncoder(ConditionerConfig(text_encoder="none", keys=["C major", "C# major", "A minor"], dim=32))
    with torch.no_grad():
        louder_labels(cond)
    out = save_model_dir(tmp_path_factory.mktemp("model") / "mel", lm, cond,
                         {"spec": "default", "num_codebooks": mel_codec.num_codebooks,
                          "describe": mel_codec.describe()})
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg.setdefault("generation", {}).update(SHIFTS["generation"])
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    return out


def _decodes_seen(monkeypatch) -> list:
    from audiogen.codec.base import Codec

    seen, decode = [], Codec.decode

    def spy(self, codes, semitones=None):
        seen.append((codes.clone(), semitones))
        return decode(self, codes, semitones)

    monkeypatch.setattr(Codec, "decode", spy)
    return seen


def test_generate_plays_a_listed_key_from_its_neighbour_and_decodes_it_back(mel_model_dir, tmp_path, monkeypatch):
    """``generate --key "C# major"`` samples what ``--key "C major"`` samples (the same codes, seed for seed) and
    decodes it a semitone up; the sidecar says so; ``--no-key-shift`` samples C# major and decodes as coded."""
    import json

    from audiogen.generation.pipeline import GenerateJob, run_job

    seen = _decodes_seen(monkeypatch)

    def take(name, key, **kw):
        job = GenerateJob.from_options("a tune", 1.0, tmp_path / f"{name}.wav", model_dir=mel_model_dir,
                                       progress=False, seed=3, key=key, **kw)
        run_job(job)
        return json.loads((tmp_path / f"{name}.wav.json").read_text())

    shifted = take("shifted", "C# major")
    assert shifted["key_played"] == {"key": "C major", "decoded_semitones": 1}
    assert shifted["conditions"]["key"] == "C# major"  # the request, as asked
    natural = take("natural", "C major")
    as_learned = take("learned", "C# major", key_shift=False)
    assert "key_played" not in natural and "key_played" not in as_learned
    (codes_s, semis_s), (codes_n, semis_n), (codes_l, semis_l) = seen
    assert torch.equal(codes_s, codes_n) and not torch.equal(codes_s, codes_l)  # the premise: the slot matters
    assert semis_s == 1 and semis_n is None and semis_l is None


def test_generate_refuses_a_key_shift_its_codec_cannot_decode(tmp_path, tiny_codec):
    from audiogen.generation.pipeline import GenerateJob, run_job
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import save_tiny_model

    d = save_tiny_model(tmp_path / "m", tiny_codec, ConditionerConfig(text_encoder="none", keys=["C major",
                                                                                                "C# major"], dim=32))
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg.setdefault("generation", {}).update(SHIFTS["generation"])
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    job = GenerateJob.from_options("a tune", 1.0, tmp_path / "x.wav", model_dir=d, progress=False, key="C# major")
    with pytest.raises(AudiogenError, match="--no-key-shift"):
        run_job(job)
    assert not (tmp_path / "x.wav").exists()
    job = GenerateJob.from_options("a tune", 1.0, tmp_path / "y.wav", model_dir=d, progress=False, key="C# major",
                                   key_shift=False)
    run_job(job)
    assert (tmp_path / "y.wav").exists()
