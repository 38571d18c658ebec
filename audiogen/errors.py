"""The one exception type for user errors.

Anything a user can cause (a bad file, a bad flag, a missing weight file) raises
:class:`AudiogenError` with a message that names the thing and the problem. The CLI
prints that message on one line and exits non-zero; every other exception is a
programming error and keeps its traceback.
"""


class AudiogenError(Exception):
    """A user-facing error: bad input, bad configuration, missing files."""


def yaml_problem(e: Exception) -> str:
    """A PyYAML error on one line: where it is and what is wrong (its own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return at + " ".join(str(getattr(e, "problem", None) or e).split())


def check_fields(cls, d: dict, what: str) -> None:
    """Raise an ``AudiogenError`` naming any key of ``d`` that is not a field of the dataclass ``cls``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise AudiogenError(f"unknown {what}: {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")


def dataclass_from_dict(cls, d: dict, what: str, tuples: tuple[str, ...] = ()):
    """``cls(**d)`` for a config dataclass read from JSON/YAML: unknown keys are refused
    (:func:`check_fields`) and the ``tuples`` fields, lists there, become tuples."""
    check_fields(cls, d, what)
    return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})
