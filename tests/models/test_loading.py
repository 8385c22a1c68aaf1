"""One checkpoint read gives the model and what its users need: task, categories, keypoint set."""

import pytest
import torch

from dd_core.models.loading import load_detector
from dd_core.models.checkpoint import load_checkpoint
from tests.conftest import save_random_checkpoint, write_tiny_coco


@pytest.mark.parametrize("task", ["keypoints", "detection"])
def test_a_loaded_detector_is_the_checkpoint_s_model_in_eval_mode(tmp_path, task) -> None:
    coco = write_tiny_coco(tmp_path / "set", num_images=1, task=task)
    url = save_random_checkpoint(str(tmp_path / "m.pth"), coco, task)
    detector, state = load_detector(url), load_checkpoint(url)
    assert detector.url == url and detector.task == task and not detector.model.training
    for name, weights in state["model"].items():
        assert torch.equal(detector.model.state_dict()[name], weights), name
    assert list(detector.categories) == state["categories"]
    assert detector.label_to_category == {1: coco["categories"][0]["id"]}
    assert detector.cat_to_label == {coco["categories"][0]["id"]: 1}
    names = tuple(coco["categories"][0].get("keypoints") or ())
    assert detector.keypoint_names == names and (len(names) > 0) == (task == "keypoints")
    assert detector.flip_pairs == state["spec"].get("flip_pairs")
    assert detector.oks_sigmas == state["spec"].get("oks_sigmas")


def test_an_unreadable_checkpoint_is_named(tmp_path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"broken.pth: not a readable omnidistill checkpoint"):
        load_detector(str(path))
