"""Files written safely: atomic writes (temp file, fsync, rename), folders made with readable errors,
and content hashes of files and folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from audiogen.errors import AudiogenError


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's content; of a folder: of its files' relative names and contents, sorted."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    A crash or exception leaves ``path`` untouched (either the old file or nothing).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AudiogenError(f"{path} is a folder: cannot write a file there")
    if not parent.is_dir():
        raise AudiogenError(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise AudiogenError(f"{path}: the folder {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        # mkstemp makes the file 0600; give it the replaced file's mode, or what a plain open() would
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it, even for a
    moment, would race with files other threads create, e.g. the listening server's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a folder that cannot be made (a file in the way, no permission) is an AudiogenError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AudiogenError(f"{path}: exists and is not a folder") from None
    except OSError as e:
        raise AudiogenError(f"{path}: cannot create the folder ({e.filename}: {e.strerror})") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
