"""User-given paths, local or on object storage (`gs://bucket/...`), behind one small layer.

Every path a user gives (workdir, tfds_data_dir, kaggle_dir and the zips in it, predict --out)
goes through these functions. Local paths use the operating system directly; remote ones go
through `etils.epath` and its TensorFlow backend (`tf.io.gfile`), the layer TFDS and orbax use
themselves, so one set of credentials and settings serves the whole program.

Atomic writes (`atomic.atomic_open`) stay atomic: locally by rename, remotely because the
content is uploaded as one object when the block ends, and an object store shows an object
only once its upload is complete. Object stores have no append; `append_text` rewrites the
object.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import IO

from nerve_jax.errors import UserError

REMOTE_SCHEMES = ("gs://", "s3://")


def is_remote(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(REMOTE_SCHEMES)


def _epath(path: str | os.PathLike):
    from etils import epath

    return epath.Path(os.fspath(path))


def join(path: str | os.PathLike, *parts: str) -> str:
    path = os.fspath(path)
    if is_remote(path):
        return "/".join([path.rstrip("/"), *parts])
    return os.path.join(path, *parts)


def dirname(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path.rstrip("/").rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def basename(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def absolute(path: str | os.PathLike) -> str:
    """Local paths made absolute (with ~ expanded); remote ones as given."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def isdir(path: str | os.PathLike) -> bool:
    return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def makedirs(path: str | os.PathLike) -> None:
    if is_remote(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names in a folder (FileNotFoundError / NotADirectoryError as os.listdir raises them)."""
    if not is_remote(path):
        return os.listdir(path)
    folder = _epath(path)
    if not folder.is_dir():
        raise (NotADirectoryError if folder.exists() else FileNotFoundError)(
            f"{path}: no such folder")
    return [child.name for child in folder.iterdir()]


def getsize(path: str | os.PathLike) -> int:
    return _epath(path).stat().length if is_remote(path) else os.path.getsize(path)


def remove(path: str | os.PathLike) -> None:
    """Deletes a file; FileNotFoundError when there is none."""
    if is_remote(path):
        target = _epath(path)
        if not target.exists():
            raise FileNotFoundError(f"{path}: no such file")
        target.unlink()
    else:
        os.remove(path)


def open(path: str | os.PathLike, mode: str = "r", **kwargs) -> IO:  # noqa: A001
    """The built-in open for local paths; for remote ones, TensorFlow's GFile (the file object
    behind epath's own `open`, returned itself so that it can stay open: seekable for reading,
    as zip archives need)."""
    if not is_remote(path):
        import builtins

        return builtins.open(path, mode, **kwargs)
    if "a" in mode:
        raise ValueError(f"{path}: object storage has no append; use append_text")
    if "r" in mode and not _epath(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    import tensorflow as tf

    return tf.io.gfile.GFile(os.fspath(path), mode)


def read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    with open(path) as f:
        return f.read()


def append_text(path: str | os.PathLike, text: str) -> None:
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    old = read_text(path) if isfile(path) else ""
    with open(path, "w") as f:
        f.write(old + text)


@contextlib.contextmanager
def remote_upload(path: str, mode: str, **kwargs) -> Iterator[IO]:
    """A local buffer whose content becomes the object at `path` when the block ends without
    an exception (one upload, so readers see the old object or the whole new one)."""
    import io

    binary = "b" in mode
    buffer = io.BytesIO() if binary else io.StringIO(newline=kwargs.get("newline"))
    yield buffer
    data = buffer.getvalue()
    with _epath(path).open("wb") as f:
        f.write(data if binary else data.encode(kwargs.get("encoding") or "utf-8"))


def remote_hint(path: str | os.PathLike) -> str:
    """What to check when a remote path fails: credentials, then the bucket."""
    if not os.fspath(path).startswith("gs://"):
        return ""
    bucket = os.fspath(path)[len("gs://"):].split("/", 1)[0]
    return (f"; check that gs://{bucket} exists and that this machine has credentials for it "
            "(`gcloud auth application-default login`, a service account's "
            "GOOGLE_APPLICATION_CREDENTIALS, or on Colab "
            "`google.colab.auth.authenticate_user()`)")


def _bucket(path: str | os.PathLike) -> str:
    scheme, rest = os.fspath(path).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def check_bucket(path: str | os.PathLike, what: str) -> None:
    """For a remote path, UserError unless its bucket can be reached: checked first, because
    TensorFlow's GCS file system retries without end when creating folders in a bucket that
    does not exist."""
    if not is_remote(path):
        return
    bucket = _bucket(path)
    try:
        found = _epath(bucket).exists()
    except Exception as e:  # tf.errors.* (no credentials, no network), OSError
        raise UserError(f"{path}: {what} cannot be reached ({_reason(e)}){remote_hint(path)}") \
            from None
    if not found:
        raise UserError(f"{path}: {what}: no bucket {bucket} (or no access to it)"
                        f"{remote_hint(path)}")


def check_folder(path: str | os.PathLike, what: str) -> None:
    """UserError naming `path` unless it is a folder that can be read."""
    check_bucket(path, what)
    try:
        found = isdir(path)
    except Exception as e:
        if not is_remote(path) and not isinstance(e, OSError):
            raise
        raise UserError(f"{path}: {what} cannot be read ({_reason(e)}){remote_hint(path)}") \
            from None
    if not found:
        raise UserError(f"{path or '(empty)'}: {what} not found")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """UserError naming `path` unless the folder can be created and written to."""
    import tempfile

    check_bucket(path, what)
    try:
        makedirs(path)
        if is_remote(path):
            probe = join(path, ".nerve_jax_write_check")
            with open(probe, "wb") as f:
                f.write(b"")
            remove(probe)
        else:
            with tempfile.NamedTemporaryFile(dir=path):
                pass
    except Exception as e:  # Remote file systems raise their own types (tf.errors, ...).
        if not is_remote(path) and not isinstance(e, OSError):
            raise
        raise UserError(f"{path}: {what} cannot be written ({_reason(e)}){remote_hint(path)}") \
            from None
