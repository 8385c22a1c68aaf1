"""Published weights: torchvision's names (or a state dict's URL or path), checked against a preset,
fetched by torchvision's own loader into torch's cache.

``ModelSpec.backbone_weights`` names an ImageNet classifier (``ResNet50_Weights.IMAGENET1K_V1``) and
``ModelSpec.weights`` a whole detector (``KeypointRCNN_ResNet50_FPN_Weights.COCO_V1``). Whether a
name fits a preset is decided without downloading: torchvision's model and ours are built on the
meta device (shapes, no memory) and their state-dict shapes compared. A detector's heads whose shape
depends on the data set (categories, keypoints) are made anew; every other tensor must fit.

Named weights are fetched as ``Weights.get_state_dict`` fetches them (torch.hub's cache,
``$TORCH_HOME/hub/checkpoints/``; hash check on download; progress bar), by :func:`download_file`,
which unlike torch.hub gives up on a server that stops answering. A file already there under its published name is read
without downloading; with ``OMNIDISTILL_OFFLINE=1`` nothing is downloaded at all.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import os
import pickle
import re
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlparse

import torch
from torch import nn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from dd_core.models.spec import ModelSpec

log = logging.getLogger(__name__)

OFFLINE_ENV = "OMNIDISTILL_OFFLINE"
# Seconds a download may wait on the network (connecting, or between two reads) before it is an error.
TIMEOUT_ENV = "OMNIDISTILL_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
# Detector heads whose shape follows the data set (categories, keypoints): made anew when they differ.
DATA_SET_HEADS = ("roi_heads.box_predictor", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor")
# Detectron-trained detectors whose frozen BatchNorm had no epsilon: torchvision sets eps 0 after
# loading them (overwrite_eps in its builders), and so do we (ModelSpec.resolved_norm_eps).
ZERO_EPS_WEIGHTS = ("KeypointRCNN_ResNet50_FPN_Weights.COCO_V1", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1")
_NAME = re.compile(r"\w+_Weights\.\w+")
_EXAMPLES = {"model.backbone_weights": "ResNet50_Weights.IMAGENET1K_V1",
             "model.weights": "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1"}

Shapes = dict[str, tuple[int, ...]]


def _full_name(weights: Any) -> str:
    """``<Enum>.<member>`` of a torchvision weights enum member (``DEFAULT`` is an alias of a member)."""
    return f"{type(weights).__name__}.{weights.name}"


@functools.lru_cache(maxsize=1)
def _zero_eps_files() -> dict[str, tuple[str, float]]:
    """The published files of :data:`ZERO_EPS_WEIGHTS`: name -> (their sha256's first hex digits, as
    torch.hub checks them, from the name; their size in MiB, torchvision's ``_file_size``)."""
    from torchvision.models import get_weight

    out = {}
    for name in ZERO_EPS_WEIGHTS:
        weights = get_weight(name)
        file = os.path.basename(urlparse(weights.url).path)
        out[file] = (torch.hub.HASH_REGEX.search(file).group(1), float(weights.meta["_file_size"]))
    return out


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a file replaced is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_published_file(path: str, files: Mapping[str, tuple[str, float]] | None = None) -> bool:
    """A local file that is one of the published ``files`` (default: those of :data:`ZERO_EPS_WEIGHTS`)
    under another name: its size and the first hex digits of its sha256 are the published file's
    (hashed only when the size is)."""
    if not os.path.isfile(path):
        return False
    stat = os.stat(path)
    for prefix, mib in (_zero_eps_files() if files is None else files).values():
        if abs(stat.st_size / 2**20 - mib) < 1e-3 and _sha256(path, stat.st_size, stat.st_mtime_ns).startswith(prefix):
            return True
    return False


def frozen_norm_eps(weights: str | None) -> float:
    """The frozen BatchNorm epsilon a model started from ``weights`` runs with: 0 for the detectors
    torchvision loads with eps 0 (by name, ``DEFAULT`` included, or their published file under its own
    name or, local or in torch's cache, under another), else torchvision's 1e-5.

    A copy elsewhere (``s3://``) is not recognised: set ``model.norm_eps`` (``ModelSpec.norm_eps``)."""
    if not weights:
        return 1e-5
    if is_weights_name(weights):
        try:
            return 0.0 if _full_name(torchvision_weights(weights)) in ZERO_EPS_WEIGHTS else 1e-5
        except WeightsError:  # refused with its own message where the weights are read
            return 1e-5
    if os.path.basename(urlparse(weights).path) in _zero_eps_files():
        return 0.0
    path = cached_file(weights) if weights.startswith(("http://", "https://")) else weights
    return 0.0 if is_published_file(path) else 1e-5


class WeightsError(ValueError):
    """Weights that do not fit the model, or cannot be had: one line, before anything runs."""


def is_weights_name(text: str) -> bool:
    """``ResNet50_Weights.IMAGENET1K_V1``-like: torchvision's ``<Enum>.<member>`` (not a path or URL)."""
    return bool(_NAME.fullmatch(text))


def torchvision_weights(name: str, field: str = "model.weights") -> Any:
    """torchvision's weights enum member of ``name`` (``field`` names the setting in errors)."""
    from torchvision.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError):
        close = _same_but_case(name)
        hint = f"did you mean {close}?" if close else \
            f"expected e.g. {_EXAMPLES.get(field, _EXAMPLES['model.weights'])}"
        raise WeightsError(f"{field}: {name!r} is not a torchvision weights name ({hint}; torchvision.models."
                           f"get_model_weights(<model>) lists them)") from None


def _same_but_case(name: str) -> str | None:
    """torchvision's weights name spelled as ``name`` but for letter case (``resnet50_weights.imagenet1k_v1``)."""
    return _all_names().get(name.strip().lower())


@functools.lru_cache(maxsize=1)
def _all_names() -> dict[str, str]:
    from torchvision.models import get_model_weights, list_models

    out = {}
    for model_name in list_models():
        enum_class = get_model_weights(model_name)
        for member in [*enum_class, "DEFAULT"]:
            full = f"{enum_class.__name__}.{member if member == 'DEFAULT' else member.name}"
            out.setdefault(full.lower(), full)
    return out


@functools.lru_cache(maxsize=None)
def _builder_of(enum_class: type) -> str:
    import torchvision
    from torchvision.models import get_model_weights, list_models

    for module in (torchvision.models, torchvision.models.detection):
        for model_name in list_models(module=module):
            if get_model_weights(model_name) is enum_class:
                return model_name
    raise WeightsError(f"{enum_class.__name__}: no torchvision classification or detection model uses these weights")


def _shapes(module: nn.Module) -> Shapes:
    # num_batches_tracked: BatchNorm's counter, which FrozenBatchNorm (and published detectors) lack.
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def state_shapes(state: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


@functools.lru_cache(maxsize=None)
def published_shapes(name: str, field: str = "model.weights") -> tuple[str, Shapes]:
    """The builder of the weights ``name`` and its state-dict shapes, from torchvision's model built
    on the meta device with the weights' own categories (and keypoints); a classifier without ``fc``."""
    from torchvision.models import get_model

    weights = torchvision_weights(name, field)
    builder = _builder_of(type(weights))
    meta = weights.meta
    kwargs: dict[str, Any] = {"weights": None, "num_classes": len(meta["categories"])}
    if "keypoint_names" in meta:
        kwargs["num_keypoints"] = len(meta["keypoint_names"])
    is_detector = builder in _detection_builders()
    if is_detector:
        kwargs["weights_backbone"] = None
    with torch.device("meta"):
        model = get_model(builder, **kwargs)
    shapes = _shapes(model)
    if not is_detector:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("fc.")}
    return builder, shapes


@functools.lru_cache(maxsize=1)
def _detection_builders() -> frozenset[str]:
    import torchvision
    from torchvision.models import list_models

    return frozenset(list_models(module=torchvision.models.detection))


def model_shapes(spec: "ModelSpec") -> tuple[Shapes, Shapes]:
    """State-dict shapes of ``spec``'s model and of its backbone's ResNet body (built on the meta device)."""
    from dd_core.models.builders import build_model

    bare = dataclasses.replace(spec, weights=None, backbone_weights=None, norm="frozen")
    with torch.device("meta"):
        model = build_model(bare)
    return _shapes(model), _shapes(model.backbone.body)


def compare(theirs: Shapes, ours: Shapes) -> tuple[list[str], list[str]]:
    """``(heads made anew, tensors that do not fit)`` when ``theirs`` is loaded into ``ours``.

    A data-set head (:data:`DATA_SET_HEADS`) is made anew when one of its tensors is missing from
    ``theirs`` or of another shape; tensors of ``theirs`` in heads ``ours`` lacks (a keypoint head into
    a box model) are left out. Anything else that differs does not fit.
    """
    remade, unfit = set(), []
    for key, shape in ours.items():
        if theirs.get(key) != shape:
            head = next((h for h in DATA_SET_HEADS if key.startswith(h + ".")), None)
            if head is None:
                unfit.append(key)
            else:
                remade.add(head)
    unfit += [k for k in theirs if k not in ours and not k.startswith(DATA_SET_HEADS)]
    return sorted(remade), unfit


def _fitting_presets(theirs: Shapes, spec: "ModelSpec", backbone: bool) -> list[str]:
    from dd_core.models.presets import PRESETS

    fits = []
    for preset in PRESETS:
        model, body = model_shapes(dataclasses.replace(spec, preset=preset))
        if not compare(theirs, body if backbone else model)[1]:
            fits.append(preset)
    return fits


def check_fits(spec: "ModelSpec", backbone: Shapes | None = None, detector: Shapes | None = None) -> list[str]:
    """Refuse weights that do not fit ``spec``'s preset (naming the presets they fit); the detector
    heads that will be made anew. Shapes default to those of the named weights (no download); a URL
    or path without its shapes given is not checked."""
    model, body = model_shapes(spec)
    for field, text, theirs, ours in (("model.backbone_weights", spec.backbone_weights, backbone, body),
                                      ("model.weights", spec.weights, detector, model)):
        if not text or (theirs is None and not is_weights_name(text)):
            continue
        what = text
        if theirs is None:
            builder, theirs = published_shapes(text, field)
            what = f"{text} (torchvision's {builder})"
        remade, unfit = compare(theirs, ours)
        if unfit:
            fits = _fitting_presets(theirs, spec, backbone=field == "model.backbone_weights")
            raise WeightsError(f"{field}: {what} does not fit model.preset {spec.preset} for {spec.task} "
                               f"({len(unfit)} tensors differ, e.g. {unfit[0]}); it fits "
                               f"{', '.join(fits) if fits else 'none of the presets'}")
        if field == "model.weights":
            return remade
    return []


def cached_file(url: str) -> str:
    """Where torch.hub keeps (and looks for) the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def download_timeout() -> float:
    """Seconds a download waits on the network (``$OMNIDISTILL_DOWNLOAD_TIMEOUT``, default 30)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise WeightsError(f"{TIMEOUT_ENV}: expected seconds (a number > 0), got {text!r}") from None
    if not seconds > 0:
        raise WeightsError(f"{TIMEOUT_ENV}: expected seconds (a number > 0), got {text!r}")
    return seconds


def download_file(url: str, path: str, timeout: float, hash_prefix: str | None = None) -> None:
    """torch.hub's ``download_url_to_file``, with ``timeout`` (seconds without a byte) on this
    connection alone: torch.hub opens its connection without one, and a server that accepts and never
    answers would hold the input check forever. Written to a temporary file beside ``path`` and moved
    into place only when whole and, with ``hash_prefix``, when its sha256 starts with it (as torch.hub
    checks the published file names' hashes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    digest = hashlib.sha256()
    log.info("downloading %s to %s", url, path)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "torch.hub"}),
                                    timeout=timeout) as response, open(partial, "wb") as f, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     unit_divisor=1024) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                f.write(block)
                digest.update(block)
                bar.update(len(block))
        if hash_prefix and not digest.hexdigest().startswith(hash_prefix):
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "{digest.hexdigest()}")')
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


# What torch.load raises on a file that is not a state dict it may load: truncated or random bytes
# (RuntimeError, EOFError), pickled code refused by weights_only (UnpicklingError), a bad header (ValueError).
_UNLOADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError, IndexError)


# torch.load's advice around a weights_only refusal (to load without it: we never do), not its reason.
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    reasons = [line for line in lines if not line.startswith(_BOILERPLATE)] or lines
    return f"{type(exc).__name__}: {reasons[0].split('. Please use')[0][:200]}" if reasons else type(exc).__name__


def _from_hub(url: str, what: str, field: str, check_hash: bool) -> dict[str, torch.Tensor]:
    """torch.hub's cached file of ``url``, downloaded first if missing (unless offline); with
    ``check_hash`` the download's sha256 must start with the hex digits of its file name."""
    path = cached_file(url)
    place = f"without network, download {url} elsewhere and place it at {path} ($TORCH_HOME/hub/checkpoints/)"
    if not os.path.exists(path) and os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsError(f"{field}: {what} is not in torch's cache and {OFFLINE_ENV} is set; {place}")
    timeout = download_timeout()
    try:
        if not os.path.exists(path):
            match = torch.hub.HASH_REGEX.search(os.path.basename(path)) if check_hash else None
            download_file(url, path, timeout, match.group(1) if match else None)
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:  # urllib's URLError, HTTPError, timeouts
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            reason = f"no answer in {timeout:g} s, {TIMEOUT_ENV}"
        raise WeightsError(f"{field}: cannot download {what} ({reason}); {place}") from None
    except _UNLOADABLE as exc:  # a hash that does not match, a truncated file, pickled code
        raise WeightsError(f"{field}: {what}: {path} is unreadable or not the published file ({_first_line(exc)}); "
                           f"delete it and try again, or {place}") from None


def fetch_state_dict(text: str, field: str = "model.weights", options: Mapping[str, Any] | None = None
                     ) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights name, an http(s) URL (both through torch's cache) or
    a path / ``s3://`` URL of a state dict (a checkpoint's ``model`` is taken)."""
    if is_weights_name(text):
        weights = torchvision_weights(text, field)
        state = _from_hub(weights.url, f"{text} ({weights.url})", field, check_hash=True)
    elif text.startswith(("http://", "https://")):
        state = _from_hub(text, text, field, check_hash=False)
    else:
        state = _read_state(text, field, options)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{field}: {text} holds no state dict (expected a dict of tensors)")
    return state


def _read_state(text: str, field: str, options: Mapping[str, Any] | None) -> Any:
    """A path or ``s3://`` URL loaded by torch (tensors only); every failure one line naming the file."""
    from dd_core.storage import read_bytes

    try:
        data = read_bytes(text, options)
    except FileNotFoundError:
        close = _same_but_case(text)  # a name in the wrong case is not a name (and no file either)
        raise WeightsError(f"{field}: {text}: no such file (" + (
            f"did you mean the torchvision weights name {close}?)" if close else
            f"expected a torchvision weights name such as {_EXAMPLES.get(field, _EXAMPLES['model.weights'])}, "
            f"a URL or a state dict's path)")) from None
    except Exception as exc:  # permissions, missing or refused S3 credentials (botocore's own errors), a directory
        raise WeightsError(f"{field}: {text} cannot be read ({_first_line(exc)}); check the path and the "
                           f"storage's credentials and permissions") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except _UNLOADABLE as exc:
        raise WeightsError(f"{field}: {text} is not a state dict torch can load safely ({_first_line(exc)}); "
                           f"expected a file saved by torch.save(model.state_dict()), tensors only") from None


def load_detector_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``; data-set heads of another shape stay as initialised (logged). The heads made anew."""
    remade, unfit = compare(state_shapes(state), _shapes(model))
    if unfit:
        raise WeightsError(f"model.weights: {source} does not fit the model ({len(unfit)} tensors differ, "
                           f"e.g. {unfit[0]})")
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and not k.startswith(tuple(h + "." for h in remade))}
    model.load_state_dict(kept, strict=False)
    if remade:
        log.info("model.weights %s: %s made anew (their shape follows the data set's categories or keypoints, "
                 "not the weights'); every other tensor loaded", source, ", ".join(remade))
    return remade


class FileChecks:
    """What the input check found in a weights file at hand, by (what was checked, path, size, mtime_ns): a run is checked
    twice (by the command line, then in the flow), and reading a detector's file takes seconds. A file
    rewritten is read again; a check that fails is not kept."""

    def __init__(self, maxsize: int = 16):
        self.maxsize = maxsize
        self.results: dict[tuple[str, str, int, int], Any] = {}
        self.reads = 0  # checks run (files read), for those who want to know

    @staticmethod
    def _key(what: str, path: str) -> tuple[str, str, int, int] | None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return what, os.path.abspath(path), stat.st_size, stat.st_mtime_ns

    def get(self, what: str, path: str, check: Callable[[], Any]) -> Any:
        """``check()``'s result (``what`` it checks) for the file at ``path`` as it is now, run only if not kept."""
        key = self._key(what, path)
        if key is not None and key in self.results:
            return self.results[key]
        self.reads += 1
        result = check()
        key = key or self._key(what, path)  # downloaded by the check
        if key is not None:
            if len(self.results) >= self.maxsize:
                self.results.pop(next(iter(self.results)))
            self.results[key] = result
        return result

    def clear(self) -> None:
        self.results.clear()
        self.reads = 0


CHECKED_FILES = FileChecks()
"""This process's :class:`FileChecks` of :func:`check_start_weights`."""


def check_start_weights(spec: "ModelSpec", options: Mapping[str, Any] | None = None) -> list[str]:
    """Before a run: the weights ``spec`` starts from fit it and are at hand (downloaded into torch's
    cache now, not in a training task); the detector heads that will be made anew.

    A name is checked on the meta device first, so a wrong one fails without downloading; then its
    file (already in torch's cache, or downloaded) is read and must hold the published tensors: a
    truncated, damaged or other model's file under the published name fails here, not in a training
    task. A URL or path is read and its shapes checked.
    """
    if not spec.backbone_weights and not spec.weights:  # random weights: nothing to check (no model built)
        return []
    check_fits(spec)  # the names, before anything is downloaded
    shapes: dict[str, Shapes] = {}
    for field, role, text in (("model.backbone_weights", "backbone", spec.backbone_weights),
                              ("model.weights", "detector", spec.weights)):
        if text and is_weights_name(text):
            CHECKED_FILES.get(f"{field} {text}", cached_file(torchvision_weights(text, field).url),
                              functools.partial(_check_named, text, field))
        elif text:
            read = functools.partial(_shapes_of, text, field, options, role)
            local = "://" not in text or text.startswith(("file://", "http://", "https://"))
            path = cached_file(text) if text.startswith(("http://", "https://")) else text.removeprefix("file://")
            shapes[role] = CHECKED_FILES.get(f"{role} shapes", path, read) if local else read()
    return check_fits(spec, **shapes)


def _check_named(name: str, field: str) -> None:
    check_published_file(name, field, fetch_state_dict(name, field))


def _shapes_of(text: str, field: str, options: Mapping[str, Any] | None, role: str) -> Shapes:
    state = fetch_state_dict(text, field, options)
    if role == "backbone":
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return state_shapes(state)


def check_published_file(name: str, field: str, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse a file in torch's cache under ``name``'s published file name that does not hold the
    tensors of torchvision's model of ``name`` (torch.hub checks the hash on download only)."""
    builder, theirs = published_shapes(name, field)
    got = state_shapes(state)
    if builder not in _detection_builders():  # a classifier's fc is left out of the published shapes
        got = {k: v for k, v in got.items() if not k.startswith("fc.")}
    if got != theirs:
        differ = sorted(k for k in theirs.keys() | got.keys() if theirs.get(k) != got.get(k))
        url = torchvision_weights(name, field).url
        raise WeightsError(f"{field}: {name}: {cached_file(url)} is not the published file (its tensors are not "
                           f"those of torchvision's {builder}: {len(differ)} differ, e.g. {differ[0]}); delete it, or "
                           f"replace it with {url}")
