import pytest
import torch

from dd_core.data.unlabeled import UnlabeledImage
from dd_core.pseudo.columns import ShardColumns, outputs_to_host
from dd_core.storage.parquet import predictions_table


def test_shard_columns_map_labels_flatten_keypoints_and_keep_image_order():
    columns = ShardColumns({1: 7, 2: 3})
    kps = torch.tensor([[[1.0, 2.0, 1.0], [3.0, 4.0, 1.0]], [[5.0, 6.0, 1.0], [7.0, 8.0, 1.0]]])
    columns.add({"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0]]), "labels": torch.tensor([2, 1]),
                 "scores": torch.tensor([0.5, 0.25]), "keypoints": kps,
                 "keypoints_scores": torch.tensor([[0.1, 0.2], [0.3, 0.4]]), "num_transforms": 18},
                UnlabeledImage(9, "a.png"))
    columns.add({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
                 "keypoints": torch.zeros(0, 2, 3), "keypoints_scores": torch.zeros(0, 2)}, UnlabeledImage(10, "b.png"))
    columns.add({"boxes": torch.tensor([[2.0, 2.0, 3.0, 3.0]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([1.0]),
                 "keypoints": kps[:1], "keypoints_scores": torch.tensor([[0.5, 0.5]]), "num_transforms": 18},
                UnlabeledImage(11, "c.png"))
    rows = predictions_table(columns.columns(), {}).to_pydict()
    assert rows["image_id"] == [9, 9, 11] and rows["file_name"] == ["a.png", "a.png", "c.png"]
    assert rows["category_id"] == [3, 7, 7] and rows["box"][1] == [1.0, 1.0, 2.0, 2.0]
    assert rows["keypoints"] == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]]
    assert rows["keypoint_scores"][1] == pytest.approx([0.3, 0.4]) and rows["num_transforms"] == [18, 18, 18]


def test_shard_columns_of_boxes_have_empty_keypoints_and_unknown_labels_name_the_image():
    columns = ShardColumns({1: 5})
    columns.add({"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 1]), "scores": torch.ones(2)},
                UnlabeledImage(1, "a.png"))
    rows = predictions_table(columns.columns(), {}).to_pydict()
    assert rows["keypoints"] == [[], []] and rows["keypoint_scores"] == [[], []] and rows["num_transforms"] == [1, 1]
    assert predictions_table(ShardColumns({1: 5}).columns(), {}).num_rows == 0
    with pytest.raises(KeyError, match="b.png: the model predicted label 4, which maps to no category"):
        columns.add({"boxes": torch.ones(1, 4), "labels": torch.tensor([4]), "scores": torch.ones(1)},
                    UnlabeledImage(2, "b.png"))


def test_outputs_to_host_keeps_each_image_s_rows_and_non_tensors() -> None:
    outputs = [
        {"boxes": torch.arange(8.0).reshape(2, 4), "keypoints": torch.ones(2, 17, 3), "num_transforms": 18,
         "flag": torch.tensor(True)},
        {"boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 17, 3), "num_transforms": 18,
         "flag": torch.tensor(False)},
        {"boxes": torch.full((1, 4), 9.0), "keypoints": torch.full((1, 17, 3), 2.0), "num_transforms": 18,
         "flag": torch.tensor(True)},
    ]
    host = outputs_to_host(outputs)
    assert [h["boxes"].shape for h in host] == [(2, 4), (0, 4), (1, 4)]
    assert [h["keypoints"].shape for h in host] == [(2, 17, 3), (0, 17, 3), (1, 17, 3)]
    for h, o in zip(host, outputs):
        assert torch.equal(h["boxes"], o["boxes"]) and torch.equal(h["keypoints"], o["keypoints"])
        assert h["num_transforms"] == 18 and h["flag"].item() == o["flag"].item()
    assert outputs_to_host([]) == []


def test_category_ids_beyond_int64_are_refused_naming_the_label():
    with pytest.raises(ValueError, match=r"label 1 maps to category id 9223372036854775808"):
        ShardColumns({1: 2**63})
