"""The project's one YAML reader: numbers as people write them, and no key given twice.

Specs, optimizer configs and search spaces are all read here. PyYAML implements YAML 1.1, in
which `1e-4` (no dot) is a string; here it is the float YAML 1.2 and every other tool read.
A mapping that repeats a key is refused (PyYAML keeps the last one silently), naming the key
and its line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "load_yaml"]


class DuplicateKeyError(ValueError):
    """A mapping that gives one key twice; `key` and `line` (1-based) say where."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} (line {line}): each key may appear once")
        self.key = key
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (`1e-5`) and duplicate keys refused."""


# YAML 1.2's float forms: a mantissa without a dot and with an exponent is a float too.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: SafeLoader reports it
            continue
        if duplicate:
            raise DuplicateKeyError(key, key_node.start_mark.line + 1)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse one YAML document safely; `DuplicateKeyError` or `yaml.YAMLError` on bad input."""
    return yaml.load(text, Loader=_Loader)
