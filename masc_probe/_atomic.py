"""Atomic writes: a reader of a file (or folder) this package writes sees the old one or the new one, never half.

Every file written for a user — reports, plots, saved probes and models, run-folder files, pipeline outputs, a hub
dry run — goes through here. A file is written to a temporary name in its target's own folder (so the rename never
crosses file systems), flushed to disk, given the mode an ordinary ``open(path, "w")`` would give it (``0o666``
less the umask; never the ``0600`` of ``mkstemp`` or of writers that use it) and renamed over the target with
``os.replace``. Several files, or a whole folder, are drawn in a staging folder first and published from there.

Example::

    write_text(Path(tmp) / "report.md", "# report")
    with staging(run_dir) as tmp:
        draw_everything(tmp)
        for name in names:
            publish(tmp / name, run_dir / name)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["file_mode", "publish", "rename", "staging", "write_bytes", "write_text", "write_with"]


def _umask() -> int:
    # The umask can only be read by setting it; it is put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open(path, "w")`` under the current umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def _dir_mode() -> int:
    return 0o777 & ~_umask()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move a finished file or folder *source* onto *target* in one rename, with the umask's mode.

    *source* must be on the same file system as *target* (a sibling, or inside a :func:`staging` folder beside it).
    A file replaces a file of the same name; a folder must not exist at *target* yet (a rename cannot replace a
    non-empty folder): use :func:`rename` to move the old one aside first.

    Returns:
        *target* as a ``Path``.
    """
    src, dst = Path(source), Path(target)
    if src.is_dir():
        os.chmod(src, _dir_mode())  # a staging folder is created 0700
    else:
        _fsync(src)
        os.chmod(src, file_mode())
    os.replace(src, dst)
    return dst


def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.replace``: the one rename primitive, for callers that rotate whole states (old → aside, new → in)."""
    os.replace(source, target)


def write_with(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to write a temporary file beside *path*, then publish it as *path*.

    For writers that take a path (``safetensors.torch.save_file``, ``csv`` through ``open``). The parent folder is
    created when missing. On any error the temporary file is removed and *path* is left as it was.

    Returns:
        *path* as a ``Path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        return publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write *data* to *path* atomically (see the module docstring)."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 *text* to *path* atomically (see the module docstring)."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def staging(parent: str | os.PathLike[str], prefix: str = ".tmp-") -> Iterator[Path]:
    """A temporary folder inside *parent* (created when missing), removed with whatever is left in it on exit.

    Draw several files there, then :func:`publish` each into *parent*: they appear only once all were drawn.
    """
    folder = Path(parent)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
