"""Published weights by torchvision's names, from a torch cache filled with torchvision's own
randomly initialised models (no test downloads anything; random weights say nothing about accuracy)."""

import logging

import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

from dd_core.models import ModelSpec, build_model
from dd_core.models.weights import (OFFLINE_ENV, WeightsError, cached_file, check_fits, check_start_weights,
                                    fetch_state_dict, torchvision_weights)
from tests.models.published import fill_cache

KEYPOINT_RCNN = "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1"
RESNET18 = "ResNet18_Weights.IMAGENET1K_V1"


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A torch cache holding torchvision's random ResNet-18 and Keypoint R-CNN under their published names."""
    home = tmp_path_factory.mktemp("torch_home")
    fill_cache(home, RESNET18, seed=1)
    fill_cache(home, KEYPOINT_RCNN, seed=2)
    return home


@pytest.fixture
def cache(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv(OFFLINE_ENV, "1")  # a file missing from the cache is an error, never a download
    return torch_home


@pytest.mark.parametrize("task, preset, backbone, remade", [
    ("keypoints", "slim", "ResNet18_Weights.IMAGENET1K_V1", []),
    ("keypoints", "r50-fpn", "ResNet50_Weights.IMAGENET1K_V1", []),
    ("detection", "r50-fpn", "ResNet50_Weights.IMAGENET1K_V2", []),
    ("keypoints", "r101-fpn", "ResNet101_Weights.IMAGENET1K_V2", []),
    ("detection", "x101-64x4d-fpn", "ResNeXt101_64X4D_Weights.IMAGENET1K_V1", []),
])
def test_each_backbone_name_fits_its_preset_without_a_download(task, preset, backbone, remade, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: fitting is decided on the meta device
    assert check_fits(ModelSpec(task=task, preset=preset, backbone_weights=backbone)) == remade
    assert not any(tmp_path.rglob("*.pth"))


@pytest.mark.parametrize("task, num_classes, num_keypoints, weights, remade", [
    ("keypoints", 2, 17, KEYPOINT_RCNN, []),
    ("keypoints", 2, 5, KEYPOINT_RCNN, ["roi_heads.keypoint_predictor"]),
    ("keypoints", 4, 5, KEYPOINT_RCNN, ["roi_heads.box_predictor", "roi_heads.keypoint_predictor"]),
    ("detection", 2, 17, "KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY", []),  # its keypoint head left out
    ("detection", 91, 17, "FasterRCNN_ResNet50_FPN_Weights.COCO_V1", []),
    ("keypoints", 2, 17, "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
     ["roi_heads.box_predictor", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor"]),
])
def test_each_detector_name_fits_r50_fpn_and_names_the_heads_made_anew(task, num_classes, num_keypoints, weights,
                                                                        remade):
    spec = ModelSpec(task=task, preset="r50-fpn", num_classes=num_classes, num_keypoints=num_keypoints, weights=weights)
    assert check_fits(spec) == remade


@pytest.mark.parametrize("spec, message", [
    (ModelSpec(preset="slim", backbone_weights="ResNet50_Weights.IMAGENET1K_V1"),
     "model.backbone_weights: ResNet50_Weights.IMAGENET1K_V1 (torchvision's resnet50) does not fit model.preset "
     "slim for keypoints (188 tensors differ, e.g. layer1.0.conv1.weight); it fits r50-fpn"),
    (ModelSpec(preset="x101-32x4d-fpn", backbone_weights="ResNeXt101_32X8D_Weights.IMAGENET1K_V1"),
     "it fits none of the presets"),
    (ModelSpec(task="detection", preset="r50-fpn", num_classes=91, weights="FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"),
     "model.weights: FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1 (torchvision's fasterrcnn_resnet50_fpn_v2) does not "
     "fit model.preset r50-fpn for detection"),
    (ModelSpec(preset="slim", weights=KEYPOINT_RCNN), "does not fit model.preset slim for keypoints"),
])
def test_a_name_that_does_not_fit_the_preset_is_one_line(spec, message):
    with pytest.raises(WeightsError) as error:
        check_fits(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["ResNet50_Weights.IMAGENET9", "ResNet5O_Weights.IMAGENET1K_V1"])
def test_a_wrong_name_is_one_line(name):
    with pytest.raises(WeightsError, match=rf"model.weights: '{name}' is not a torchvision weights name \(expected "
                                           rf"e.g. {KEYPOINT_RCNN}; "):
        torchvision_weights(name)


def test_offline_with_an_empty_cache_names_the_weights_the_url_and_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    url = "https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
    with pytest.raises(WeightsError) as error:
        check_start_weights(ModelSpec(preset="r50-fpn", weights=KEYPOINT_RCNN))
    assert str(error.value) == (
        f"model.weights: {KEYPOINT_RCNN} ({url}) is not in torch's cache and {OFFLINE_ENV} is set; without network, "
        f"download {url} elsewhere and place it at {tmp_path}/hub/checkpoints/keypointrcnn_resnet50_fpn_coco-fc266e95.pth "
        f"($TORCH_HOME/hub/checkpoints/)")


def test_a_download_that_fails_is_one_line_naming_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    url = "http://127.0.0.1:9/models/resnet18-f37072fd.pth"  # the discard port: refused at once, never served
    with pytest.raises(WeightsError, match=rf"model.backbone_weights: cannot download {url} \(.*\); without network, "
                                           rf"download {url} elsewhere and place it at {tmp_path}/hub/checkpoints/"
                                           rf"resnet18-f37072fd.pth"):
        fetch_state_dict(url, "model.backbone_weights")


def test_a_backbone_by_name_holds_the_cached_tensors_and_freezes_as_torchvision(cache):
    cached = torch.load(cached_file(torchvision_weights(RESNET18).url), weights_only=True)
    model = build_model(ModelSpec(preset="slim", backbone_weights=RESNET18))
    body = model.backbone.body
    for key, value in body.state_dict().items():
        assert torch.equal(value, cached[key]), key
    # torchvision's trainable_backbone_layers=3 over pretrained weights: conv1 and layer1 frozen.
    frozen = {n for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in body.named_parameters() if n.startswith(("conv1", "layer1"))}
    assert type(body.bn1).__name__ == "FrozenBatchNorm2d"
    all_trained = build_model(ModelSpec(preset="slim", backbone_weights=RESNET18, trainable_backbone_layers=5))
    assert all(p.requires_grad for p in all_trained.backbone.body.parameters())


def test_a_teacher_started_by_name_keeps_the_cached_tensors_in_its_frozen_layers(cache, tiny_coco):
    from dd_core.data.coco import load_coco
    from dd_core.models import ModelConfig
    from dd_core.train.detector import TrainingInputs, spec_for, train_detector
    from dd_core.train.loop import Runtime, TrainHooks
    from dd_core.train.settings import TrainConfig

    cached = torch.load(cached_file(torchvision_weights(RESNET18).url), weights_only=True)
    coco = load_coco(*tiny_coco)
    spec = spec_for("keypoints", coco, ModelConfig(backbone_weights=RESNET18, min_size=(64,), test_size=64,
                                                      max_size=96))
    trained = {}
    hooks = TrainHooks(on_step=lambda i, model, targets: trained.update(model.backbone.body.state_dict()))
    train_detector(spec, TrainingInputs(coco), TrainConfig(iterations=2, batch_size=2, warmup_iters=0), None,
                   runtime=Runtime(progress=False), hooks=hooks)
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.weight"):
        assert torch.equal(trained[key], cached[key]), key
    assert not torch.equal(trained["layer4.0.conv1.weight"], cached["layer4.0.conv1.weight"])  # trained on


def test_a_five_keypoint_model_from_the_coco_detector_remakes_only_its_keypoint_predictor(cache, caplog):
    cached = torch.load(cached_file(torchvision_weights(KEYPOINT_RCNN).url), weights_only=True)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="dd_core.models.weights"):
        model = build_model(ModelSpec(preset="r50-fpn", num_keypoints=5, weights=KEYPOINT_RCNN))
    assert f"model.weights {KEYPOINT_RCNN}: roi_heads.keypoint_predictor made anew" in caplog.text
    state = model.state_dict()
    assert state.keys() <= cached.keys()
    different = {k for k in state if state[k].shape != cached[k].shape or not torch.equal(state[k], cached[k])}
    assert different == {"roi_heads.keypoint_predictor.kps_score_lowres.weight",
                         "roi_heads.keypoint_predictor.kps_score_lowres.bias"}
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 5


def test_a_state_dict_from_a_file_starts_the_model_as_a_name_does(cache, tmp_path):
    path = tmp_path / "detector.pth"
    path.write_bytes(open(cached_file(torchvision_weights(KEYPOINT_RCNN).url), "rb").read())
    assert check_start_weights(ModelSpec(preset="r50-fpn", num_keypoints=5, weights=str(path))) == [
        "roi_heads.keypoint_predictor"]
    with pytest.raises(WeightsError, match=r"model.weights: .*detector.pth does not fit model.preset slim"):
        check_start_weights(ModelSpec(preset="slim", weights=str(path)))


def test_ours_predicts_exactly_as_torchvision_s_keypoint_rcnn_from_the_same_weights(cache):
    """The oracle: torchvision's keypointrcnn_resnet50_fpn loads the published name through its own
    builder (from the cache), ours through model.weights; same image, eval mode, identical outputs."""
    torch.manual_seed(0)
    image = torch.rand(3, 150, 200)
    reference = keypointrcnn_resnet50_fpn(weights=KEYPOINT_RCNN.split(".")[1], min_size=160, max_size=320).eval()
    ours = build_model(ModelSpec(preset="r50-fpn", weights=KEYPOINT_RCNN, min_size=(160,), test_size=160,
                                 max_size=320)).eval()
    assert ours.state_dict().keys() == reference.state_dict().keys()
    with torch.inference_mode():
        expected, got = reference([image])[0], ours([image])[0]
    assert len(expected["boxes"]) > 0
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_a_server_that_accepts_and_never_answers_is_one_line_after_the_timeout(tmp_path, monkeypatch):
    """torch.hub opens its connection without a timeout: a stalled server would hold the input check forever."""
    import socket
    import threading
    import time

    from dd_core.models.weights import TIMEOUT_ENV

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()  # accept, never answer
    url = f"http://127.0.0.1:{server.getsockname()[1]}/models/resnet18-f37072fd.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    outcome = []

    def fetch():
        try:
            fetch_state_dict(url, "model.backbone_weights")
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome.append(exc)

    start = time.monotonic()
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    while not accepted and time.monotonic() - start < 5:
        time.sleep(0.01)
    assert worker.is_alive() and socket.getdefaulttimeout() is None  # the timeout is the download's alone
    worker.join(timeout=20)
    server.close()
    assert not worker.is_alive(), "the download still waits on a server that never answers"
    assert time.monotonic() - start < 10 and accepted
    assert isinstance(outcome[0], WeightsError) and "\n" not in str(outcome[0])
    assert str(outcome[0]).startswith(f"model.backbone_weights: cannot download {url} (no answer in 0.5 s, "
                                      f"{TIMEOUT_ENV}); without network, download {url} elsewhere and place it at "
                                      f"{tmp_path}/hub/checkpoints/resnet18-f37072fd.pth")
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored


class _Code:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "is unreadable or not the published file"),
    ("code", "is unreadable or not the published file (UnpicklingError: "),
    ("other model", "is not the published file (its tensors are not those of torchvision's keypointrcnn_resnet50_fpn: "
                    "415 differ, e.g. backbone.body.bn1.bias); delete it, or replace it with https://"),
])
def test_a_damaged_or_other_file_under_the_published_name_is_refused_in_the_input_check(cache, tmp_path, monkeypatch,
                                                                                      damage, reason):
    """torch.hub checks the hash on download only: a file already in the cache is read and checked now."""
    home = tmp_path / "home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    path = home / "hub" / "checkpoints" / "keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
    path.parent.mkdir(parents=True)
    published = cache / "hub" / "checkpoints" / path.name
    if damage == "truncated":
        path.write_bytes(published.read_bytes()[:1_000_000])
    elif damage == "code":
        torch.save({"model": _Code()}, path)
    else:  # torchvision's ResNet-18 under the Keypoint R-CNN's name
        path.write_bytes((cache / "hub" / "checkpoints" / "resnet18-f37072fd.pth").read_bytes())
    with pytest.raises(WeightsError) as error:
        check_start_weights(ModelSpec(preset="r50-fpn", weights=KEYPOINT_RCNN))
    message = str(error.value)
    assert message.startswith(f"model.weights: {KEYPOINT_RCNN}") and "\n" not in message
    assert f"{path} {reason}" in message and "delete it" in message


@pytest.mark.parametrize("content, reason", [
    (lambda path: torch.save({"model": _Code()}, path),
     "is not a state dict torch can load safely (UnpicklingError: "),
    (lambda path: path.write_bytes(bytes(range(256)) * 4), "is not a state dict torch can load safely ("),
    (lambda path: path.mkdir(), "cannot be read (IsADirectoryError: "),
])
def test_a_state_dict_file_that_cannot_be_loaded_is_one_line(tmp_path, content, reason):
    path = tmp_path / "weights.pth"
    content(path)
    with pytest.raises(WeightsError) as error:
        fetch_state_dict(str(path), "model.backbone_weights")
    assert str(error.value).startswith(f"model.backbone_weights: {path} {reason}")
    assert "\n" not in str(error.value)


def test_a_bad_backbone_name_is_reported_under_backbone_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"^model.backbone_weights: 'ResNet50_Weights.IMAGENET9' is not a "
                                           r"torchvision weights name \(expected e.g. ResNet50_Weights.IMAGENET1K_V1;"):
        check_fits(ModelSpec(preset="r50-fpn", backbone_weights="ResNet50_Weights.IMAGENET9"))


@pytest.mark.parametrize("name, suggestion", [
    ("resnet50_weights.imagenet1k_v1", "ResNet50_Weights.IMAGENET1K_V1"),
    ("keypointrcnn_resnet50_fpn_weights.coco_v1", "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1"),
])
def test_a_name_in_the_wrong_case_says_which_name_was_meant(name, suggestion, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name
    with pytest.raises(WeightsError, match=rf"^model.weights: {name}: no such file \(did you mean the torchvision "
                                           rf"weights name {suggestion}\?\)$"):
        check_start_weights(ModelSpec(preset="r50-fpn", weights=name))


def test_default_resolves_to_its_member_for_the_frozen_norm_eps():
    assert ModelSpec(preset="r50-fpn", weights="KeypointRCNN_ResNet50_FPN_Weights.DEFAULT").resolved_norm_eps == 0
    assert ModelSpec(task="detection", weights="FasterRCNN_ResNet50_FPN_Weights.DEFAULT").resolved_norm_eps == 0
    assert ModelSpec(weights="KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY").resolved_norm_eps == 1e-5
    assert ModelSpec(weights="elsewhere/copy.pth", norm_eps=0.0).resolved_norm_eps == 0  # set by the user


def test_a_published_file_under_another_name_is_known_by_its_size_and_hash(tmp_path):
    import hashlib

    from dd_core.models.weights import is_published_file

    copy = tmp_path / "my-copy.pth"
    copy.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    prefix = hashlib.sha256(copy.read_bytes()).hexdigest()[:8]
    assert is_published_file(str(copy), {f"model-{prefix}.pth": (prefix, 1.0)})
    assert not is_published_file(str(copy), {"model-00000000.pth": ("00000000", 1.0)})  # another hash
    assert not is_published_file(str(copy), {f"model-{prefix}.pth": (prefix, 2.0)})  # another size: not hashed
    assert not is_published_file(str(tmp_path / "missing.pth"), {f"model-{prefix}.pth": (prefix, 1.0)})
    # Our random stand-in is not the published file: automatic eps stays torchvision's 1e-5.
    assert ModelSpec(weights=str(copy)).resolved_norm_eps == 1e-5


def test_a_download_lands_whole_in_torch_s_cache_and_a_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    """Served from loopback, as torch.hub would fetch it: the file under its name in the cache, then read from there."""
    import functools
    import hashlib
    import http.server
    import threading

    from dd_core.models.weights import download_file

    served = tmp_path / "served"
    served.mkdir()
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, served / "tiny.pth")
    digest = hashlib.sha256((served / "tiny.pth").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny.pth"
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
        monkeypatch.delenv(OFFLINE_ENV, raising=False)
        assert torch.equal(fetch_state_dict(url, "model.weights")["w"], state["w"])
        assert (tmp_path / "home/hub/checkpoints/tiny.pth").read_bytes() == (served / "tiny.pth").read_bytes()
        download_file(url, str(tmp_path / "ok/tiny.pth"), 5.0, digest[:8])
        assert (tmp_path / "ok/tiny.pth").exists()
        with pytest.raises(RuntimeError, match=f'invalid hash value \\(expected "00000000", got "{digest}"\\)'):
            download_file(url, str(tmp_path / "bad/tiny.pth"), 5.0, "00000000")
        assert list((tmp_path / "bad").iterdir()) == []  # neither the file nor its partial download
    finally:
        server.shutdown()
        server.server_close()


def test_the_input_check_reads_a_weights_file_once_until_it_changes(cache, tmp_path):
    """`omnidistill run` checks its inputs twice (command line, then flow): the file is read once."""
    import os

    from dd_core.models.weights import CHECKED_FILES

    CHECKED_FILES.clear()
    path = tmp_path / "detector.pth"
    path.write_bytes(open(cached_file(torchvision_weights(KEYPOINT_RCNN).url), "rb").read())
    by_path = ModelSpec(preset="r50-fpn", num_keypoints=5, weights=str(path))
    by_name = ModelSpec(preset="r50-fpn", weights=KEYPOINT_RCNN)
    for _ in range(2):
        assert check_start_weights(by_path) == ["roi_heads.keypoint_predictor"]
        assert check_start_weights(by_name) == []
    assert CHECKED_FILES.reads == 2 and len(CHECKED_FILES.results) == 2
    with pytest.raises(WeightsError, match="does not fit model.preset slim"):  # the fit is checked every time
        check_start_weights(ModelSpec(preset="slim", weights=str(path)))
    assert CHECKED_FILES.reads == 2
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten: read again
    assert check_start_weights(by_path) == ["roi_heads.keypoint_predictor"]
    assert CHECKED_FILES.reads == 3


def test_the_input_check_of_a_model_without_weights_builds_nothing():
    from torch.overrides import TorchFunctionMode

    class Calls(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Calls.count += 1
            return func(*args, **(kwargs or {}))

    with Calls():
        torch.empty(1, device="meta")
        assert Calls.count == 1  # the counter sees torch's calls
        assert check_start_weights(ModelSpec(preset="r50-fpn")) == []
    assert Calls.count == 1
