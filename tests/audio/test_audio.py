"""The audio layer: every format, resampling, loudness, true peak, fades, atomic writes, bad input."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from audiogen.audio.io import _resample_polyphase, convert_channels, iter_audio, load_audio, resample, write_audio
from audiogen.audio.loudness import integrated_loudness, measure_file, sample_peak_dbfs, true_peak_dbtp
from audiogen.audio.shaping import apply_fades, equal_power_fade, remove_dc
from audiogen.errors import AudiogenError
from audiogen.files import atomic_path, atomic_write_text, make_dir


def sine(freq, sr, seconds, amp=0.5, channels=1, phase=0.0):
    t = np.arange(int(sr * seconds)) / sr
    return np.repeat((amp * np.sin(2 * np.pi * freq * t + phase))[None], channels, 0).astype(np.float32)


@pytest.mark.parametrize(
    "ext,sr,channels",
    [(".wav", 44100, 2), (".flac", 48000, 1), (".ogg", 22050, 2), (".opus", 48000, 2),
     (".mp3", 44100, 2), (".aiff", 32000, 1), (".wav", 8000, 6)],
)
def test_reads_every_format_at_any_rate_and_channel_count(tmp_path, ext, sr, channels):
    wav = sine(440, sr, 1.0, channels=channels)
    path = write_audio(tmp_path / f"x{ext}", wav, sr)
    out, out_sr = load_audio(path)
    assert out.dtype == np.float32 and out.shape[0] == channels
    assert out_sr == sr
    # lossy codecs add priming/padding; the length stays within 0.1 s
    assert abs(out.shape[1] - sr) < 0.1 * sr
    # the content survives: the dominant frequency is still 440 Hz
    spec = np.abs(np.fft.rfft(out[0, : sr // 2 * 2]))
    assert abs(np.argmax(spec) * out_sr / (sr // 2 * 2) - 440) < 5


def test_load_converts_rate_and_channels(tmp_path):
    path = write_audio(tmp_path / "s.wav", sine(440, 44100, 1.0, channels=2), 44100)
    out, sr = load_audio(path, sample_rate=24000, channels=1)
    assert sr == 24000 and out.shape == (1, 24000)


def test_window_read_returns_the_requested_span(tmp_path):
    sr = 16000
    ramp = np.linspace(-1, 1, sr * 4, dtype=np.float32)[None]
    path = write_audio(tmp_path / "r.wav", ramp, sr, subtype="FLOAT")
    out, _ = load_audio(path, offset_s=1.0, duration_s=0.5)
    np.testing.assert_array_equal(out, ramp[:, sr : sr + sr // 2])


@pytest.mark.parametrize("sr_in,sr_out", [(44100, 24000), (44101, 24000)])  # 44101: coprime with 24000
def test_resampling_is_band_limited_and_keeps_in_band_tones(sr_in, sr_out):
    """Also for rates with no common factor, whose torchaudio kernel would take ~18 GB: those
    go through the polyphase path (same Kaiser-windowed sinc), in bounded memory."""
    inband = resample(sine(1000, sr_in, 1.0), sr_in, sr_out)
    assert inband.shape == (1, sr_out)
    assert abs(np.abs(inband[:, 1000:-1000]).max() - 0.5) < 0.01  # amplitude kept
    # 15 kHz is above the new Nyquist (12 kHz): it must be removed, not aliased to 9 kHz
    alias = resample(sine(15000, sr_in, 1.0), sr_in, sr_out)
    assert 20 * np.log10(np.abs(alias[:, 1000:-1000]).max() / 0.5) < -60


def test_polyphase_resampler_is_the_torchaudio_filter():
    """The path for awkward ratios uses the same filter: on a ratio both can do, they agree."""
    x = np.concatenate([sine(440, 22050, 2.0), sine(3000, 22050, 2.0)])
    a = resample(x, 22050, 16000)  # torchaudio: 441 -> 320
    b = _resample_polyphase(x, 320, 441)
    assert a.shape == b.shape == (2, 32000) and np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("sr_in,sr_out", [(48000, 24000), (44100, 22050), (22050, 24000), (48000, 22050)])
def test_a_long_signal_is_resampled_in_blocks_bit_identical_to_one_call(sr_in, sr_out, monkeypatch):
    """resample() runs torchaudio's resampler over blocks of 10 s with the filter's reach on each side: the
    same samples as one call over the whole signal (downsampling, upsampling, a 320:147 ratio), to the bit."""
    import torch
    import torchaudio.functional as AF

    from audiogen.audio import io

    x = np.random.default_rng(sr_in + sr_out).standard_normal((2, 23 * sr_in + 7)).astype(np.float32)
    g = math.gcd(sr_in, sr_out)
    whole = AF.resample(torch.from_numpy(x), sr_in // g, sr_out // g, lowpass_filter_width=io._SINC_ZEROS,
                        rolloff=io._ROLLOFF, resampling_method="sinc_interp_kaiser", beta=io._KAISER_BETA).numpy()
    calls = []
    resample_fn = AF.resample
    monkeypatch.setattr(AF, "resample", lambda w, *a, **k: calls.append(w.shape[-1]) or resample_fn(w, *a, **k))
    blocked = resample(x, sr_in, sr_out)
    assert len(calls) == 3 and max(calls) < 11 * sr_in  # the premise: three blocks of about 10 s
    assert blocked.shape == whole.shape and np.array_equal(blocked, whole)


def test_channel_conversion_downmixes_and_upmixes():
    st = np.stack([np.ones(10), -np.ones(10)]).astype(np.float32)
    np.testing.assert_allclose(convert_channels(st, 1), np.zeros((1, 10)))
    assert convert_channels(st[:1], 2).shape == (2, 10)
    assert convert_channels(np.ones((6, 10), np.float32), 2).shape == (2, 10)


def test_integrated_loudness_matches_bs1770_reference_tone():
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LUFS; scale by the amplitude in dB
    sr = 48000
    for amp_db in (0.0, -10.0, -20.0):
        wav = sine(997, sr, 5.0, amp=10 ** (amp_db / 20))
        assert integrated_loudness(wav, sr) == pytest.approx(-3.01 + amp_db, abs=0.1)
    assert integrated_loudness(np.zeros((1, sr)), sr) == float("-inf")


def test_true_peak_finds_inter_sample_peaks():
    sr = 48000
    # a sine at fs/4 with a 45 degree phase: every sample sits at 0.707 of the true peak
    wav = sine(sr / 4, sr, 0.5, amp=1.0, phase=math.pi / 4)
    assert sample_peak_dbfs(wav) == pytest.approx(-3.01, abs=0.05)
    assert true_peak_dbtp(wav, sr) == pytest.approx(0.0, abs=0.2)


def test_fades_are_equal_power():
    fin, fout = equal_power_fade(1000, True), equal_power_fade(1000, False)
    # overlapped as a crossfade, the two curves keep constant power at every sample
    np.testing.assert_allclose(fin**2 + fout**2, np.ones(1000), atol=1e-6)
    np.testing.assert_allclose(fin, fout[::-1], atol=1e-6)  # symmetric shapes
    x = np.ones((2, 48000), np.float32)
    y = apply_fades(x, 48000, fade_in_s=0.5, fade_out_s=0.25)
    assert y[0, 0] < 0.01 and y[0, -1] < 0.01 and y[0, 30000] == 1.0
    with pytest.raises(AudiogenError, match="longer than the audio"):
        apply_fades(x, 48000, 0.8, 0.5)


def test_remove_dc_removes_offset_and_keeps_music():
    wav = sine(440, 24000, 2.0) + 0.3
    out = remove_dc(wav, 24000)
    assert abs(out.mean()) < 0.003  # >99% of the 0.3 offset is gone
    assert abs(np.abs(out[:, 2000:-2000]).max() - 0.5) < 0.01


@pytest.mark.parametrize("block_s", [0.01, 0.37, 30.0])
def test_remove_dc_in_blocks_is_scipys_zero_phase_filter(block_s):
    """DC removal runs block by block (bounded memory on long tracks), carrying the filter state:
    the result is scipy's whole-array ``sosfiltfilt`` (odd padding, steady-state start), to float32."""
    from scipy.signal import butter, sosfiltfilt

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 24000)) * 0.2 + np.array([[0.3], [-0.1]]) + np.linspace(0, 0.2, 24000)).astype(np.float32)
    x64 = x.astype(np.float64) - x.astype(np.float64).mean(axis=1, keepdims=True)
    ref = sosfiltfilt(butter(2, 10.0, btype="highpass", fs=24000, output="sos"), x64, axis=-1)
    out = remove_dc(x, 24000, block_s=block_s)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref, atol=2e-6)
    np.testing.assert_allclose(remove_dc(x[0], 24000, block_s=block_s), ref[0], atol=2e-6)  # 1-D in, 1-D out


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.wav"
    write_audio(target, sine(440, 8000, 0.5), 8000)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no temp file left behind


def test_write_refuses_bad_audio_and_bad_destinations(tmp_path):
    with pytest.raises(AudiogenError, match="NaN"):
        write_audio(tmp_path / "x.wav", np.full((1, 10), np.nan, np.float32), 8000)
    with pytest.raises(AudiogenError, match="cannot write '.xyz'"):
        write_audio(tmp_path / "x.xyz", np.zeros((1, 10), np.float32), 8000)
    with pytest.raises(AudiogenError, match="does not exist"):
        write_audio(tmp_path / "nope" / "x.wav", np.zeros((1, 10), np.float32), 8000)


def test_atomic_writes_get_ordinary_permissions_or_keep_the_replaced_files(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    new = write_audio(tmp_path / "new.wav", sine(440, 8000, 0.1), 8000)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    new.chmod(0o640)
    atomic_write_text(new, "replaced")
    assert stat.S_IMODE(new.stat().st_mode) == 0o640


def test_make_dir_turns_impossible_folders_into_one_clear_error(tmp_path):
    (tmp_path / "f.txt").write_text("a file")
    assert make_dir(tmp_path / "a" / "b").is_dir()
    with pytest.raises(AudiogenError, match="exists and is not a folder"):
        make_dir(tmp_path / "f.txt")
    with pytest.raises(AudiogenError, match="cannot create the folder"):
        make_dir(tmp_path / "f.txt" / "sub")


def test_fade_lengths_must_be_finite_and_non_negative():
    wav = sine(440, 8000, 1.0)
    for fade_in, fade_out in [(math.nan, 0.0), (0.0, math.inf), (-0.1, 0.0)]:
        with pytest.raises(AudiogenError, match="fade lengths"):
            apply_fades(wav, 8000, fade_in, fade_out)


def test_loudness_of_more_than_five_channels_is_one_clear_error(tmp_path):
    with pytest.raises(AudiogenError, match="up to 5 channels"):
        integrated_loudness(sine(440, 8000, 1.0, channels=6), 8000)
    path = write_audio(tmp_path / "surround.wav", sine(440, 8000, 1.0, channels=6), 8000)
    # info still gives the file's facts and true peak, and says why there is no loudness
    r = subprocess.run([sys.executable, "-m", "audiogen", "info", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == (f"{path}: 1.00s, 8000 Hz, 6 ch, WAV/PCM_16, loudness n/a (BS.1770 covers up to 5 "
                                f"channels), {true_peak_dbtp(load_audio(path)[0], 8000):.1f} dBTP")
    r = subprocess.run([sys.executable, "-m", "audiogen", "info", "--json", str(path)], capture_output=True, text=True)
    row = json.loads(r.stdout)
    assert row["lufs"] is None and row["channels"] == 6 and row["true_peak_dbtp"] < 0


def _pyloudnorm(x: np.ndarray, sr: int) -> float:
    """The reference BS.1770-4 implementation (pyloudnorm), with the same zero-padding of short clips."""
    import warnings

    import pyloudnorm

    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, max(0, int(math.ceil(0.4 * sr)) - x.shape[1]))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pyloudnorm.Meter(sr).integrated_loudness(x.T))


def spy_reads(monkeypatch) -> list:
    """The ``frames`` argument of every ``SoundFile.read`` from now on (-1: the whole file)."""
    reads = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *a, **kw):
        reads.append(frames)
        return real_read(self, frames, *a, **kw)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    return reads


@pytest.mark.parametrize("sr,channels,seconds,block_s", [(48000, 2, 7.3, 1.7), (44100, 1, 3.05, 0.33),
                                                         (22050, 3, 1.0, 0.137), (16000, 2, 0.25, 0.1)])
def test_streamed_file_measurement_equals_the_whole_file_figures(tmp_path, monkeypatch, sr, channels, seconds,
                                                                   block_s):
    """``measure_file`` (what ``audiogen info`` uses) reads block by block, never the whole file, and gets
    the same loudness (BS.1770-4 gating, pyloudnorm's blocks) and true peak as the whole-array functions."""
    rng = np.random.default_rng(sr)
    n = int(seconds * sr)
    x = (rng.standard_normal((channels, n)) * 0.2 * np.linspace(0.05, 1, n)).astype(np.float32)
    x[:, : n // 6] *= 1e-3  # a near-silent head that the gates must drop
    path = tmp_path / "x.wav"
    sf.write(str(path), x.T, sr, subtype="FLOAT")
    reads = spy_reads(monkeypatch)
    m = measure_file(path, block_s=block_s)
    assert reads and max(reads) == int(block_s * sr) and -1 not in reads  # block by block
    assert m.duration_s == pytest.approx(seconds, abs=1 / sr) and m.channels == channels
    assert m.lufs == pytest.approx(_pyloudnorm(x, sr), abs=1e-9)
    assert integrated_loudness(x, sr) == pytest.approx(_pyloudnorm(x, sr), abs=1e-9)
    assert integrated_loudness(x, sr, block_s=block_s) == pytest.approx(_pyloudnorm(x, sr), abs=1e-9)
    assert m.true_peak_dbtp == pytest.approx(true_peak_dbtp(x, sr), abs=1e-9)
    assert true_peak_dbtp(x, sr, block_s=block_s) == pytest.approx(m.true_peak_dbtp, abs=1e-9)


def test_streamed_true_peak_is_exact_even_with_blocks_shorter_than_the_filter(tmp_path):
    """A block shorter than the oversampling filter's context once left the filter short of samples
    (0.3 dB low with 1-sample blocks): blocks are now at least the context long."""
    x = (np.random.default_rng(3).standard_normal((1, 24000)) * 0.3).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(str(path), x.T, 24000, subtype="FLOAT")
    for block_s in (1 / 24000, 4 / 24000, 0.01):
        assert measure_file(path, block_s=block_s).true_peak_dbtp == pytest.approx(true_peak_dbtp(x, 24000),
                                                                                      abs=1e-9)


@pytest.mark.parametrize("ext,src_sr,channels,target,block_s", [
    ("flac", 44100, 2, 24000, 1.3), ("mp3", 48000, 2, 32000, 0.7), ("wav", 22050, 1, None, 0.5),
    ("ogg", 32000, 2, 48000, 2.0), ("wav", 16000, 3, 24000, 0.05), ("wav", 44101, 1, 24000, 1.3),
])
def test_iter_audio_blocks_concatenate_to_the_whole_file(tmp_path, monkeypatch, ext, src_sr, channels, target,
                                                         block_s):
    """Streamed decoding (resampled a block at a time) gives exactly what decoding and resampling
    the whole file gives, reading the file block by block."""
    rng = np.random.default_rng(src_sr)
    n = int(3.1 * src_sr)
    x = (sine(330, src_sr, 3.1, amp=0.3, channels=2) + 0.05 * rng.standard_normal((2, n))).astype(np.float32)
    path = write_audio(tmp_path / f"x.{ext}", x, src_sr)
    want, _ = load_audio(path, target, channels)
    reads = spy_reads(monkeypatch)
    blocks = list(iter_audio(path, target, channels, block_s=block_s))
    assert len(blocks) > 1 and -1 not in reads and max(reads) <= block_s * src_sr
    got = np.concatenate(blocks, axis=1)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-6


def test_iter_audio_reports_bad_samples_in_a_later_block(tmp_path):
    x = sine(440, 8000, 2.0)
    x[0, 12000] = np.nan
    path = tmp_path / "late_nan.wav"
    sf.write(str(path), x.T, 8000, subtype="FLOAT")
    with pytest.raises(AudiogenError, match="NaN or infinite"):
        list(iter_audio(path, 16000, block_s=0.5))


# ---------------------------------------------------------------------------------- bad input


def wav_header(sample_rate: int, channels: int = 1, frames: int = 100) -> bytes:
    data = b"\x00\x00" * frames * channels
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * 2 * channels, 2 * channels, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + \
        b"data" + struct.pack("<I", len(data)) + data


def make_bad_files(d):
    """Each bad case: (file, the message fragment the error must contain)."""
    cases = {}
    cases["missing"] = (d / "missing.wav", "no such file")
    (d / "empty.wav").write_bytes(b"")
    cases["empty"] = (d / "empty.wav", "empty file")
    (d / "zero.wav").write_bytes(wav_header(44100, frames=0))
    cases["zero_length"] = (d / "zero.wav", "zero-length")
    # a recorder that died before writing the sizes: data size 0, but a second of samples follows
    (d / "unfinalized.wav").write_bytes(wav_header(8000, frames=0) + np.zeros(8000, "<i2").tobytes())
    cases["unfinalized"] = (d / "unfinalized.wav", "never finalized). Repair a copy, e.g. `sox --ignore-length")
    (d / "garbage.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(4000))
    cases["corrupt"] = (d / "garbage.wav", "corrupt")
    good = write_audio(d / "good.flac", sine(440, 44100, 3.0), 44100)
    (d / "truncated.flac").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    cases["truncated"] = (d / "truncated.flac", "truncated")
    for ext in ("wav", "aiff", "rf64"):  # libsndfile opens these anyway, as a shorter file
        name = f"whole.{ext}" if ext != "rf64" else "whole_rf64.wav"
        if ext == "rf64":  # RF64 (the >4 GB WAV) keeps its length in a ds64 chunk
            sf.write(str(d / name), sine(440, 8000, 3.0).T, 8000, format="RF64", subtype="PCM_16")
        else:
            write_audio(d / name, sine(440, 8000, 3.0), 8000)
        whole = (d / name).read_bytes()
        cut = d / f"cut_{name}"
        cut.write_bytes(whole[: len(whole) // 2])
        cases[f"truncated_{ext}"] = (cut, "truncated: the header declares 3.00s of audio, the file holds only 1.50s")
    (d / "notes.txt").write_text("not audio at all\n" * 50)
    cases["unsupported"] = (d / "notes.txt", "unsupported format")
    sf.write(str(d / "nan.wav"), np.array([0.1, np.nan, 0.2, np.inf] * 100, np.float32), 8000, subtype="FLOAT")
    cases["nan"] = (d / "nan.wav", "NaN or infinite")
    (d / "slow.wav").write_bytes(wav_header(3))
    cases["absurd_low_rate"] = (d / "slow.wav", "absurd sample rate 3 Hz")
    (d / "fast.wav").write_bytes(wav_header(50_000_000))
    cases["absurd_high_rate"] = (d / "fast.wav", "absurd sample rate 50000000 Hz")
    return cases


BAD_CASES = ["missing", "empty", "zero_length", "unfinalized", "corrupt", "truncated", "truncated_wav",
             "truncated_aiff", "truncated_rf64", "unsupported", "nan", "absurd_low_rate", "absurd_high_rate"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_one_clear_error_naming_the_file(tmp_path, case):
    path, fragment = make_bad_files(tmp_path)[case]
    with pytest.raises(AudiogenError) as e:
        load_audio(path)
    assert str(path) in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("riff,data", [(None, 0xFFFFFFFF), (0x7FFFF024, 0x7FFFF000), (0xFFFFFFF7, 0xFFFFFFDB),
                                       (0xFFFFFFFF, 0xFFFFFFFE)])
def test_unfinalized_wav_header_is_not_called_truncated(tmp_path, riff, data):
    """A recorder or a pipe (sox writes 0x7FFFF000) that streams a WAV and never finalizes its header leaves
    placeholder sizes near 2 or 4 GiB: the samples are all there, so the file reads whole."""
    x = sine(440, 8000, 1.0)
    raw = bytearray(write_audio(tmp_path / "rec.wav", x, 8000).read_bytes())
    if riff is not None:
        raw[4:8] = struct.pack("<I", riff)
    i = raw.find(b"data")
    raw[i + 4 : i + 8] = struct.pack("<I", data)
    (tmp_path / "rec.wav").write_bytes(raw)
    wav, _ = load_audio(tmp_path / "rec.wav")
    assert wav.shape == (1, 8000) and np.abs(wav - x).max() < 1e-4
    # a shortfall of a byte (a writer that dropped the pad byte, say) is not called truncation
    whole = write_audio(tmp_path / "odd.wav", x, 8000).read_bytes()
    (tmp_path / "odd.wav").write_bytes(whole[:-1])
    assert load_audio(tmp_path / "odd.wav")[0].shape == (1, 7999)


def test_text_renamed_mp3_is_called_corrupt_not_missing(tmp_path):
    (tmp_path / "fake.mp3").write_text("not audio at all\n" * 50)
    with pytest.raises(AudiogenError, match=r"fake.mp3: corrupt or unreadable \(no audio frames found\)"):
        load_audio(tmp_path / "fake.mp3")
    with pytest.raises(AudiogenError, match="is a folder"):
        write_audio(tmp_path, sine(440, 8000, 0.1), 8000)


def test_cli_reports_every_bad_input_in_one_line_without_traceback(tmp_path):
    cases = make_bad_files(tmp_path)
    for name, (path, fragment) in cases.items():
        r = subprocess.run([sys.executable, "-m", "audiogen", "info", str(path)], capture_output=True, text=True)
        assert r.returncode == 1, name
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (name, r.stderr)
        assert "Traceback" not in r.stderr


def test_cli_info_reads_a_good_file(tmp_path):
    path = write_audio(tmp_path / "ok.wav", sine(997, 48000, 2.0, amp=0.1), 48000)
    r = subprocess.run([sys.executable, "-m", "audiogen", "info", "--json", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    row = json.loads(r.stdout)
    assert row["sample_rate"] == 48000 and row["lufs"] == pytest.approx(-23.0, abs=0.2)


def test_real_debian_music_loads(real_tracks):
    wav, sr = load_audio(real_tracks[0], sample_rate=24000, channels=1, duration_s=5.0)
    assert sr == 24000 and wav.shape == (1, 120000) and np.abs(wav).max() > 0.01
