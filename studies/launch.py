"""Running a campaign with N worker processes on this machine (the Optuna backend's `tune`).

Worker 0 runs in this process. On the CPU (Linux) workers 1..N-1 are forked from it once the
campaign is prepared (`multiprocessing`'s fork context), so they share its imports and loaded
data set; with CUDA, or `HVADAM_WORKER_START=spawn`, they are new `hvadam worker` processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from studies.artifacts import ARTIFACTS_ENV
from studies.campaign import CampaignError, campaign_complete, prepare_campaign
from studies.spec import CampaignSpec
from studies.storage import STORAGE_ENV, close_pooled_connections
from studies.worker import Event, RunnerConfig, Worker, check_device

__all__ = ["check_workers", "max_workers", "run_campaign", "start_method", "worker_devices"]


def max_workers() -> int:
    """The most worker processes one `tune` starts on this machine: four per core (at least 8).

    More only wait on each other for the cores and the database; more machines join a
    campaign with `hvadam worker`.
    """
    return max(8, 4 * (os.cpu_count() or 1))


def check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise CampaignError(f"--workers must be an integer >= 1, got {workers!r}")
    if workers > max_workers():
        raise CampaignError(
            f"--workers {workers} is more than this machine can run ({max_workers()}: four per "
            f"core); start `hvadam worker` on other machines to add more"
        )


def worker_devices(spec: CampaignSpec, workers: int, device: str | None) -> list[dict[str, str]]:
    """Per-worker environment: one GPU each (round robin) when using CUDA, else nothing."""
    wanted = device or spec.device
    if wanted not in ("auto", "cuda"):
        return [{} for _ in range(workers)]
    import torch

    if not torch.cuda.is_available():
        return [{} for _ in range(workers)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible
        else [str(i) for i in range(torch.cuda.device_count())]
    )
    return [{"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]} for i in range(workers)]


def start_method(cuda: bool) -> str:
    """How `run_campaign` starts workers 1..N-1: "fork" or "spawn" (`hvadam worker`).

    Fork for CPU workers on Linux when this process runs no other Python thread (a forked
    child would inherit the locks those threads hold); spawn for CUDA, which does not survive
    a fork, and wherever `HVADAM_WORKER_START=spawn` asks for it.
    """
    wanted = os.environ.get("HVADAM_WORKER_START") or "fork"
    if wanted not in ("fork", "spawn"):
        raise CampaignError(f"HVADAM_WORKER_START must be 'fork' or 'spawn', got {wanted!r}")
    # Linux only: macOS's system frameworks are not safe in a forked child.
    forkable = sys.platform.startswith("linux") and threading.active_count() == 1
    return "fork" if wanted == "fork" and forkable and not cuda else "spawn"


def _prepare_for_fork(spec: CampaignSpec) -> None:
    """Do once here what every forked worker would otherwise repeat; close database connections."""
    import torch._dynamo  # noqa: F401 - torch.optim imports it at the first optimizer: ~2 s

    # The data set, read once and shared copy-on-write. A missing one is left to fail each run
    # with its own clear error, as without forking.
    with contextlib.suppress(Exception):
        spec.build_workload().prepare()
    close_pooled_connections()


class _ForkedWorker:
    """A worker process forked from this one, with `Popen`'s `poll`/`wait`/`terminate`/`kill`.

    CPU workers start this way: a fork shares the imports and the loaded data set and starts in
    milliseconds, where a new interpreter spends seconds importing torch and reading the data.
    CUDA workers are new processes (`hvadam worker`), since CUDA does not survive a fork.
    """

    def __init__(self, spec: CampaignSpec, config: RunnerConfig) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        name = f"hvadam-worker-{config.worker_index}"
        self._process = context.Process(target=_forked_main, args=(spec, config), name=name)
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
        return code

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


def _forked_main(spec: CampaignSpec, config: RunnerConfig) -> None:
    # multiprocessing leaves the child with os._exit (no atexit handlers of the parent); an
    # interrupted worker exits with 130, as a shell reports Ctrl-C.
    try:
        Worker(spec, config).run()
    except KeyboardInterrupt:
        sys.exit(130)


def run_campaign(
    spec: CampaignSpec,
    config: RunnerConfig,
    *,
    workers: int = 1,
    spec_arg: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    poll: Callable[[], None] | None = None,
) -> None:
    """Prepare the campaign, then run it with `workers` processes until it is complete.

    Worker 0 runs in this process. On the CPU (Linux), workers 1..N-1 are forked from it once
    the campaign is prepared, and each gets an equal share of the cores (torch threads); set
    `HVADAM_WORKER_START=spawn` to start them as `hvadam worker` subprocesses instead. With
    CUDA they are always such subprocesses (the storage URL is passed in the environment,
    never on a command line), each on its own GPU (round robin over the visible ones). `poll`
    is called after this process's runs and while it waits (the progress display reads the
    other workers' runs from the database then).
    """
    check_workers(workers)
    check_device(config.device or spec.device, what="--device" if config.device else "device")
    prepare_campaign(spec, config.storage)
    if workers == 1:
        Worker(spec, config, on_event=on_event).run()
        return
    envs = worker_devices(spec, workers, config.device)
    threads = config.threads
    if threads is None and not envs[0]:
        threads = max(1, (os.cpu_count() or 1) // workers)

    def on_parent_event(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        if poll is not None:
            poll()

    procs: list[_ForkedWorker | subprocess.Popen[bytes]] = []
    fork = start_method(cuda=bool(envs[0])) == "fork"
    if fork:
        _prepare_for_fork(spec)
    try:
        # This process is worker 0 (it has paid for its imports already); 1..N-1 are children.
        for i in range(1, workers):
            if fork:
                child = replace(config, worker_index=i, threads=threads)
                procs.append(_ForkedWorker(spec, child))
                continue
            env = dict(os.environ)
            env.update(envs[i])
            env[STORAGE_ENV] = config.storage
            if config.artifacts:
                env[ARTIFACTS_ENV] = config.artifacts
            cmd = [
                sys.executable,
                "-m",
                "studies.cli",
                "worker",
                spec_arg or spec.source,
                "--worker-index",
                str(i),
                "--heartbeat-interval",
                str(config.heartbeat_interval),
                "--grace-period",
                str(config.grace_period),
                "--quiet",
            ]
            if threads:
                cmd += ["--threads", str(threads)]
            if envs[i]:
                cmd += ["--device", "cuda"]
            elif config.device:
                cmd += ["--device", config.device]
            procs.append(subprocess.Popen(cmd, env=env))
        # Within this process the visible GPUs keep their order: its own is the first one.
        own = replace(
            config,
            worker_index=0,
            threads=threads,
            device="cuda:0" if envs[0] else config.device,
        )
        Worker(spec, own, on_event=on_parent_event, on_idle=poll).run()
        while any(p.poll() is None for p in procs):
            if poll is not None:
                poll()
            time.sleep(0.2)
        if poll is not None:
            poll()
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    failed = [(i, p.returncode) for i, p in enumerate(procs, start=1) if p.returncode != 0]
    if failed and not campaign_complete(spec, config.storage):
        detail = ", ".join(f"worker {i} exited with code {rc}" for i, rc in failed)
        raise CampaignError(
            f"campaign {spec.name!r} is incomplete: {detail}; run the same command again to "
            f"continue"
        )
