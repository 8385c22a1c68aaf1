"""Steps 2-3 of data distillation on one shard: multi-transform inference, ensembled, to Parquet.

A shard is idempotent: its Parquet file records the fingerprint of the model and transform set
that produced it (:mod:`dd_core.pseudo.fingerprint`), and :func:`pseudo_label_shard` leaves a
matching file untouched (without even loading the model).

One odd image must not fail its shard: an image that cannot be read, decoded or resized
(:mod:`dd_core.pseudo.reading`), or on which the model raises when it runs alone, is skipped and
listed with the reason in the shard's metadata (``rejected``). The shard fails only for what
concerns every image: storage that cannot be reached, a model that fails on every image,
credentials refused for every image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from dd_core.data.images import MAX_PIXELS
from dd_core.data.unlabeled import Shard, UnlabeledImage, read_plan
from dd_core.ops.clock import StageClock, timed
from dd_core.ops.labeling import LabelingOps
from dd_core.ops.plans import PlanCache
from dd_core.pseudo.columns import ShardColumns, check_image_id, outputs_to_host
from dd_core.pseudo.fingerprint import shard_fingerprint
from dd_core.pseudo.reading import READ_THREADS, BatchRead, ImageReading, read_batches
from dd_core.pseudo.teacher import Teacher, teacher_from_checkpoint
from dd_core.storage import join, list_files
from dd_core.storage.parquet import ShardError, predictions_table, read_shard_footer, write_shard
from dd_core.tta.settings import MultiTransformSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSummary:
    """What labeling a shard reports back (from a Dask or deployment worker too: primitives only, it
    pickles): where its output is and how much it holds. The manifest lists these."""

    name: str
    url: str
    num_images: int
    num_rows: int
    num_rejected: int
    skipped: bool  # True when a valid output already existed


def shard_url(out_dir: str, shard: Shard) -> str:
    """Where shard ``shard``'s predictions are: ``<out_dir>/shard-00042.parquet``."""
    return join(out_dir, f"{shard.name}.parquet")


def existing_output(url: str, expected: str, options: Mapping[str, Any] | None) -> tuple[dict, int] | None:
    """(metadata, rows) of a finished shard whose fingerprint is ``expected`` (the same model and
    transforms on the same images); None when it must be (re)computed. Only the footer is read."""
    try:
        meta, num_rows = read_shard_footer(url, options)
    except FileNotFoundError:
        return None
    except ShardError as exc:
        log.warning("recomputing %s: %s", url, exc)
        return None
    return (meta, num_rows) if meta.get("fingerprint") == expected else None


def _finished(shard: Shard, url: str, found: tuple[dict, int]) -> ShardSummary:
    meta, num_rows = found
    return ShardSummary(shard.name, url, len(meta["images"]), num_rows, len(meta["rejected"]), True)


# What torch raises for one image a model cannot take (a size ``interpolate`` refuses, a shape no
# layer accepts). Anything else (an unknown label, host memory exhausted, ...) fails the shard.
_IMAGE_ERRORS = (RuntimeError, ValueError)


def predict_each(teacher: Teacher, images: list[torch.Tensor],
                 clock: StageClock | None = None) -> list[dict[str, Any] | Exception]:
    """Host outputs of multi-transform inference on ``images``: one batch, or, when the batch raises,
    one image at a time, so that an image the model cannot take costs only itself. The exception of an
    image that fails alone stands in for its output (without its traceback: its frames hold tensors)."""
    try:
        with timed(clock, "infer"):
            outputs = teacher.model(images)
        return outputs_to_host(outputs)
    except _IMAGE_ERRORS as exc:
        if len(images) == 1:
            return [exc.with_traceback(None)]
        log.warning("a batch of %d images failed (%s: %s): pseudo-labeling them one at a time", len(images),
                    type(exc).__name__, exc)
    return [predict_each(teacher, [image], clock)[0] for image in images]


@dataclass
class ShardOutcome:
    """The images of a shard pseudo-labeled and rejected so far, and the rejections that, together,
    say the shard itself failed."""

    done: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    denied: int = 0  # images the storage refused to read (PermissionError)
    failed: list[Exception] = field(default_factory=list)  # what the model raised on images alone

    def reject(self, image: UnlabeledImage, reason: str, cause: BaseException | None = None) -> None:
        self.rejected.append({"image_id": image.id, "file_name": image.file_name, "reason": reason})
        self.denied += isinstance(cause, PermissionError)

    def fail(self, image: UnlabeledImage, url: str, exc: Exception) -> None:
        """``image`` made the model raise ``exc`` on its own."""
        reason = f"{url}: multi-transform inference failed on this image alone ({type(exc).__name__}: {exc})"
        log.warning("rejected %s", reason)
        self.reject(image, reason)
        self.failed.append(exc)

    def check(self, shard: Shard) -> None:
        """Raise when the rejections concern every image: the model failed on each image it was
        given (and labeled none), or the storage refused every image of the shard (expired or wrong
        credentials look like that, and must not leave a finished, empty shard behind)."""
        if self.failed and not self.done:
            first = self.failed[0]
            first.add_note(f"{shard.name}: multi-transform inference failed on each of the {len(self.failed)} "
                           f"image(s) it was given, one at a time: the model fails, not the images")
            raise first
        if self.denied and self.denied == len(shard.images):
            raise PermissionError(f"{shard.name}: the storage refused to read every one of its "
                                  f"{len(shard.images)} images (first: {self.rejected[0]['reason']})")


def _pseudo_label_batch(teacher: Teacher, read: BatchRead, root: str, columns: ShardColumns,
                        outcome: ShardOutcome, clock: StageClock | None) -> None:
    images, kept, refused, reductions = read
    for image, exc in refused:
        outcome.reject(image, str(exc), exc.__cause__)
    if not images:
        return
    outputs = predict_each(teacher, images, clock)
    for output, image, reduction in zip(outputs, kept, reductions):
        if isinstance(output, Exception):
            outcome.fail(image, join(root, image.file_name), output)
            continue
        columns.add(reduction.to_original(output), image)  # a large photo was labeled reduced
        outcome.done.append({"id": image.id, "file_name": image.file_name,
                             "height": reduction.height, "width": reduction.width})


@dataclass(frozen=True)
class ShardRun:
    """How shards are computed: the teacher (``load_teacher`` is called only for a shard that must
    be computed), the device it runs on, in batches of ``batch_size`` images; an image of more than
    ``max_pixels`` pixels is rejected before it is decoded. ``options``: the storage's."""

    load_teacher: Callable[[], Teacher]
    options: Mapping[str, Any] | None = None
    device: str = "cpu"
    batch_size: int = 4
    max_pixels: int | None = MAX_PIXELS
    progress: bool = False


@torch.inference_mode()
def pseudo_label_shard(shard: Shard, root: str, out_dir: str, fingerprint: str, run: ShardRun, *,
                       check_done: bool = True, next_shard: Shard | None = None,
                       ops: LabelingOps = LabelingOps()) -> ShardSummary:
    """Multi-transform inference on every image of ``shard``, written to :func:`shard_url`.

    ``fingerprint`` is the teacher's (:func:`~dd_core.pseudo.fingerprint.checkpoint_fingerprint`);
    the teacher is loaded and ``ops.hold()`` (a GPU concurrency slot, say) held only when the shard
    must be computed: a finished shard returns without them. Images that cannot be pseudo-labeled
    are listed in the shard's ``rejected`` (see the module docstring). ``check_done=False`` computes
    the shard without looking for a finished output first: for a caller that has just found none
    (:func:`done_shards`); on S3 the look costs two requests. With ``ops.read_ahead``, images it
    holds are taken from it, and the first batch of ``next_shard`` (labeled next by this thread, if
    known) is read into it while this shard's last batch is labeled.
    """
    url = shard_url(out_dir, shard)
    expected = shard_fingerprint(fingerprint, root, shard)
    found = existing_output(url, expected, run.options) if check_done else None
    if found is not None:
        return _finished(shard, url, found)
    for image in shard.images:
        check_image_id(image)
    with ops.hold():
        then = next_shard.images[:run.batch_size] if next_shard is not None else []
        return _compute_shard(shard, root, url, expected, run.load_teacher(), run, ops, then)


def _on_device(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` on ``device``; a model there already (a cached teacher, shard after shard) is not
    walked again: ``Module.to`` visits every module, at every shard."""
    first, target = next(model.parameters(), None), torch.device(device)
    there = first is not None and first.device.type == target.type and target.index in (None, first.device.index)
    return model if there else model.to(target)


def _compute_shard(shard: Shard, root: str, url: str, expected: str, teacher: Teacher, run: ShardRun,
                   ops: LabelingOps, then: Sequence[UnlabeledImage] = ()) -> ShardSummary:
    """Every image of ``shard`` pseudo-labeled by ``teacher`` and written to ``url`` (fingerprint ``expected``)."""
    _on_device(teacher.model, run.device).eval()
    columns, outcome = ShardColumns(teacher.label_to_category), ShardOutcome()
    batches = [shard.images[i:i + run.batch_size] for i in range(0, len(shard.images), run.batch_size)]
    reading = ImageReading(root, run.options, teacher.check_image, run.max_pixels)
    with contextlib.closing(read_batches(batches, reading, run.device, ahead=ops.read_ahead, then=then)) as reads:
        for _ in tqdm(batches, desc=shard.name, disable=not run.progress, unit="batch"):
            ops.stop.check()  # a stopped run leaves this shard unwritten: it is redone when the run resumes
            with timed(ops.clock, "read"):  # the wait for this batch's images (read while the last was labeled)
                read = next(reads)
            _pseudo_label_batch(teacher, read, root, columns, outcome, ops.clock)
    outcome.check(shard)
    meta = {"fingerprint": expected, "shard": shard.name, "images": outcome.done, "rejected": outcome.rejected}
    table = predictions_table(columns.columns(), meta)
    write_shard(url, table, run.options)
    return ShardSummary(shard.name, url, len(outcome.done), table.num_rows, len(outcome.rejected), False)


def _planned(plan_url: str, index: int, options: Mapping[str, Any] | None, plans: PlanCache | None,
             expected: str | None = None) -> tuple[str, list[Shard]]:
    """(root, every planned shard) of a plan holding shard ``index`` (of digest ``expected``, if given)."""
    root, shards = plans.read(plan_url, options, expected) if plans is not None else read_plan(plan_url, options)
    if not 0 <= index < len(shards):
        raise IndexError(f"{plan_url}: no shard {index} (the plan has {len(shards)})")
    return root, shards


@dataclass(frozen=True)
class ShardJob:
    """What every shard task of one pseudo-labeling shares: the teacher, its transforms and
    fingerprint, the plan, where the shards go, and how to run (``device`` is resolved where the
    task runs: a GPU worker may run what a laptop planned)."""

    checkpoint: str
    plan_url: str
    out_dir: str
    tta: MultiTransformSettings
    fingerprint: str
    device: str = "auto"
    batch_size: int = 4
    plan_digest: str | None = None  # as planned (PlanSummary.digest): tasks find the plan in their cache at once
    # unlabeled.max_pixels: larger images are rejected before decoding (``fingerprint`` includes it:
    # dd_core.pseudo.fingerprint.checkpoint_fingerprint)
    max_pixels: int | None = MAX_PIXELS

    def parameters(self) -> dict[str, Any]:
        """As JSON values: the parameters of a flow run that labels shards on another worker."""
        return {**dataclasses.asdict(self), "tta": self.tta.identity()}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> "ShardJob":
        return cls(**{**parameters, "tta": MultiTransformSettings.from_identity(parameters["tta"])})


def labeled_after(indices: Sequence[int]) -> list[int | None]:
    """For shards ``indices`` labeled one after another by one thread, the shard each is followed by
    (None for the last): the ``next_index`` of :func:`pseudo_label_planned_shard`."""
    return [*indices[1:], None]


def pseudo_label_planned_shard(job: ShardJob, index: int, *, device: str, options: Mapping[str, Any] | None = None,
                               progress: bool = False, check_done: bool = True, next_index: int | None = None,
                               ops: LabelingOps = LabelingOps()) -> ShardSummary:
    """Pseudo-label shard ``index`` of the job's plan on ``device`` (what one shard task does); the
    teacher is loaded once into ``ops.teachers`` and shared with the next shards, the plan read once
    into ``ops.plans`` (or each read for this shard alone without them). ``check_done`` and ``ops``
    as in :func:`pseudo_label_shard`; ``next_index``: the shard this thread labels next, if known,
    whose first images ``ops.read_ahead`` reads meanwhile (an index outside the plan is no shard)."""
    root, shards = _planned(job.plan_url, index, options, ops.plans, job.plan_digest)
    following = shards[next_index] if next_index is not None and 0 <= next_index < len(shards) else None

    def load() -> Teacher:
        fresh = lambda: teacher_from_checkpoint(job.checkpoint, job.tta, options)  # noqa: E731
        return ops.teachers.get(job.fingerprint, fresh) if ops.teachers is not None else fresh()

    run = ShardRun(load, options, device, job.batch_size, job.max_pixels, progress)
    return pseudo_label_shard(shards[index], root, job.out_dir, job.fingerprint, run, check_done=check_done,
                              next_shard=following, ops=ops)


def done_shards(plan_url: str, out_dir: str, fingerprint: str, options: Mapping[str, Any] | None = None,
                threads: int = READ_THREADS) -> dict[int, ShardSummary]:
    """The planned shards this teacher and transform set pseudo-labeled already, by index: what a
    resumed run need not start a task for. One listing of ``out_dir``, then the Parquet footers of
    the planned shards found in it, ``threads`` at once; a shard of another fingerprint is not done."""
    root, shards = read_plan(plan_url, options)
    present = set(list_files(out_dir, (".parquet",), options))
    candidates = [(index, shard) for index, shard in enumerate(shards) if f"{shard.name}.parquet" in present]

    def check(candidate: tuple[int, Shard]) -> tuple[int, ShardSummary | None]:
        index, shard = candidate
        url = shard_url(out_dir, shard)
        found = existing_output(url, shard_fingerprint(fingerprint, root, shard), options)
        return index, None if found is None else _finished(shard, url, found)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="omnidistill-done") as pool:
        return {index: summary for index, summary in pool.map(check, candidates) if summary is not None}


def finished_shards(plan_url: str, out_dir: str, fingerprint: str, options: Mapping[str, Any] | None = None,
                    indices: Sequence[int] | None = None) -> list[ShardSummary]:
    """Summaries of planned shards pseudo-labeled elsewhere (other workers, other machines), from
    their Parquet footers alone; raises :class:`ShardError` naming every shard missing or made by
    another model or transform set."""
    root, shards = read_plan(plan_url, options)
    wanted = range(len(shards)) if indices is None else indices
    summaries, missing = [], []
    for index in wanted:
        if not 0 <= index < len(shards):
            raise IndexError(f"{plan_url}: no shard {index} (the plan has {len(shards)})")
        url = shard_url(out_dir, shards[index])
        found = existing_output(url, shard_fingerprint(fingerprint, root, shards[index]), options)
        if found is None:
            missing.append(url)
        else:
            summaries.append(_finished(shards[index], url, found))
    if missing:
        raise ShardError(f"{len(missing)} shard(s) missing or pseudo-labeled by another teacher/transform set "
                         f"(fingerprint {fingerprint}): {', '.join(missing)}")
    return summaries
