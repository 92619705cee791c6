"""A stop (Ctrl-C, SIGTERM) whose KeyboardInterrupt Python drops still stops the worker.

Python ignores an exception raised in a finalizer or weakref callback ("Exception ignored
in ..."); a signal that lands there must not be lost, or the worker would go on with its further
signals ignored (`studies.stopping`).
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
from helpers import write_spec
from optuna.trial import TrialState

from studies.results import runs_frame
from studies.runner import RunnerConfig, Worker, prepare_campaign
from studies.spec import load_spec
from studies.stopping import check_stop, stop_on_signals

# Python reports the dropped KeyboardInterrupt ("Exception ignored in ..."): that is the case here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _SignalsWhenCollected:
    def __del__(self) -> None:
        signal.raise_signal(signal.SIGTERM)  # its KeyboardInterrupt is dropped by Python


def test_a_stop_lost_in_a_finalizer_is_raised_at_the_next_check():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        check_stop()  # nothing asked yet
        obj = _SignalsWhenCollected()
        del obj  # the handler runs inside __del__; Python prints and drops its exception
        with pytest.raises(KeyboardInterrupt):
            check_stop()
    check_stop()  # the request ends with the block
    assert signal.getsignal(signal.SIGTERM) is before


TASKS = """
import signal

import torch


class SignalsWhenCollected:
    def __del__(self):
        signal.raise_signal(signal.SIGTERM)


def train(make_optimizer, *, seed, device, options, report):
    make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    for epoch in range(options["epochs"]):
        if epoch == 1:
            obj = SignalsWhenCollected()
            del obj  # a SIGTERM whose KeyboardInterrupt is lost
        report(epoch + 1, float(epoch))
    return 0.0
"""


def test_a_worker_stops_at_the_next_report_and_puts_its_trial_back(tmp_path: Path):
    (tmp_path / "stop_tasks.py").write_text(textwrap.dedent(TASKS))
    spec = load_spec(
        write_spec(
            tmp_path,
            {
                "name": "stop",
                "workload": {
                    "name": "stop_tasks:train",
                    "metric": {"name": "val_loss", "direction": "minimize"},
                    "options": {"epochs": 3},
                },
                "optimizers": ["adam"],
                "budget": {"trials": 3},
                "sampler": "random",
                "pruner": "none",
                "confirm": {"seeds": 0},
                "device": "cpu",
            },
        )
    )
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    prepare_campaign(spec, url)
    worker = Worker(spec, RunnerConfig(storage=url))
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    runs = runs_frame(url, "stop")
    assert len(runs) == 1  # it stopped in its first trial, not after the campaign
    assert runs.loc[0, "status"] == "failed" and "interrupted" in runs.loc[0, "reason"]
    trials = worker.studies["adam"].get_trials(deepcopy=False)
    assert [t.state for t in trials][-1] == TrialState.WAITING  # queued again: resumable
    check_stop()  # a later run in this process is not stopped
