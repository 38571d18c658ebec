"""The originality guard of ``audiogen generate --originality DATA_DIR``.

Every take is audited before it is written: its own sampled tokens against the token
index (exact, no re-encoding), and its audio against the embedding/chroma index when the
dataset has one. A take judged a copy is sampled again with the next seed (``seed + 1``,
``seed + 2``, ...); after ``tries`` seeds it is an error and nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError


def check_request(data_dir: str | os.PathLike, tries: int) -> None:
    """Fail before any model loads when the guard cannot run."""
    from audiogen.originality.tokens import INDEX_DIR

    d = Path(data_dir)
    if not (d / INDEX_DIR / "tokens.json").is_file():
        raise AudiogenError(f"--originality {d}: no audit index there; build it with 'audiogen audit index {d}'")
    if tries < 1:
        raise AudiogenError(f"--originality-tries must be at least 1, got {tries}")


def open_auditor(data_dir: str | os.PathLike, codec):
    """An :class:`Auditor` for the model's codec (which must be the dataset's); embeddings and chroma
    too when the index has its audio part."""
    from audiogen.originality.audit import Auditor
    from audiogen.originality.tokens import INDEX_DIR

    audio = (Path(data_dir) / INDEX_DIR / "audio.json").is_file()
    return Auditor(data_dir, codec=codec, tokens_only=not audio)


def summary(result: dict, tries: int, seed: int, data_dir) -> dict:
    """What the sidecar records of an audit."""
    tok = result["tokens"]
    return {"verdict": result["verdict"], "against": str(data_dir), "tries": tries, "seed": seed,
            "reasons": result["reasons"],
            "longest_token_run_s": max([r[0]["seconds"] for r in tok.values() if r] or [0.0]),
            "embedding": (result.get("embedding") or {}).get("match"),
            "chroma": (result.get("chroma") or {}).get("match"),
            "thresholds": result["thresholds"]}


def guard(auditor, codes, wav: np.ndarray, sr: int, seed: int, tries: int, regenerate, data_dir) -> tuple:
    """Audit each take (``codes: LongTensor[B, K, T]``, ``wav: float32[B, C, N]``); takes judged a copy
    are replaced by the same take of ``regenerate(seed + k) -> (codes, wav)`` until none is or ``tries``
    seeds were used. Returns ``(codes, wav, [sidecar summary per take])``."""
    codes, wav = codes.clone(), wav.copy()
    B = wav.shape[0]
    audits: list = [None] * B
    used = [seed] * B
    pending = list(range(B))
    for k in range(tries):
        if k:
            new_codes, new_wav = regenerate(seed + k)
            for i in pending:
                codes[i], wav[i], used[i] = new_codes[i], new_wav[i], seed + k
        still = []
        for i in pending:
            r = auditor.audit(wav[i], sr, codes=codes[i].cpu().numpy())
            audits[i] = summary(r, k + 1, used[i], data_dir)
            if r["verdict"] == "copy":
                still.append(i)
        pending = still
        if not pending:
            return codes, wav, audits
    why = audits[pending[0]]["reasons"][0]
    raise AudiogenError(f"take {pending[0] + 1} was judged a copy of the training data with each of {tries} seeds "
                        f"({seed}..{seed + tries - 1}; last: {why}); nothing was written. Try another prompt or "
                        "seed, or raise --originality-tries")
