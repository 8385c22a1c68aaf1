"""The inference manifest: written last, it lists every shard with its counts.

A reader that finds the manifest can trust that every shard it lists is complete; a manifest
that lists a missing shard is an error, never silently skipped.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dd_core.storage import exists, join, list_files, read_json, remove, write_json_atomic
from dd_core.storage.parquet import SCHEMA_VERSION

if TYPE_CHECKING:  # the shard labeling (torch) is not needed to write or read a manifest
    from dd_core.pseudo.infer import ShardSummary

log = logging.getLogger(__name__)
_SHARD_FILE = re.compile(r"shard-(\d{5,})\.parquet")


def remove_unplanned_shards(out_dir: str, num_shards: int, options: Mapping[str, Any] | None = None) -> list[str]:
    """Delete the shard files of an earlier plan that the current one (``num_shards`` shards) does
    not have; returns their URLs.

    A run id labeled again with another ``shards.size`` (or a shorter pile) would otherwise keep
    ``shard-00042.parquet`` of the old plan beside the new ones, and the inference folder would no
    longer read as the dataset its manifest lists. Only files named exactly like a shard
    (``shard-<5+ digits>.parquet``) directly in ``out_dir`` are candidates: nothing else is touched.
    """
    stale = []
    for name in list_files(out_dir, suffixes=(".parquet",), options=options):
        match = _SHARD_FILE.fullmatch(name)
        if match and int(match.group(1)) >= num_shards:
            stale.append(join(out_dir, name))
    for url in stale:
        remove(url, options)
    if stale:
        log.info("removed %d shard file(s) of an earlier plan from %s", len(stale), out_dir)
    return stale


def write_manifest(url: str, shards: Sequence[ShardSummary], fingerprint: str,
                   options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """List ``shards`` (in name order) with their counts and the totals; returns what was written."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "num_images": sum(s.num_images for s in shards),
        "num_rows": sum(s.num_rows for s in shards),
        "num_rejected": sum(s.num_rejected for s in shards),
        "shards": [{"name": s.name, "url": s.url, "num_images": s.num_images, "num_rows": s.num_rows,
                    "num_rejected": s.num_rejected} for s in sorted(shards, key=lambda s: s.name)],
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
