"""The one rule for the result files a run writes: atomically, or not at all.

Every file besides checkpoints (`predictions.json`, `eval_metrics.json`, `config.json`, GLUE
submission TSVs, the kept `vocab.txt`, ...) goes through here. The text is written to a temporary
file in the same directory, flushed and fsync'ed, then renamed over the target with `os.replace`.
A reader, or a rerun after a crash or a full disk, therefore sees the old file or the new one,
never an empty or half-written one. On any error the temporary file is removed and the error
propagates; the old file, if any, is left as it was.

Text is UTF-8 with `\\n` line ends on every platform, so the files are byte-identical everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["copy_file", "open_for_write", "write_json", "write_lines", "write_text"]

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def open_for_write(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
  """Yields a file to write `path`'s new content to; it replaces `path` only if the block succeeds.

  For writers that stream (csv writers, line by line). The file is a temporary one next to
  `path` (same directory, so the rename stays on one file system and is atomic).

  Args:
    path: The file to (re)write.
    mode: "w" (text: UTF-8, `\\n` line ends) or "wb" (bytes).

  Yields:
    The open temporary file.

  Raises:
    ValueError: `mode` is neither "w" nor "wb".
    OSError: writing, syncing or renaming failed (a full disk, ...); `path` is unchanged.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  # A unique hidden name, so concurrent writers of one path never share a temporary file and
  # directory listings (glob("*.json")) do not pick it up.
  tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
  # os.open rather than tempfile.mkstemp: mkstemp creates the file 0600, while the file must get
  # the permissions open(path, "w") would give it (0666 less the umask).
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    try:
      f = os.fdopen(fd, mode, **text)
    except BaseException:
      os.close(fd)
      raise
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  fsync_directory(directory)


def write_text(path: PathLike, text: str) -> None:
  """Writes `text` to `path` atomically (UTF-8, `\\n` line ends)."""
  with open_for_write(path) as f:
    f.write(text)


def write_lines(path: PathLike, lines: Iterable[str]) -> None:
  """Writes `lines` to `path` atomically, each followed by `\\n`."""
  write_text(path, "".join(f"{line}\n" for line in lines))


def write_json(path: PathLike, value: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
  """Writes `value` to `path` atomically as indented JSON followed by a newline."""
  write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def copy_file(source: PathLike, destination: PathLike) -> None:
  """Copies `source`'s bytes to `destination` atomically."""
  with open(source, "rb") as src, open_for_write(destination, "wb") as dst:
    shutil.copyfileobj(src, dst)


def fsync_directory(path: str) -> None:
  """Makes renames in directory `path` durable (a no-op where directories cannot be opened)."""
  # Some file systems cannot open directories, which is harmless (the files are already synced).
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
