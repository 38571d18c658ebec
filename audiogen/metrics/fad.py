"""Fréchet Audio Distance: embedding statistics, the distance, FAD-inf, per-song FAD, bootstrap CIs.

FAD (Kilgour et al. 2019) is the Fréchet distance between two Gaussians fitted to
frame embeddings of a reference set and a generated set::

    FAD = |mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr( (S_r S_g)^(1/2) )

Statistics are computed in float64 (``np.cov``, ``ddof=1``, as fadtk and
frechet_audio_distance do). The matrix square root: we only need its trace, and for any
factor ``S_r = L L^T``, ``tr((S_r S_g)^(1/2)) = tr((L^T S_g L)^(1/2))`` (the matrices are
similar). ``L`` is the Cholesky factor, or the symmetric square root from ``eigh`` (negative
round-off eigenvalues clipped to 0) when ``S_r`` is singular. ``L^T S_g L`` is symmetric
positive semi-definite, so its eigenvalues come from ``eigvalsh`` (real, no imaginary
parts to discard); round-off can make the smallest ones slightly negative, and those are
clipped to 0 before the square root (they are true zeros of a rank-deficient covariance). This is the same quantity fadtk/frechet_audio_distance get
from ``scipy.linalg.sqrtm(S_r @ S_g)`` (which needs an ``eps * I`` retry when it fails
and drops imaginary parts), several times faster and well defined for singular
covariances; see ``tests/metrics/test_fad.py`` for the agreement check.

FAD-inf (Gui et al. 2024, fadtk): FAD is biased upwards by ~c/N for N frames; compute
it on random frame subsets of growing size, fit ``FAD = a + b / N`` and report ``a``.
Per-song FAD (fadtk): each generated file's frames against the reference statistics.
Bootstrap CIs: resample the generated *files* with replacement, reference fixed.

Embeddings are cached on disk keyed by (sha256 of the file's bytes, embedder cache
key), so an edited file is re-embedded and an unchanged one never is.
"""

from __future__ import annotations

import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError
from audiogen.files import sha256_file

STATS_VERSION = 1


# ------------------------------------------------------------------------- statistics


@dataclass
class Stats:
    """Gaussian fitted to frame embeddings: ``mu: float64 [D]``, ``sigma: float64 [D, D]``."""

    mu: np.ndarray
    sigma: np.ndarray
    n_frames: int
    n_files: int = 0
    embedder: str = ""
    _factor: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def factor(self) -> np.ndarray:
        """``L`` with ``L @ L.T == sigma``, computed once (the reference's is reused by FAD-inf,
        bootstrap and per-song scores)."""
        if self._factor is None:
            self._factor = covariance_factor(self.sigma)
        return self._factor


def embedding_stats(frames: np.ndarray, n_files: int = 0, embedder: str = "") -> Stats:
    """``frames: [T, D]`` -> mean and unbiased covariance, in float64."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise AudiogenError(f"need at least 2 embedding frames to estimate a covariance, got shape {x.shape}")
    return Stats(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0], n_files, embedder)


def covariance_factor(sigma: np.ndarray) -> np.ndarray:
    """``L: [D, D]`` with ``L @ L.T == sigma``: Cholesky, or for a singular ``sigma`` its
    symmetric square root (``eigh``, round-off negative eigenvalues clipped to 0)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(sigma)
        return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, factor1: np.ndarray | None = None) -> float:
    """``tr((sigma1 @ sigma2)^(1/2))`` as ``tr((L^T sigma2 L)^(1/2))`` with ``sigma1 = L L^T``
    (pass ``factor1 = L`` when it is already known)."""
    f = covariance_factor(np.asarray(sigma1, dtype=np.float64)) if factor1 is None else factor1
    m = f.T @ np.asarray(sigma2, dtype=np.float64) @ f
    w = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrize away round-off so eigvalsh sees an exactly symmetric matrix
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     factor1: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); ``mu: [D]``, ``sigma: [D, D]``.

    Symmetric, 0 for identical statistics, never negative (tiny negatives from
    round-off are returned as 0).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise AudiogenError(
            f"statistics do not match: means {mu1.shape} vs {mu2.shape}, covariances {sigma1.shape} vs {sigma2.shape} "
            "(different embedders?)"
        )
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, factor1))
    return max(d, 0.0)


def fad(ref: Stats, gen: Stats) -> float:
    """FAD of ``gen`` against ``ref`` (reusing the reference's cached factor)."""
    return frechet_distance(ref.mu, ref.sigma, gen.mu, gen.sigma, factor1=ref.factor)


# ------------------------------------------------------------------- FAD-inf, per song, CIs


@dataclass
class FadInf:
    """FAD extrapolated to infinitely many frames: ``score`` = intercept of FAD vs 1/N."""

    score: float
    slope: float
    r2: float
    points: list[tuple[int, float]] = field(default_factory=list)


def _rng(seed: int) -> np.random.Generator:
    if seed < 0:
        raise AudiogenError(f"--seed must be >= 0, got {seed}")
    return np.random.default_rng(seed)


def fad_inf(ref: Stats, frames: np.ndarray, steps: int = 25, min_n: int = 500, seed: int = 0) -> FadInf:
    """FAD-inf (fadtk): FAD of ``steps`` random frame subsets with sizes from ``min_n`` to all
    of ``frames: [T, D]`` (without replacement), least-squares fit ``FAD = a + b / N``."""
    n_all = frames.shape[0]
    lo = min(min_n, max(2, n_all // 4))
    if n_all < 4 or lo >= n_all:
        raise AudiogenError(f"FAD-inf needs more embedding frames than {n_all} (use more or longer files)")
    rng = _rng(seed)
    ns = np.unique(np.linspace(lo, n_all, steps).astype(int))
    points = []
    for n in ns:
        sub = frames[rng.choice(n_all, size=int(n), replace=False)]
        points.append((int(n), fad(ref, embedding_stats(sub))))
    xs = 1.0 / np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(xs, ys, 1)
    resid = ys - (slope * xs + intercept)
    ss = np.sum((ys - ys.mean()) ** 2)
    r2 = float(1.0 - np.sum(resid**2) / ss) if ss > 0 else 1.0
    return FadInf(float(intercept), float(slope), r2, points)


def per_song_fad(ref: Stats, per_file: list[np.ndarray]) -> list[float]:
    """FAD of each file's frames ``[T_i, D]`` against the reference (NaN if a file has < 2 frames)."""
    return [fad(ref, embedding_stats(f)) if f.shape[0] >= 2 else float("nan") for f in per_file]


def nan_mean(values: list[float]) -> float | None:
    """Mean ignoring NaN (files too short for a covariance); None if there is nothing to average."""
    ok = [v for v in values if np.isfinite(v)]
    return float(np.mean(ok)) if ok else None


def bootstrap_fad(ref: Stats, per_file: list[np.ndarray], n_boot: int = 200, seed: int = 0,
                  level: float = 0.95) -> dict:
    """Percentile bootstrap CI of FAD over generated files (resampled with replacement)."""
    from audiogen.progress import progress_bar

    if len(per_file) < 2:
        raise AudiogenError("a bootstrap over files needs at least 2 generated files")
    rng = _rng(seed)
    scores = []
    for _ in progress_bar(range(n_boot), desc="bootstrap", unit="resample", leave=False, disable=n_boot < 50):
        pick = rng.integers(0, len(per_file), len(per_file))
        scores.append(fad(ref, embedding_stats(np.concatenate([per_file[i] for i in pick]))))
    a = (1 - level) / 2
    lo, hi = np.quantile(scores, [a, 1 - a])
    return {"level": level, "low": float(lo), "high": float(hi), "std": float(np.std(scores, ddof=1)),
            "n_boot": n_boot}


# ---------------------------------------------------------------------------- npz stats


def save_stats(path: str | os.PathLike, stats: Stats, meta: dict | None = None) -> Path:
    """Write statistics to ``.npz`` (atomically) so a large reference set is embedded once."""
    from audiogen.files import atomic_path

    path = Path(path)
    info = {"version": STATS_VERSION, "n_frames": stats.n_frames, "n_files": stats.n_files,
            "embedder": stats.embedder, **(meta or {})}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, meta=np.array(json.dumps(info)))
    return path


def load_stats(path: str | os.PathLike) -> tuple[Stats, dict]:
    """Read statistics written by :func:`save_stats`; returns ``(stats, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise AudiogenError(f"{path}: no such statistics file")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive
            raise AudiogenError(f"{path}: not an audiogen FAD statistics file (write one with --save-stats)")
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, meta = z["mu"], z["sigma"], json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise AudiogenError(f"{path}: not an audiogen FAD statistics file ({type(e).__name__}: {e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise AudiogenError(f"{path}: malformed statistics (mu {mu.shape}, sigma {sigma.shape})")
    stats = Stats(mu.astype(np.float64), sigma.astype(np.float64), int(meta.get("n_frames", 0)),
                  int(meta.get("n_files", 0)), str(meta.get("embedder", "")))
    return stats, meta


# ---------------------------------------------------------------------- embedding cache


class EmbeddingCache:
    """Frame embeddings on disk at ``DIR/<embedder cache key>/<sha[:2]>/<sha>.npy``.

    Keyed by the file's *content* hash, so renaming a file still hits and editing it
    misses; keyed by the embedder's name, weights hash and feature version, so a
    different model never reads another's embeddings.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, embedder_key: str, sha: str) -> Path:
        return self.root / embedder_key / sha[:2] / f"{sha}.npy"

    def get(self, embedder_key: str, sha: str) -> np.ndarray | None:
        p = self._path(embedder_key, sha)
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):  # absent, or a torn/corrupt entry: recompute it
            return None

    def put(self, embedder_key: str, sha: str, frames: np.ndarray) -> None:
        from audiogen.files import atomic_path, make_dir

        p = self._path(embedder_key, sha)
        make_dir(p.parent)
        with atomic_path(p, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(frames, dtype=np.float32))


def default_cache_dir() -> Path:
    base = os.environ.get("AUDIOGEN_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / ("fad" if os.environ.get("AUDIOGEN_CACHE") else "audiogen/fad")


def embed_files(paths: list[Path], embedder, cache: EmbeddingCache | None = None, batch_files: int = 8,
                workers: int = 2, progress: bool = True, desc: str = "embedding") -> list[np.ndarray]:
    """Frame embeddings ``[T_i, D]`` of each file, from the cache where possible.

    Files are read (and resampled to the embedder's rate) by ``workers`` threads while
    the embedder runs on batches of ``batch_files`` clips.
    """
    from audiogen.progress import progress_bar

    from audiogen.audio.io import load_audio

    out: list[np.ndarray | None] = [None] * len(paths)
    shas = [sha256_file(p) for p in paths] if cache is not None else [None] * len(paths)
    todo = []
    for i, sha in enumerate(shas):
        hit = cache.get(embedder.cache_key, sha) if cache is not None else None
        if hit is not None and hit.ndim == 2 and hit.shape[1] == embedder.dim:
            out[i] = hit
        else:
            todo.append(i)

    def load(i):
        return load_audio(paths[i], embedder.sample_rate, 1)[0]

    with progress_bar(total=len(paths), initial=len(paths) - len(todo), desc=desc, unit="file",
              disable=not progress) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        for s in range(0, len(todo), batch_files):
            idx = todo[s : s + batch_files]
            wavs = list(pool.map(load, idx))
            for i, frames in zip(idx, embedder.embed_batch(wavs, embedder.sample_rate)):
                out[i] = frames
                if cache is not None:
                    cache.put(embedder.cache_key, shas[i], frames)
            bar.update(len(idx))
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- the sets


def resolve_audio_set(spec: str | os.PathLike) -> list[Path]:
    """A folder (searched recursively), a text file listing audio paths (one per line,
    ``#`` comments, relative to the list's folder), or a single audio file."""
    from audiogen.audio.io import find_audio_files

    p = Path(spec)
    if p.is_file() and p.suffix.lower() in (".txt", ".lst", ".list"):
        files = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            f = Path(line) if Path(line).is_absolute() else p.parent / line
            if not f.is_file():
                raise AudiogenError(f"{p}, line {n}: {line}: no such audio file")
            files.append(f)
    else:
        files = find_audio_files(p)
    if not files:
        raise AudiogenError(f"{spec}: no audio files found")
    return files


@dataclass
class AudioSet:
    """A set to compare: its statistics and, unless loaded from ``.npz``, the per-file frames."""

    name: str
    stats: Stats
    files: list[Path] = field(default_factory=list)
    per_file: list[np.ndarray] | None = None

    @property
    def frames(self) -> np.ndarray:
        if self.per_file is None:
            raise AudiogenError(f"{self.name}: only statistics were loaded (.npz); this needs the audio files")
        return np.concatenate(self.per_file)


def load_set(spec: str | os.PathLike, embedder, cache: EmbeddingCache | None = None, progress: bool = True,
             batch_files: int = 8) -> AudioSet:
    """Embed a folder / file list, or load saved ``.npz`` statistics (checked against the embedder)."""
    p = Path(spec)
    if p.suffix.lower() == ".npz":
        stats, meta = load_stats(p)
        if stats.embedder and stats.embedder != embedder.cache_key:
            raise AudiogenError(
                f"{p}: statistics were computed with embedder '{stats.embedder}', not '{embedder.cache_key}' "
                "(pass the same --embedder/--weights, or re-embed the reference)"
            )
        return AudioSet(str(spec), stats)
    files = resolve_audio_set(p)
    per_file = embed_files(files, embedder, cache, batch_files=batch_files, progress=progress, desc=p.name or str(p))
    stats = embedding_stats(np.concatenate(per_file), n_files=len(files), embedder=embedder.cache_key)
    return AudioSet(str(spec), stats, files, per_file)


def write_per_song(path: str | os.PathLike, files: list[Path], scores: list[float], frames: list[int]) -> tuple[Path, Path]:
    """Per-song FAD as CSV (``file,fad,frames``, sorted worst first) and a bar plot beside it (.png)."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audiogen.files import atomic_path, atomic_write_text

    path = Path(path)
    order = sorted(range(len(files)), key=lambda i: -np.nan_to_num(scores[i], nan=-1.0))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "fad", "frames"])
    for i in order:
        w.writerow([str(files[i]), f"{scores[i]:.6g}", frames[i]])
    atomic_write_text(path, buf.getvalue())
    png = path.with_suffix(".png")
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.25 * len(files) + 1)))
    ax.barh([files[i].name for i in order][::-1], [scores[i] for i in order][::-1], color="tab:blue")
    ax.set_xlabel("per-song FAD (lower is closer to the reference)")
    ax.set_title("Per-song FAD")
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path, png


def result_dict(ref: AudioSet, gen: AudioSet, embedder, score: float, **extra) -> dict:
    """The JSON-able result of one comparison."""
    out = {
        "fad": score,
        "embedder": embedder.describe(),
        "ref": {"source": ref.name, "files": ref.stats.n_files, "frames": ref.stats.n_frames},
        "gen": {"source": gen.name, "files": gen.stats.n_files, "frames": gen.stats.n_frames},
    }
    if not embedder.comparable:
        out["warning"] = (f"embedder '{embedder.cache_key}' is not comparable with published FAD figures "
                          "(use --embedder vggish with the official weights for that)")
    for k, v in extra.items():
        out[k] = asdict(v) if hasattr(v, "__dataclass_fields__") else v
    return out
