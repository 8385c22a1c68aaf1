"""The unlabeled pile: list its images, give them deterministic ids, cut it into shards.

An unlabeled source is a folder or bucket prefix of images, a ``.txt`` file with one image path
per line (relative to ``root``, by default the list's own folder), or an image-only COCO json such
as ``image_info_unlabeled2017.json`` (its ids are kept; ``root`` defaults to ``images/`` beside it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from dd_core.data.coco import check_file_name, load_coco
from dd_core.data.images import IMAGE_SUFFIXES
from dd_core.storage import below, iter_files, join, list_files, parent, read_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnlabeledImage:
    """One unlabeled image: its id in the pseudo-label json and where it lives (``root/file_name``)."""

    id: int
    file_name: str
    width: int | None = None
    height: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UnlabeledSet:
    root: str
    images: list[UnlabeledImage]
    folder: bool = False  # listed from a folder or prefix (ids 1..N by name), not from a .txt or json


    def url(self, image: UnlabeledImage) -> str:
        return join(self.root, image.file_name)


def _from_listing(text: str, source: str) -> list[UnlabeledImage]:
    # One name per "\n"-ended line (str.splitlines would also split names at U+2028, \x85, \x1c);
    # lines starting with "#" are comments.
    lines = [(n + 1, line.strip()) for n, line in enumerate(text.split("\n"))]
    names = [name for _, name in lines if name and not name.startswith("#")]
    for number, name in lines:
        if name and not name.startswith("#"):
            check_file_name(name, source, f"line {number}", field="image path")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{source}: image {dup!r} is listed more than once")
    return [UnlabeledImage(i + 1, name) for i, name in enumerate(sorted(names))]


def is_listing(images: str) -> bool:
    """Whether an unlabeled source is a list of names (``.txt`` or image-only ``.json``), not a folder."""
    return images.lower().endswith((".json", ".txt"))


def has_image(folder: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether a folder or prefix holds at least one image file (looked for until the first)."""
    return any(True for _ in iter_files(folder, IMAGE_SUFFIXES, options))


def _storable(names: list[str], folder: str) -> list[str]:
    """The names of a folder that can be written down (in Parquet, json): a local file whose name is
    not valid UTF-8 is left out, with a warning naming it."""
    kept = []
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            log.warning("%s: skipping %r: its name is not valid UTF-8", folder, name)
            continue
        kept.append(name)
    return kept


def _read_listing(url: str, options: Mapping[str, Any] | None) -> str:
    try:
        return read_bytes(url, options).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{url}: a list of images must be UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_outside(images: str, root: str | None, exclude: Sequence[str]) -> None:
    """Refuse an unlabeled source (or its ``root``) inside a folder of ``exclude`` (the storage
    root's ``runs`` folder): a run's own outputs are never unlabeled input."""
    for folder in exclude:
        for url in (images, root):
            if url is not None and below(url, folder) is not None:
                raise ValueError(f"{url}: the unlabeled images lie inside {folder}, where runs write their "
                                 f"outputs: a run's own files are never unlabeled input; keep them apart")


def _leave_out(names: list[str], folder: str, exclude: Sequence[str]) -> list[str]:
    """The names of ``folder`` without those under a folder of ``exclude`` inside it (the storage
    root's ``runs`` folder: its reports' figures are images too)."""
    for out in exclude:
        path = below(out, folder)
        if path:
            kept = [n for n in names if not n.startswith(path + "/")]
            if len(kept) < len(names):
                log.info("%s: %d file(s) under %s left out: runs write their outputs there", folder,
                         len(names) - len(kept), out)
            names = kept
    return names


def list_unlabeled(images: str, root: str | None = None, options: Mapping[str, Any] | None = None,
                   limit: int | None = None, exclude: Sequence[str] = ()) -> UnlabeledSet:
    """Every unlabeled image of a source, in a deterministic order with deterministic ids.

    Ids of a folder or list are 1..N in sorted name order, so listing the same pile twice gives
    the same ids (and the same shards). ``exclude``: folders that are never input (the storage
    root's ``runs`` folder): a folder inside the source is left out of its listing, and a source
    inside one is refused (:func:`check_outside`).
    """
    check_outside(images, root, exclude)
    if images.lower().endswith(".json"):
        coco = load_coco(images, root or join(parent(images), "images"), options, require_annotations=False)
        out = [UnlabeledImage(img["id"], img["file_name"], img.get("width"), img.get("height"))
               for img in sorted(coco.images, key=lambda im: im["id"])]
        found = UnlabeledSet(coco.images_root, out)
    elif images.lower().endswith(".txt"):
        text = _read_listing(images, options)
        found = UnlabeledSet(root or parent(images), _from_listing(text, images))
    else:
        names = _storable(list_files(images, suffixes=IMAGE_SUFFIXES, options=options), images)
        names = _leave_out(names, images, exclude)
        found = UnlabeledSet(images.rstrip("/"), [UnlabeledImage(i + 1, n) for i, n in enumerate(names)], True)
    if not found.images:
        raise ValueError(f"{images}: no unlabeled images found (expected {', '.join(IMAGE_SUFFIXES)} files, "
                         f"a .txt list or an image-only COCO json)")
    return UnlabeledSet(found.root, found.images[:limit], found.folder) if limit else found


@dataclass(frozen=True)
class Shard:
    """A slice of the unlabeled set that one inference task labels: index and its images."""

    index: int
    images: list[UnlabeledImage]

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(images: list[UnlabeledImage], size: int) -> list[Shard]:
    """Consecutive shards of ``size`` images (the last one may be smaller); every image in one shard."""
    if size <= 0:
        raise ValueError(f"shard size must be positive, got {size}")
    return [Shard(i // size, images[i:i + size]) for i in range(0, len(images), size)]


@dataclass(frozen=True)
class WrittenPlan:
    """What :func:`write_plan` wrote: the shard count and the plan's digest (a shard job carries it)."""

    num_shards: int
    digest: str


def _digest(document: Mapping[str, Any]) -> str:
    """sha256 of a plan's root, shard size and shards, as canonical json: the same plan, the same digest."""
    body = {key: document[key] for key in ("root", "shard_size", "shards")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _plan_document(unlabeled: UnlabeledSet, shard_size: int) -> dict[str, Any]:
    """A shard plan as json: root, shard size, the shards with their images, and its digest."""
    document = {"root": unlabeled.root, "shard_size": shard_size,
                "shards": [[im.to_dict() for im in s.images] for s in plan_shards(unlabeled.images, shard_size)]}
    return {**document, "digest": _digest(document)}


def write_plan(unlabeled: UnlabeledSet, shard_size: int, url: str,
               options: Mapping[str, Any] | None = None) -> WrittenPlan:
    """Write the shard plan (root + shards with their images, and its digest) as json."""
    from dd_core.storage import write_json_atomic

    document = _plan_document(unlabeled, shard_size)
    write_json_atomic(url, document, options)
    return WrittenPlan(len(document["shards"]), document["digest"])


class PoolChanged(ValueError):
    """A run's unlabeled pool is no longer the one its shards were planned on."""


def check_planned_pool(unlabeled: UnlabeledSet, shard_size: int, plan_url: str, run: str,
                       options: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume ``run`` on a pool other than the one planned at ``plan_url`` (no plan there:
    nothing labeled yet, any pool will do).

    Re-planned, the run would relabel and rewrite its pseudo-labels and thresholds, and then its
    student, trained on the old ones, would refuse them: the report and the pseudo-labels would
    describe two pools, and every later resume would fail the same way. Nothing is written here.
    """
    from dd_core.storage import exists, read_json

    if not exists(plan_url, options):
        return
    planned = read_json(plan_url, options)
    digest = planned.get("digest") or _digest(planned)
    if _plan_document(as_planned(unlabeled, shard_size, planned), shard_size)["digest"] == digest:
        return
    before = [im for shard in planned["shards"] for im in shard]
    raise PoolChanged(f"run {run} was planned on {len(before):,} unlabeled images (plan digest {digest[:12]}, "
                      f"{plan_url}); the pool now lists {len(unlabeled.images):,}"
                      f"{_what_changed(planned['root'], before, unlabeled)}: its pseudo-labels, student and report are "
                      f"of the planned pool. Restore that pool to resume it, or start a new run id for this one")


LATER_SUFFIXES = (".gif",)
"""Suffixes of :data:`~dd_core.data.images.IMAGE_SUFFIXES` that plans of older runs did not list:
such a plan lists a folder without its files of these suffixes."""


def as_planned(unlabeled: UnlabeledSet, shard_size: int, planned: Mapping[str, Any]) -> UnlabeledSet:
    """``unlabeled`` as the plan ``planned`` (its json) listed it: a folder planned before .gif files
    were images, whose plan names none and which, without them, is the pool planned, is that pool
    without them. A run resumed then labels, and plans again, the images it planned, not the folder's
    GIFs as new shards. Any other pool as it is (a changed one: :func:`check_planned_pool` refuses it).

    With ``limit``, the GIFs among the first ``limit`` names take the place of images planned: that
    pool is refused."""
    digest = planned.get("digest") or _digest(planned)
    if not unlabeled.folder or _plan_document(unlabeled, shard_size)["digest"] == digest:
        return unlabeled
    if any(im["file_name"].lower().endswith(LATER_SUFFIXES) for shard in planned["shards"] for im in shard):
        return unlabeled
    names = [im.file_name for im in unlabeled.images if not im.file_name.lower().endswith(LATER_SUFFIXES)]
    if len(names) == len(unlabeled.images):
        return unlabeled
    older = UnlabeledSet(unlabeled.root, [UnlabeledImage(i + 1, n) for i, n in enumerate(names)], True)
    if _plan_document(older, shard_size)["digest"] != digest:
        return unlabeled
    log.info("%s: %d .gif file(s) left out: run planned before GIFs were images (its plan names none)",
             unlabeled.root, len(unlabeled.images) - len(names))
    return older


def planned_pool(unlabeled: UnlabeledSet, shard_size: int, plan_url: str,
                 options: Mapping[str, Any] | None = None) -> UnlabeledSet:
    """``unlabeled`` as the plan at ``plan_url`` listed it (:func:`as_planned`); no plan there: as it is."""
    from dd_core.storage import exists, read_json

    return as_planned(unlabeled, shard_size, read_json(plan_url, options)) if exists(plan_url, options) else unlabeled


def _what_changed(root: str, before: list[Mapping[str, Any]], now: UnlabeledSet) -> str:
    if root != now.root:
        return f" under {now.root!r:.200}, planned under {root!r:.200}"
    old, new = {im["file_name"] for im in before}, {im.file_name for im in now.images}
    if new - old:
        return f" ({min(new - old)!r:.200} is new)"
    if old - new:
        return f" ({min(old - new)!r:.200} is gone)"
    return " (the same names, with other ids or sizes)"


def parse_plan(plan: Mapping[str, Any]) -> tuple[str, list[Shard]]:
    """(images root, shards) of a plan's json document."""
    return plan["root"], [Shard(i, [UnlabeledImage(**im) for im in images]) for i, images in enumerate(plan["shards"])]


def read_plan(url: str, options: Mapping[str, Any] | None = None) -> tuple[str, list[Shard]]:
    """(images root, shards) of a plan written by :func:`write_plan`."""
    from dd_core.storage import read_json

    return parse_plan(read_json(url, options))
