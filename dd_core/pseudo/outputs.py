"""Where ``omnidistill label`` writes, and what it refuses to write over.

``--out`` is a json (``a/pseudo.json``) or a folder (``a`` means ``a/annotations.json``). Beside the
json go its thresholds (``a/pseudo.thresholds.json``) and its predictions folder
(``a/pseudo.predictions/``: the shard plan, the Parquet shards, their manifest, the rejected images).

None of these may be an input (``--checkpoint``, ``--images``, ``--labeled``, ``--root``) or lie inside
one (a folder of images), and no input may lie inside the predictions folder. URLs are compared as
what they name: a local path resolved (``./x`` and ``x``, ``file://``, symlinks), an S3 URL as bucket
and key (``s3://b//k`` is ``s3://b/k``). An existing json is replaced only if ``label`` wrote it, or
when asked to (``overwrite``): its mark is the pseudo-label json's ``info.description`` with its
thresholds file beside it (a run's ``pseudo/annotations.json`` has the first but not the second).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from dd_core.pseudo.pipeline import SelectionOutputs
from dd_core.pseudo.select import PSEUDO_LABEL_MARK
from dd_core.storage import below, canonical_location, filesystem, join

_MARKED = re.compile(rb'\A\s*\{\s*"info"\s*:\s*\{\s*"description"\s*:\s*"' + re.escape(PSEUDO_LABEL_MARK.encode())
                     + rb'"\s*[,}]')
_THRESHOLDS = re.compile(rb'\A\s*\{\s*"thresholds"\s*:')
_HEAD_BYTES = 4096  # a mark is at the start of the file: a 200 MB ground truth is not read to refuse it


@dataclass(frozen=True)
class LabelOutputs:
    """What one ``--out`` makes ``label`` write: the pseudo-label json, its thresholds, its predictions folder.

    ``a/pseudo.json`` keeps its shards in ``a/pseudo.predictions/``, so two outputs in one folder
    never share (and wrongly reuse) shards.
    """

    annotations: str
    thresholds: str
    predictions: str

    @classmethod
    def of(cls, out: str) -> "LabelOutputs":
        annotations = out if out.endswith(".json") else join(out, "annotations.json")
        predictions = annotations.removesuffix(".json") + ".predictions"
        return cls(annotations, SelectionOutputs.beside(annotations, predictions).thresholds, predictions)


def _same_local_file(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Two names of one local file (a hard link, a bind mount)."""
    try:
        return a[0] == b[0] == "file" and os.path.samefile(a[1], b[1])
    except OSError:  # one of them does not exist
        return False


def check_not_inputs(outputs: LabelOutputs, inputs: Mapping[str, str | None],
                     options: Mapping[str, Any] | None = None) -> None:
    """Refuse outputs that are, or lie inside, an input; or a predictions folder holding an input.

    ``inputs`` maps each input's flag (``--images``) to its URL (None: not given).
    """
    given = {flag: (url, canonical_location(url)) for flag, url in inputs.items() if url}
    written = [(outputs.annotations, "the pseudo-label json"), (outputs.thresholds, "its thresholds"),
               (outputs.predictions, "its predictions folder")]
    for url, what in written:
        out = canonical_location(url)
        for flag, (source, name) in given.items():
            if _same_local_file(out, name) or out == name:
                raise ValueError(f"--out would write {what} {url} over the {flag} input {source}; "
                                 f"choose another --out")
            if below(url, source) is not None:
                raise ValueError(f"--out would write {what} {url} inside the {flag} input {source}; "
                                 f"choose an --out outside it")
            if what == "its predictions folder" and below(source, url) is not None:
                raise ValueError(f"the {flag} input {source} lies inside {url}, the folder where --out keeps its "
                                 f"predictions (label replaces files there); choose another --out")


def _head(url: str, options: Mapping[str, Any] | None) -> bytes | None:
    """The first bytes of the file at ``url``; None when there is none. Never blocks on a FIFO."""
    fs, path = filesystem(url, options)
    if isinstance(fs, LocalFileSystem):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return b""  # a folder, a FIFO, a device: nothing label wrote
        with open(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    try:
        return fs.cat_file(path, start=0, end=_HEAD_BYTES)
    except FileNotFoundError:
        return None


def label_wrote(annotations: str, thresholds: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether the existing json ``annotations`` bears ``label``'s mark (see the module's docstring)."""
    head = _head(annotations, options)
    if head is None or not _MARKED.match(head):
        return False
    beside = _head(thresholds, options)
    return beside is not None and bool(_THRESHOLDS.match(beside))


def check_replaceable(outputs: LabelOutputs, overwrite: bool = False, options: Mapping[str, Any] | None = None
                      ) -> None:
    """Refuse to replace an existing json that ``label`` did not write, unless ``overwrite``."""
    if overwrite:
        return
    hint = "pass --overwrite to replace it, or choose another --out"
    if _head(outputs.annotations, options) is not None and not label_wrote(outputs.annotations, outputs.thresholds,
                                                                             options):
        raise ValueError(f"{outputs.annotations}: exists and omnidistill label did not write it (no info.description "
                         f"{PSEUDO_LABEL_MARK!r} with {outputs.thresholds} beside it); {hint}")
    head = _head(outputs.thresholds, options)
    if head is not None and not _THRESHOLDS.match(head):
        raise ValueError(f"{outputs.thresholds}: exists and is not the thresholds json omnidistill label writes "
                         f"(a json object starting with the field 'thresholds'); {hint}")
