"""The Ray Tune backend: a campaign's search phase as Ray Tune runs, then its confirm phase on Ray.

`hvadam tune SPEC --backend ray [--address auto|HOST:PORT]` runs the same campaign as the Optuna
backend, in the same storage:

- search: one Tune run for the whole campaign. Its searcher hands each new trial to the
  optimizer with the fewest trials (optimizers advance together) and samples it with Ray's
  `OptunaSearch` on that optimizer's study `<campaign>/<optimizer>` in the campaign's storage
  (define-by-run with the optimizer's search space; the enqueued default config is trial 0),
  so optuna-dashboard shows the trials as they run. The scheduler (ASHA by default, PBT or
  FIFO) is one per optimizer: trials compete only with trials of the same optimizer, and PBT
  never copies one optimizer's state into another's trial.
- each trial runs in a Ray worker with the runner's trial execution and recording: the same
  `hvadam_runs` and `hvadam_curves` rows as the Optuna backend, with the same seeds; torch
  threads per trial equal its CPUs, and workers are reused from trial to trial.
- a trial that the scheduler ends early is not a full-budget result: its run row has status
  `stopped` (reason `asha: ...` or `pbt: ...`), its Optuna trial is PRUNED (with user attrs
  `stopped_by` and `stopped_at_epoch`), so neither the comparison nor the best config (which
  the confirm phase re-runs) ever uses it. A PBT trial that copied another trial's state is
  recorded the same way: its value belongs to a schedule of configs, not to its params.
- confirm: once an optimizer's search is done, its confirm runs follow as trials of the same
  Tune run, each the runner's confirm step (claims in the database: each seed exactly once,
  whoever runs it); any left open afterwards run as Ray tasks.
- a trial lost with its Ray worker, or left running by an interrupted driver, is failed and
  queued again with the same params and seed (one Ray driver works on a campaign at a time).

Without an address a local Ray is started for the command (sized to the machine) and shut
down after; with one, the command joins a running cluster. Ray is set up as the project needs:
a local Ray bound to 127.0.0.1 (`RAY_AUTH_MODE=disabled` unless set; a cluster keeps its
token authentication), its own temporary directory, no change of working
directory per trial (`RAY_CHDIR_TO_TRIAL_DIR=0`), and torch threads per trial equal to its CPUs.
The storage URL reaches the trials as a Python argument (never in a trial config, which Ray
prints and stores); Ray's experiment directory, which holds pickled state, is a temporary
directory removed after the run.

Modules: `session` (Ray itself), `searchers` (the campaign's and each study's searcher),
`scheduler` (one Tune scheduler per optimizer), `trial` (what runs in a Ray worker: the shared
trial path of `studies.trial`, reported to Tune), `driver` (`run_campaign_ray`).
"""

from studies.ray_backend.driver import run_campaign_ray
from studies.ray_backend.scheduler import pbt_mutations
from studies.ray_backend.session import (
    RAY_DEFAULT_ENV,
    RAY_ENV,
    RAY_STORAGE_ENV,
    RayError,
    ray_session,
    set_ray_env,
)

__all__ = [
    "RAY_DEFAULT_ENV",
    "RAY_ENV",
    "RAY_STORAGE_ENV",
    "RayError",
    "pbt_mutations",
    "ray_session",
    "run_campaign_ray",
    "set_ray_env",
]
