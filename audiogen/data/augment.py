"""Key augmentation of a prepared dataset: every training row again, transposed by a few semitones.

A model hears each key only as often as its corpus plays it; the recordings here play natural keys
(C, F, G, A ...) more than black-key ones (C#, D#, F#, G#, A#), and the default model's key slot plays
few black-key keys (docs/adherence.md, "Key augmentation"). Transposing the training rows gives every
key its neighbours' material.

The codes are transposed without their audio: the mel codec's log-band frames (the codebooks' sum,
:meth:`audiogen.codec.mel.MelVQModel.dequantize`) are moved along the log-frequency axis by
interpolation between band centres (the ``pitch`` filterbank's semitone bands move by whole bands)
and quantized again with the codec's own search, as ``audiogen prep`` would. Like varispeed without
its change of tempo: pitch, partials and spectral envelope all move; beats, bpm and the tags stay.
On 20 held-out excerpts the key estimated on the decoded codes follows a move of -2..+2 semitones
in 40 of 80 cases, against 49 for the audio pitch-shifted and tokenized again (docs/prep.md, "Key
augmentation"): nearly as far, for none of the audio work.

Each transposed row keeps its source's columns with the key moved (``"A minor"`` + 2 ->
``"B minor"``, the tonic spelled as the label spelled it: sharp, or flat for a flat label), the
caption's "in <key>" rewritten to match, and ``~t+2`` added to its id. The ``valid`` split is
copied as it is, so held-out figures stay comparable with the source's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from audiogen.data.estimators import NAMES, SHARP_NAMES, _parse_key, sharp_key
from audiogen.errors import AudiogenError

_KEY_IN_CAPTION = re.compile(r"\bin ([A-G](?:#|b)?) (major|minor)\b")
_FLAT_NAMES = tuple(n.replace("C#", "Db").replace("F#", "Gb") for n in NAMES)  # C Db D Eb E F Gb G Ab A Bb B


def transpose_key(key: str | None, semitones: int) -> str | None:
    """``"A minor"``, 2 -> ``"B minor"``; ``"Eb major"``, 1 -> ``"E major"``, 3 -> ``"Gb major"``... the tonic spelled
    sharp unless ``key``'s was flat (``"Eb"``, ``"Bb"``: then flat, as the renders' labels from key signatures
    are). None or a value that is not ``"<tonic> major|minor"`` comes back as it is."""
    sharp = sharp_key(key) if key else None  # the estimators' parser: None for what is not a key
    if sharp is None:
        return key
    pc, _ = _parse_key(sharp)
    tonic, mode = key.split()
    names = _FLAT_NAMES if tonic[1:].lower() == "b" else SHARP_NAMES
    return f"{names[(pc + semitones) % 12]} {mode}"


def transpose_caption(caption: str, key: str | None, semitones: int) -> str:
    """``caption`` with its "in <key>" (if any) moved ``semitones``, as :func:`transpose_key` moves a label."""
    if not caption or not key:
        return caption
    return _KEY_IN_CAPTION.sub(lambda m: "in " + transpose_key(f"{m.group(1)} {m.group(2)}", semitones), caption)


def band_frequencies(cfg) -> np.ndarray:
    """Centre frequency (Hz) of each of a mel codec's bands: the ``pitch`` filterbank's, or Slaney mel centres."""
    from audiogen.codec.mel import pitch_band_centres

    if cfg.filterbank == "pitch":
        return pitch_band_centres(cfg)
    import librosa

    return librosa.mel_frequencies(cfg.n_mels + 2, fmin=0.0, fmax=cfg.sample_rate / 2, htk=False)[1:-1]


def shift_matrix(centres: np.ndarray, semitones: float) -> torch.Tensor:
    """``[M, M]``: log-band frames ``[..., M] @ it`` moved ``semitones`` up (down if negative) along the
    log-frequency axis, each band reading the source at ``f / 2 ** (semitones / 12)`` by linear interpolation
    between the neighbouring band centres (bands the shift empties repeat the edge band)."""
    lf = np.log2(np.maximum(centres, 1.0))  # a 0 Hz (DC) band sits at 1 Hz
    m = len(lf)
    out = np.zeros((m, m))
    for b in range(m):
        x = lf[b] - semitones / 12
        if x <= lf[0]:
            out[b, 0] = 1.0
        elif x >= lf[-1]:
            out[b, -1] = 1.0
        else:
            j = int(np.searchsorted(lf, x)) - 1
            w = (x - lf[j]) / (lf[j + 1] - lf[j])
            out[b, j], out[b, j + 1] = 1.0 - w, w
    return torch.tensor(out.T, dtype=torch.float32)


def _mel_model(codec):
    model = getattr(codec, "model", None)
    if model is None or not hasattr(model, "dequantize") or not hasattr(model.config, "filterbank"):
        raise AudiogenError(f"codec {getattr(codec, 'name', codec)!r} is not a mel codec (melvq): key augmentation "
                            "transposes log-band frames, which only a mel codec's codes are")
    return model


@torch.no_grad()
def transpose_codes(codec, codes: torch.Tensor, semitones: list[int]) -> torch.Tensor:
    """``codes: LongTensor[B, K, T]`` of a mel codec -> ``[len(semitones), B, K, T]``: each transposition
    (their frames moved along log-frequency, quantized again with the codec's own search, all in one batch)."""
    model = _mel_model(codec)
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, K, T], got {tuple(codes.shape)}")
    frames = model.dequantize(codes.to(model.codebooks.device))  # [B, T, M] dB
    centres = band_frequencies(model.config)
    moved = torch.cat([frames @ shift_matrix(centres, s).to(frames) for s in semitones])  # [S * B, T, M]
    out = model.quantize(moved, codes.shape[1]).transpose(1, 2)  # [S * B, K, T]
    return out.reshape(len(semitones), *codes.shape).cpu()


def transpose_rows(codec, rows: list[dict], semitones: list[int]) -> list[list[dict]]:
    """Prepared rows (``codes: [K, T]`` and their columns) -> for each row, its transpositions by each of
    ``semitones``: codes, key, caption and id changed, every other column as it was. Rows of one length are
    quantized in one batch."""
    out: list[list[dict]] = [[] for _ in rows]
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_length.setdefault(np.asarray(row["codes"]).shape[-1], []).append(i)
    for idx in by_length.values():
        codes = torch.stack([torch.as_tensor(np.asarray(rows[i]["codes"]).astype(np.int64)) for i in idx])
        moved = transpose_codes(codec, codes, semitones)  # [S, B, K, T]
        for b, i in enumerate(idx):
            row = rows[i]
            for s, shift in enumerate(semitones):
                new = dict(row)
                new["codes"] = moved[s, b].numpy().astype(np.asarray(row["codes"]).dtype)
                new["key"] = transpose_key(row.get("key"), shift)
                new["caption"] = transpose_caption(row.get("caption") or "", row.get("key"), shift)
                new["id"] = f"{row['id']}~t{shift:+d}"
                out[i].append(new)
    return out


def augment_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike, semitones: list[int],
                    codec_spec: str | os.PathLike = "default", progress: bool = True, batch_rows: int = 32) -> dict:
    """Write ``out_dir``: ``data_dir``'s prepared dataset with each train row followed by its transpositions by
    ``semitones`` (the valid split unchanged), atomically (a ``.partial`` folder renamed at the end).
    ``codec_spec`` (a folder, or ``default``) must be the codec the rows were tokenized with: its description and
    weights are checked against the rows' record. Returns a summary: rows in and out, and the key counts before
    and after."""
    import datasets
    from collections import Counter

    from audiogen.codec.base import load_tokenizing_codec
    from audiogen.data.loader import dataset_codec, load_prepared, save_derived
    from audiogen.progress import progress_bar

    src, out = Path(data_dir), Path(out_dir)
    shifts = sorted({int(s) for s in semitones} - {0})
    if not shifts:
        raise AudiogenError("no transposition to make: give semitones other than 0 (e.g. -2 -1 1 2)")
    if any(abs(s) > 6 for s in shifts):
        raise AudiogenError(f"semitones {shifts}: keep each within -6..6 (every key is reached within a tritone)")
    if out.exists():
        raise AudiogenError(f"{out} exists; remove it or choose another --out")
    dd = load_prepared(src)
    codec = load_tokenizing_codec(codec_spec, dataset_codec(dd["train"]))
    _mel_model(codec)
    train = dd["train"]
    rows_out: list[dict] = []
    with progress_bar(total=len(train) * len(shifts), desc="transposing", unit="row", disable=not progress) as bar:
        for start in range(0, len(train), batch_rows):
            chunk = [train[i] for i in range(start, min(start + batch_rows, len(train)))]
            for row, moved in zip(chunk, transpose_rows(codec, chunk, shifts)):
                rows_out.append(row)
                rows_out.extend(moved)
            bar.update(len(chunk) * len(shifts))
    new_train = datasets.Dataset.from_list(rows_out, features=train.features)
    save_derived(new_train, dd["valid"], src, out, {"augment": {"from": str(src), "transpose_semitones": shifts}},
                 progress)
    return {"rows_in": len(train), "rows_out": len(new_train), "semitones": shifts,
            "keys_before": dict(Counter(train["key"]).most_common()),
            "keys_after": dict(Counter(new_train["key"]).most_common())}
