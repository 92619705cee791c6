"""The `dashboard | report | export` subcommands as `studies.cli` mounts them."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from helpers import free_port, subprocess_env

from dashboards.cli_commands import add_subcommands
from dashboards.synthetic import write_synthetic_campaign

# What studies/cli.py does: a main parser, possibly with its own --storage, and subcommands.
PROGRAM = """
import argparse, sys
from dashboards.cli_commands import add_subcommands
parser = argparse.ArgumentParser(prog="hvadam")
sub = parser.add_subparsers(dest="command", required=True)
add_subcommands(sub)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hvadam")
    p.add_argument("--storage")
    add_subcommands(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'hvadam.db'}"
    write_synthetic_campaign(url, name="cli", optimizers=("hvadam", "adam"), trials=3, seeds=2)
    return url


def test_storage_given_before_or_after_the_subcommand_is_kept(campaign):
    args = parser().parse_args(["--storage", campaign, "report", "cli", "-o", "x"])
    assert args.storage == campaign
    args = parser().parse_args(["report", "cli", "-o", "x", "--storage", campaign])
    assert args.storage == campaign
    args = parser().parse_args(["dashboard"])
    assert (args.host, args.port) == ("127.0.0.1", 8080)


def test_report_subcommand_writes_the_report(campaign, tmp_path, capsys):
    args = parser().parse_args(
        ["report", "cli", "-o", str(tmp_path / "rep"), "--storage", campaign]
    )
    assert args.func(args) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    assert "wrote" in capsys.readouterr().out


def test_export_subcommand_writes_the_config(campaign, tmp_path):
    args = parser().parse_args(
        ["export", "cli", "--optimizer", "adam", "-o", str(tmp_path / "adam.yaml"),
         "--storage", campaign]
    )  # fmt: skip
    assert args.func(args) == 0
    doc = yaml.safe_load((tmp_path / "adam.yaml").read_text())
    assert doc["optimizer"] == "adam" and doc["provenance"]["phase"] == "confirm"


def test_dashboard_subcommand_serves_until_interrupted(campaign):
    port = free_port()
    env = subprocess_env(HVADAM_STORAGE=campaign)
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, "dashboard", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        body, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert "cli/hvadam" in body and "cli/adam" in body
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"on http://127.0.0.1:{port}/dashboard" in err


def _metas(url: str, campaign: str, label: str) -> list:
    import optuna

    study = optuna.load_study(study_name=f"{campaign}/{label}", storage=url)
    return optuna.artifacts.get_all_artifact_meta(study)


def test_report_attaches_its_figures_to_every_study(campaign, tmp_path, capsys):
    store = tmp_path / "store"
    args = parser().parse_args(
        ["report", "cli", "-o", str(tmp_path / "rep"), "--storage", campaign,
         "--artifacts", str(store)]
    )  # fmt: skip
    assert args.func(args) == 0
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs, "the report wrote no figure"
    listed = {label: _metas(campaign, "cli", label) for label in ("hvadam", "adam")}
    for metas in listed.values():
        assert sorted(m.filename for m in metas if m.filename.endswith(".png")) == pngs
        assert "report.html" in {m.filename for m in metas}
    # stored once, listed by both studies
    assert {m.artifact_id for m in listed["hvadam"]} == {m.artifact_id for m in listed["adam"]}
    assert len(list(store.iterdir())) == len(pngs) + 1
    assert f"attached {len(pngs) + 1} files" in capsys.readouterr().out


def test_export_from_artifacts_needs_no_database(campaign, tmp_path, capsys):
    import hvadam
    from dashboards.artifacts import upload_best_config

    store = tmp_path / "store"
    upload_best_config(campaign, "cli", "adam", str(store))
    assert "best-adam.yaml" in {m.filename for m in _metas(campaign, "cli", "adam")}
    # a database nobody can reach: the store alone answers
    nowhere = "postgresql://nobody:pw@127.0.0.1:9/none"
    args = parser().parse_args(
        ["export", "cli", "--from-artifacts", "--optimizer", "adam", "--storage", nowhere,
         "--artifacts", str(store), "-o", str(tmp_path / "out")]
    )  # fmt: skip
    assert args.func(args) == 0
    path = tmp_path / "out" / "adam.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["optimizer"] == "adam" and doc["provenance"]["phase"] == "confirm"
    import torch

    opt = hvadam.load_optimizer([torch.nn.Parameter(torch.zeros(2))], path)
    assert opt.defaults["lr"] == pytest.approx(doc["hyperparameters"]["lr"])
    with pytest.raises(ValueError, match="needs --optimizer"):
        args = parser().parse_args(["export", "cli", "--from-artifacts", "--storage", nowhere])
        args.func(args)
    with pytest.raises(ValueError, match="not in the artifact store"):
        args = parser().parse_args(
            ["export", "cli", "--from-artifacts", "--optimizer", "hvadam", "--storage", nowhere,
             "--artifacts", str(store)]
        )  # fmt: skip
        args.func(args)
    with pytest.raises(ValueError, match="no artifact store"):
        args = parser().parse_args(
            ["export", "cli", "--from-artifacts", "--optimizer", "adam", "--storage", nowhere]
        )
        args.func(args)
