"""`hvadam export`: the best config of each optimizer, loadable by `hvadam.load_optimizer`."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
import yaml
from campaign_fixtures import CAMPAIGN, OPTIMIZERS, SEEDS, real_campaign_url

import hvadam
from dashboards.export import FORMAT, ExportError, export_configs
from dashboards.synthetic import write_synthetic_campaign
from studies.results import runs_frame


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    return real_campaign_url(tmp_path_factory)


def _as_plain(value):
    if isinstance(value, tuple):
        return [_as_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def test_export_writes_one_file_per_optimizer_with_confirm_statistics(campaign, tmp_path):
    written = export_configs(campaign, CAMPAIGN, output=tmp_path / "best")
    assert sorted(p.name for p in written) == sorted(f"{o}.yaml" for o in OPTIMIZERS)
    runs = runs_frame(campaign, CAMPAIGN)
    for path in written:
        doc = yaml.safe_load(path.read_text())
        opt = doc["optimizer"]
        confirm = runs[(runs["optimizer"] == opt) & (runs["phase"] == "confirm")]
        values = confirm["value"].tolist()
        assert doc["format"] == FORMAT
        assert doc["metric"]["name"] == "function_value"
        assert doc["metric"]["direction"] == "minimize"
        assert doc["metric"]["seeds"] == SEEDS == len(values)
        assert doc["metric"]["mean"] == pytest.approx(sum(values) / len(values))
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert doc["metric"]["std"] == pytest.approx(std)
        # every hyperparameter, defaults included, as the confirm runs used them
        assert set(doc["hyperparameters"]) == set(hvadam.optimizer_defaults(opt))
        assert doc["hyperparameters"] == json.loads(json.dumps(confirm["hyperparameters"].iloc[0]))
        prov = doc["provenance"]
        assert prov["campaign"] == CAMPAIGN and prov["study"] == f"{CAMPAIGN}/{opt}"
        assert prov["trial"] == int(confirm["trial_number"].iloc[0])
        assert prov["phase"] == "confirm"
        assert prov["storage"] == campaign
        assert {"torch", "optuna"} <= set(prov["versions"])
        assert prov["date"].endswith("+00:00")
        assert doc["workload"]["name"] == "valley2d"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_exported_config_round_trips_through_load_optimizer(campaign, tmp_path, fmt):
    for opt in OPTIMIZERS:
        path = tmp_path / f"{opt}.{fmt}"
        assert export_configs(campaign, CAMPAIGN, optimizer=opt, output=path) == [path]
        text = path.read_text()
        doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        optimizer = hvadam.load_optimizer(torch.nn.Linear(3, 2).parameters(), str(path))
        assert type(optimizer) is hvadam.registry.optimizer_class(opt)
        group = optimizer.param_groups[0]
        for key, value in doc["hyperparameters"].items():
            assert _as_plain(group[key]) == value, (opt, key)


def test_stdout_export_is_yaml_documents_or_a_json_list(campaign):
    out = io.StringIO()
    assert export_configs(campaign, CAMPAIGN, stdout=out) == []
    docs = list(yaml.safe_load_all(out.getvalue()))
    assert [d["optimizer"] for d in docs] == list(OPTIMIZERS)
    out = io.StringIO()
    export_configs(campaign, CAMPAIGN, fmt="json", stdout=out)
    assert [d["optimizer"] for d in json.loads(out.getvalue())] == list(OPTIMIZERS)


def test_several_optimizers_to_one_file_name_get_suffixed_files(campaign, tmp_path):
    written = export_configs(campaign, CAMPAIGN, output=tmp_path / "best.json")
    assert sorted(p.name for p in written) == sorted(f"best-{o}.json" for o in OPTIMIZERS)
    assert json.loads(written[0].read_text())["format"] == FORMAT


def test_unknown_optimizer_and_format_are_clear_errors(campaign, tmp_path):
    with pytest.raises(ExportError, match=r"'lion' is not in campaign 'real'.*hvadam, anon, adam"):
        export_configs(campaign, CAMPAIGN, optimizer="lion")
    with pytest.raises(ExportError, match="--format must be one of yaml, json"):
        export_configs(campaign, CAMPAIGN, fmt="toml")


def test_without_confirm_phase_the_best_search_trial_is_exported(postgres_url, tmp_path):
    write_synthetic_campaign(
        postgres_url, name="noconfirm", optimizers=("adam", "sgd"), trials=4, seeds=0, epochs=2
    )
    runs = runs_frame(postgres_url, "noconfirm")
    [path] = export_configs(postgres_url, "noconfirm", optimizer="sgd", output=tmp_path / "s.yaml")
    doc = yaml.safe_load(path.read_text())
    sgd = runs[runs["optimizer"] == "sgd"]
    best = sgd.loc[sgd["value"].idxmin()]
    assert doc["provenance"]["phase"] == "search"
    assert doc["provenance"]["trial"] == int(best["trial_number"])
    assert doc["metric"] == {
        "name": "val_loss", "direction": "minimize", "mean": pytest.approx(best["value"]),
        "std": None, "seeds": 1,
    }  # fmt: skip
    # the PostgreSQL password never reaches the file
    assert "pg-secret" not in path.read_text()
    assert doc["provenance"]["storage"].startswith("postgresql+psycopg://postgres:***@127.0.0.1")
