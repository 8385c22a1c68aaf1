"""Shared fixtures: a real S3 endpoint (moto's server on loopback, as s3fs's own suite does)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

# Tests must never reach a real AWS account, whatever the machine's environment holds.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server started for this test session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server):
    """(bucket URL, fsspec options) for a fresh bucket on the moto server."""
    import s3fs

    options = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    yield f"s3://{bucket}", options
    fs.rm(bucket, recursive=True)


def write_tiny_coco(folder, num_images: int = 6, size: int = 64, seed: int = 0, task: str = "keypoints"):
    """A hand-made COCO set of noise images with random boxes (and keypoints): fast trainer fodder."""
    import numpy as np
    from PIL import Image

    from dd_core.data.keypoints import PERSON_CATEGORY
    from dd_core.storage import write_json_atomic

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, num_images + 1):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        x, y = rng.uniform(2, size / 2, 2)
        w, h = rng.uniform(12, size / 2 - 2, 2)
        pixels[int(y):int(y + h), int(x):int(x + w)] = (220, 40, 40)
        Image.fromarray(pixels).save(folder / "images" / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": size, "height": size})
        ann = {"id": i, "image_id": i, "category_id": 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
        if task == "keypoints":
            kps = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], 1)
            ann.update(keypoints=kps.ravel().tolist(), num_keypoints=17)
        anns.append(ann)
    category = PERSON_CATEGORY if task == "keypoints" else {"id": 1, "name": "box"}
    coco = {"images": images, "annotations": anns, "categories": [category]}
    write_json_atomic(str(folder / "annotations.json"), coco)
    return coco


@pytest.fixture
def tiny_coco(tmp_path):
    """(annotations path, images root) of a 6-image keypoint set."""
    write_tiny_coco(tmp_path / "tiny")
    return str(tmp_path / "tiny" / "annotations.json"), str(tmp_path / "tiny" / "images")


def save_random_checkpoint(url: str, coco: dict, task: str = "keypoints", options=None, seed: int = 0) -> str:
    """A checkpoint of a random-weight slim model that detects plenty (class 1 biased high)."""
    import torch

    from dd_core.data.coco import coco_from_dict
    from dd_core.models import build_model
    from dd_core.models.checkpoint import save_checkpoint
    from dd_core.train.detector import checkpoint_meta, spec_for

    torch.manual_seed(seed)
    data = coco_from_dict(coco, "tiny", "")
    from dd_core.models import ModelConfig

    spec = spec_for(task, data, ModelConfig(test_size=64, min_size=(64,), max_size=96))
    model = build_model(spec)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    save_checkpoint(url, {"model": model.state_dict(), "iteration": 0, **checkpoint_meta(spec, data)}, options)
    return url


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes about 10 s to start)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
