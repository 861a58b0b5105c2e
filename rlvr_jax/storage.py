"""Run directories on a local disk or in a bucket (gs://, s3://): `etils.epath`, the path layer Orbax uses.

A bucket has no appends, no atomic directory renames and no local files for libraries that need
them (safetensors, tokenizers, TFDS builds). This module holds those differences, so the rest of
the trainer writes `run_dir / "name"` whatever the run directory is:
- `as_path` keeps `gs://bucket/x` intact (pathlib would fold it into `gs:/bucket/x`);
- `write_text_atomic`: temp file + rename on a disk; a single object upload, atomic by itself, in a bucket;
- `local_copy` / `upload_dir`: a folder moved between a bucket and a local temp folder;
- `local_cache`: where a remote run keeps what must sit on a local disk and can be rebuilt;
- `resolve_model_path`: a Hugging Face Hub model id (`owner/name`) as its folder in the HF cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
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
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the writer's own: two processes may store one file
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


def download_files(pattern: str, into: Path) -> list[Path]:
    """Local copies of the bucket files matching `pattern` (a URL, `*` allowed in its last part), in
    sorted order, downloaded once into `into` (a copy appears under its name only when complete)."""
    url = epath.Path(pattern)
    matches = sorted(url.parent.glob(url.name), key=str) if any(ch in url.name for ch in "*?[") else [url]
    if not matches or not matches[0].exists():
        raise FileNotFoundError(f"no file matches {pattern}")
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for remote in matches:
        local = into / hashlib.sha1(str(remote).encode()).hexdigest()[:16] / remote.name
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(local.name + ".partial")
            remote.copy(epath.Path(partial), overwrite=True)
            partial.rename(local)
        out.append(local)
    return out


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


# A Hub model id: owner/name, one slash, no leading '.', '/' or '~' (those are local paths).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What a model folder needs (config, weights, tokenizer, chat template), at the repository's top level:
# not the other formats' copies (pytorch_model.bin, onnx/, gguf) many model repositories also hold.
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer.model"]


class ModelSourceError(ValueError):
    """A model path that is neither a folder nor a downloadable Hub model; the message says what to do."""


def resolve_model_path(path: PathLike) -> PathLike:
    """`path` itself, unless it is a Hugging Face Hub model id (`owner/name`, and no local path of
    that name exists): then its snapshot folder in the HF cache, downloaded there once."""
    return _hub_snapshot(os.fspath(path)) if is_hub_id(path) else path


def is_hub_id(path: PathLike) -> bool:
    """Whether `path` names a Hugging Face Hub model (`owner/name`, and no local path of that name exists)."""
    text = os.fspath(path)
    return not is_remote(text) and not Path(text).exists() and bool(_HUB_ID.fullmatch(text))


@functools.cache  # one download check per process and model, however many loaders ask
def _hub_snapshot(repo_id: str) -> str:
    """Process 0 downloads while the others wait at a barrier; then they read the cache (or, on a host
    with a disk of its own, download too). Process 0 reaches the barrier even when it fails, so the
    others are never left waiting: they try in turn and, offline, meet the same one-line error."""
    import jax

    several = jax.distributed.is_initialized() and jax.process_count() > 1
    if several and jax.process_index() != 0:
        _barrier(repo_id)
        return _download(repo_id)
    try:
        return _download(repo_id)
    finally:
        if several:
            _barrier(repo_id)


def _barrier(repo_id: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"rlvr_jax_hub_download_{repo_id}")


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return snapshot_download(repo_id, allow_patterns=_HUB_FILES, ignore_patterns=["*/*"])
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"{repo_id}: no such folder, and the Hugging Face Hub cannot be reached (or HF_HUB_OFFLINE=1) with "
            "no cached copy; download or import the model and pass its folder (a GGUF file: "
            "rlvr-jax import-gguf FILE.gguf --out DIR)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"{repo_id}: no such folder, and no Hugging Face Hub model of that name "
            "(private or gated models need `hf auth login`)"
        ) from None
    except HfHubHTTPError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelSourceError(
            f"{repo_id}: no such folder, and downloading it from the Hugging Face Hub failed ({reason})"
        ) from None
