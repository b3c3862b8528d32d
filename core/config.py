"""Typed configs as dataclasses with ``schema_version``, saved as TOML."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import tempfile
import tomllib
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tomli_w

from core.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def to_dict(config: Any) -> dict[str, Any]:
    """A TOML-safe dict of a dataclass config (paths as strings, None values dropped)."""

    def clean(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return clean(dataclasses.asdict(config))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, refusing unknown keys, newer schema versions and values of the
    wrong type (a file from outside: a plan in an invitation, a TOML file someone edited)."""
    if not isinstance(data, dict):
        raise ConfigError(f"The {cls.__name__} must be a table of settings, not {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"Unknown setting(s) {sorted(map(str, unknown))!r:.200} for {cls.__name__}; remove them.")
    hints = _type_hints(cls)
    for name, value in data.items():
        if name in hints and not _fits(value, hints[name]):
            raise ConfigError(f"Setting {name!r} of {cls.__name__} must be {_describe(hints[name])}, not "
                              f"{value!r:.60}; fix it or ask for a new file.")
    version = data.get("schema_version")
    default_version = getattr(cls, "schema_version", 1)
    if isinstance(version, int) and version > int(default_version):
        raise ConfigError(
            f"This {cls.__name__} was written by a newer Dopamine (schema {version}); update the app."
        )
    kwargs = {}
    for name, value in data.items():
        if fields[name].type in ("Path", "Path | None") and value is not None:
            value = Path(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"Invalid {cls.__name__}: {exc}") from exc


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation only a type checker can resolve: those fields go unchecked
        return {}


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a value read from TOML or JSON has the field's type (ints count as floats; floats must be
    finite: TOML writes inf and nan, and no setting means them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond any float
            return False
    if annotation is str:
        return isinstance(value, str)
    if annotation is Path:
        return isinstance(value, str | Path)
    if origin is list or annotation is list:
        items = typing.get_args(annotation)
        return isinstance(value, list) and (not items or all(_fits(v, items[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if origin is tuple or annotation is tuple:
        return isinstance(value, list | tuple)
    return True  # any other annotation: not checked here


def _describe(annotation: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a text",
             Path: "a path", type(None): "absent"}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(annotation) if arm is not type(None))
    if typing.get_origin(annotation) is list or annotation is list:
        items = typing.get_args(annotation)
        return f"a list of {_describe(items[0]).removeprefix('a ')}s" if items else "a list"
    if typing.get_origin(annotation) is dict or annotation is dict:
        return "a table"
    return names.get(annotation, str(annotation))


# What a full disk, a read-only folder or a missing permission looks like (errno of an OSError).
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS}
_FORBIDDEN = {errno.EACCES, errno.EPERM}


def storage_error(exc: OSError, where: Path | str | None = None) -> StorageError | None:
    """The one-line StorageError for an OSError of writing (under ``where``); None when ``exc`` is not a full
    disk, a read-only file system or a refused permission (a network error, a missing file...)."""
    place = exc.filename or where or "this folder"
    if exc.errno in _FULL:
        return StorageError(f"The disk is full: could not write {place} ({exc.strerror}). Free some space on it "
                            "and try again; what was being written was not kept.")
    if exc.errno in _READ_ONLY:
        return StorageError(f"Could not write {place}: it is on a read-only file system. Choose a writable folder "
                            "(or ask IT to make it writable) and try again.")
    if exc.errno in _FORBIDDEN:
        return StorageError(f"Could not write {place}: permission denied. Fix the folder's permissions or choose "
                            "another one, and try again.")
    return None


@contextmanager
def storage_errors(where: Path | str | None = None) -> Iterator[None]:
    """Turn an OSError of a full disk, a read-only folder or a refused permission into a StorageError."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, where)
        if error is None:
            raise
        raise error from exc


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files atomic_write_bytes left in ``folder`` when its process was killed mid-write
    (the target is then either old or new, never torn: the temporary file is all that remains). Only for a
    folder no other process writes at the same time. Returns how many were removed."""
    removed = 0
    for leftover in Path(folder).glob(".*.tmp"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def save_toml(config: Any, path: Path) -> None:
    atomic_write_bytes(Path(path), tomli_w.dumps(to_dict(config)).encode())


def load_toml(cls: type[T], path: Path) -> T:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"Config file {path} does not exist.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} is not valid TOML ({exc}); fix or delete it.") from exc
    return from_dict(cls, data)
