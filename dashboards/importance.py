"""Hyperparameter importances of a campaign's studies (PED-ANOVA via Optuna), optionally computed
in a second process while the report draws everything else.

Importing `optuna.importance` pulls in scikit-learn and scipy.stats (its fANOVA evaluator), which
costs seconds before any work; `ImportancesInBackground` starts that import and the computation
in a spawned process at the beginning of a report (opt-in: `write_report(...,
background_importances=True)`), so it overlaps with reading the database and drawing; that pays
off only where a CPU core is idle. The child reads only Optuna's tables of the campaign's studies.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = [
    "IMPORTANCE_MIN_TRIALS",
    "IMPORTANCE_RELIABLE_TRIALS",
    "ImportancesInBackground",
    "campaign_importances",
    "study_importances",
]

IMPORTANCE_MIN_TRIALS = 2
IMPORTANCE_RELIABLE_TRIALS = 10

Result = dict[str, tuple[dict[str, float], str]]  # label -> (importances, note or reason)


def study_importances(study: Any) -> tuple[dict[str, float], str]:
    """PED-ANOVA importances over the study's completed trials, with a note; ({}, why) if none."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < IMPORTANCE_MIN_TRIALS:
        return {}, (
            f"{len(complete)} completed search trial(s); importances need at least "
            f"{IMPORTANCE_MIN_TRIALS}"
        )
    # Only parameters that every trial sampled (conditional ones are missing from some) and that
    # took more than one value can be scored.
    common = set(complete[0].params)
    seen: dict[str, set[str]] = {}
    for t in complete:
        common &= set(t.params)
        for k, v in t.params.items():
            seen.setdefault(k, set()).add(repr(v))
    params = sorted(k for k in common if len(seen[k]) > 1)
    if not params:
        return {}, "no hyperparameter varied across its completed trials"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        tmp = optuna.create_study(direction=study.direction)
        tmp.add_trials(complete)
        with warnings.catch_warnings():
            # "some regimes have less than 2 trials": said once, below, as a note on the count
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(
                tmp, evaluator=PedAnovaImportanceEvaluator(), params=params
            )
    except (RuntimeError, ValueError) as exc:
        return {}, f"importances could not be computed ({exc})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    note = ""
    if len(complete) < IMPORTANCE_RELIABLE_TRIALS:
        note = f"only {len(complete)} completed trials: read these importances as noise"
    return {str(k): float(v) for k, v in imp.items()}, note


def campaign_importances(storage: str, campaign: str) -> Result:
    """Importances of every Optuna study of `campaign` (found by its user attrs), by label."""
    from studies.api import campaign_studies

    with campaign_studies(storage, campaign) as studies:
        return {label: study_importances(study) for label, study in studies.items()}


class ImportancesInBackground:
    """`campaign_importances` in a spawned process; `result()` waits for it.

    Falls back to computing in this process when a process cannot be started.
    """

    def __init__(self, storage: str, campaign: str) -> None:
        self.storage = storage
        self.campaign = campaign
        self._future: Any = None
        self._pool: Any = None
        try:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent may hold threads (a browser driver, a server) and
            # database connections that a forked child must not inherit.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            self._future = self._pool.submit(campaign_importances, storage, campaign)
        except (OSError, ImportError, RuntimeError):
            self._shutdown()

    def cancel(self) -> None:
        """Stop waiting for the result (the child finishes on its own and exits)."""
        self._future = None
        self._shutdown()

    def _shutdown(self, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def result(self) -> Result:
        try:
            if self._future is not None:
                try:
                    return self._future.result()
                except Exception:  # a broken child: compute here, so errors surface normally
                    pass
            return campaign_importances(self.storage, self.campaign)
        finally:
            # The child is done (or broken): wait for it, so that no thread is left behind.
            self._shutdown(wait=True)
