"""A labelled corpus rendered from music21's bundled scores with FluidSynth.

Real human compositions (Bach chorales, Palestrina masses, Monteverdi madrigals, string
quartets of Haydn, Mozart and Beethoven, a Joplin rag, Ryan's Mammoth Collection and
O'Neill's Irish fiddle tunes) are rendered with Debian's ``fluid-soundfont-gm`` across
General MIDI instruments, tempos and transpositions. Because we choose the instruments,
the tempo and the transposition, every track's labels are exact::

    plan = plan_corpus(variants=2, seed=0)            # [Job]: piece x ensemble x tempo x transposition
    render_job(plan[0], out_dir)                      # -> out_dir/<collection>/<name>.flac + .json

Each track's ``TRACK.json`` sidecar (read by ``audiogen prep``) records: ``genre`` (the
collection's style), ``era``, ``composer``, ``instruments`` (GM names) and ``programs``,
``bpm`` (quarter notes per minute, exact) and ``beat_bpm`` (per beat of the metre: a
dotted quarter in 6/8), ``key`` (transposed from the score's notated key, see
:func:`notated_key`), ``transpose``, the source file and a ``license`` record.

Licenses (music21's ``corpus/license.txt``): the compositions are public domain (composers
dead for centuries; Ryan's 1883 and O'Neill's 1850/1903 collections); the encodings are
distributed with music21 "with the permission of the encoders"; the Essen folk songs are
excluded because their encoders allow only non-commercial use.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")  # Debian fluid-soundfont-gm (MIT)
SAMPLE_RATE = 44_100
MAX_SECONDS = 150.0  # long movements are cut: a training segment is 30 s anyway
#: Bumped when rendering changes; a track rendered by another version is rendered again.
RENDER_VERSION = 1

#: GM program numbers (0-based) and the names written as labels
GM = {0: "piano", 6: "harpsichord", 19: "church organ", 21: "accordion", 24: "nylon guitar", 40: "violin",
      41: "viola", 42: "cello", 46: "harp", 52: "choir", 56: "trumpet", 57: "trombone", 58: "tuba",
      60: "french horn", 68: "oboe", 70: "bassoon", 71: "clarinet", 73: "flute"}
#: ensembles: programs given to the parts from the top voice down (cycled when there are more parts)
ENSEMBLES = {
    "piano": (0,), "harpsichord": (6,), "organ": (19,), "choir": (52,), "harp": (46,),
    "string quartet": (40, 40, 41, 42), "woodwind quartet": (73, 68, 71, 70), "brass quartet": (56, 60, 57, 58),
    "violin": (40,), "flute": (73,), "accordion": (21,), "guitar": (24,), "cello": (42,),
}

PD_ENCODED = ("composition public domain; encoding distributed with music21 (BSD-3-Clause software) "
              "with the encoders' permission, see music21/corpus/license.txt")


@dataclass(frozen=True)
class Collection:
    name: str
    pattern: str  # glob under music21's corpus folder
    genre: str
    era: str
    composer: str
    ensembles: tuple[str, ...]
    tempo: tuple[int, int]  # beat-bpm range to draw from
    license: str = PD_ENCODED


COLLECTIONS = (
    Collection("bach_chorales", "bach/bwv*.mxl", "baroque chorale", "baroque", "Johann Sebastian Bach",
               ("organ", "string quartet", "piano", "choir", "woodwind quartet", "brass quartet"), (60, 96)),
    Collection("palestrina", "palestrina/*.krn", "renaissance polyphony", "renaissance",
               "Giovanni Pierluigi da Palestrina", ("choir", "organ", "string quartet"), (56, 84)),
    Collection("monteverdi", "monteverdi/*.mxl", "renaissance madrigal", "renaissance", "Claudio Monteverdi",
               ("choir", "string quartet", "harpsichord"), (60, 96)),
    Collection("string_quartets", "*/**/*.mxl", "classical string quartet", "classical",
               "Haydn, Mozart, Beethoven", ("string quartet", "piano"), (72, 132)),
    Collection("joplin", "joplin/*.mxl", "ragtime", "romantic", "Scott Joplin", ("piano",), (72, 100)),
    Collection("ryans_mammoth", "ryansMammoth/*.abc", "irish and american fiddle tune", "19th-century folk",
               "traditional (Ryan's Mammoth Collection, 1883)",
               ("violin", "flute", "accordion", "guitar", "piano", "harp"), (84, 126),
               "public domain (1883 collection); ABC transcription contributed to music21, see its corpus license"),
    Collection("oneills", "oneills1850/*.abc", "irish folk tune", "19th-century folk",
               "traditional (O'Neill's Music of Ireland)", ("violin", "flute", "accordion", "harp", "piano"),
               (72, 120), "public domain (1903 collection); ABC transcription by Norbert Paap, distributed with music21"),
)


def corpus_dir() -> Path:
    try:
        import music21
    except ImportError:
        raise AudiogenError("music21 is not installed: pip install music21 (install.sh does)") from None
    return Path(music21.__file__).parent / "corpus"


@dataclass(frozen=True)
class Job:
    """One track to render: a score file (and, for multi-tune ABC files, the tune number) and its choices."""

    collection: str
    source: str  # relative to music21's corpus folder
    tune: int | None
    ensemble: str
    beat_bpm: int
    transpose: int  # semitones
    variant: int

    @property
    def name(self) -> str:
        """Unique in the plan: the source's path below its collection's fixed folder (``bach/bwv1.mxl`` ->
        ``bwv1``; the quartets' ``*/**/*.mxl`` -> ``haydn_opus74no1_movement1``), tune and variant."""
        parts = Path(self.source).with_suffix("").parts[len(_fixed_folders(self.collection)):]
        return "_".join(parts) + (f"_{self.tune}" if self.tune is not None else "") + f"__v{self.variant}"


def _fixed_folders(collection: str) -> tuple[str, ...]:
    """The literal leading folders of a collection's glob (``bach/bwv*.mxl``: bach; ``*/**/*.mxl``: none)."""
    folders = next(c.pattern for c in COLLECTIONS if c.name == collection).split("/")[:-1]
    n = next((i for i, p in enumerate(folders) if any(ch in p for ch in "*?[")), len(folders))
    return tuple(folders[:n])


def _sources(coll: Collection, root: Path) -> list[str]:
    files = sorted(p for p in root.glob(coll.pattern) if p.is_file())
    if coll.name == "string_quartets":  # the quartets of beethoven/, mozart/, haydn/ (k545 is a piano sonata)
        files = [p for p in files if p.relative_to(root).parts[0] in ("beethoven", "mozart", "haydn")
                 and "k545" not in p.parts]
    return [p.relative_to(root).as_posix() for p in files]


def plan_corpus(variants: int = 1, seed: int = 0, collections: list[str] | None = None,
                ensembles: list[str] | None = None) -> list[Job]:
    """Every (piece, variant) to render, with its ensemble, tempo and transposition drawn from ``seed``.
    ``ensembles``: draw each piece's ensemble from these instead of its collection's (to add the
    instruments a corpus lacks, e.g. guitar and flute for folk tunes).

    Deterministic: the same arguments give the same plan, so a stopped render resumes.
    """
    root = corpus_dir()
    wanted = set(collections) if collections else None
    known = {c.name for c in COLLECTIONS}
    if wanted and wanted - known:
        raise AudiogenError(f"unknown collection(s) {', '.join(sorted(wanted - known))}: choose from {', '.join(sorted(known))}")
    if ensembles is not None and (not ensembles or set(ensembles) - set(ENSEMBLES)):
        raise AudiogenError(f"unknown ensemble(s) {', '.join(sorted(set(ensembles) - set(ENSEMBLES))) or '(none given)'}: "
                            f"choose from {', '.join(ENSEMBLES)}")
    jobs = []
    for coll in COLLECTIONS:
        if wanted and coll.name not in wanted:
            continue
        for src in _sources(coll, root):
            tunes = _abc_tune_numbers(root / src) if src.endswith(".abc") else [None]
            for tune in tunes:
                for v in range(variants):
                    rng = random.Random(f"{seed}/{src}/{tune}/{v}")
                    jobs.append(Job(coll.name, src, tune, rng.choice(ensembles or coll.ensembles), rng.randint(*coll.tempo),
                                    rng.randint(-3, 3), v))
    return jobs


def piece_of(job: Job) -> str:
    """The piece a job plays, as its track's sidecar records it (``source``): the score file, and for a
    multi-tune ABC file the tune (``music21 corpus: bach/bwv1.6.mxl``, ``... oneills/0001-0050.abc X:3``). Every
    ensemble, tempo, transposition and variant of a score shares it."""
    return f"music21 corpus: {job.source}" + (f" X:{job.tune}" if job.tune else "")


def pieces_in(corpus_dirs) -> set[str]:
    """The pieces (:func:`piece_of`) that the rendered corpora ``corpus_dirs`` hold, from their ``tracks.jsonl``."""
    pieces = set()
    for d in corpus_dirs:
        listing = Path(d) / "tracks.jsonl"
        if not listing.is_file():
            raise AudiogenError(f"{d}: no tracks.jsonl, so not a corpus data_prep/render_music21.py finished")
        for row in listed_tracks(listing):
            if not isinstance(row.get("source"), str):
                raise AudiogenError(f"{listing}: the track {row['path']} has no 'source' (not a rendered score)")
            pieces.add(row["source"])
    return pieces


def listed_tracks(listing: Path) -> list[dict]:
    """The track records of a corpus's ``tracks.jsonl`` (each a JSON object with at least its ``path``); a line
    that is not one is a clear error naming the file and line."""
    rows = []
    for n, line in enumerate(Path(listing).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise ValueError
        except ValueError:
            raise AudiogenError(f"{listing}:{n}: not a track record (a JSON object with a 'path')") from None
        rows.append(row)
    return rows


def _listed_elsewhere(out_dir: Path, planned: set[str]) -> list[dict]:
    """Tracks the corpus in ``out_dir`` lists that the plan ``planned`` (their paths) does not hold (a run with
    other collections, hours or ``--skip-pieces-in``), re-read from their sidecars, each one kept while its audio
    and current-version sidecar are there: a later run's listing must not drop what an earlier one rendered."""
    listing = out_dir / "tracks.jsonl"
    if not listing.is_file():
        return []
    kept = []
    for row in listed_tracks(listing):
        labels = None if row["path"] in planned else _finished_labels(out_dir / row["path"])
        if labels is not None:
            kept.append({"path": row["path"], **labels})
    return kept


def without_pieces(jobs: list[Job], pieces: set[str]) -> list[Job]:
    """``jobs`` less those playing one of ``pieces`` (any ensemble or variant), so that a corpus rendered beside
    others adds compositions, not new renders of theirs (a score in two corpora would put the same music on both
    sides of a split made per corpus)."""
    return [j for j in jobs if piece_of(j) not in pieces]


def _abc_tune_numbers(path: Path) -> list[int]:
    """The ``X:`` numbers of an ABC file (O'Neill's files hold many tunes each)."""
    nums = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("X:"):
            try:
                nums.append(int(line[2:].strip()))
            except ValueError:
                continue
    return nums or [None]


# ------------------------------------------------------------------------------ labels


def notated_key(score) -> tuple[str, str]:
    """The score's key as written: (``"D minor"``-style name, how it was found).

    An explicit key with a mode (ABC ``K:Am``, MusicXML ``<mode>``) is taken as is. A bare
    key signature names two keys (major and its relative minor); the final note of the
    lowest part decides, since these pieces end on their tonic.
    """
    from music21 import key as m21key

    flat = score.flatten()
    keys = list(flat.getElementsByClass(m21key.Key))
    if keys and keys[0].mode in ("major", "minor"):
        k, source = keys[0], "notated key"
    else:
        sigs = list(flat.getElementsByClass(m21key.KeySignature))
        sharps = sigs[0].sharps if sigs else 0
        major = m21key.KeySignature(sharps).asKey("major")
        minor = m21key.KeySignature(sharps).asKey("minor")
        bass = score.parts[-1] if score.parts else score
        notes = list(bass.flatten().notes)
        last = notes[-1].pitches[0].pitchClass if notes else major.tonic.pitchClass
        k = minor if last == minor.tonic.pitchClass else major
        source = "key signature + final bass note"
    return f"{k.tonic.name.replace('-', 'b')} {k.mode}", source


def _key_name(pc: int, mode: str) -> str:
    names = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
    return f"{names[pc % 12]} {mode}"


def transposed_key(name: str, semitones: int) -> str:
    """``"D minor"`` transposed by ``semitones`` -> e.g. ``"Eb minor"`` (flat spelling for black keys)."""
    from music21 import pitch

    tonic, mode = name.split()
    return _key_name(pitch.Pitch(tonic.replace("b", "-") if len(tonic) > 1 else tonic).pitchClass + semitones, mode)


# ------------------------------------------------------------------------------ render


def _load_score(job: Job):
    from music21 import converter

    path = corpus_dir() / job.source
    if job.tune is not None:
        return converter.parse(path, number=job.tune)
    return converter.parse(path)


def _prepare(score, job: Job) -> tuple[object, dict]:
    """Set instruments, tempo and transposition on ``score``; return it and its labels."""
    from music21 import stream

    key_name, key_source = notated_key(score)
    # the transposition is applied to the MIDI pitches by write_midi: music21's score.transpose
    # gives the same notes but took 20 s on a madrigal
    parts = list(score.parts) if isinstance(score, stream.Score) and score.parts else [score]
    programs = ENSEMBLES[job.ensemble]
    # recurse(), not flatten(): a flattened ABC tune can sort a 1/16 pickup bar's signature first
    ts = list(score.recurse().getElementsByClass("TimeSignature"))
    beat_ql = float(ts[0].beatDuration.quarterLength) if ts else 1.0
    bpm = job.beat_bpm * beat_ql  # quarter notes per minute
    used = [programs[i % len(programs)] for i in range(len(parts))]
    coll = next(c for c in COLLECTIONS if c.name == job.collection)
    labels = {
        "title": (score.metadata.title if score.metadata and score.metadata.title else Path(job.source).stem),
        "artist": coll.composer, "composer": coll.composer, "genre": coll.genre, "era": coll.era,
        "instruments": sorted({GM[p] for p in used}), "programs": used, "ensemble": job.ensemble,
        "bpm": round(bpm, 3), "beat_bpm": job.beat_bpm, "beat_quarter_length": beat_ql,
        "key": transposed_key(key_name, job.transpose), "key_source": key_source, "notated_key": key_name,
        "transpose": job.transpose, "time_signature": ts[0].ratioString if ts else None,
        "collection": job.collection, "source": piece_of(job),
        "license": coll.license,
        "attribution": f"{coll.composer}, from the music21 corpus ({job.source}), rendered with FluidSynth and "
                       "FluidR3_GM (MIT) by audiogen",
        "render_version": RENDER_VERSION,
    }
    return score, labels


def write_midi(score, programs: list[int], bpm: float, path: Path, velocity: int = 80, transpose: int = 0,
               max_seconds: float | None = None) -> None:
    """The notes of ``score`` as a type-1 MIDI file: one track per part with its GM program, one tempo,
    every pitch moved by ``transpose`` semitones, and no note starting after ``max_seconds`` (the
    render is cut there anyway; notes sounding across the cut are kept whole, so the audio before
    it is unchanged).

    Written with mido from the parts' notes (ties merged) rather than music21's MIDI export,
    which fails on some of its own ABC scores (a time signature inserted twice) and would
    apply the scores' own tempo and instrument marks.
    """
    import mido
    from music21 import stream

    tpq = 480
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=int(round(60_000_000 / bpm)), time=0)])
    mid.tracks.append(meta)
    parts = list(score.parts) if isinstance(score, stream.Score) and score.parts else [score]
    last_tick = None if max_seconds is None else max_seconds * bpm / 60 * tpq
    for i, (part, prog) in enumerate(zip(parts, programs)):
        ch = i % 15 + (1 if i % 15 >= 9 else 0)  # never channel 10 (drums)
        events = []
        for n in part.stripTies().flatten().notes:
            on = int(round(float(n.offset) * tpq))
            if last_tick is not None and on > last_tick:
                continue
            off = on + max(1, int(round(float(n.quarterLength) * tpq)) - 1)
            for p in n.pitches:
                events += [(on, 1, p.midi + transpose), (off, 0, p.midi + transpose)]
        events.sort(key=lambda e: (e[0], e[1]))  # note-offs before note-ons at the same tick
        track = mido.MidiTrack([mido.Message("program_change", channel=ch, program=prog, time=0)])
        now = 0
        for tick, is_on, pitch in events:
            kind = "note_on" if is_on else "note_off"
            track.append(mido.Message(kind, channel=ch, note=int(pitch), velocity=velocity if is_on else 0,
                                      time=tick - now))
            now = tick
        mid.tracks.append(track)
    mid.save(str(path))


def _fluidsynth(midi: Path, wav: Path) -> None:
    exe = shutil.which("fluidsynth")
    if exe is None or not SOUNDFONT.is_file():
        raise AudiogenError(f"rendering needs FluidSynth and {SOUNDFONT}: apt-get install fluidsynth "
                            "fluid-soundfont-gm (install.sh does)")
    cmd = [exe, "-ni", "-q", "-g", "0.6", "-r", str(SAMPLE_RATE), "-F", str(wav), str(SOUNDFONT), str(midi)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not wav.is_file():
        raise AudiogenError(f"fluidsynth failed on {midi}: {r.stderr.strip()[-300:]}")


def synthesize(midi: Path, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, int]:
    """A MIDI file's audio: FluidSynth with FluidR3_GM -> ``float32 [2, N]`` at 44.1 kHz, the silent
    tail trimmed, at most ``max_seconds``, peak at -1 dBFS (FluidSynth's level depends on how many
    voices play)."""
    from audiogen.audio.io import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "x.wav"
        _fluidsynth(midi, wav_path)
        wav, sr = load_audio(wav_path)
    wav = _trim(wav, sr, max_seconds)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > 0:
        wav = wav * (10 ** (-1 / 20) / peak)
    return wav.astype(np.float32), sr


def output_paths(job: Job, out_dir: Path) -> tuple[Path, Path]:
    audio = Path(out_dir) / job.collection / f"{job.name}.flac"
    return audio, audio.with_suffix(".json")


def _finished_labels(audio: Path) -> dict | None:
    """The labels of the finished track ``audio`` (its ``.json`` sidecar, of this :data:`RENDER_VERSION`); None
    while the audio or sidecar is missing, unreadable or of another version."""
    side = audio.with_suffix(".json")
    if not (audio.is_file() and side.is_file()):
        return None
    try:
        labels = json.loads(side.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return labels if isinstance(labels, dict) and labels.get("render_version") == RENDER_VERSION else None


def is_done(job: Job, out_dir: Path) -> bool:
    return _finished_labels(output_paths(job, out_dir)[0]) is not None


def render_job(job: Job, out_dir: str | Path, max_seconds: float = MAX_SECONDS) -> dict:
    """Render one job to ``out_dir/<collection>/<name>.flac`` with its ``.json`` labels; return the labels.

    The audio is written first and the sidecar last (both atomically), so a track with a
    sidecar is complete: :func:`is_done` is how a rerun skips it.
    """
    from audiogen.audio.io import write_audio
    from audiogen.files import atomic_write_text

    audio, side = output_paths(job, Path(out_dir))
    score, labels = _prepare(_load_score(job), job)
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "x.mid"
        write_midi(score, labels["programs"], labels["bpm"], midi, transpose=job.transpose, max_seconds=max_seconds)
        wav, sr = synthesize(midi, max_seconds)
    if wav.shape[1] < sr:
        raise AudiogenError(f"{job.source}: rendered less than 1 s of audio")
    labels["duration_s"] = round(wav.shape[1] / sr, 3)
    labels["render_id"] = hashlib.sha256(json.dumps(asdict(job), sort_keys=True).encode()).hexdigest()[:12]
    audio.parent.mkdir(parents=True, exist_ok=True)
    write_audio(audio, wav, sr)
    atomic_write_text(side, json.dumps(labels, indent=1, ensure_ascii=False))
    return labels


def _trim(wav: np.ndarray, sr: int, max_seconds: float) -> np.ndarray:
    """Drop the silent tail FluidSynth leaves (release and reverb below -60 dB), cap at ``max_seconds``."""
    env = np.abs(wav).max(axis=0)
    loud = np.nonzero(env > 1e-3 * max(env.max(), 1e-9))[0]
    end = min(wav.shape[1], (loud[-1] + int(0.5 * sr)) if loud.size else 0, int(max_seconds * sr))
    return wav[:, :end]


def interleave(jobs: list[Job]) -> list[Job]:
    """``jobs`` taken round-robin across collections (each collection's own order kept), so a corpus
    stopped early by ``limit`` or ``hours`` holds every collection rather than the first ones."""
    by_coll: dict[str, list[Job]] = {}
    for j in jobs:
        by_coll.setdefault(j.collection, []).append(j)
    queues = list(by_coll.values())
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def _done_seconds(job: Job, out_dir: Path) -> float:
    return float(json.loads(output_paths(job, out_dir)[1].read_text()).get("duration_s", 0.0))


def render_corpus(out_dir: str | Path, jobs: list[Job], limit: int | None = None, progress: bool = True,
                  max_seconds: float = MAX_SECONDS, hours: float | None = None) -> dict:
    """Render ``jobs`` not yet done, round-robin across collections (:func:`interleave`), until
    ``limit`` new tracks are rendered or ``hours`` of audio are done in ``out_dir`` (earlier runs
    included); a failing piece is listed, not fatal.

    Writes ``out_dir/tracks.jsonl`` (every finished track's labels) at the end: the plan's, then those an earlier
    run listed outside this plan whose files are still there. Returns counts.
    """
    from tqdm import tqdm

    from audiogen.files import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = interleave(jobs)
    done = [is_done(j, out_dir) for j in jobs]
    todo = [j for j, d in zip(jobs, done) if not d]
    if limit is not None:
        todo = todo[:limit]
    planned = {output_paths(j, out_dir)[0].relative_to(out_dir).as_posix() for j in jobs}
    elsewhere = _listed_elsewhere(out_dir, planned)
    seconds = 0.0
    if hours is not None:  # the audio done in out_dir: this plan's and what earlier runs listed outside it
        seconds = sum(_done_seconds(j, out_dir) for j, d in zip(jobs, done) if d) + sum(
            float(r.get("duration_s", 0.0)) for r in elsewhere)
    failed, rendered = [], 0
    for job in tqdm(todo, desc="render", unit="track", disable=not progress):
        if hours is not None and seconds >= hours * 3600:
            break
        try:
            seconds += render_job(job, out_dir, max_seconds)["duration_s"]
            rendered += 1
        except Exception as e:  # noqa: BLE001 -- a score music21 cannot parse must not stop the corpus
            failed.append({"source": job.source, "tune": job.tune, "error": f"{type(e).__name__}: {e}"[:300]})
    rows = []
    for job in jobs:
        audio = output_paths(job, out_dir)[0]
        labels = _finished_labels(audio)
        if labels is not None:
            rows.append({"path": audio.relative_to(out_dir).as_posix(), **labels})
    rows += elsewhere
    atomic_write_text(out_dir / "tracks.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if failed:
        atomic_write_text(out_dir / "render_failures.json", json.dumps(failed, indent=1))
    hours = sum(r["duration_s"] for r in rows) / 3600
    return {"planned": len(jobs), "rendered_now": rendered, "failed_now": len(failed),
            "done": len(rows), "hours_done": round(hours, 3)}
