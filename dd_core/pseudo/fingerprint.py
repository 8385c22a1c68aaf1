"""Fingerprints: the identity of "this teacher under these transforms" (on these images).

A shard's Parquet file records the fingerprint that produced it; a finished shard with the same
fingerprint is not labeled again, one with another is (a new teacher, other transforms, another
pixel limit, other images under the same shard name).

The pixel limit (``unlabeled.max_pixels``, ``label --max-pixels``) decides which images are
rejected unread, so it is part of the identity. At its default it adds nothing to the hash, so
that shards labeled without a pixel limit stay finished, though they are not quite what is computed
with one: images of 150 to 179 million pixels are rejected (above that Pillow refuses to decode
anyway), and every image at least twice the teacher's largest frame on both sides is decoded
reduced by a power of two before inference (:func:`dd_core.data.images.decode_reduced`), where
those shards saw it whole; training reads labeled photos reduced too. A run resumed over such
shards labels the rest from reduced decodes: on large photos its pseudo-labels (and its students)
may differ slightly from those of a run labeled with the limit throughout.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from dd_core.data.images import MAX_PIXELS
from dd_core.data.unlabeled import Shard
from dd_core.storage import read_bytes
from dd_core.tta.settings import MultiTransformSettings


def fingerprint(checkpoint_digest: str, tta: MultiTransformSettings, max_pixels: int | None = MAX_PIXELS) -> str:
    """Identity of 'this model under these transforms, on images of at most ``max_pixels`` pixels'
    (None: no limit): shards with another fingerprint are redone."""
    identity: dict[str, Any] = {"model": checkpoint_digest, "tta": tta.identity()}
    if max_pixels != MAX_PIXELS:  # the default keeps the fingerprints of before
        identity["max_pixels"] = max_pixels
    blob = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_fingerprint(checkpoint: str, tta: MultiTransformSettings, options: Mapping[str, Any] | None = None,
                           max_pixels: int | None = MAX_PIXELS) -> str:
    """:func:`fingerprint` of the checkpoint file's bytes, the transform set and the pixel limit."""
    return fingerprint(hashlib.sha256(read_bytes(checkpoint, options)).hexdigest(), tta, max_pixels)


def shard_fingerprint(teacher_fingerprint: str, root: str, shard: Shard) -> str:
    """:func:`fingerprint` narrowed to one shard: the same model and transforms on the same images."""
    images = [(im.id, im.file_name) for im in shard.images]
    return hashlib.sha256(json.dumps([teacher_fingerprint, root, images]).encode()).hexdigest()[:16]
