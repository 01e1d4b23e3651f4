"""Safe file output: write to a temporary path beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# how often a folder another process keeps putting at the target is moved aside
_ATTEMPTS = 5


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only on success.

    Works for files and folders: whatever the block created at the yielded path replaces
    `target` atomically (same filesystem); on an exception it is removed and `target`
    is left as it was. An old folder is first renamed aside (a reader sees the old folder,
    the new one or, between the two renames, none; never a half-deleted one); when another
    process puts a folder there in between (two jobs of a sweep preparing the same data), it
    is moved aside in turn. If the new folder cannot be put in place, the old one is put back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    work = tmp / (target.name + suffix)
    try:
        yield work
        aside = None
        for attempt in range(_ATTEMPTS):
            if target.is_dir() and not target.is_symlink():
                try:
                    os.replace(target, tmp / f"replaced-{attempt}")
                    aside = tmp / f"replaced-{attempt}"
                except FileNotFoundError:
                    pass  # another process moved it first
            try:
                os.replace(work, target)
                break
            except OSError as err:  # a folder is there again: another process wrote it
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt + 1 == _ATTEMPTS:
                    if aside is not None and not target.exists():
                        os.replace(aside, target)  # the old folder back, not nothing
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def readable_file(path: str | os.PathLike, expected: str) -> Path:
    """`path` as a Path if it is a file this process can read; else a DataError naming it and
    `expected` (what should be there, e.g. "a beats CSV file")."""
    from ecg_experiments.errors import DataError

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected {expected}")
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected {expected}")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); expected "
                        f"{expected}") from err
    return path


def text_encoding(path: Path) -> str:
    """The encoding of a text file from its byte-order mark: utf-8-sig, utf-16 or utf-8."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "utf-8"
