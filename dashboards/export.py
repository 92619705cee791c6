"""`hvadam export`: each optimizer's best config as a file `hvadam.load_optimizer` reads.

The config quoted is the confirm phase's when it ran (the best search trial's config re-run on
fresh seeds: the metric is their mean and standard deviation), else the best search trial's
(one value, no spread). The file follows format `hvadam-config/1` (docs/architecture.md):
the optimizer, every hyperparameter including defaults, and, for information, the workload,
the metric and the provenance (campaign, study, trial, masked storage URL, library versions of
the run, date of the export). When the campaign searched a learning-rate schedule, the run's
schedule (stored in its `extras["schedule"]`) is written under `schedule:`, which
`hvadam.load_schedule` rebuilds (docs/schedules.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any, TextIO

from dashboards.data import CampaignData, load_campaign

__all__ = ["FORMAT", "ExportError", "best_config", "best_configs", "export_configs", "render"]

FORMAT = "hvadam-config/1"
FORMATS = ("yaml", "json")


class ExportError(ValueError):
    """Nothing to export, or an unusable option (the message names it and what is allowed)."""


def _plain(value: Any) -> Any:
    """Plain YAML/JSON data: tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def best_config(data: CampaignData, label: str) -> dict[str, Any]:
    """The export document of one optimizer (its study label) of the campaign."""
    import pandas as pd

    if label not in data.optimizers:
        raise ExportError(
            f"--optimizer: {label!r} is not in campaign {data.campaign!r} "
            f"(its optimizers: {', '.join(data.optimizers)})"
        )
    phase, runs = data.best_runs(label)
    if runs.empty:
        raise ExportError(
            f"optimizer {label!r} of campaign {data.campaign!r} has no completed run to export"
        )
    row = runs.iloc[0]
    values = runs["value"].astype(float)
    n = len(values)
    std = float(values.std(ddof=1)) if n > 1 else None
    trial = row.get("trial_number")
    provenance: dict[str, Any] = {
        "campaign": data.campaign,
        "study": str(row["study"]),
        "trial": None if trial is None or pd.isna(trial) else int(trial),
        "phase": phase,
        "seeds": [int(s) for s in runs["seed"]] if "seed" in runs else [],
    }
    if data.storage is not None:
        from studies.api import mask_url

        provenance["storage"] = mask_url(data.storage)
    versions = row.get("versions")
    provenance["versions"] = dict(versions) if isinstance(versions, dict) else {}
    if row.get("git_revision"):
        provenance["git_revision"] = str(row["git_revision"])
    provenance["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    optimizer = data.optimizer_class(label)
    if optimizer != label:
        provenance["label"] = label
    doc = _plain(
        {
            "format": FORMAT,
            "optimizer": optimizer,
            "hyperparameters": _full_hyperparameters(optimizer, dict(row["hyperparameters"])),
            **_schedule(row),
            "workload": {"name": data.workload, "options": dict(data.workload_options)},
            "metric": {
                "name": data.metric,
                "direction": data.direction,
                "mean": float(values.mean()),
                "std": std,
                "seeds": n,
            },
            "provenance": provenance,
        }
    )
    import hvadam

    hvadam.load_config(doc)  # the format's own validation: what we write, load_optimizer reads
    return doc


def _schedule(row: Any) -> dict[str, Any]:
    """``{"schedule": ...}`` when the run trained with a searched schedule, else {}."""
    extras = row.get("extras")
    schedule = extras.get("schedule") if isinstance(extras, dict) else None
    return {"schedule": dict(schedule)} if isinstance(schedule, dict) else {}


def _full_hyperparameters(optimizer: str, hp: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter the optimizer accepts: the run's values over the defaults.

    The runner stores resolved hyperparameters already; resolving again guards against a row
    written by an older version with fewer keys, and fails loudly on unknown names.
    """
    import hvadam

    return hvadam.resolve_hyperparameters(optimizer, **hp)


def best_configs(data: CampaignData, optimizer: str | None = None) -> list[dict[str, Any]]:
    """Export documents for one optimizer, or for every optimizer with a completed run."""
    if optimizer is not None:
        return [best_config(data, optimizer)]
    docs = []
    for label in data.optimizers:
        _, runs = data.best_runs(label)
        if not runs.empty:
            docs.append(best_config(data, label))
    if not docs:
        raise ExportError(f"campaign {data.campaign!r} has no completed run to export")
    return docs


def render(doc: dict[str, Any], fmt: str) -> str:
    """One document as YAML or JSON text."""
    if fmt == "json":
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if fmt == "yaml":
        import yaml

        header = (
            f"# Best {doc['optimizer']} config of campaign {doc['provenance']['campaign']} "
            f"({doc['provenance']['phase']} phase).\n"
            f"# Load it with: hvadam.load_optimizer(model.parameters(), 'this-file.yaml')\n"
        )
        if "schedule" in doc:
            header += (
                "# and its learning-rate schedule with: "
                "hvadam.load_schedule(optimizer, 'this-file.yaml', total_steps)\n"
            )
        return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


SUFFIXES = {"yaml": (".yaml", ".yml"), "json": (".json",)}


def _format_for(output: Path | None, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if output is not None and output.suffix.lower() == ".json":
        return "json"
    return "yaml"


def export_configs(
    storage: str,
    campaign: str,
    *,
    optimizer: str | None = None,
    output: str | Path | None = None,
    fmt: str | None = None,
    stdout: TextIO | None = None,
    data: CampaignData | None = None,
) -> list[Path]:
    """Write the best config(s) of `campaign`; returns the files written.

    - one optimizer (`optimizer` given, or the campaign has one) and `output` a file: that file;
    - several optimizers and `output` with a suffix: `<stem>-<optimizer><suffix>` each;
    - `output` an existing directory or a path without suffix: `<dir>/<optimizer>.<format>`;
    - no `output`: every document to `stdout` (YAML documents separated by `---`, or a JSON
      list), and no file.
    The format is `fmt`, else `.json` outputs give JSON, else YAML.
    """
    import sys

    data = data or load_campaign(storage, campaign)
    out = Path(output) if output is not None else None
    fmt = _format_for(out, fmt)
    docs = best_configs(data, optimizer)
    if out is None:
        stream = stdout or sys.stdout
        if fmt == "json":
            payload = docs[0] if len(docs) == 1 else docs
            stream.write(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        else:
            stream.write("---\n".join(render(d, "yaml") for d in docs))
        return []
    ext = ".json" if fmt == "json" else ".yaml"
    if out.is_dir() or (not out.suffix and not out.exists()):
        _check_parent(out)
        try:
            out.mkdir(exist_ok=True)  # the directory itself, never missing parents
        except OSError as exc:
            raise ExportError(f"cannot create the directory {str(out)!r}: {_reason(exc)}") from None
        targets = [out / f"{_label(d)}{ext}" for d in docs]
    else:
        _check_file(out, fmt)
        if len(docs) == 1:
            targets = [out]
        else:
            targets = [out.with_name(f"{out.stem}-{_label(d)}{out.suffix}") for d in docs]
    for doc, target in zip(docs, targets, strict=True):
        try:
            target.write_text(render(doc, fmt), encoding="utf-8")
        except OSError as exc:
            raise ExportError(f"cannot write {str(target)!r}: {_reason(exc)}") from None
    return targets


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise ExportError(
            f"-o {str(path)!r}: the directory {str(parent)!r} does not exist (it is not created; "
            f"make it first)"
        )


def _check_file(path: Path, fmt: str) -> None:
    """A config file's suffix says its format to `load_optimizer`: it must be one it reads."""
    allowed = SUFFIXES[fmt]
    if path.suffix.lower() not in allowed:
        raise ExportError(
            f"-o {str(path)!r}: a {fmt.upper()} config file must end in "
            f"{' or '.join(allowed)} (hvadam.load_optimizer reads the format from the suffix), "
            f"or give a directory"
        )
    _check_parent(path)


def _label(doc: dict[str, Any]) -> str:
    return str(doc["provenance"].get("label") or doc["optimizer"])
