"""The one trial path both backends share (studies/trial.py): run, classify, record."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import optuna
import pytest
import torch

from search_spaces import load_space
from studies.results import ResultsDB, curves_frame, runs_frame
from studies.seeds import sampler_seed
from studies.trial import TRACEBACK_ATTR_LIMIT, record, run_trial, trial_user_attrs
from studies.workloads import Diverged, EpochReport, RunResult, Workload

SECRET = "postgresql+psycopg://hv:s3cret-pw@db.example:5432/hv"


class Scripted(Workload):
    """A one-parameter workload that ends the way its `ending` says (after two epochs)."""

    metric: ClassVar[str] = "loss"
    direction: ClassVar[str] = "minimize"

    def __init__(self, ending: str) -> None:
        self.ending = ending
        super().__init__("scripted")

    def _configure(self) -> None:
        self.max_epochs = 2

    def run(self, make_optimizer: Any, *, seed: int, device: str = "cpu", on_epoch: Any = None):
        w = torch.nn.Parameter(torch.ones(1))
        opt = make_optimizer([w])
        for epoch in (1, 2):
            opt.zero_grad()
            loss = (w**2).sum()
            loss.backward()
            opt.step()
            if on_epoch is not None:
                on_epoch(EpochReport(epoch, loss.item(), {"train_loss": loss.item()}))
        if self.ending == "error":
            raise RuntimeError(f"cannot reach {SECRET}")
        if self.ending == "diverge":
            raise Diverged(2, "train_loss is nan")
        if self.ending == "interrupt":
            raise KeyboardInterrupt
        value = math.nan if self.ending == "nan" else w.item() ** 2
        return RunResult(value=value, metrics={"loss": value}, extras={"steps": 2})


@pytest.fixture
def db(tmp_path) -> ResultsDB:
    db = ResultsDB(f"sqlite:///{tmp_path / 'trial.db'}")
    db.create_tables()
    db.register_campaign(
        name="c", spec_hash="h", spec={}, workload="scripted", metric="loss", direction="minimize"
    )
    return db


def _run(db: ResultsDB, ending: str, phase: str = "search", on_report: Any = None):
    space = load_space("sgd")
    run_id = db.start_run(
        campaign="c",
        study="c/sgd",
        optimizer="sgd",
        trial_number=0,
        phase=phase,
        seed=1,
        device="cpu",
        hyperparameters={},
    )
    outcome = run_trial(
        db,
        Scripted(ending),
        space,
        space.default_params(),
        run_id=run_id,
        seed=1,
        device="cpu",
        phase=phase,
        on_report=on_report,
    )
    record(db, run_id, outcome)
    return outcome, runs_frame(db.url, "c").iloc[-1]


def test_a_failed_trial_masks_passwords_in_its_reason_traceback_and_trial_attrs(db):
    outcome, row = _run(db, "error")
    assert outcome.status == "failed" and row["status"] == "failed"
    assert (
        row["reason"] == "RuntimeError: cannot reach postgresql+psycopg://hv:***@db.example:5432/hv"
    )
    assert "s3cret-pw" not in row["traceback"] and "hv:***@db.example" in row["traceback"]
    attrs = trial_user_attrs(outcome)
    assert attrs["fail_reason"] == row["reason"]
    assert "s3cret-pw" not in attrs["traceback"] and len(attrs["traceback"]) <= TRACEBACK_ATTR_LIMIT
    assert math.isnan(row["value"])


def test_divergence_prunes_a_search_trial_but_fails_a_confirm_run(db):
    search, row = _run(db, "diverge")
    assert (search.status, row["status"]) == ("pruned", "pruned")
    assert row["reason"] == "diverged at epoch 2: train_loss is nan"
    assert trial_user_attrs(search) == {"prune_reason": "diverged at epoch 2: train_loss is nan"}
    confirm, row = _run(db, "diverge", phase="confirm")
    assert (confirm.status, row["status"]) == ("failed", "failed")


def test_a_non_finite_value_is_pruned_and_a_complete_run_records_value_metrics_and_curves(db):
    nan, row = _run(db, "nan")
    assert nan.status == "pruned" and row["reason"] == "non-finite objective value nan"
    done, row = _run(db, "complete")
    assert done.status == "complete" and row["value"] == pytest.approx(done.value)
    assert row["extras"] == {"steps": 2} and trial_user_attrs(done) == {}
    curves = curves_frame(db.url, "c")
    assert list(curves[curves["run_id"] == row["run_id"]]["epoch"]) == [1, 2]


def test_a_pruner_decision_is_a_pruned_outcome_with_its_reason(db):
    def prune(rep: EpochReport) -> None:
        if rep.epoch == 1:
            raise optuna.TrialPruned("pruned by the median pruner at epoch 1")

    outcome, row = _run(db, "complete", on_report=prune)
    assert outcome.status == "pruned" and row["reason"] == "pruned by the median pruner at epoch 1"


def test_an_interrupt_is_not_classified_but_propagates(db):
    with pytest.raises(KeyboardInterrupt):
        _run(db, "interrupt")


def test_sampler_seeds_follow_the_one_formula():
    assert sampler_seed(0, 0) == 0
    assert sampler_seed(3, 2, 5) == (3 * 7919 + 2 * 104729 + 5 * 15485863) % 2**31
    assert sampler_seed(2**30, 7, 11) < 2**31
