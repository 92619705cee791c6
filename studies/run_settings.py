"""How workers run: the settings that are not part of a campaign's spec (so not of its hash),
checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from studies.campaign import CampaignError

__all__ = ["MAX_RETRY", "RunnerConfig", "check_device", "check_run_settings", "resolve_device"]

MAX_RETRY = 3


def check_run_settings(
    *,
    heartbeat_interval: int,
    grace_period: int,
    threads: int | None = None,
    device: str | None = None,
) -> None:
    """Refuse settings no worker can run with; the message names the command-line flag.

    A grace period of at most two heartbeat intervals would let a worker declare a live
    neighbour lost between two of its heartbeats, and the two would take a run from each other
    forever: the grace period must exceed twice the interval.
    """
    from studies.spec import DEVICE_RE

    for flag, value in (
        ("--heartbeat-interval", heartbeat_interval),
        ("--grace-period", grace_period),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CampaignError(f"{flag} must be a whole number of seconds >= 1, got {value!r}")
    if grace_period <= 2 * heartbeat_interval:
        raise CampaignError(
            f"--grace-period {grace_period} must be more than twice --heartbeat-interval "
            f"{heartbeat_interval} (a live worker would otherwise be taken for a lost one); "
            f"use --grace-period {2 * heartbeat_interval + 1} or more"
        )
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise CampaignError(f"--threads must be an integer >= 1, got {threads!r}")
    if device is not None and (not isinstance(device, str) or not DEVICE_RE.fullmatch(device)):
        raise CampaignError(f"--device must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}")


def check_device(device: str, *, what: str = "device") -> None:
    """Refuse a device this machine does not have (`cuda` without CUDA, `cuda:3` of two GPUs)."""
    if device in ("auto", "cpu"):
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CampaignError(
                f"{what} {device!r}: CUDA is not available on this machine; use cpu or auto"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise CampaignError(
                f"{what} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise CampaignError(f"{what} 'mps': MPS is not available on this machine; use cpu or auto")


@dataclass
class RunnerConfig:
    """How workers run (not part of the spec, so not part of its hash)."""

    storage: str
    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial
    grace_period: int = 60  # seconds without heartbeat before a trial counts as lost
    max_retry: int = MAX_RETRY
    device: str | None = None  # overrides the spec's device
    threads: int | None = None  # torch threads per worker (CPU)
    worker_index: int | None = None
    poll_interval: float = 0.5
    # The artifact store (studies.artifacts); None: $HVADAM_ARTIFACTS, else beside SQLite.
    artifacts: str | None = None

    def __post_init__(self) -> None:
        check_run_settings(
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            threads=self.threads,
            device=self.device,
        )


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
