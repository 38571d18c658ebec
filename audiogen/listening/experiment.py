"""Experiment config (YAML), stimulus preparation and per-participant plans.

``create_experiment(yaml_path, out_dir)`` turns lists of human and generated files into
an experiment folder whose stimuli leak nothing but the music:

    EXP_DIR/stimuli/<id>.wav     opaque random ids; same rate, channels, length, loudness,
                                 16-bit PCM WAV without tags, so every music file has the
                                 same byte size and the same mtime
    EXP_DIR/private/manifest.json  which id is what (never served)
    EXP_DIR/private/admin_token    the admin page's token (mode 0600)
    EXP_DIR/listen.db              SQLite answers database (see ``db``)

``participant_plan(manifest, index)`` derives participant ``index``'s steps (screening,
calibration, practice, trials with catch trials mixed in) from a seed recorded in the
manifest, so a plan can be recomputed and audited.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audiogen.audio.io import audio_info, load_audio, write_audio
from audiogen.audio.loudness import db_to_gain, integrated_loudness
from audiogen.audio.shaping import apply_fades
from audiogen.errors import AudiogenError
from audiogen.files import atomic_write_text, sha256_file

DESIGNS = ("2afc", "single", "mushra", "mos")
#: The rating scales (lowest, highest) of the designs that rate: what the server accepts and the report's bounds.
RATING_SCALES = {"mos": (1, 5), "mushra": (0, 100)}
WINDOWS = ("start", "middle", "random")
SCHEMA_KEYS = {
    "name", "title", "design", "seed", "stimulus", "human", "generated", "trials_per_participant",
    "practice", "catch_trials", "screening", "questions", "completion", "consent", "instructions",
    "min_plays", "tost_margin", "mushra",
}
ID_CHARS = 16  # secrets.token_urlsafe(12)
FIXED_MTIME = 1_000_000_000  # every stimulus file gets the same mtime: file dates must not leak processing order


@dataclass
class StimulusSpec:
    duration_s: float = 8.0
    window: str = "middle"  # start | middle | random (seeded per file)
    offset_s: float = 0.0  # with window: start, where the window starts
    sample_rate: int = 44100
    channels: int = 2
    loudness_lufs: float = -23.0
    true_peak_dbtp: float = -1.0
    fade_s: float = 0.1
    lowpass_hz: float = 0.0  # > 0: band-limit everything alike (hides sources' different bandwidths)


@dataclass
class Screening:
    enabled: bool = True
    trials: int = 6
    pass_min: int = 5  # Woods et al. (2017) antiphase test: 5 of 6 correct


@dataclass
class Source:
    path: str
    origin: str  # human | generated
    system: str  # "human" for human files
    item: str | None = None
    prompt: str | None = None


@dataclass
class Experiment:
    name: str
    design: str
    sources: list[Source]
    seed: int = 0
    title: str = "Listening test"
    stimulus: StimulusSpec = field(default_factory=StimulusSpec)
    trials_per_participant: int | None = None
    practice: bool = True
    catch_trials: int = 2
    screening: Screening = field(default_factory=Screening)
    questions: list[dict] = field(default_factory=list)
    completion: dict = field(default_factory=dict)  # code (one study-wide code) and/or redirect_url ({code})
    consent: str = ("You are invited to take part in a listening study. Your answers are stored anonymously "
                    "and used for research only. You may stop at any time by closing the page.")
    instructions: str = ""
    min_plays: int = 1
    tost_margin: float = 0.1
    mushra: dict = field(default_factory=lambda: {"anchor_hz": 3500.0, "reference_min": 90, "max_fail_share": 0.15})


# --------------------------------------------------------------------------- config


def _err(path, msg):
    return AudiogenError(f"{path}: {msg}")


def _typed(path, d: dict, key: str, kind, default):
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if kind is int and isinstance(v, bool):
        raise _err(path, f"'{key}' must be an integer, got {v!r}")
    if not isinstance(v, kind):
        raise _err(path, f"'{key}' must be {kind.__name__}, got {v!r}")
    return v


def _dataclass_from(path, section: str, cls, d):
    if d is None:
        return cls()
    if not isinstance(d, dict):
        raise _err(path, f"'{section}' must be a mapping")
    default = cls()
    known = set(asdict(default))
    unknown = set(d) - known
    if unknown:
        raise _err(path, f"unknown key(s) in '{section}': {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    kw = {k: _typed(path, d, k, type(getattr(default, k)), getattr(default, k)) for k in known}
    return cls(**kw)


def _sources(path: Path, raw, origin: str) -> list[Source]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err(path, f"'{origin}' must be a list of files (strings or mappings with 'path')")
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise _err(path, f"'{origin}'[{i}] needs a 'path' string")
        unknown = set(entry) - {"path", "system", "item", "prompt"}
        if unknown:
            raise _err(path, f"'{origin}'[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        if origin == "human" and entry.get("system") not in (None, "human"):
            raise _err(path, f"'human'[{i}]: human files have no 'system'")
        f = Path(entry["path"])
        f = f if f.is_absolute() else (path.parent / f)
        system = "human" if origin == "human" else str(entry.get("system") or "generated")
        if origin == "generated" and system == "human":
            raise _err(path, f"'generated'[{i}]: 'human' is not a valid system name")
        item = entry.get("item")
        out.append(Source(str(f.resolve()), origin, system, None if item is None else str(item),
                          None if entry.get("prompt") is None else str(entry["prompt"])))
    return out


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Parse and validate an experiment YAML file (see docs/listening.md for the schema)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AudiogenError(f"{path}: no such experiment file")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise _err(path, f"not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError:
        raise _err(path, "not a UTF-8 text file") from None
    if not isinstance(d, dict):
        raise _err(path, "the experiment file must be a YAML mapping (name:, design:, human:, generated:, ...)")
    unknown = set(d) - SCHEMA_KEYS
    if unknown:
        raise _err(path, f"unknown key(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(SCHEMA_KEYS))})")
    design = str(d.get("design", "")).lower()
    if design not in DESIGNS:
        raise _err(path, f"'design' must be one of {', '.join(DESIGNS)}, got {d.get('design')!r}")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(path, "'name' (a short experiment name) is required")
    exp = Experiment(
        name=name.strip(),
        design=design,
        sources=_sources(path, d.get("human"), "human") + _sources(path, d.get("generated"), "generated"),
        seed=_typed(path, d, "seed", int, 0),
        title=_typed(path, d, "title", str, "Listening test"),
        stimulus=_dataclass_from(path, "stimulus", StimulusSpec, d.get("stimulus")),
        trials_per_participant=_typed(path, d, "trials_per_participant", int, None),
        practice=_typed(path, d, "practice", bool, True),
        catch_trials=_typed(path, d, "catch_trials", int, 2),
        screening=_dataclass_from(path, "screening", Screening, d.get("screening")),
        questions=_questions(path, d.get("questions")),
        completion=_completion(path, d.get("completion")),
        consent=_typed(path, d, "consent", str, Experiment.consent),
        instructions=_typed(path, d, "instructions", str, ""),
        min_plays=_typed(path, d, "min_plays", int, 1),
        tost_margin=_typed(path, d, "tost_margin", float, 0.1),
    )
    if d.get("mushra") is not None:
        if not isinstance(d["mushra"], dict) or set(d["mushra"]) - set(exp.mushra):
            raise _err(path, f"'mushra' may set only {', '.join(exp.mushra)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d["mushra"].values()):
            raise _err(path, "'mushra' values must be numbers")
        exp.mushra.update({k: float(v) for k, v in d["mushra"].items()})
    _validate(path, exp)
    return exp


def _questions(path, raw) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err(path, "'questions' must be a list")
    out, seen = [], set()
    for i, q in enumerate(raw):
        if not isinstance(q, dict) or not isinstance(q.get("id"), str) or not isinstance(q.get("text"), str):
            raise _err(path, f"questions[{i}] needs 'id' and 'text' strings")
        kind = q.get("type", "choice")
        if kind not in ("choice", "text"):
            raise _err(path, f"questions[{i}]: type must be 'choice' or 'text'")
        opts = q.get("options")
        if kind == "choice" and (not isinstance(opts, list) or len(opts) < 2):
            raise _err(path, f"questions[{i}]: a choice question needs at least two 'options'")
        if q["id"] in seen or not q["id"].isidentifier():
            raise _err(path, f"questions[{i}]: id {q['id']!r} must be a unique identifier")
        seen.add(q["id"])
        out.append({"id": q["id"], "text": q["text"], "type": kind, "options": [str(o) for o in opts or []],
                    "required": bool(q.get("required", False))})
    return out


def _completion(path, raw) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - {"code", "redirect_url"}:
        raise _err(path, "'completion' may set only 'code' and 'redirect_url'")
    url = raw.get("redirect_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        raise _err(path, "completion.redirect_url must be an http(s) URL (it may contain {code})")
    return {k: str(v) for k, v in raw.items() if v is not None}


def _validate(path, exp: Experiment) -> None:
    s = exp.stimulus
    if not 0.5 <= s.duration_s <= 600:
        raise _err(path, f"stimulus.duration_s must be 0.5..600 s, got {s.duration_s}")
    if s.window not in WINDOWS:
        raise _err(path, f"stimulus.window must be one of {', '.join(WINDOWS)}")
    if s.channels not in (1, 2):
        raise _err(path, "stimulus.channels must be 1 or 2")
    if not 8000 <= s.sample_rate <= 192000:
        raise _err(path, "stimulus.sample_rate must be 8000..192000")
    if not -60 <= s.loudness_lufs <= -5 or s.true_peak_dbtp > 0:
        raise _err(path, "stimulus.loudness_lufs must be -60..-5 and true_peak_dbtp <= 0")
    if not 0 <= s.fade_s <= s.duration_s / 4:
        raise _err(path, "stimulus.fade_s must be between 0 and a quarter of duration_s")
    if s.lowpass_hz and not 1000 <= s.lowpass_hz < s.sample_rate / 2:
        raise _err(path, "stimulus.lowpass_hz must be 0 (off) or between 1000 and half the sample rate")
    if not 0 <= exp.screening.pass_min <= exp.screening.trials <= 20:
        raise _err(path, "screening needs 0 <= pass_min <= trials <= 20")
    if not 0 <= exp.catch_trials <= 20 or not 0 <= exp.min_plays <= 10:
        raise _err(path, "catch_trials must be 0..20 and min_plays 0..10")
    if not 0 < exp.tost_margin < 0.5:
        raise _err(path, "tost_margin must be in (0, 0.5): accuracy within 0.5 +- margin counts as chance")
    human = [x for x in exp.sources if x.origin == "human"]
    gen = [x for x in exp.sources if x.origin == "generated"]
    if exp.design in ("2afc", "single", "mushra") and (not human or not gen):
        raise _err(path, f"design {exp.design} needs at least one 'human' and one 'generated' file")
    if exp.design == "mos" and not exp.sources:
        raise _err(path, "design mos needs at least one file")
    if exp.design == "mushra":
        for x in exp.sources:
            if x.item is None:
                raise _err(path, f"design mushra: every file needs an 'item' (missing for {x.path})")
        items = {x.item for x in gen}
        for it in items:
            refs = [x for x in human if x.item == it]
            if len(refs) != 1:
                raise _err(path, f"design mushra: item {it!r} needs exactly one human reference, has {len(refs)}")
    if exp.trials_per_participant is not None and exp.trials_per_participant < 1:
        raise _err(path, "trials_per_participant must be >= 1")


# --------------------------------------------------------------------------- stimuli


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


def _stable_int(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def cut_window(wav: np.ndarray, sr: int, spec: StimulusSpec, seed: int, name: str) -> tuple[np.ndarray, float]:
    """The ``duration_s`` window of ``wav [C, N]`` chosen by ``spec.window``; returns (clip, start_s)."""
    n = int(round(spec.duration_s * sr))
    total = wav.shape[-1]
    if total < n:
        raise AudiogenError(f"{name}: {total / sr:.2f}s long, shorter than stimulus.duration_s {spec.duration_s:g}s")
    if spec.window == "start":
        start = int(round(spec.offset_s * sr))
        if start + n > total:
            raise AudiogenError(f"{name}: offset {spec.offset_s:g}s + {spec.duration_s:g}s runs past the end")
    elif spec.window == "middle":
        start = (total - n) // 2
    else:
        start = int(_rng(seed, _stable_int(name)).integers(0, total - n + 1))
    return wav[:, start:start + n], start / sr


def finish_clip(wav: np.ndarray, sr: int, spec: StimulusSpec) -> np.ndarray:
    """Fades, then loudness to ``spec.loudness_lufs`` (BS.1770) under the true-peak ceiling."""
    from audiogen.audio.finishing import normalize_loudness

    wav = apply_fades(wav, sr, spec.fade_s, spec.fade_s)
    return normalize_loudness(wav, sr, spec.loudness_lufs, spec.true_peak_dbtp)


def lowpass(wav: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """``wav [C, N]`` band-limited to ``cutoff_hz``: 8th-order Butterworth, zero phase (the BS.1534
    anchor is the reference through this at 3.5 kHz)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(8, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    return sosfiltfilt(sos, wav.astype(np.float64), axis=-1).astype(np.float32)


def tone(freq: float, seconds: float, sr: int, ramp_s: float = 0.05) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = np.sin(2 * np.pi * freq * t)
    r = int(ramp_s * sr)
    env = np.ones_like(x)
    env[:r] = np.sin(0.5 * np.pi * np.arange(r) / r) ** 2
    env[-r:] = env[:r][::-1]
    return (x * env).astype(np.float32)


def antiphase_clip(order: list[str], sr: int) -> np.ndarray:
    """Woods et al. (2017) headphone check: three 200 Hz tones; 'quiet' is -6 dB, 'anti' has the
    right channel phase-inverted (over loudspeakers it cancels and sounds quietest), 'ref' is plain.
    The listener picks the quietest: with headphones that is the -6 dB tone. -> [2, N]"""
    parts = []
    gap = np.zeros((2, int(0.5 * sr)), np.float32)
    for i, kind in enumerate(order):
        x = tone(200.0, 1.0, sr) * 0.3
        if kind == "quiet":
            st = np.stack([x, x]) * db_to_gain(-6.0)
        elif kind == "anti":
            st = np.stack([x, -x])
        else:
            st = np.stack([x, x])
        parts += [st] + ([gap] if i < len(order) - 1 else [])
    return np.concatenate(parts, axis=1)


def beeps_clip(count: int, seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """Attention check: ``count`` 1 kHz beeps spread over ``seconds`` with quiet noise between. -> [C, N]"""
    rng = _rng(seed, count)
    n = int(round(seconds * sr))
    x = 0.01 * rng.standard_normal(n).astype(np.float32)
    slots = np.linspace(0.15, seconds - 0.35, count)
    for s in slots:
        b = tone(1000.0, 0.2, sr, 0.02) * 0.5
        i = int(s * sr)
        x[i:i + b.size] += b[: n - i]
    return np.repeat(x[None], channels, axis=0)


def pink_noise(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    rng = _rng(seed, 7)
    n = int(round(seconds * sr))
    spec = np.fft.rfft(rng.standard_normal((channels, n)), axis=-1)
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[:, 1:] /= np.sqrt(f[1:])
    spec[:, 0] = 0
    x = np.fft.irfft(spec, n, axis=-1)
    return (x / np.abs(x).max() * 0.5).astype(np.float32)


def _new_id(used: set) -> str:
    while True:
        sid = secrets.token_urlsafe(12)
        if sid not in used:
            used.add(sid)
            return sid


def create_experiment(yaml_path: str | os.PathLike, out_dir: str | os.PathLike, log=print) -> dict:
    """Prepare EXP_DIR from the experiment YAML; returns the manifest. Refuses to overwrite."""
    from audiogen.listening import db as DB

    exp = load_experiment(yaml_path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise AudiogenError(f"{out}: exists and is not empty; choose a new folder (an experiment is never overwritten)")
    if not out.parent.exists():
        raise AudiogenError(f"{out.parent}: no such folder")
    for s in exp.sources:
        audio_info(s.path)  # every file readable before any work: one clear error up front
    tmp = out.parent / f".{out.name}.creating-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "stimuli").mkdir(parents=True)
    (tmp / "private").mkdir(mode=0o700)  # the token and the answers key: never readable by others
    try:
        manifest = _prepare(exp, tmp, log)
        token = secrets.token_urlsafe(24)
        atomic_write_text(tmp / "private" / "admin_token", token + "\n")
        os.chmod(tmp / "private" / "admin_token", 0o600)
        atomic_write_text(tmp / "private" / "manifest.json", json.dumps(manifest, indent=1))
        DB.init_db(tmp / "listen.db", manifest)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["admin_token"] = token
    return manifest


def _prepare(exp: Experiment, d: Path, log) -> dict:
    # Long on purpose: one pass that writes every kind of stimulus in turn through the shared id set
    # and writer below.
    from audiogen.listening.audit import audit_clips, audit_warning

    spec = exp.stimulus
    sr, ch = spec.sample_rate, spec.channels
    used: set = set()
    stimuli: dict[str, dict] = {}

    def write(wav: np.ndarray, meta: dict) -> str:
        sid = _new_id(used)
        p = d / "stimuli" / f"{sid}.wav"
        write_audio(p, wav, sr, subtype="PCM_16")  # libsndfile writes no tags/LIST chunks here
        os.utime(p, (FIXED_MTIME, FIXED_MTIME))
        meta = dict(meta, loudness_out=round(integrated_loudness(wav, sr), 2), bytes=p.stat().st_size)
        stimuli[sid] = meta
        return sid

    by_source: dict[int, str] = {}
    clips: dict[int, np.ndarray] = {}
    finished: dict[int, np.ndarray] = {}  # what listeners hear: the blinding audit measures these
    t0 = time.time()
    warnings = _source_warnings(exp) + _design_warnings(exp)
    for w in warnings:
        log(f"warning: {w}")
    for i, s in enumerate(exp.sources):
        wav, _ = load_audio(s.path, sample_rate=sr, channels=ch)
        clip, start = cut_window(wav, sr, spec, exp.seed, s.path)
        if spec.lowpass_hz:
            clip = lowpass(clip, sr, spec.lowpass_hz)
        loud_in = integrated_loudness(clip, sr)
        try:
            out = finish_clip(clip, sr, spec)
        except AudiogenError as e:
            raise AudiogenError(f"{s.path}: {e}") from None
        clips[i] = clip
        finished[i] = out
        by_source[i] = write(out, {
            "role": "music", "origin": s.origin, "system": s.system, "item": s.item, "prompt": s.prompt,
            "source": s.path, "source_sha256": sha256_file(s.path), "window_start_s": round(start, 4),
            "loudness_in": round(loud_in, 2),
        })
        log(f"[{i + 1}/{len(exp.sources)}] {Path(s.path).name} -> stimuli/{by_source[i]}.wav")

    audit = audit_clips([finished[i] for i in range(len(exp.sources))],
                        [s.origin == "generated" for s in exp.sources], sr, seed=exp.seed)
    warning = audit_warning(audit)
    if warning:
        warnings.append(warning)
        log(f"warning: {warning}")

    trials: list[dict] = []
    humans = [i for i, s in enumerate(exp.sources) if s.origin == "human"]
    gens = [i for i, s in enumerate(exp.sources) if s.origin == "generated"]
    if exp.design == "2afc":
        for g in gens:
            item = exp.sources[g].item
            partners = [h for h in humans if item is not None and exp.sources[h].item == item] or humans
            trials.append({"design": "2afc", "gen": by_source[g], "humans": [by_source[h] for h in partners],
                           "system": exp.sources[g].system, "item": item})
    elif exp.design in ("single", "mos"):
        for i in humans + gens:
            s = exp.sources[i]
            trials.append({"design": exp.design, "stimulus": by_source[i], "origin": s.origin,
                           "system": s.system, "item": s.item})
    else:  # mushra
        for item in sorted({exp.sources[g].item for g in gens}):
            ref_i = next(h for h in humans if exp.sources[h].item == item)
            ref_clip = clips[ref_i]
            hidden = write(finish_clip(ref_clip, sr, spec), dict(stimuli[by_source[ref_i]], role="hidden_reference"))
            anchor = write(finish_clip(lowpass(ref_clip, sr, exp.mushra["anchor_hz"]), sr, spec),
                           dict(stimuli[by_source[ref_i]], role="anchor", system="anchor"))
            conds = {by_source[g]: exp.sources[g].system for g in gens if exp.sources[g].item == item}
            conds[hidden] = "hidden_reference"
            conds[anchor] = "anchor"
            trials.append({"design": "mushra", "item": item, "reference": by_source[ref_i], "conditions": conds})

    extra = {}
    if exp.screening.enabled:
        rng = _rng(exp.seed, 11)
        extra["screening"] = []
        for k in range(exp.screening.trials):
            order = list(rng.permutation(["quiet", "anti", "ref"]))
            sid = write(antiphase_clip(order, sr), {"role": "screening", "order": order})
            stimuli[sid]["answer"] = order.index("quiet") + 1
            extra["screening"].append(sid)
    # as long as the music: every served file has one size, or the size would tell calibration from music
    extra["calibration"] = write(finish_clip(pink_noise(spec.duration_s, sr, ch, exp.seed), sr, spec),
                                 {"role": "calibration"})
    if exp.catch_trials:
        extra["catch"] = []
        rng = _rng(exp.seed, 13)
        for k in range(exp.catch_trials):
            count = int(rng.integers(2, 6))
            sid = write(finish_clip(beeps_clip(count, spec.duration_s, sr, ch, exp.seed + k), sr, spec),
                        {"role": "catch", "answer": count})
            extra["catch"].append(sid)
    if exp.practice:
        rng = _rng(exp.seed, 17)
        practice = []
        for k, f0 in enumerate((261.63, 329.63, 392.0)):
            t = np.arange(int(spec.duration_s * sr)) / sr
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
            x = x + 0.02 * rng.standard_normal(x.size)
            practice.append(write(finish_clip(np.repeat(x[None].astype(np.float32), ch, 0), sr, spec),
                                  {"role": "practice"}))
        extra["practice"] = practice

    sizes = {m["bytes"] for m in stimuli.values() if m["role"] in ("music", "hidden_reference", "anchor", "catch", "practice", "calibration")}
    if len(sizes) != 1:  # cannot happen with fixed-length 16-bit WAV; checked because it is the promise
        raise RuntimeError(f"stimulus files differ in size: {sorted(sizes)}")
    log(f"prepared {len(stimuli)} stimuli in {time.time() - t0:.1f}s")
    config = asdict(exp)
    return {
        "format": "audiogen-listening-experiment",
        "version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "experiment": config,
        "stimuli": stimuli,
        "trials": trials,
        "warnings": warnings,
        "audit": audit,
        **extra,
    }


def _source_warnings(exp: Experiment) -> list[str]:
    """Differences between human and generated sources that survive prep and could give origins away."""
    info = {s.path: audio_info(s.path) for s in exp.sources}
    out = []
    sr = exp.stimulus.sample_rate
    # the bandwidth a source keeps after resampling to the stimulus rate
    rates = {o: {min(info[s.path].sample_rate, sr) for s in exp.sources if s.origin == o} for o in ("human", "generated")}
    chans = {o: {info[s.path].channels for s in exp.sources if s.origin == o} for o in ("human", "generated")}
    low = min(min(r) for r in rates.values() if r)
    if len(rates["human"] | rates["generated"]) > 1 and not (0 < exp.stimulus.lowpass_hz <= 0.95 * low / 2):
        out.append(f"sources have sample rates down to {low} Hz: those have nothing above {low // 2} Hz, which "
                   f"listeners may hear; consider stimulus.lowpass_hz: {int(0.9 * low / 2)}")
    if exp.stimulus.channels == 2 and chans["human"] != chans["generated"] and 1 in chans["human"] | chans["generated"]:
        out.append("some sources are mono and others stereo: mono ones play identically in both ears; "
                   "consider stimulus.channels: 1")
    return out


#: Fewer generated clips than this in an identification test gets a warning at create time.
FEW_CLIPS = 10


def _design_warnings(exp: Experiment) -> list[str]:
    """Designs too small for the report's verdict, which generalises over clips as well as listeners."""
    if exp.design not in ("2afc", "single"):
        return []
    n = sum(s.origin == "generated" for s in exp.sources) if exp.design == "2afc" else len(exp.sources)
    what = "generated clips" if exp.design == "2afc" else "stimuli"
    if n >= FEW_CLIPS:
        return []
    return [f"only {n} {what}: the report's verdict is about music in general, not just these clips, and with "
            f"so few it is often 'inconclusive'; check the design with 'audiogen listen power --clips {n} "
            "--listeners N --accuracy P'"]


def read_manifest(exp_dir: str | os.PathLike) -> dict:
    p = Path(exp_dir) / "private" / "manifest.json"
    if not p.is_file():
        raise AudiogenError(f"{exp_dir}: not an experiment folder (no private/manifest.json; run 'audiogen listen create')")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AudiogenError(f"{p}: corrupt manifest ({e})") from None
    if m.get("format") != "audiogen-listening-experiment":
        raise AudiogenError(f"{p}: not an audiogen listening manifest")
    return m


def read_admin_token(exp_dir: str | os.PathLike) -> str:
    p = Path(exp_dir) / "private" / "admin_token"
    if not p.is_file():
        raise AudiogenError(f"{p}: missing admin token file")
    return p.read_text().strip()


# --------------------------------------------------------------------------- per-participant plans


def participant_seed(manifest: dict, index: int) -> int:
    return int(_rng(manifest["experiment"]["seed"], index, 0x5EED).integers(0, 2**31 - 1))


def _balanced_flags(n: int, rng: np.random.Generator, parity: int) -> list[int]:
    """n zeros/ones, half each (the odd one out alternates with ``parity``), shuffled."""
    flags = [k % 2 for k in range(n)]
    if n % 2 and parity % 2:
        flags[-1] = 1
    return [int(x) for x in rng.permutation(flags)]


def participant_plan(manifest: dict, index: int) -> dict:
    """Participant ``index``'s steps, derived only from the manifest and a recorded seed.

    Each step: ``slot`` (answer key), ``kind`` (screening|calibration|practice|trial|catch),
    ``design``, ``stimuli`` (ids in display order) and ``truth`` (never sent to the browser).
    Trial order is random; in 2AFC the AI clip is at A in exactly half the trials (the odd
    one alternates between participants); catch trials go at random positions.
    """
    exp = manifest["experiment"]
    seed = participant_seed(manifest, index)
    rng = np.random.default_rng(seed)
    design = exp["design"]
    steps: list[dict] = []
    for sid in manifest.get("screening", []):
        steps.append({"kind": "screening", "design": "screening", "stimuli": [sid],
                      "truth": {"answer": manifest["stimuli"][sid]["answer"]}})
    steps.append({"kind": "calibration", "design": "calibration", "stimuli": [manifest["calibration"]], "truth": {}})
    if manifest.get("practice"):
        p = manifest["practice"]
        stim = {"2afc": p[:2], "single": p[:1], "mos": p[:1], "mushra": p[:3]}[design]
        steps.append({"kind": "practice", "design": design, "stimuli": list(stim), "truth": {},
                      **({"reference": p[0]} if design == "mushra" else {})})

    templates = manifest["trials"]
    n = min(exp["trials_per_participant"] or len(templates), len(templates))
    # With a subset per participant, participant i takes the next n trials of one fixed
    # shuffled list (wrapping round), so consecutive participants cover every trial equally
    # often; single-stimulus subsets take half human, half generated the same way.
    base = [int(x) for x in _rng(exp["seed"], 23).permutation(len(templates))]

    def rotate(pool: list[int], k: int, offset: int) -> list[int]:
        return [pool[(offset + j) % len(pool)] for j in range(min(k, len(pool)))]

    if design == "single" and n < len(templates):
        hum = [i for i in base if templates[i]["origin"] == "human"]
        gen = [i for i in base if templates[i]["origin"] != "human"]

        def split(j: int) -> tuple[int, int]:  # (human, generated) picks of participant j
            g = min(len(gen), n // 2 + (n % 2) * (j % 2))
            h = min(len(hum), n - g)
            return h, n - h

        n_hum, n_gen = split(index)
        done = [split(j) for j in range(index)]
        pick = rotate(hum, n_hum, sum(d[0] for d in done)) + rotate(gen, n_gen, sum(d[1] for d in done))
    else:
        pick = rotate(base, n, index * n)
    order = [int(x) for x in rng.permutation(pick)]
    ai_at_b = _balanced_flags(len(order), rng, index)
    trials = []
    partners: dict[tuple, list] = {}  # human partners dealt from a shuffled deck: each used equally often
    for k, ti in enumerate(order):
        t = templates[ti]
        if design == "2afc":
            deck = partners.setdefault(tuple(t["humans"]), [])
            if not deck:
                deck.extend(str(h) for h in rng.permutation(t["humans"]))
            human = deck.pop()
            pair = [t["gen"], human] if ai_at_b[k] == 0 else [human, t["gen"]]
            trials.append({"kind": "trial", "design": "2afc", "stimuli": pair,
                           "truth": {"ai": "A" if ai_at_b[k] == 0 else "B", "system": t["system"], "item": t["item"],
                                     "gen": t["gen"], "human": human}})
        elif design in ("single", "mos"):
            trials.append({"kind": "trial", "design": design, "stimuli": [t["stimulus"]],
                           "truth": {"origin": t["origin"], "system": t["system"], "item": t["item"]}})
        else:
            conds = list(rng.permutation(sorted(t["conditions"])))
            trials.append({"kind": "trial", "design": "mushra", "stimuli": [str(c) for c in conds],
                           "reference": t["reference"],
                           "truth": {"item": t["item"], "systems": {c: t["conditions"][c] for c in conds}}})
    for sid in manifest.get("catch", []):
        pos = int(rng.integers(1, len(trials) + 1)) if trials else 0
        trials.insert(pos, {"kind": "catch", "design": "count", "stimuli": [sid],
                            "truth": {"answer": manifest["stimuli"][sid]["answer"]}})
    steps += trials
    for i, s in enumerate(steps):
        s["slot"] = i
    return {"index": index, "seed": seed, "steps": steps}


def add_public_ids(plan: dict) -> dict:
    """``plan`` with ids that mean something only inside this one session: each stimulus of each step
    gets its own random id (``pub``, ``pub_reference``), so ids seen in two sessions, or twice in one,
    never match; and a ``dither_seed`` that makes the bytes served to this session its own."""
    for step in plan["steps"]:
        step["pub"] = [secrets.token_urlsafe(12) for _ in step["stimuli"]]
        if step.get("reference"):
            step["pub_reference"] = secrets.token_urlsafe(12)
    plan["dither_seed"] = secrets.randbits(63)
    return plan


def public_step(step: dict) -> dict:
    """What the browser may see of a step: its per-session ids; no truth, nothing about origins."""
    out = {k: step[k] for k in ("slot", "kind", "design")}
    out["stimuli"] = list(step.get("pub", step["stimuli"]))
    if "reference" in step:
        out["reference"] = step.get("pub_reference", step["reference"])
    return out
