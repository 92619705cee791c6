"""The Optuna backend, in one import: prepare a campaign, run its workers, read its seeds.

The code lives in the modules that do each job:

- `studies.campaign`: creating a campaign's tables and studies; telling when it is complete.
- `studies.samplers`: the samplers and pruners a spec may name.
- `studies.seeds`: the seed formulas (search, confirm, samplers).
- `studies.trial`: one trial, the same for both backends: run, classify, record.
- `studies.worker`: the worker loop (search trials, then confirm runs).
- `studies.launch`: `run_campaign`, N worker processes on this machine.
"""

from __future__ import annotations

from studies.campaign import CampaignError, campaign_complete, prepare_campaign, quiet_optuna
from studies.launch import run_campaign, start_method, worker_devices
from studies.samplers import grid_space, make_pruner, make_sampler
from studies.seeds import CONFIRM_OFFSET, SEED_STRIDE, confirm_seed, sampler_seed, search_seed
from studies.storage import StorageError
from studies.trial import TRACEBACK_ATTR_LIMIT
from studies.worker import MAX_RETRY, Event, RunnerConfig, Worker

__all__ = [
    "CONFIRM_OFFSET",
    "MAX_RETRY",
    "SEED_STRIDE",
    "TRACEBACK_ATTR_LIMIT",
    "CampaignError",
    "Event",
    "RunnerConfig",
    "StorageError",
    "Worker",
    "campaign_complete",
    "confirm_seed",
    "grid_space",
    "make_pruner",
    "make_sampler",
    "prepare_campaign",
    "quiet_optuna",
    "run_campaign",
    "sampler_seed",
    "search_seed",
    "start_method",
    "worker_devices",
]
