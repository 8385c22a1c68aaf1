import pytest

from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.pipeline import FixedThresholds, SelectionOutputs, plan, select
from dd_core.storage import read_json, write_bytes_atomic
from dd_core.storage.layout import RunLayout
from tests.pseudo.helpers import TTA, planned, setup_pile


def test_plan_writes_the_plan_and_removes_an_earlier_plan_s_extra_shards(tmp_path):
    setup_pile(tmp_path, n=5)
    out = tmp_path / "inference"
    for name in ("shard-00002.parquet", "shard-00003.parquet", "_rejected.parquet", "_manifest.json"):
        write_bytes_atomic(str(out / name), b"old")
    summary = plan(str(tmp_path / "pile" / "images"), str(out / "_plan.json"), 3, limit=4)
    assert (summary.num_shards, summary.num_images, summary.root) == (2, 4, str(tmp_path / "pile" / "images"))
    assert summary.digest == read_json(str(out / "_plan.json"))["digest"]
    assert [len(images) for images in read_json(str(out / "_plan.json"))["shards"]] == [3, 1]
    # The old manifest went first: no reader may see it list shards this plan removes or rewrites.
    assert sorted(p.name for p in out.iterdir()) == ["_plan.json", "_rejected.parquet"]


@pytest.fixture
def shards(tmp_path):
    coco, ckpt, unlabeled = setup_pile(tmp_path, n=4)
    out = tmp_path / "inference"
    summary = plan(unlabeled.root, str(out / "_plan.json"), 2)
    fingerprint = checkpoint_fingerprint(ckpt, TTA)
    urls = [planned(ckpt, str(out / "_plan.json"), str(out), fingerprint, i).url for i in range(summary.num_shards)]
    return coco, urls


def test_select_calibrates_on_the_labeled_set_and_writes_its_three_outputs(tmp_path, shards):
    coco, urls = shards
    outputs = SelectionOutputs.of_run(RunLayout(str(tmp_path / "store"), "r"))
    pseudo, selection, predictions = select(urls, coco["categories"], "keypoints", outputs, labeled=coco)
    assert read_json(outputs.annotations) == pseudo and len(pseudo["annotations"]) == 4  # 1 person per image
    assert read_json(outputs.thresholds) == selection.to_dict() and selection.target_per_image == {1: 1.0}
    assert selection.target_keypoints_per_instance == {1: 17.0}  # every keypoint of the tiny set is labeled
    assert len(predictions.images) == 4 and outputs.rejected.endswith("runs/r/inference/_rejected.parquet")
    assert (tmp_path / "store/runs/r/inference/_rejected.parquet").exists()


def test_select_with_fixed_thresholds_keeps_what_scores_above_them(tmp_path, shards):
    coco, urls = shards
    outputs = SelectionOutputs.beside(str(tmp_path / "out" / "pseudo.json"), str(tmp_path / "out" / "pseudo.predictions"))
    assert outputs.thresholds == str(tmp_path / "out" / "pseudo.thresholds.json")
    everything, selection, predictions = select(urls, coco["categories"], "keypoints", outputs,
                                                fixed=FixedThresholds(0.0, 0.0))
    assert len(everything["annotations"]) == predictions.table.num_rows == selection.kept_per_category[1]
    assert all(a["num_keypoints"] == 17 for a in everything["annotations"])
    nothing, _, _ = select(urls, coco["categories"], "keypoints", outputs, fixed=FixedThresholds(1.0, 0.5))
    assert nothing["annotations"] == [] and len(nothing["images"]) == 4


def test_select_needs_one_way_to_choose_thresholds(tmp_path, shards):
    coco, urls = shards
    outputs = SelectionOutputs.of_run(RunLayout(str(tmp_path / "store"), "r"))
    with pytest.raises(ValueError, match="either a labeled set to calibrate on or fixed thresholds, not both"):
        select(urls, coco["categories"], "keypoints", outputs)
    with pytest.raises(ValueError, match="either a labeled set"):
        select(urls, coco["categories"], "keypoints", outputs, labeled=coco, fixed=FixedThresholds(0.5, 0.0))
    with pytest.raises(ValueError, match="fixed thresholds for keypoints need a keypoint threshold too"):
        select(urls, coco["categories"], "keypoints", outputs, fixed=FixedThresholds(0.5))
    assert not (tmp_path / "store").exists()


def test_a_pile_where_every_image_was_rejected_is_an_error_not_a_run_without_pseudo_labels(tmp_path):
    coco, ckpt, unlabeled = setup_pile(tmp_path, n=2)
    (tmp_path / "list.txt").write_text("001.png\n002.png\n")  # names from the pile, root forgotten
    out = tmp_path / "inference"
    summary = plan(str(tmp_path / "list.txt"), str(out / "_plan.json"), 2)
    url = planned(ckpt, str(out / "_plan.json"), str(out), checkpoint_fingerprint(ckpt, TTA), 0).url
    assert summary.root == str(tmp_path)
    outputs = SelectionOutputs.of_run(RunLayout(str(tmp_path / "store"), "r"))
    with pytest.raises(ValueError, match=r"every one of the 2 unlabeled images was rejected, e.g. .*001.png: no such "
                                         r"file \(check unlabeled.images and unlabeled.root"):
        select([url], coco["categories"], "keypoints", outputs, labeled=coco)
    assert (tmp_path / "store/runs/r/inference/_rejected.parquet").exists()  # the reasons are written first
    assert not (tmp_path / "store/runs/r/pseudo").exists()


def test_pseudo_labels_that_would_teach_the_student_nothing_fail_before_the_outputs_are_written(tmp_path, shards):
    from dd_core.data.filtering import TrainingImageFilter
    from dd_core.pseudo.select import NoPseudoLabels

    coco, urls = shards
    outputs = SelectionOutputs.of_run(RunLayout(str(tmp_path / "store"), "r"))
    # 1 person on 10 labeled images: 0.1 per image, 0 on 4 unlabeled images; the teacher predicted more.
    sparse = {**coco, "images": coco["images"] + [{**coco["images"][0], "id": 100 + i} for i in range(6)],
              "annotations": coco["annotations"][:1]}
    with pytest.raises(NoPseudoLabels, match=r"^pseudo-label selection: 0 pseudo-labels kept on 4 unlabeled images "
                                             r"\(none of the teacher's [0-9,]+ predictions passed the thresholds "
                                             r"\(1: [0-9.e+-]+\)\): a student would learn from the labeled images only. "
                                             r"Check the teacher: its loss and AP in this run's log, teacher.lr, "
                                             r"teacher.iterations$"):
        select(urls, coco["categories"], "keypoints", outputs, labeled=sparse, trained_with=TrainingImageFilter())
    assert not (tmp_path / "store/runs/r/pseudo").exists() and not (tmp_path / "store/runs/r/thresholds.json").exists()
    # Kept, but on images a student's training leaves out (too few visible keypoints to count).
    with pytest.raises(NoPseudoLabels, match=r"^pseudo-label selection: 4 pseudo-labels kept on 4 of 4 unlabeled "
                                             r"images, but training would leave every one of those images out "
                                             r"\(images with fewer than 18 visible keypoint\(s\)"):
        select(urls, coco["categories"], "keypoints", outputs, labeled=coco,
               trained_with=TrainingImageFilter(min_visible_keypoints=18))
    assert not (tmp_path / "store/runs/r/pseudo").exists()
    # omnidistill label asks for no student: an empty selection is written as it is.
    pseudo, _, _ = select(urls, coco["categories"], "keypoints", outputs, labeled=sparse)
    assert pseudo["annotations"] == [] and read_json(outputs.annotations) == pseudo
    pseudo, _, _ = select(urls, coco["categories"], "keypoints", outputs, labeled=coco,
                          trained_with=TrainingImageFilter())
    assert len(pseudo["annotations"]) == 4


def test_a_run_planned_before_gifs_were_images_plans_again_the_images_it_planned(tmp_path):
    """A resume plans again: a folder planned without its GIFs (before they were images) keeps its
    plan, digest and shards, rather than label the GIFs as new shards."""
    _, _, unlabeled = setup_pile(tmp_path, n=3)
    url = str(tmp_path / "inference" / "_plan.json")
    first = plan(unlabeled.root, url, 2)
    before = read_json(url)
    write_bytes_atomic(f"{unlabeled.root}/0.gif", b"GIF89a")
    again = plan(unlabeled.root, url, 2)
    assert again == first and read_json(url) == before
    assert not any(im["file_name"].endswith(".gif") for shard in before["shards"] for im in shard)
