"""Run directories on a local disk or in a bucket (gs://, s3://): `etils.epath`, the path layer Orbax uses.

A bucket has no appends, no atomic directory renames and no local files for libraries that need
them (safetensors, tokenizers, TFDS builds). This module holds those differences, so the rest of
the trainer writes `run_dir / "name"` whatever the run directory is:
- `as_path` keeps `gs://bucket/x` intact (pathlib would fold it into `gs:/bucket/x`);
- `write_text_atomic`: temp file + rename on a disk; a single object upload, atomic by itself, in a bucket;
- `local_copy` / `upload_dir`: a folder moved between a bucket and a local temp folder;
- `local_cache`: where a remote run keeps what must sit on a local disk and can be rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from etils import epath

PathLike = str | os.PathLike

# Set to choose the local folder of remote runs' rebuildable files (warm start, dataset builds).
LOCAL_CACHE_ENV = "RLVR_JAX_LOCAL_CACHE"


def as_path(path: PathLike) -> epath.Path:
    """A local path (made absolute) or a bucket URL, as an epath.Path."""
    return epath.Path(path) if is_remote(path) else epath.Path(Path(path).absolute())


def is_remote(path: PathLike) -> bool:
    return "://" in os.fspath(path)


class StorageError(OSError):
    """A run directory that cannot be written; the message names it and what to check."""


def ensure_writable(folder: epath.Path, what: str = "run directory") -> None:
    """Create `folder` and write + delete a probe file in it, so a missing bucket, missing
    credentials or a read-only folder stop a run before any work, with the fix in the message."""
    probe = folder / f".rlvr-jax-write-check-{socket.gethostname()}-{os.getpid()}"  # one per process of a slice
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except Exception as err:  # - gcsfs / google-auth / OS errors all mean "cannot write here"
        raise StorageError(
            f"cannot write to the {what} {folder} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}): {write_hint(folder)}"
        ) from err


def write_hint(folder: PathLike, *more: PathLike) -> str:
    """What to check when `folder` (and `more`) cannot be written: the fix part of a one-line error."""
    if is_remote(folder):
        return (
            "check that the bucket exists and that this machine's credentials may write to it "
            "(`gcloud auth application-default login`, or the VM / pod service account)"
        )
    names = " and ".join(os.fspath(f) for f in (folder, *more))
    return f"check that this user may write to {names} (permissions, owner, a read-only mount)"


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Replace a file's contents all at once: readers and a killed writer never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        path.write_text(text)  # one object upload: the old object stays until the new one is complete
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def local_copy(folder: PathLike) -> Iterator[Path]:
    """A local folder with `folder`'s files (itself when it is local; a temp download from a bucket)."""
    if not is_remote(folder):
        yield Path(folder)
        return
    with tempfile.TemporaryDirectory(prefix="rlvr-jax-") as tmp:
        source = epath.Path(folder)
        if not source.is_dir():
            raise FileNotFoundError(f"{folder} does not exist")
        for item in source.iterdir():
            if not item.is_dir():
                item.copy(epath.Path(tmp) / item.name)
        yield Path(tmp)


def upload_dir(local: Path, dest: epath.Path) -> None:
    """Copy a local folder's files (one level) to `dest`, each file one object."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(local.iterdir()):
        if item.is_file():
            epath.Path(item).copy(dest / item.name, overwrite=True)


def local_cache(run_dir: epath.Path, name: str) -> Path:
    """`run_dir/name` for a local run; for a remote one, a local folder keyed by the run directory."""
    if not is_remote(run_dir):
        return Path(run_dir) / name
    root = Path(os.environ.get(LOCAL_CACHE_ENV) or Path.home() / ".cache" / "rlvr-jax")
    key = hashlib.sha256(os.fspath(run_dir).encode()).hexdigest()[:12]
    return root / f"{epath.Path(run_dir).name}-{key}" / name
