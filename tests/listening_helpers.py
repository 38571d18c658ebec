"""Shared helpers for the listening-test tests: a tiny experiment and a real uvicorn server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import synth_music

REPO = Path(__file__).resolve().parents[1]


def write_sources(d: Path, n_human: int = 3, n_gen: int = 3, seconds: float = 3.0) -> None:
    """Human files as 44.1 kHz stereo WAV, generated ones as quieter 32 kHz mono FLAC: the
    kind of differences in format and level that stimulus prep must remove."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n_human):
        sf.write(d / f"human_{i}.wav", synth_music(seconds, 44100, 2, seed=i).T, 44100)
    for i in range(n_gen):
        sf.write(d / f"gen_{i}.flac", 0.3 * synth_music(seconds + 1, 32000, 1, seed=10 + i).T, 32000)


def experiment_yaml(d: Path, design: str = "2afc", extra: str = "", duration: float = 1.5, n_human: int = 3,
                    n_gen: int = 3) -> Path:
    write_sources(d, n_human, n_gen)
    if design == "mushra":
        human = "\n".join(f"  - {{path: human_{i}.wav, item: it{i}}}" for i in range(n_human))
        gen = "\n".join(f"  - {{path: gen_{i}.flac, system: sys{'AB'[i % 2]}, item: it{(i // 2) % n_human}}}" for i in range(n_gen))
    else:
        human = "\n".join(f"  - human_{i}.wav" for i in range(n_human))
        gen = "\n".join(f"  - {{path: gen_{i}.flac, system: sys{'AB'[i % 2]}, prompt: 'calm piano {i}'}}"
                        for i in range(n_gen))
    text = f"""name: test-{design}
design: {design}
seed: 42
stimulus: {{duration_s: {duration}, sample_rate: 16000, fade_s: 0.05}}
screening: {{trials: 2, pass_min: 2}}
catch_trials: 1
completion: {{code: CODE123, redirect_url: "https://example.org/done?cc={{code}}"}}
human:
{human}
generated:
{gen}
{extra}
"""
    p = d / "exp.yaml"
    p.write_text(text)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(exp_dir: Path, port: int, *args: str) -> subprocess.Popen:
    """``audiogen listen serve`` as a real uvicorn process; waits until it answers."""
    import httpx

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "audiogen", "listen", "serve", str(exp_dir), "--port", str(port),
                             "--log-level", "warning", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 240  # a loaded machine can take minutes just to import the server
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 240 s")


def riff_chunks(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    out, i = [], 12
    while i + 8 <= len(data):
        cid, size = data[i:i + 4].decode("latin1"), int.from_bytes(data[i + 4:i + 8], "little")
        out.append(cid)
        i += 8 + size + (size & 1)
    return out


def mean_abs(x) -> float:
    return float(np.mean(np.abs(x)))
