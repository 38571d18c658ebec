"""musicnn music taggers (Pons & Serra 2019) ported to PyTorch, weights read from the TF checkpoints.

Two pretrained models, each 50 tags, sigmoid outputs (several tags can be on at once)::

    tagger = load_tagger("MTT")                     # MagnaTagATune: instruments, genre, mood, tempo
    taggram = tagger.taggram(wav, sample_rate)      # wav: float [C, N] -> float32 [P, 50], one row per 3 s
    top = tagger.top_tags(wav, sample_rate, n=5)    # [(tag, probability)], mean over the taggram

The network and its front end are musicnn's, operation for operation:

- audio: mono, resampled to 16 kHz with soxr (what ``librosa.load`` does), mel power
  spectrogram (librosa: 512-point FFT, hop 256, 96 Slaney mel bands), cast to float16 and
  compressed as ``log10(10000 * mel + 1)`` *in float16*, exactly like musicnn's
  ``batch_data`` (the models were trained on float16 spectrograms);
- non-overlapping patches of 187 frames (3 s); a tail shorter than a patch is dropped,
  as musicnn does. Audio shorter than one patch is repeat-padded (musicnn fails there;
  its training used repeat-padding for short clips);
- front end: batch norm, two timbral convs (7x38 and 7x67, 204 filters, max over
  frequency) and three temporal convs (128/64/32 x 1, 51 filters, 'same' padding, max over
  frequency); mid end: three 7-frame convs (64 filters) with residual connections, dense
  concatenation (561 + 3 x 64 = 753 channels); back end: max and mean over time,
  interleaved (1506), batch norm, dense 200 + ReLU + batch norm, dense 50. TF's batch-norm
  epsilon (1e-3) is kept.

Weights: the ``musicnn`` wheel (ISC license, Music Technology Group, Universitat Pompeu
Fabra) ships them as TensorFlow 1 checkpoints. Install it without its dependencies
(``pip install --no-deps musicnn``: its code needs TensorFlow and numpy < 1.17, which we
never import) and :func:`find_checkpoint` reads them with :mod:`audiogen.metrics.tf_checkpoint`.
Parity with the original model is checked in ``tests/metrics/test_tagger.py`` against taggrams
made once with TensorFlow (``tests/fixtures/musicnn/README.md``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audiogen.errors import AudiogenError

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS = 512, 256, 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s, sr=16000, n_fft=512, hop_length=256) + 1
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default

MTT_LABELS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop",
    "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
    "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral",
)
MSD_LABELS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
    "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
    "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock",
    "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
    "indie pop", "sad", "House", "happy",
)
#: short name -> (checkpoint folder inside the musicnn package, tag names in output order)
MODELS = {"MTT": ("MTT_musicnn", MTT_LABELS), "MSD": ("MSD_musicnn", MSD_LABELS)}


# --------------------------------------------------------------------------- front end


def log_mel(x: np.ndarray) -> np.ndarray:
    """``x: float [N]`` mono at 16 kHz -> ``float32 [T, 96]``, musicnn's input representation.

    The float16 arithmetic is deliberate: it is what musicnn computes (and was trained
    on). Very loud bins (mel power > ~6.5) overflow to +inf there; they are kept as the
    largest float16 instead, the one place the port departs from the original, which
    turns the whole taggram into NaN on such audio.
    """
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(x, dtype=np.float32), sr=SAMPLE_RATE, hop_length=HOP,
                                         n_fft=N_FFT, n_mels=N_MELS).T
    with np.errstate(over="ignore"):  # the cast overflows too (to +inf), on the same bins
        rep = mel.astype(np.float16)
        rep = np.log10(np.float16(10000) * rep + np.float16(1))
    rep[np.isinf(rep)] = np.log10(np.finfo(np.float16).max)
    return rep.astype(np.float32)


def patches(rep: np.ndarray, frames: int = PATCH_FRAMES, hop: int | None = None) -> np.ndarray:
    """``rep: [T, 96]`` -> ``[P, frames, 96]`` patches every ``hop`` frames (default: ``frames``, no overlap).

    A ``rep`` shorter than one patch is repeat-padded to one patch.
    """
    hop = hop or frames
    if rep.shape[0] < frames:
        rep = np.tile(rep, (-(-frames // max(1, rep.shape[0])), 1))[:frames]
    starts = range(0, rep.shape[0] - frames + 1, hop)
    return np.ascontiguousarray(np.stack([rep[s : s + frames] for s in starts]))


def to_model_input(wav: np.ndarray, sample_rate: int, hop: int | None = None) -> np.ndarray:
    """``wav: float [C, N]`` or ``[N]`` at ``sample_rate`` -> ``float32 [P, 187, 96]`` patches every ``hop`` frames.

    Downmix, then soxr resampling to 16 kHz: the order and resampler of ``librosa.load``,
    which musicnn reads its audio with.
    """
    import librosa

    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    if wav.ndim != 1 or wav.shape[0] == 0:
        raise AudiogenError(f"tagger expects non-empty audio shaped [channels, samples], got {wav.shape}")
    if sample_rate != SAMPLE_RATE:
        wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return patches(log_mel(wav), hop=hop)


# ------------------------------------------------------------------------------ network


class _BN(torch.nn.BatchNorm1d):
    """Batch norm over dim 1 of ``[B, C, ...]`` (any rank) with TF's epsilon (inference only here)."""

    def __init__(self, c: int):
        super().__init__(c, eps=BN_EPS)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


class Musicnn(torch.nn.Module):
    """musicnn (``build_musicnn`` with 64 mid-end filters and 200 back-end units).

    ``forward(x: [B, 187, 96]) -> (logits [B, n_tags], penultimate [B, 200])``; the
    penultimate layer is what musicnn exposes as its 'penultimate' feature.
    """

    def __init__(self, n_tags: int = 50, midend: int = 64, backend: int = 200):
        super().__init__()
        self.bn_input = _BN(1)
        # timbral: 7 frames x 38 / 67 mel bands (0.4 and 0.7 of 96), 204 filters (1.6 * 128)
        self.timbral = torch.nn.ModuleList(torch.nn.Conv2d(1, 204, (7, w), padding=(3, 0)) for w in (38, 67))
        self.bn_timbral = torch.nn.ModuleList(_BN(204) for _ in range(2))
        # temporal: 128 / 64 / 32 frames x 1 band, 51 filters (1.6 * 32)
        self.temporal = torch.nn.ModuleList(torch.nn.Conv2d(1, 51, (k, 1)) for k in (128, 64, 32))
        self.bn_temporal = torch.nn.ModuleList(_BN(51) for _ in range(3))
        front = 2 * 204 + 3 * 51  # 561
        self.mid = torch.nn.ModuleList(torch.nn.Conv1d(c, midend, 7, padding=3) for c in (front, midend, midend))
        self.bn_mid = torch.nn.ModuleList(_BN(midend) for _ in range(3))
        pooled = 2 * (front + 3 * midend)  # 1506: max and mean of 753 channels
        self.bn_pool = _BN(pooled)
        self.dense = torch.nn.Linear(pooled, backend)
        self.bn_dense = _BN(backend)
        self.out = torch.nn.Linear(backend, n_tags)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        x = self.bn_input(x.reshape(b, 1, -1)).reshape(b, 1, t, -1)  # [B, 1, T, 96]
        feats = []
        for conv, bn in zip(self.timbral, self.bn_timbral):
            feats.append(bn(F.relu(conv(x))).amax(dim=3))  # [B, 204, T]
        for conv, bn in zip(self.temporal, self.bn_temporal):
            k = conv.kernel_size[0]
            # TF 'same' padding for an even kernel puts the extra frame at the end
            y = conv(F.pad(x, (0, 0, (k - 1) // 2, k // 2)))
            feats.append(bn(F.relu(y)).amax(dim=3))  # [B, 51, T]
        front = torch.cat(feats, dim=1)  # [B, 561, T]
        h1 = self.bn_mid[0](F.relu(self.mid[0](front)))
        h2 = self.bn_mid[1](F.relu(self.mid[1](h1))) + h1
        h3 = self.bn_mid[2](F.relu(self.mid[2](h2))) + h2
        dense = torch.cat([front, h1, h2, h3], dim=1)  # [B, 753, T]
        # TF concatenates [max, mean] on a trailing axis and flattens: channels interleave
        pooled = torch.stack([dense.amax(dim=2), dense.mean(dim=2)], dim=2).reshape(b, -1)  # [B, 1506]
        penultimate = self.bn_dense(F.relu(self.dense(self.bn_pool(pooled))))
        return self.out(penultimate), penultimate


def _bn_state(prefix: str, t: dict[str, np.ndarray], tf_name: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": t[f"{tf_name}/gamma"], f"{prefix}.bias": t[f"{tf_name}/beta"],
            f"{prefix}.running_mean": t[f"{tf_name}/moving_mean"],
            f"{prefix}.running_var": t[f"{tf_name}/moving_variance"]}


def state_dict_from_tf(t: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map musicnn's TF variable names (creation order of ``build_musicnn``) to :class:`Musicnn`'s.

    TF kernels are ``[height, width, in, out]``; PyTorch's are ``[out, in, height, width]``.
    """
    s: dict[str, np.ndarray] = {}
    bn_names = ["bn_input", "bn_timbral.0", "bn_timbral.1", "bn_temporal.0", "bn_temporal.1", "bn_temporal.2",
                "bn_mid.0", "bn_mid.1", "bn_mid.2", "bn_pool", "bn_dense"]
    for i, name in enumerate(bn_names):
        s.update(_bn_state(name, t, "batch_normalization" + (f"_{i}" if i else "")))
    convs = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2"]
    for i, name in enumerate(convs):
        tf_name = "conv2d" + (f"_{i}" if i else "")
        s[f"{name}.weight"] = t[f"{tf_name}/kernel"].transpose(3, 2, 0, 1)
        s[f"{name}.bias"] = t[f"{tf_name}/bias"]
    for i in range(3):  # the mid-end kernels span the whole width: a 1-d conv over time
        tf_name = f"conv2d_{5 + i}"
        s[f"mid.{i}.weight"] = t[f"{tf_name}/kernel"][:, :, 0, :].transpose(2, 1, 0)
        s[f"mid.{i}.bias"] = t[f"{tf_name}/bias"]
    for name, tf_name in (("dense", "dense"), ("out", "dense_1")):
        s[f"{name}.weight"] = t[f"{tf_name}/kernel"].T
        s[f"{name}.bias"] = t[f"{tf_name}/bias"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in s.items()}


# ------------------------------------------------------------------------------ weights


def _musicnn_package_dir() -> Path | None:
    """Where the ``musicnn`` wheel is installed (found without importing it), or None."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_checkpoint(model: str = "MTT", weights: str | os.PathLike | None = None) -> str:
    """The checkpoint prefix (the path before ``.index``) of ``model`` ("MTT" or "MSD").

    ``weights``: a checkpoint folder (musicnn's layout: ``FOLDER/.index``) or prefix.
    Otherwise ``$AUDIOGEN_WEIGHTS/musicnn/<MTT|MSD>_musicnn/``, then the installed
    ``musicnn`` package. Raises :class:`AudiogenError` naming where it looked.
    """
    from audiogen.metrics.embedders import weights_dir

    folder = _model_entry(model)[0]
    if weights is not None:
        w = Path(weights)
        candidates = [f"{w}/" if w.is_dir() else str(w)]
    else:
        candidates = [f"{weights_dir() / 'musicnn' / folder}/"]
        pkg = _musicnn_package_dir()
        if pkg is not None:
            candidates.append(f"{pkg / folder}/")
    for prefix in candidates:  # musicnn's checkpoints have an empty file-name prefix: FOLDER/.index
        if Path(prefix + ".index").is_file():
            return prefix
    looked = ", ".join(c + ".index" for c in candidates)
    raise AudiogenError(
        f"musicnn {folder} weights not found (looked for {looked}). Install the musicnn wheel without its "
        "dependencies: 'pip install --no-deps musicnn' (install.sh does), or copy its "
        f"musicnn/{folder}/ folder to {weights_dir() / 'musicnn' / folder} (or pass --weights DIR)."
    )


def _model_entry(model: str) -> tuple[str, tuple[str, ...]]:
    key = model.upper().removesuffix("_MUSICNN")
    if key not in MODELS:
        raise AudiogenError(f"unknown tagger model '{model}': choose MTT or MSD")
    return MODELS[key]


# ------------------------------------------------------------------------------- tagger


@dataclass
class Tagger:
    """A loaded musicnn model: ``labels`` name the ``taggram`` columns."""

    name: str
    labels: tuple[str, ...]
    net: Musicnn
    checkpoint: str
    device: torch.device
    batch_size: int = 16

    @torch.inference_mode()
    def forward_patches(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x: float32 [P, 187, 96]`` -> (probabilities ``[P, n_tags]``, penultimate ``[P, 200]``)."""
        probs, pen = [], []
        for i in range(0, x.shape[0], self.batch_size):
            logits, p = self.net(torch.from_numpy(x[i : i + self.batch_size]).to(self.device))
            probs.append(torch.sigmoid(logits).float().cpu().numpy())
            pen.append(p.float().cpu().numpy())
        return np.concatenate(probs), np.concatenate(pen)

    def taggram(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """``wav: float [C, N]`` -> ``float32 [P, n_tags]`` tag probabilities, one row per 3 s patch."""
        return self.forward_patches(to_model_input(wav, sample_rate))[0]

    def tag_probabilities(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """``wav: float [C, N]`` -> ``float32 [n_tags]``: the taggram's mean over time (musicnn's ``top_tags``)."""
        return self.taggram(wav, sample_rate).mean(axis=0)

    def top_tags(self, wav: np.ndarray, sample_rate: int, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` most likely tags of the clip as ``[(tag, probability)]``, most likely first."""
        return top_of(self.tag_probabilities(wav, sample_rate), self.labels, n)


def top_of(probs: np.ndarray, labels: tuple[str, ...], n: int) -> list[tuple[str, float]]:
    """``probs: [n_tags]`` -> the ``n`` largest as ``[(label, probability)]``, largest first."""
    order = np.argsort(-probs, kind="stable")[:n]
    return [(labels[i], float(probs[i])) for i in order]


def load_tagger(model: str = "MTT", weights: str | os.PathLike | None = None, device: str = "cpu") -> Tagger:
    """Build the ``model`` ("MTT" or "MSD") tagger with weights from :func:`find_checkpoint`."""
    from audiogen.metrics.tf_checkpoint import read_checkpoint

    folder, labels = _model_entry(model)
    prefix = find_checkpoint(model, weights)
    net = Musicnn(n_tags=len(labels))
    try:
        state = state_dict_from_tf(read_checkpoint(prefix))
        # batch norm's num_batches_tracked counters have no TF counterpart (unused at inference)
        missing = [k for k in net.load_state_dict(state, strict=False).missing_keys if "num_batches" not in k]
        if missing:
            raise KeyError(", ".join(missing))
    except (KeyError, RuntimeError, ValueError) as e:
        raise AudiogenError(f"{prefix}: not a musicnn checkpoint ({type(e).__name__}: {e})") from None
    dev = torch.device(device)
    return Tagger(name=folder, labels=labels, net=net.eval().to(dev), checkpoint=prefix, device=dev)


# ------------------------------------------------------------------- labels for prep


#: MTT tags that name instruments (-> the instrument label written), genres and moods
MTT_INSTRUMENTS = {"guitar": "guitar", "strings": "strings", "drums": "drums", "piano": "piano",
                   "violin": "violin", "synth": "synth", "harpsichord": "harpsichord", "flute": "flute",
                   "sitar": "sitar", "choir": "choir", "harp": "harp", "cello": "cello", "vocal": "vocals",
                   "vocals": "vocals", "voice": "vocals", "singing": "vocals", "beats": "drums"}
MTT_GENRES = ("classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop", "new age",
              "dance", "country", "metal")
MTT_MOODS = {"soft": "soft", "quiet": "quiet", "loud": "loud", "slow": "slow", "fast": "fast"}
#: a label is written only at this probability or above (the tags are independent sigmoids)
LABEL_THRESHOLD = 0.25
#: prep tags at most this much of a file (its middle), so a long file costs no more than a song
LABEL_EXCERPT_S = 30.0


def labels_from_tags(probs: np.ndarray, labels: tuple[str, ...] = MTT_LABELS,
                     threshold: float = LABEL_THRESHOLD) -> dict:
    """MTT tag probabilities ``[50]`` -> prep metadata: ``genre``, ``mood``, ``instruments``, and for
    each a ``label_confidence`` (the tag probability) and ``label_source``.

    ``genre``/``mood``: the most likely genre/mood tag if it reaches ``threshold``;
    ``instruments``: every instrument tag that does, most likely first.
    """
    p = dict(zip(labels, (float(x) for x in probs)))
    out: dict = {"label_confidence": {}}
    genre = max(MTT_GENRES, key=lambda t: p.get(t, 0.0))
    if p.get(genre, 0.0) >= threshold:
        out["genre"], out["label_confidence"]["genre"] = genre, round(p[genre], 4)
    mood = max(MTT_MOODS, key=lambda t: p.get(t, 0.0))
    if p.get(mood, 0.0) >= threshold:
        out["mood"], out["label_confidence"]["mood"] = MTT_MOODS[mood], round(p[mood], 4)
    inst: dict[str, float] = {}
    for tag, name in MTT_INSTRUMENTS.items():
        if p.get(tag, 0.0) >= threshold:
            inst[name] = max(inst.get(name, 0.0), p[tag])
    if inst:
        out["instruments"] = sorted(inst, key=lambda n: -inst[n])
        out["label_confidence"]["instruments"] = {n: round(v, 4) for n, v in inst.items()}
    out["label_source"] = {k: "musicnn MTT_musicnn tagger" for k in ("genre", "mood", "instruments") if k in out}
    return out


@functools.lru_cache(maxsize=1)
def _cached_tagger() -> Tagger:
    """One MTT tagger per process (prep workers tag many files)."""
    return load_tagger("MTT")


def fill_missing_labels(meta: dict, path: str | os.PathLike, cache_dir: str | os.PathLike, sha256: str,
                        tagger: Tagger | None = None) -> dict:
    """prep's hook: ``meta`` with ``genre``/``mood``/``instruments`` the metadata lacks filled from the tagger.

    Labels the metadata has are never replaced. The tagger's answer is cached as
    ``cache_dir/<sha256>.tags.json``, so a resumed prep gives the same labels without
    decoding the file again. Tags the middle :data:`LABEL_EXCERPT_S` seconds of the file.
    """
    from audiogen.audio.io import audio_info, load_audio
    from audiogen.files import atomic_write_text

    fields = ("genre", "mood", "instruments")
    if all(meta.get(k) for k in fields):
        return meta
    cache = Path(cache_dir) / f"{sha256}.tags.json"
    if cache.is_file():
        tags = json.loads(cache.read_text())
    else:
        info = audio_info(path)
        start = max(0.0, (info.duration_s - LABEL_EXCERPT_S) / 2)
        wav, sr = load_audio(path, offset_s=start, duration_s=min(LABEL_EXCERPT_S, info.duration_s))
        tagger = tagger or _cached_tagger()
        tags = labels_from_tags(tagger.tag_probabilities(wav, sr), tagger.labels)
        atomic_write_text(cache, json.dumps(tags))
    out = dict(meta)
    conf, source = dict(meta.get("label_confidence") or {}), dict(meta.get("label_source") or {})
    for k in fields:
        if not meta.get(k) and tags.get(k):
            out[k] = tags[k]
            conf[k], source[k] = tags["label_confidence"][k], tags["label_source"][k]
    if conf:
        out["label_confidence"], out["label_source"] = conf, source
    return out
