"""The campaign's files in its artifact store: best configs, report figures, fetching a config.

- `upload_best_config`: `best-<optimizer>.yaml` (what `hvadam export` writes) on its study,
  when that optimizer's confirm phase completes (`dashboards.live`);
- `upload_report`: the report's PNG figures (and `report.html`) on every study of the campaign,
  stored once, when `hvadam report` runs;
- `fetch_best_config`: `hvadam export --from-artifacts`, from the store alone (no database).

The store itself (locations, fixed artifact ids, Optuna's metadata) is `studies.artifacts`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from studies.api import campaign_studies
from studies.artifacts import artifact_id, fetch, open_store, upload

__all__ = [
    "REPORT_OWNER",
    "best_config_filename",
    "fetch_best_config",
    "upload_best_config",
    "upload_report",
]

REPORT_OWNER = "report"  # the report's files are the campaign's, not one optimizer's


def best_config_filename(label: str) -> str:
    return f"best-{label}.yaml"


def upload_best_config(
    storage: str, campaign: str, label: str, location: str, *, data: Any = None
) -> str:
    """Export `label`'s best config and attach it to its study; returns the artifact id."""
    from dashboards.data import load_campaign
    from dashboards.export import best_config, render

    data = data or load_campaign(storage, campaign, curves=False)
    doc = best_config(data, label)
    name = best_config_filename(label)
    with (
        campaign_studies(storage, campaign) as studies,
        tempfile.TemporaryDirectory(prefix="hvadam-export-") as tmp,
    ):
        path = Path(tmp) / name
        path.write_text(render(doc, "yaml"), encoding="utf-8")
        return upload(
            open_store(location), studies[label], path, fixed_id=artifact_id(campaign, label, name)
        )


def upload_report(
    storage: str, campaign: str, report: Any, location: str, labels: list[str]
) -> list[str]:
    """Attach the report's figures and page to every study of the campaign; returns the ids."""
    store = open_store(location)
    files = [Path(p) for p in report.pngs.values()] + [Path(report.html)]
    with campaign_studies(storage, campaign) as found:
        studies = [found[label] for label in labels]
        return [
            upload(store, studies, path, fixed_id=artifact_id(campaign, REPORT_OWNER, path.name))
            for path in files
        ]


def fetch_best_config(campaign: str, label: str, location: str, target: str | Path) -> Path:
    """Copy `best-<label>.yaml` of `campaign` out of the store (no database); returns the file.

    The file is checked as `hvadam.load_config` reads it.
    """
    import yaml

    import hvadam

    name = best_config_filename(label)
    path = fetch(open_store(location), artifact_id(campaign, label, name), target)
    hvadam.load_config(yaml.safe_load(path.read_text(encoding="utf-8")))
    return path
