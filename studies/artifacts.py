"""The campaign's artifact store: where exported configs, report figures and checkpoints go.

Chosen like the storage: `--artifacts LOCATION`, else `$HVADAM_ARTIFACTS`, else a directory
beside a SQLite database (`runs/hvadam.db` -> `runs/hvadam-artifacts/`):

- a directory path (or `file:///path`): Optuna's `FileSystemArtifactStore`; every worker must
  see the same directory (one machine, or a shared file system);
- `s3://BUCKET`: Optuna's `Boto3ArtifactStore` (the `s3` extra installs boto3; credentials and
  endpoint come from boto3's usual environment, e.g. `AWS_ENDPOINT_URL` for MinIO).

With PostgreSQL (or any server database) there is no default: workers on other nodes would write
to different disks, so artifacts are off unless a location is given, and whatever needs them
(`artifacts: {checkpoints: true}`, `hvadam export --from-artifacts`) says so.

Artifacts are attached to the Optuna study of their optimizer, as `optuna.artifacts` does it,
so optuna-dashboard lists them on the study page and serves them for download. Files with one
natural identity (`best-<optimizer>.yaml`, a confirm seed's checkpoint) get a fixed artifact id
derived from the campaign, the optimizer and the file name (`artifact_id`): uploading again
replaces the file, and `fetch` reads it back without the database.
"""

from __future__ import annotations

import json
import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

__all__ = [
    "ARTIFACTS_ENV",
    "ArtifactsError",
    "artifact_id",
    "checkpoint_filename",
    "default_location",
    "fetch",
    "open_store",
    "resolve_artifacts",
    "upload",
    "upload_checkpoint",
]

ARTIFACTS_ENV = "HVADAM_ARTIFACTS"
# Optuna's own prefix for study and trial artifact metadata (optuna.artifacts._upload).
_META_PREFIX = "artifacts:"
_NAMESPACE = uuid.UUID("5f0c8f8e-3b0a-4d5e-9a43-6e0a1c7b2d14")


class ArtifactsError(ValueError):
    """An unusable artifact location (the message names it and what is allowed)."""


def default_location(storage: str) -> str | None:
    """The directory beside a SQLite database file; None for other databases (no default)."""
    url = make_url(storage)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database).expanduser().resolve()
    return str(path.with_name(f"{path.stem}-artifacts"))


def resolve_artifacts(
    storage: str, artifacts: str | None = None, *, required: bool = False
) -> str | None:
    """The artifact location for `storage`: `artifacts`, else $HVADAM_ARTIFACTS, else the default.

    Returns None when there is none (a server database and no location given), or raises
    `ArtifactsError` then if `required` (naming what needs it is the caller's business).
    """
    location = artifacts or os.environ.get(ARTIFACTS_ENV) or None
    if location is None:
        location = default_location(storage)
    if location is None and required:
        raise ArtifactsError(
            f"--artifacts: no artifact location for a {make_url(storage).get_backend_name()} "
            f"storage (workers on other machines would write to different disks); give "
            f"--artifacts s3://BUCKET or a directory every worker shares, or set {ARTIFACTS_ENV}"
        )
    if location is not None:
        _parse(location)  # a bad location fails here, before any run
    return location


def _parse(location: str) -> tuple[str, str]:
    """("s3", bucket) or ("file", directory)."""
    if not isinstance(location, str) or not location.strip():
        raise ArtifactsError(f"--artifacts: must be a directory or s3://BUCKET, got {location!r}")
    if location.startswith("s3://"):
        rest = location[len("s3://") :].strip("/")
        if not rest or "/" in rest:
            raise ArtifactsError(
                f"--artifacts: {location!r}: give the bucket alone, as s3://BUCKET (Optuna's "
                f"Boto3ArtifactStore keeps artifacts at the top of one bucket)"
            )
        return "s3", rest
    if location.startswith("file://"):
        return "file", location[len("file://") :]
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise ArtifactsError(
            f"--artifacts: unsupported scheme {scheme!r} in {location!r}; allowed: a directory "
            f"path, file:///path or s3://BUCKET"
        )
    return "file", location


def open_store(location: str) -> Any:
    """Optuna's artifact store for a location (the directory is created if missing)."""
    kind, where = _parse(location)
    if kind == "s3":
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise ArtifactsError(
                f"--artifacts {location}: s3:// needs boto3 (pip install 'hvadam[s3]')"
            ) from None
        from optuna.artifacts import Boto3ArtifactStore

        return Boto3ArtifactStore(where)
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(where).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(path)


def artifact_id(campaign: str, optimizer: str, filename: str) -> str:
    """The fixed artifact id of one file of one optimizer's study (a UUID, as Optuna's are)."""
    return str(uuid.uuid5(_NAMESPACE, f"{campaign}/{optimizer}/{filename}"))


def upload(
    store: Any,
    study: Any,
    file_path: str | os.PathLike[str],
    *,
    filename: str | None = None,
    fixed_id: str | None = None,
) -> str:
    """Attach a file to an Optuna study (or to each of a list of studies) as an artifact.

    The file is stored once; each study lists it. `fixed_id` (see `artifact_id`) replaces an
    earlier upload of the same file; without it the id is new, as with
    `optuna.artifacts.upload_artifact`. Returns the artifact id.
    """
    path = Path(file_path)
    name = filename or path.name
    aid = fixed_id or str(uuid.uuid4())
    mimetype, encoding = mimetypes.guess_type(name)
    if name.endswith((".yaml", ".yml")):
        mimetype = "text/yaml"
    elif name.endswith((".pt", ".pth")):
        mimetype = "application/octet-stream"  # torch.save, not whatever the OS table says
    meta = {
        "artifact_id": aid,
        "filename": name,
        "mimetype": mimetype or "application/octet-stream",
        "encoding": encoding,
    }
    with open(path, "rb") as fh:
        store.write(aid, fh)
    # The metadata Optuna and optuna-dashboard read (get_all_artifact_meta, the study page).
    for one in study if isinstance(study, (list, tuple)) else [study]:
        one._storage.set_study_system_attr(one._study_id, _META_PREFIX + aid, json.dumps(meta))
    return aid


def fetch(store: Any, aid: str, file_path: str | os.PathLike[str]) -> Path:
    """Copy one artifact out of the store (no database needed); returns the file written."""
    import shutil

    from optuna.artifacts.exceptions import ArtifactNotFound

    path = Path(file_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        reader = store.open_reader(aid)
    except ArtifactNotFound:
        raise ArtifactsError(f"artifact {aid} is not in the artifact store") from None
    with reader, open(path, "wb") as out:
        shutil.copyfileobj(reader, out)
    return path


def checkpoint_filename(optimizer: str, seed: int) -> str:
    """The file name of one confirm run's checkpoint."""
    return f"checkpoint-{optimizer}-seed{seed}.pt"


def upload_checkpoint(
    location: str,
    study: Any,
    *,
    campaign: str,
    optimizer: str,
    seed: int,
    state: dict[str, Any],
    info: dict[str, Any],
) -> str:
    """Save a confirm run's final model and optimizer state dicts to its study; returns the id.

    The file is `torch.save` of `{"format": "hvadam-checkpoint/1", **info, "model": ...,
    "optimizer_state": ...}` (`info`: the optimizer class, its hyperparameters, the seed, ...).
    """
    import tempfile

    import torch

    name = checkpoint_filename(optimizer, seed)
    payload = {
        "format": "hvadam-checkpoint/1",
        **info,
        "model": state["model"],
        "optimizer_state": state["optimizer"],
    }
    with tempfile.TemporaryDirectory(prefix="hvadam-checkpoint-") as tmp:
        path = Path(tmp) / name
        torch.save(payload, path)
        return upload(
            open_store(location), study, path, fixed_id=artifact_id(campaign, optimizer, name)
        )
