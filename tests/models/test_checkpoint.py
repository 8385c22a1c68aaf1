import io
import os
import pickle

import pytest
import torch

from dd_core.models.checkpoint import (
    checkpoint_url,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def test_latest_checkpoint_skips_a_truncated_one(tmp_path):
    d = str(tmp_path)
    save_checkpoint(checkpoint_url(d, 10), {"model": {"w": torch.ones(2)}, "iteration": 10})
    save_checkpoint(checkpoint_url(d, 20), {"model": {"w": torch.full((2,), 2.0)}, "iteration": 20})
    path = checkpoint_url(d, 20)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # as if the machine died mid-write without atomicity
    state = load_latest_checkpoint(d)
    assert state["iteration"] == 10 and torch.equal(state["model"]["w"], torch.ones(2))


def test_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "model_0000001.pth"
    buf = io.BytesIO()
    torch.save({"model": {}, "x": Evil()}, buf, pickle_module=pickle)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="not a readable omnidistill checkpoint"):
        load_checkpoint(str(path))


def test_not_a_checkpoint_and_missing(tmp_path):
    buf = io.BytesIO()
    torch.save({"weights": 1}, buf)
    (tmp_path / "x.pth").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="expected a dict with a 'model'"):
        load_checkpoint(str(tmp_path / "x.pth"))
    with pytest.raises(FileNotFoundError, match=r"none.pth: no such file"):
        load_checkpoint(str(tmp_path / "none.pth"))
    assert load_latest_checkpoint(str(tmp_path / "empty")) is None


def test_prune_keeps_newest(tmp_path):
    d = str(tmp_path)
    for it in (5, 10, 15):
        save_checkpoint(checkpoint_url(d, it), {"model": {}, "iteration": it})
    prune_checkpoints(d, keep=2)
    assert [it for it, _ in list_checkpoints(d)] == [10, 15]


def test_checkpoints_on_s3(s3):
    bucket, options = s3
    d = f"{bucket}/teacher"
    save_checkpoint(checkpoint_url(d, 7), {"model": {"w": torch.zeros(1)}, "iteration": 7}, options)
    assert list_checkpoints(d, options) == [(7, checkpoint_url(d, 7))]
    assert load_latest_checkpoint(d, options)["iteration"] == 7
