"""Optimizer config files (``format: hvadam-config/1``, YAML or JSON): load, validate, write, build.

A config names a registered optimizer and its hyperparameters; ``workload``, ``metric`` and
``provenance`` are informational (written by ``hvadam export``) and ignored when building.
An optional ``schedule`` gives the learning-rate schedule (`hvadam.load_schedule`,
docs/schedules.md)::

    format: hvadam-config/1
    optimizer: hvadam
    hyperparameters: {lr: 0.003, betas: [0.9, 0.999]}
    schedule: {kind: cosine, warmup: 0.05, min_lr_ratio: 0.1}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hvadam.registry import create_optimizer, resolve_hyperparameters

__all__ = ["FORMAT", "ConfigError", "dump_config", "load_config", "load_optimizer"]

FORMAT = "hvadam-config/1"
REQUIRED_KEYS = ("optimizer", "hyperparameters")
OPTIONAL_KEYS = ("format", "workload", "metric", "provenance", "schedule")
_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)


class ConfigError(ValueError):
    """A config that cannot be read or is not a valid ``hvadam-config/1`` document."""


def load_config(path_or_dict: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read (from a ``.yaml``/``.yml``/``.json`` file, or take a mapping) and validate a config.

    Returns a new dict with the same keys; the optimizer name and hyperparameter names are checked
    against the registry. Raises :class:`ConfigError` naming the file and the offending key.
    """
    if isinstance(path_or_dict, Mapping):
        source, document = "config", path_or_dict
    elif isinstance(path_or_dict, (str, Path)):
        source, document = str(path_or_dict), _read(Path(path_or_dict))
    else:
        raise ConfigError(f"config must be a mapping or a path, got {type(path_or_dict).__name__}")
    return _validate(document, source)


def load_optimizer(
    params: Iterable[Any], config: str | Path | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Build the optimizer a config (mapping or file path) describes, over ``params``."""
    validated = load_config(config)
    return create_optimizer(validated["optimizer"], params, **validated["hyperparameters"])


def dump_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Validate ``config`` and write it as YAML or JSON, chosen by the file's extension.

    Tuples are written as lists; ``format`` is added when missing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _YAML_SUFFIXES + _JSON_SUFFIXES:
        raise ConfigError(f"{path}: unknown config file type {suffix!r}; use .yaml, .yml or .json")
    validated = _validate(config, str(path))
    document = _plain({"format": FORMAT, **validated})
    if suffix in _JSON_SUFFIXES:
        text = json.dumps(document, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(document, sort_keys=False)
    path.write_text(text, encoding="utf-8")


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in _YAML_SUFFIXES + _JSON_SUFFIXES:
        raise ConfigError(f"{path}: unknown config file type {suffix!r}; use .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    if suffix in _JSON_SUFFIXES:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    import yaml

    from hvadam.yamlfile import DuplicateKeyError, load_yaml

    try:
        return load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _validate(document: Any, source: str) -> dict[str, Any]:
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(document).__name__}")
    for key in REQUIRED_KEYS:
        if key not in document:
            raise ConfigError(f"{source}: missing required key {key!r}")
    unknown = sorted(set(document) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        allowed = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed keys: {allowed}")
    if "format" in document and document["format"] != FORMAT:
        raise ConfigError(f"{source}: key 'format' must be {FORMAT!r}, got {document['format']!r}")
    optimizer = document["optimizer"]
    if not isinstance(optimizer, str):
        raise ConfigError(f"{source}: key 'optimizer' must be a name, got {optimizer!r}")
    hyperparameters = document["hyperparameters"]
    if hyperparameters is None:
        hyperparameters = {}
    if not isinstance(hyperparameters, Mapping) or not all(
        isinstance(key, str) for key in hyperparameters
    ):
        raise ConfigError(
            f"{source}: key 'hyperparameters' must map names to values, got {hyperparameters!r}"
        )
    try:
        resolve_hyperparameters(optimizer, **hyperparameters)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    for key in ("workload", "metric", "provenance"):
        if key in document and not isinstance(document[key], Mapping):
            raise ConfigError(f"{source}: key {key!r} must be a mapping")
    validated = dict(document)
    validated["hyperparameters"] = dict(hyperparameters)
    if "schedule" in document:
        from hvadam.schedules import ScheduleError, check_schedule

        try:
            validated["schedule"] = check_schedule(document["schedule"])
        except ScheduleError as exc:
            raise ConfigError(f"{source}: key {exc}") from None
    return validated


def _plain(value: Any) -> Any:
    """Only JSON/YAML-safe containers: tuples as lists, mappings as dicts."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
