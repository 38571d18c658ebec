"""Audio embedders for FAD: one interface, four models.

An embedder turns mono audio into a sequence of frame embeddings::

    emb = load_embedder("vggish", weights="vggish-10086976.pth")
    frames = emb.embed(wav, sample_rate)      # wav: float32 [C, N] -> float32 [T, D]

Each embedder resamples to its own ``sample_rate`` and downmixes to mono.

- ``vggish``: the standard for published FAD figures (Kilgour et al. 2019, fadtk,
  frechet_audio_distance). The torchvggish architecture is defined here; weights come
  from a local ``vggish-10086976.pth``. Like fadtk and frechet_audio_distance we take
  the 128-d output of the last FC layer *before* its ReLU, without PCA/quantization.
- ``clap``: LAION CLAP audio tower via transformers, from a local HF-format folder;
  one 512-d embedding per 10 s chunk.
- ``encodec``: the continuous (pre-quantization) output of an EnCodec encoder,
  pretrained or the project's own codec; one embedding per codec frame.
- ``musicnn``: the 200-d penultimate layer of the musicnn MTT tagger (:mod:`audiogen.metrics.tagger`),
  one embedding per 3 s patch every 1.5 s. Music-trained, but NOT comparable with published
  (VGGish) figures.
- ``builtin``: hand-made librosa features, no weights, always offline. Deterministic,
  but NOT comparable with any published figure.

``cache_key`` names the embedder, its weights (sha256) and the feature version: the
embedding cache keys on it, so changing any of them never reuses stale embeddings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from audiogen.errors import AudiogenError
from audiogen.files import sha256_file

EMBEDDERS = ("builtin", "vggish", "clap", "encodec", "musicnn")

VGGISH_FILE = "vggish-10086976.pth"
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + VGGISH_FILE
CLAP_DIR = "larger_clap_music"
CLAP_URL = "https://huggingface.co/laion/larger_clap_music (or laion/clap-htsat-unfused)"


def weights_dir() -> Path:
    """``$AUDIOGEN_WEIGHTS``, else ``~/.cache/audiogen/weights``: where pretrained files are looked for."""
    return Path(os.environ.get("AUDIOGEN_WEIGHTS", Path.home() / ".cache" / "audiogen" / "weights"))


def _to_mono(wav: np.ndarray, sample_rate: int, target_sr: int) -> np.ndarray:
    """``wav: [C, N]`` or ``[N]`` at ``sample_rate`` -> float32 ``[N']`` mono at ``target_sr``."""
    from audiogen.audio.io import resample

    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    if wav.ndim != 1:
        raise AudiogenError(f"embedder expects audio shaped [channels, samples], got {wav.shape}")
    return np.ascontiguousarray(resample(wav, sample_rate, target_sr))


class Embedder:
    """The interface. Subclasses set ``name``, ``sample_rate``, ``dim``, ``cache_key`` and
    implement ``_embed_mono(x: float32 [N] at sample_rate) -> float32 [T, dim]``."""

    name: str
    sample_rate: int
    dim: int
    cache_key: str
    #: published FAD figures (VGGish, CLAP) can be compared with ours only for these
    comparable: bool = True
    device: torch.device = torch.device("cpu")

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """``wav: float [C, N]`` at ``sample_rate`` -> ``float32 [T, dim]`` frame embeddings."""
        return self._embed_mono(_to_mono(wav, sample_rate, self.sample_rate))

    def embed_batch(self, wavs: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """Several clips at once (embedders that can batch across clips override this)."""
        return [self.embed(w, sample_rate) for w in wavs]

    def describe(self) -> dict:
        return {"name": self.name, "sample_rate": self.sample_rate, "dim": self.dim,
                "cache_key": self.cache_key, "comparable_with_published": self.comparable}

    def _embed_mono(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------------------ builtin


class BuiltinEmbedder(Embedder):
    """Librosa frame features summarised over 0.5 s windows (hop 0.25 s); no weights.

    Per STFT frame (16 kHz, 1024-point FFT, 20 ms hop): 64 log-mel bands, 20 MFCCs,
    7 spectral-contrast bands, 12 chroma bins. Each 0.5 s window gives their mean and
    standard deviation (the std captures texture/onsets). Fixed per-group scales keep the
    groups on similar ranges, so no group dominates the distance; they are constants,
    not fitted to data, so figures are comparable across runs of this version.
    """

    name = "builtin"
    sample_rate = 16_000
    comparable = False
    version = 1
    n_fft, hop = 1024, 320
    window_frames, window_hop = 25, 12  # 0.5 s windows, 0.24 s hop

    def __init__(self):
        self.dim = 2 * (64 + 20 + 7 + 12)
        self.cache_key = f"builtin-v{self.version}"

    def _frame_features(self, x: np.ndarray) -> np.ndarray:
        """``x: [N]`` -> ``[F, 103]`` per-STFT-frame features."""
        import librosa

        s = np.abs(librosa.stft(x, n_fft=self.n_fft, hop_length=self.hop, center=True)) ** 2
        mel = librosa.feature.melspectrogram(S=s, sr=self.sample_rate, n_mels=64, fmin=30, fmax=8000)
        logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
        mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=20)
        contrast = librosa.feature.spectral_contrast(S=np.sqrt(s), sr=self.sample_rate, n_bands=6, fmin=100)
        chroma = librosa.feature.chroma_stft(S=s, sr=self.sample_rate, n_chroma=12, tuning=0.0)  # A440, no estimate
        feats = [(logmel + 50) / 20, mfcc / 50, contrast / 20, chroma * 2]
        return np.concatenate(feats, axis=0).T.astype(np.float64)

    def _embed_mono(self, x: np.ndarray) -> np.ndarray:
        need = self.n_fft + self.hop * self.window_frames
        if x.shape[0] < need:  # too short for one window: pad with silence, as VGGish-style tools do
            x = np.pad(x, (0, need - x.shape[0]))
        f = self._frame_features(x)
        starts = range(0, max(1, f.shape[0] - self.window_frames + 1), self.window_hop)
        win = np.stack([f[s : s + self.window_frames] for s in starts])  # [T, W, 103]
        return np.concatenate([win.mean(axis=1), win.std(axis=1)], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------- VGGish


def _hz_to_mel_htk(hz):
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_log_mel_examples(x: np.ndarray, sample_rate: int = 16_000) -> np.ndarray:
    """VGGish input features: ``x: [N]`` at 16 kHz -> ``float32 [E, 96, 64]`` examples.

    The published VGGish front end: 25 ms periodic-Hann windows with 10 ms hop, a
    512-point magnitude spectrum, 64 HTK-mel bands between 125 and 7500 Hz (DC bin
    dropped), ``log(mel + 0.01)``, then non-overlapping 96-frame (0.96 s) examples.
    """
    win, hop, n_fft = 400, 160, 512
    if x.shape[0] < win:
        x = np.pad(x, (0, win - x.shape[0]))
    n_frames = 1 + (x.shape[0] - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx].astype(np.float64) * window, n=n_fft))  # [F, 257]
    bins_mel = _hz_to_mel_htk(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1))
    edges = np.linspace(_hz_to_mel_htk(125.0), _hz_to_mel_htk(7500.0), 64 + 2)
    lower = (bins_mel[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    upper = (edges[None, 2:] - bins_mel[:, None]) / (edges[2:] - edges[1:-1])
    mel_matrix = np.maximum(0.0, np.minimum(lower, upper))
    mel_matrix[0, :] = 0.0
    log_mel = np.log(spec @ mel_matrix + 0.01)  # [F, 64]
    n_ex = log_mel.shape[0] // 96
    if n_ex == 0:  # shorter than 0.96 s: pad with log(0.01), the value of silence
        log_mel = np.pad(log_mel, ((0, 96 - log_mel.shape[0]), (0, 0)), constant_values=np.log(0.01))
        n_ex = 1
    return log_mel[: n_ex * 96].reshape(n_ex, 96, 64).astype(np.float32)


class VGGish(torch.nn.Module):
    """The VGGish network in torchvggish's layout (state-dict compatible with its weights).

    ``features``: four conv blocks (64, 128, 2x256, 2x512 channels; 3x3 convs, 2x2 max
    pools); ``embeddings``: 12288 -> 4096 -> 4096 -> 128 fully connected.
    ``forward(x: [B, 1, 96, 64]) -> [B, 128]`` returns the last FC output before its
    ReLU (what fadtk and frechet_audio_distance use).
    """

    def __init__(self):
        super().__init__()
        layers: list[torch.nn.Module] = []
        c_in = 1
        for block in ([64], [128], [256, 256], [512, 512]):
            for c in block:
                layers += [torch.nn.Conv2d(c_in, c, 3, padding=1), torch.nn.ReLU(inplace=True)]
                c_in = c
            layers.append(torch.nn.MaxPool2d(2, 2))
        self.features = torch.nn.Sequential(*layers)
        self.embeddings = torch.nn.Sequential(
            torch.nn.Linear(512 * 4 * 6, 4096), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(4096, 128), torch.nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, 512, 6, 4]
        # Flatten in TensorFlow's NHWC order: the weights were converted from TF.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings[:-1](x)


class VGGishEmbedder(Embedder):
    """VGGish: 16 kHz, one 128-d embedding per 0.96 s; batches examples across clips."""

    name = "vggish"
    sample_rate = 16_000
    dim = 128

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64,
                 random_init: bool = False):
        self.model = VGGish().eval()
        self.batch_size = batch_size
        if random_init:  # for speed benchmarks and tests only: never a real FAD figure
            self.cache_key, self.comparable = "vggish-random", False
        else:
            path = Path(weights) if weights else weights_dir() / VGGISH_FILE
            if not path.is_file():
                raise AudiogenError(
                    f"VGGish weights not found at {path}. Nothing is downloaded at run time: fetch {VGGISH_URL} "
                    f"on a machine with network access and copy it to {path} (or pass --weights FILE, or set "
                    "AUDIOGEN_WEIGHTS to its folder)."
                )
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                self.model.load_state_dict(state)
            except Exception as e:
                raise AudiogenError(f"{path}: not a VGGish checkpoint ({type(e).__name__}: {e})") from None
            self.cache_key = f"vggish-{sha256_file(path)[:16]}"
        self.device = torch.device(device)
        self.model.to(self.device)

    @torch.inference_mode()
    def _forward(self, examples: np.ndarray) -> np.ndarray:
        """``examples: [E, 96, 64]`` -> ``[E, 128]``, in batches."""
        out = []
        for i in range(0, examples.shape[0], self.batch_size):
            x = torch.from_numpy(examples[i : i + self.batch_size])[:, None].to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)

    def _embed_mono(self, x: np.ndarray) -> np.ndarray:
        return self._forward(vggish_log_mel_examples(x, self.sample_rate))

    def embed_batch(self, wavs: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        ex = [vggish_log_mel_examples(_to_mono(w, sample_rate, self.sample_rate)) for w in wavs]
        emb = self._forward(np.concatenate(ex))
        return np.split(emb, np.cumsum([e.shape[0] for e in ex])[:-1])


# --------------------------------------------------------------------------------- CLAP


class ClapEmbedder(Embedder):
    """LAION CLAP audio tower (transformers ``ClapAudioModelWithProjection``) from a local folder.

    48 kHz; the audio is cut into 10 s chunks (the model's input length; the last chunk
    is repeat-padded by the feature extractor), one embedding per chunk.
    """

    name = "clap"
    sample_rate = 48_000
    chunk_s = 10.0

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 8):
        from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor
        from transformers.utils import logging as hf_logging

        path = Path(weights) if weights else weights_dir() / CLAP_DIR
        if not (path / "config.json").is_file():
            raise AudiogenError(
                f"CLAP model folder not found at {path} (it needs config.json, the weights and "
                f"preprocessor_config.json). Nothing is downloaded at run time: on a machine with network access "
                f"save {CLAP_URL} in Hugging Face format and copy the folder to {path} (or pass --weights DIR)."
            )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the text tower's weights are unused here; don't warn about them
        try:
            self.model = ClapAudioModelWithProjection.from_pretrained(str(path), local_files_only=True).eval()
            self.extractor = ClapFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise AudiogenError(f"{path}: not a CLAP model folder ({e})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        # Chunks are never longer than the model input, so 'rand_trunc' never crops at random.
        self.extractor.truncation = "rand_trunc"
        self.dim = int(self.model.config.projection_dim)
        self.batch_size = batch_size
        self.cache_key = f"clap-{sha256_file(path)[:16]}"
        self.device = torch.device(device)
        self.model.to(self.device)

    @torch.inference_mode()
    def _embed_mono(self, x: np.ndarray) -> np.ndarray:
        n = int(self.chunk_s * self.sample_rate)
        chunks = [x[i : i + n] for i in range(0, max(1, x.shape[0]), n)]
        # A short tail chunk says little about the music and would be mostly padding.
        if len(chunks) > 1 and chunks[-1].shape[0] < n // 2:
            chunks = chunks[:-1]
        out = []
        for i in range(0, len(chunks), self.batch_size):
            inp = self.extractor(chunks[i : i + self.batch_size], sampling_rate=self.sample_rate, return_tensors="pt")
            inp = {k: v.to(self.device) for k, v in inp.items()}
            out.append(self.model(**inp).audio_embeds.float().cpu().numpy())
        return np.concatenate(out)


# ------------------------------------------------------------------------------ EnCodec


class EncodecEmbedder(Embedder):
    """Continuous EnCodec encoder output (before quantization): one ``dimension``-d vector per frame."""

    name = "encodec"

    def __init__(self, codec: str = "encodec_24khz", weights: str | os.PathLike | None = None, device: str = "cpu"):
        from audiogen.codec.base import load_codec

        self.codec = load_codec(codec, weights=weights, device=device)
        self.sample_rate = self.codec.sample_rate
        self.dim = int(self.codec.config.dimension)
        self.device = torch.device(device)
        tag = self.codec.weights_sha256[:16] if self.codec.weights_sha256 else self.codec.name
        self.cache_key = f"encodec-{tag}"
        # A random-init codec ('tiny') measures nothing that can be compared elsewhere.
        self.comparable = self.codec.weights_sha256 is not None

    @torch.inference_mode()
    def _embed_mono(self, x: np.ndarray) -> np.ndarray:
        c = self.codec
        wav = torch.from_numpy(x).to(self.device).view(1, 1, -1).expand(1, c.channels, -1)
        frames = -(-wav.shape[-1] // c.hop_length)
        wav = torch.nn.functional.pad(wav, (0, frames * c.hop_length - wav.shape[-1]))
        # The codec's own windowing keeps memory bounded on long files.
        emb = c._run_windows(wav, c.model.encoder, c.hop_length, 1)  # [1, D, T]
        return emb[0].T.float().cpu().numpy()


# ------------------------------------------------------------------------------ musicnn


class MusicnnEmbedder(Embedder):
    """musicnn's penultimate layer (200-d, after its batch norm): one embedding per 3 s patch, hop 1.5 s.

    The patches overlap by half (musicnn itself tags non-overlapping ones) so a clip gives
    twice the frames to fit the FAD Gaussians with.
    """

    name = "musicnn"
    sample_rate = 16_000
    dim = 200
    comparable = False
    hop_frames = 94  # of the 187-frame (3 s) patch

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu"):
        from audiogen.metrics.tagger import load_tagger

        self.tagger = load_tagger("MTT", weights=weights, device=device)
        # the .index holds every tensor's crc32c, so its hash changes whenever a weight does
        self.cache_key = f"musicnn-{self.tagger.name}-{sha256_file(self.tagger.checkpoint + '.index')[:16]}"
        self.device = torch.device(device)

    def _embed_mono(self, x: np.ndarray) -> np.ndarray:
        from audiogen.metrics.tagger import to_model_input

        return self.tagger.forward_patches(to_model_input(x, self.sample_rate, hop=self.hop_frames))[1]


def load_embedder(name: str = "builtin", weights: str | os.PathLike | None = None, device: str = "cpu",
                  codec: str = "encodec_24khz") -> Embedder:
    """Build an embedder by name (``builtin``, ``vggish``, ``clap``, ``encodec``, ``musicnn``).

    ``weights``: the VGGish ``.pth`` file, the CLAP model folder, the EnCodec
    checkpoint file, or the musicnn checkpoint folder; default locations are under :func:`weights_dir`. ``codec`` picks
    the EnCodec model (``encodec_24khz``, ``encodec_48khz``, ``tiny`` or a codec folder).
    """
    from audiogen.devices import resolve_device

    resolve_device(device)
    if name == "builtin":
        return BuiltinEmbedder()
    if name == "vggish":
        return VGGishEmbedder(weights, device=device)
    if name == "clap":
        return ClapEmbedder(weights, device=device)
    if name == "encodec":
        return EncodecEmbedder(codec, weights=weights, device=device)
    if name == "musicnn":
        return MusicnnEmbedder(weights, device=device)
    raise AudiogenError(f"unknown embedder '{name}': choose one of {', '.join(EMBEDDERS)}")
