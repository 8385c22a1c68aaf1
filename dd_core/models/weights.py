"""Published weights: torchvision's names (or a state dict's URL or path), checked against a preset,
fetched by torchvision's own loader into torch's cache.

``ModelSpec.backbone_weights`` names an ImageNet classifier (``ResNet50_Weights.IMAGENET1K_V1``) and
``ModelSpec.weights`` a whole detector (``KeypointRCNN_ResNet50_FPN_Weights.COCO_V1``). Whether a
name fits a preset is decided without downloading: torchvision's model and ours are built on the
meta device (shapes, no memory) and their state-dict shapes compared. A detector's heads whose shape
depends on the data set (categories, keypoints) are made anew; every other tensor must fit.

Named weights are fetched by ``Weights.get_state_dict`` (torch.hub: ``$TORCH_HOME/hub/checkpoints/``,
hash check on download, progress bar). A file already there under its published name is read
without downloading; with ``OMNIDISTILL_OFFLINE=1`` nothing is downloaded at all.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

if TYPE_CHECKING:
    from dd_core.models.spec import ModelSpec

log = logging.getLogger(__name__)

OFFLINE_ENV = "OMNIDISTILL_OFFLINE"
# Detector heads whose shape follows the data set (categories, keypoints): made anew when they differ.
DATA_SET_HEADS = ("roi_heads.box_predictor", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor")
# Detectron-trained detectors whose frozen BatchNorm had no epsilon: torchvision sets eps 0 after
# loading them (overwrite_eps in its builders), and so do we (ModelSpec.resolved_norm_eps).
ZERO_EPS_WEIGHTS = ("KeypointRCNN_ResNet50_FPN_Weights.COCO_V1", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1")
_ZERO_EPS_FILES = ("keypointrcnn_resnet50_fpn_coco-fc266e95.pth", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
_NAME = re.compile(r"\w+_Weights\.\w+")
_EXAMPLES = {"model.backbone_weights": "ResNet50_Weights.IMAGENET1K_V1",
             "model.weights": "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1"}

Shapes = dict[str, tuple[int, ...]]


def frozen_norm_eps(weights: str | None) -> float:
    """The frozen BatchNorm epsilon a model started from ``weights`` runs with: 0 for the detectors
    torchvision loads with eps 0 (by name, or their published file), else torchvision's 1e-5."""
    if weights and (weights in ZERO_EPS_WEIGHTS or os.path.basename(urlparse(weights).path) in _ZERO_EPS_FILES):
        return 0.0
    return 1e-5


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
        raise WeightsError(f"{field}: {name!r} is not a torchvision weights name (expected e.g. "
                           f"{_EXAMPLES.get(field, _EXAMPLES['model.weights'])}; torchvision.models."
                           f"get_model_weights(<model>) lists them)") from None


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
def published_shapes(name: str) -> tuple[str, Shapes]:
    """The builder of the weights ``name`` and its state-dict shapes, from torchvision's model built
    on the meta device with the weights' own categories (and keypoints); a classifier without ``fc``."""
    from torchvision.models import get_model

    weights = torchvision_weights(name)
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
            builder, theirs = published_shapes(text)
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


def _from_hub(url: str, what: str, field: str, load: Any) -> dict[str, torch.Tensor]:
    """torch.hub's cached file of ``url``, downloaded first if missing (unless offline)."""
    path = cached_file(url)
    place = f"without network, download {url} elsewhere and place it at {path} ($TORCH_HOME/hub/checkpoints/)"
    if not os.path.exists(path) and os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsError(f"{field}: {what} is not in torch's cache and {OFFLINE_ENV} is set; {place}")
    try:
        return load()
    except OSError as exc:  # urllib's URLError, HTTPError, timeouts
        raise WeightsError(f"{field}: cannot download {what} ({getattr(exc, 'reason', exc)}); {place}") from None
    except RuntimeError as exc:  # a hash that does not match, a truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{field}: {what}: {path} is unreadable or not the published file ({first}); "
                           f"delete it and try again, or {place}") from None


def fetch_state_dict(text: str, field: str = "model.weights", options: Mapping[str, Any] | None = None
                     ) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights name, an http(s) URL (both through torch's cache) or
    a path / ``s3://`` URL of a state dict (a checkpoint's ``model`` is taken)."""
    if is_weights_name(text):
        weights = torchvision_weights(text, field)
        state = _from_hub(weights.url, f"{text} ({weights.url})", field,
                          lambda: weights.get_state_dict(progress=True, check_hash=True, map_location="cpu",
                                                         weights_only=True))
    elif text.startswith(("http://", "https://")):
        state = _from_hub(text, text, field, lambda: torch.hub.load_state_dict_from_url(
            text, map_location="cpu", progress=True, weights_only=True))
    else:
        from dd_core.storage import read_bytes

        try:
            state = torch.load(io.BytesIO(read_bytes(text, options)), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise WeightsError(f"{field}: {text}: no such file (expected a torchvision weights name such as "
                               f"{_EXAMPLES.get(field, _EXAMPLES['model.weights'])}, a URL or a state dict's path)") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{field}: {text} holds no state dict (expected a dict of tensors)")
    return state


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


def check_start_weights(spec: "ModelSpec", options: Mapping[str, Any] | None = None) -> list[str]:
    """Before a run: the weights ``spec`` starts from fit it and are at hand (downloaded into torch's
    cache now, not in a training task); the detector heads that will be made anew.

    A name is checked on the meta device first, so a wrong one fails without downloading; a URL or
    path is read and its shapes checked.
    """
    check_fits(spec)  # the names, before anything is downloaded
    shapes: dict[str, Shapes] = {}
    for field, role, text in (("model.backbone_weights", "backbone", spec.backbone_weights),
                              ("model.weights", "detector", spec.weights)):
        if text and is_weights_name(text):
            if not os.path.exists(cached_file(torchvision_weights(text, field).url)):
                fetch_state_dict(text, field)
        elif text:
            state = fetch_state_dict(text, field, options)
            if role == "backbone":
                state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            shapes[role] = state_shapes(state)
    return check_fits(spec, **shapes)
