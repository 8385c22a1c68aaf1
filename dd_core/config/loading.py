"""Reading a run configuration: YAML, ``--set a.b=value`` overrides, validation as one line of errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dd_core.config.schema import RunConfig


class ConfigError(ValueError):
    """A run configuration that does not validate; the message lists each field's path."""


def _format(exc: ValidationError, source: str) -> str:
    """One line: ``run.yaml: invalid configuration: teacher.lr: Input should be greater than 0; ...``."""
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{path}: {err['msg']}")
    return f"{source}: invalid configuration: " + "; ".join(problems)


# Fields whose value is text whatever it looks like: YAML would read run_id=007 as 7, run_id= as
# null (a new run instead of a resumed one) and "a #b" as "a".
TEXT_FIELDS = {"run_id", "device", "task", "storage.root", "labeled.annotations", "labeled.images",
               "unlabeled.images", "unlabeled.root", "val.annotations", "val.images", "upper_bound.annotations",
               "upper_bound.images", "model.preset", "model.backbone_weights", "shards.dask_address",
               "shards.deployment"}


def _override_value(key: str, raw: str) -> Any:
    """A ``--set`` value: text for :data:`TEXT_FIELDS`, else parsed as YAML (3, 0.5, [1,2], true);
    text YAML cannot read (``*``, ``[1,``) stays text, so the field's own check names what is wrong."""
    if key in TEXT_FIELDS:
        return raw.strip()
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (YAML itself keeps the last, silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (values parsed as YAML: 3, 0.5, [1,2], true)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. teacher.iterations=100")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _override_value(".".join(p.strip() for p in parts), raw)
    return data


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides, validate."""
    try:
        data = yaml.load(Path(path).read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return parse_config(apply_overrides(data, overrides or []), str(path))
