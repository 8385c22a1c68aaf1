"""Resuming a run id only with the settings it was started with.

A run id again resumes the run. Training already refuses checkpoints of other settings, but only
when it gets there: by then a changed ``tta`` or ``shards.size`` has relabeled the pile and
rewritten the pseudo-labels, and the report of the finished run no longer matches its files. So
the settings that define a run's results are recorded when it starts (``runs/<id>/_settings.json``)
and a later start with others is refused before anything is written. Settings of how it runs (the
device, workers, runners, checkpoint interval) may change between starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel

from dd_core.config.schema import Location, RunConfig
from dd_core.storage import canonical_url, exists, read_json, write_json_atomic

# How a run runs, not what it computes: free to change when it is resumed. (shards.size and
# shards.batch_size stay: they change which images share a batch, hence the padding and the
# last bits of every prediction, and a relabeled pile would no longer match the student's.)
OPERATIONAL = {
    "run_id": None, "device": None, "storage": None, "val": None, "distributed": None,
    "shards": {"workers", "runner", "dask_address", "gpus_per_shard", "deployment", "per_flow_run"},
    "teacher": {"checkpoint_every", "num_workers", "report_every"},
    "student": {"checkpoint_every", "num_workers", "report_every"},
}


def result_settings(config: RunConfig) -> dict[str, Any]:
    """The settings that define what a run computes, as JSON values."""
    out = config.model_dump(mode="json")
    for section, fields in OPERATIONAL.items():
        if fields is None:
            out.pop(section, None)
        elif isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in fields}
    return out


def _section(model: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The settings class of ``model``'s section ``key`` (``model.keypoints``), if it is one."""
    field = model.model_fields.get(key) if model else None
    if field is None:
        return None
    for kind in (field.annotation, *get_args(field.annotation)):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def _is_default(model: type[BaseModel] | None, key: str, value: Any) -> bool:
    """``value`` is the default of ``model``'s field ``key`` (as JSON)."""
    field = model.model_fields.get(key) if model else None
    if field is None or field.is_required():
        return False
    default = field.get_default(call_default_factory=True)
    return value == (default.model_dump(mode="json") if isinstance(default, BaseModel) else default)


def _is_location(model: type[BaseModel] | None, key: str) -> bool:
    """``model``'s field ``key`` is a path or URL (:data:`~dd_core.config.schema.Location`, or one or None)."""
    field = model.model_fields.get(key) if model else None
    if field is None:
        return False
    return field.metadata == list(get_args(Location)[1:]) or Location in get_args(field.annotation)


def _location(value: Any) -> Any:
    """A path or URL as resuming compares it: an object-store URL in its canonical form, no trailing
    slash (``s3://b/pool/``, recorded before the schema took it away, is ``s3://b/pool``)."""
    if not isinstance(value, str):
        return value
    value = canonical_url(value)
    stripped = value.rstrip("/")
    return stripped if stripped and not stripped.endswith(":") else value


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "",
                 model: type[BaseModel] | None = RunConfig) -> list[str]:
    """``key: old -> new`` for each result setting that differs. A setting missing from the record
    (added since the run started) is the same when it now holds its default: the behaviour before it
    existed (a section missing: each of its settings at its default)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key not in old and isinstance(b, Mapping) and _section(model, key):
            out += _differences({}, b, f"{prefix}{key}.", _section(model, key))
        elif isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.", _section(model, key))
        elif _is_location(model, key) and _location(a) == _location(b):
            continue
        elif a != b and not (key not in old and _is_default(model, key, b)):
            out.append(f"{prefix}{key}: {a!r:.40} -> {b!r:.40}")
    return out


def check_resume(config: RunConfig, url: str, options: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume the run recorded at ``url`` with other result settings (nothing recorded: fine)."""
    if not exists(url, options):
        return
    recorded = read_json(url, options)  # not JSON: a ValueError naming the file
    if not isinstance(recorded, dict):
        raise ValueError(f"{url}: the run's recorded settings must be a JSON object, not "
                         f"{type(recorded).__name__}; restore the file or start a new run id")
    changed = _differences(recorded, result_settings(config))
    if changed:
        raise ValueError(f"{url}: run {config.run_id} was started with other settings ({'; '.join(changed[:6])}); "
                         f"resume it with those, or start a new run id")


def record_settings(config: RunConfig, url: str, options: Mapping[str, Any] | None = None) -> None:
    """Check a resumed run's settings (:func:`check_resume`); record a new run's."""
    check_resume(config, url, options)
    if not exists(url, options):
        write_json_atomic(url, result_settings(config), options, indent=1)
