"""The inference manifest: written last, it lists every shard with its counts.

A reader that finds the manifest can trust that every shard it lists is complete; a manifest
that lists a missing shard is an error, never silently skipped.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from dd_core.storage import exists, read_json, write_json_atomic
from dd_core.storage.parquet import SCHEMA_VERSION


def write_manifest(url: str, shards: Sequence[Mapping[str, Any]], fingerprint: str,
                   options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "num_images": sum(s["num_images"] for s in shards),
        "num_rows": sum(s["num_rows"] for s in shards),
        "num_rejected": sum(s["num_rejected"] for s in shards),
        "shards": [{"name": s["name"], "url": s["url"], "num_images": s["num_images"], "num_rows": s["num_rows"],
                    "num_rejected": s["num_rejected"]} for s in sorted(shards, key=lambda s: s["name"])],
    }
    write_json_atomic(url, manifest, options, indent=1)
    return manifest


def read_manifest(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest, after checking that every shard it lists exists."""
    manifest = read_json(url, options)
    missing = [s["url"] for s in manifest["shards"] if not exists(s["url"], options)]
    if missing:
        raise FileNotFoundError(f"{url}: lists {len(missing)} shard(s) that do not exist, e.g. {missing[0]}")
    return manifest
