"""The package seams: what `dashboards` may import of `studies`, and the public `studies.api`."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

import studies
from studies import api

PUBLIC = {"studies.api", "studies.artifacts", "studies.results"}


def contract(name_start: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith(name_start))


def test_dashboards_contract_forbids_every_module_of_studies_but_the_public_ones():
    forbidden = set(contract("dashboards reads campaigns")["forbidden_modules"])
    modules = [m.name for m in pkgutil.walk_packages(studies.__path__, "studies.")]
    assert "studies.worker" in modules and "studies.results.db" in modules
    for module in modules:
        if module in PUBLIC:
            continue
        covered = any(module == f or module.startswith(f + ".") for f in forbidden)
        assert covered, f"{module} is neither public nor forbidden to dashboards in pyproject"
    assert not forbidden & PUBLIC


def test_importing_the_api_loads_no_heavy_library():
    code = (
        "import sys, studies.api\n"
        "print(','.join(m for m in ('sqlalchemy', 'optuna', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_api_reads_a_campaigns_studies_by_label(sqlite_url):
    from dashboards.synthetic import write_synthetic_campaign

    write_synthetic_campaign(sqlite_url, name="c", optimizers=("adam", "sgd"), trials=2, seeds=1)
    write_synthetic_campaign(sqlite_url, name="other", optimizers=("sgd",), trials=2, seeds=1)
    attrs = api.campaign_study_attrs(sqlite_url, "c")
    assert sorted(attrs) == ["adam", "sgd"]
    assert attrs["adam"]["campaign"] == "c" and attrs["adam"]["optimizer"] == "adam"
    with api.campaign_studies(sqlite_url, "c") as found:
        assert {label: s.study_name for label, s in found.items()} == {
            "adam": "c/adam",
            "sgd": "c/sgd",
        }
        assert len(found["sgd"].trials) == 2
    assert api.campaign_study_attrs(sqlite_url, "missing") == {}


def test_api_gives_the_valley2d_functions():
    valley = api.function_2d("valley")
    assert valley is not None
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])
    assert valley(x, y).tolist() == [4 * 1 + 3, 0.0]  # 4|x - y| + |x + y|
    assert api.function_2d("nope") is None


def test_api_masks_and_resolves_storage_urls(monkeypatch):
    assert api.mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    monkeypatch.setenv("HVADAM_STORAGE", "sqlite:///x.db")
    assert api.resolve_storage_url() == "sqlite:///x.db"
    assert api.resolve_storage_url("sqlite:///y.db") == "sqlite:///y.db"
