"""Fingerprints: the identity of "this teacher under these transforms" (on these images).

A shard's Parquet file records the fingerprint that produced it; a finished shard with the same
fingerprint is not labeled again, one with another is (a new teacher, other transforms, other
images under the same shard name).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from dd_core.data.unlabeled import Shard
from dd_core.storage import read_bytes
from dd_core.tta.settings import MultiTransformSettings


def fingerprint(checkpoint_digest: str, tta: MultiTransformSettings) -> str:
    """Identity of 'this model under these transforms': shards with another fingerprint are redone."""
    blob = json.dumps({"model": checkpoint_digest, "tta": tta.identity()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_fingerprint(checkpoint: str, tta: MultiTransformSettings,
                           options: Mapping[str, Any] | None = None) -> str:
    """:func:`fingerprint` of the checkpoint file's bytes and the transform set."""
    return fingerprint(hashlib.sha256(read_bytes(checkpoint, options)).hexdigest(), tta)


def shard_fingerprint(teacher_fingerprint: str, root: str, shard: Shard) -> str:
    """:func:`fingerprint` narrowed to one shard: the same model and transforms on the same images."""
    images = [(im.id, im.file_name) for im in shard.images]
    return hashlib.sha256(json.dumps([teacher_fingerprint, root, images]).encode()).hexdigest()[:16]
