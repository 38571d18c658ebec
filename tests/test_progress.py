"""Progress bars do not flood logs: with stderr not a terminal, a few plain lines instead of redraws."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from tqdm import tqdm

from audiogen.audio.io import write_audio
from audiogen.progress import progress_bar
from tests.generation.test_generate import tiny_model_dir  # noqa: F401 (fixture)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_bar_prints_start_end_and_at_most_one_line_per_interval(monkeypatch):
    monkeypatch.setenv("AUDIOGEN_PROGRESS_INTERVAL", "0.2")
    out = io.StringIO()
    t0 = time.monotonic()
    bar = progress_bar(total=300, desc="demo", unit="file", file=out)
    for i in range(300):
        time.sleep(0.002)
        bar.update(1)
        bar.set_postfix(loss=f"{i:.3f}")  # refreshes on every call in plain tqdm
    bar.close()
    elapsed = time.monotonic() - t0
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert lines[0].startswith("demo:") and "0/300" in lines[0]
    assert lines[-1].startswith("demo: 100%") and "300/300" in lines[-1]
    assert 3 <= len(lines) <= 2 + elapsed / 0.2 + 1, lines  # start, end, and the interval lines between


def test_terminal_gets_plain_tqdm_and_disabled_stays_silent():
    bar = progress_bar(total=3, file=_Terminal())
    assert type(bar) is tqdm
    bar.close()
    out = io.StringIO()
    bar = progress_bar(range(3), file=out, disable=True)
    assert list(bar) == [0, 1, 2] and out.getvalue() == ""


def _audiogen(args, stderr_path, **env):
    """``audiogen ARGS`` with stderr written to a file (not a terminal), as under nohup or SLURM."""
    with open(stderr_path, "w") as err:
        return subprocess.run([sys.executable, "-m", "audiogen", *map(str, args)], stdout=subprocess.PIPE, stderr=err,
                              text=True, env={**os.environ, **env}, timeout=600)


def _stderr_of(path) -> str:
    raw = path.read_bytes()  # bytes: reading as text would turn each carriage return into a newline
    assert raw.count(b"\r") == 0, raw[-2000:]
    return raw.decode()


def test_generate_with_stderr_to_a_file_writes_a_few_lines(tmp_path, tiny_model_dir, monkeypatch):
    """generate's bar with stderr a file (as under nohup or SLURM): start and end lines, no redraws."""
    from audiogen.generation.pipeline import GenerateJob, run_job

    monkeypatch.setenv("AUDIOGEN_PROGRESS_INTERVAL", "600")
    err = tmp_path / "generate.err"
    with open(err, "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        run_job(GenerateJob.from_options("calm piano", 1.0, tmp_path / "a.wav", model_dir=tiny_model_dir,
                                         seed=1, top_k=50, engine="eager"))
        monkeypatch.undo()
    lines = _stderr_of(err).splitlines()  # the interval is longer than the run
    assert len(lines) == 2 and "0.0/1.0s" in lines[0] and "1.0/1.0s" in lines[1], lines


def test_prep_with_stderr_to_a_file_writes_a_few_lines(tmp_path, make_music):
    src = tmp_path / "audio"
    src.mkdir()
    for i in range(3):
        write_audio(src / f"{i}.wav", make_music(3.0, 24000, 1, seed=i), 24000)
    err = tmp_path / "prep.err"
    r = _audiogen(["prep", src, "--out", tmp_path / "d", "--codec", "tiny", "--segment", "1", "--workers", "0"], err,
                  AUDIOGEN_PROGRESS_INTERVAL="600")
    text = _stderr_of(err)
    assert r.returncode == 0, text[-2000:]
    lines = text.splitlines()  # start and end; no datasets "Saving the dataset" redraws either
    assert len(lines) == 2 and "0/3" in lines[0] and "3/3" in lines[1], text
