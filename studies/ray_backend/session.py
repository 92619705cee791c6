"""Ray itself for one command: the environment the project needs, and starting or joining Ray."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from studies.campaign import CampaignError
from studies.storage import mask_text

__all__ = [
    "LABEL_KEY",
    "METRIC",
    "PHASE_KEY",
    "RAY_DEFAULT_ENV",
    "RAY_ENV",
    "RAY_LOCAL_ENV",
    "RAY_STORAGE_ENV",
    "STATE_FILE",
    "RayError",
    "ray_session",
    "set_ray_env",
]

# What the project needs from Ray on every node (see the package docstring).
RAY_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # Results live in the campaign database; Tune's per-trial CSV/JSON/TensorBoard files and
    # its warnings about them are not needed.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
# A local Ray (no address): only this machine's processes talk to it. It listens on the loopback
# interface only (Ray's switch for a one-machine Ray, off by default on Linux, where Ray binds
# every interface), so no token is needed. A cluster is set up by its own scripts
# (studies/cluster), with Ray's token authentication on.
RAY_LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RAY_DEFAULT_ENV = {"RAY_AUTH_MODE": "disabled", **RAY_LOCAL_ENV}
# Where Ray Tune keeps experiment state; a shared directory is needed for PBT on many nodes.
RAY_STORAGE_ENV = "HVADAM_RAY_STORAGE"

# What the driver and the trials agree on: the keys of a trial's config and reports.
METRIC = "objective"  # the key trials report their objective under (a workload metric may clash)
LABEL_KEY = "hvadam_optimizer"  # the config key naming a trial's optimizer (its study)
PHASE_KEY = "hvadam_phase"  # search | confirm
STATE_FILE = "state.pt"  # a PBT checkpoint's file


class RayError(CampaignError):
    """Ray cannot be started or joined, or a Ray run cannot go on."""


def set_ray_env(*, local: bool = True) -> None:
    """Set what the project needs from Ray in this process's environment (before `import ray`).

    `local`: a Ray started here for one command, bound to the loopback interface; a joined
    cluster keeps its own authentication settings.
    """
    if local:
        for key, value in RAY_DEFAULT_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.update(RAY_LOCAL_ENV)
    os.environ.update(RAY_ENV)
    # Ctrl-C interrupts the command (trials left running are failed and retried by the next
    # run), instead of Tune's graceful stop, which would go on to the confirm phase.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's console tables would interleave with the project's own progress lines.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    import logging

    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start Ray's processes bound to 127.0.0.1 (see `RAY_LOCAL_ENV`).

    Ray reads its switch when `ray` is first imported, which may have happened before
    `set_ray_env` (importing this package imports Ray); its module constant is set for the
    start too. The processes Ray starts read the environment variable.
    """
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is not None:
            ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def ray_session(
    *, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[dict[str, float]]:
    """Ray for one command: join `address`, or start a local Ray sized to the machine.

    A Ray already initialised in this process (a test's) is used as it is and left running.
    Yields the cluster's resources (`CPU`, `GPU`, ...).
    """
    set_ray_env(local=not address)
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    temp_dir = None
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="ERROR",
        runtime_env={"env_vars": {**(RAY_DEFAULT_ENV if not address else {}), **RAY_ENV}},
    )
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A short path: Ray's socket names must fit in 107 bytes.
            temp_dir = tempfile.mkdtemp(
                prefix="hvray-", dir="/tmp" if os.path.isdir("/tmp") else None
            )
            with _loopback_only():
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=temp_dir, **kwargs)
    except Exception as exc:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise RayError(f"cannot start or join {where}: {mask_text(str(exc).strip())}") from None
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
