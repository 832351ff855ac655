"""Atomic file output: write to a temporary file beside the target, then rename (on object
storage: one upload when the block ends, see fileio)."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

from nerve_jax import fileio


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import (os.umask can only be read by setting it, which threads could observe).
_FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Opens a temporary file next to `path`; renames it onto `path` only on success.

    On any exception the temporary file is removed and `path` is left as it was,
    so no half-written file ever looks finished. A remote `path` (gs://...) is uploaded as one
    object when the block ends without an exception.
    """
    path = os.fspath(path)
    if fileio.is_remote(path):
        with fileio.remote_upload(path, mode, **kwargs) as f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600; give what open() would.
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
