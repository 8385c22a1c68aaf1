"""The method composed once (dd_core/method.py): the stages' order and what passes between them, with
stub stages; the labeling stage with its plain shard labeler on a tiny pile."""

import pickle

import pytest

from dd_core import method
from dd_core.config import parse_config
from dd_core.method import LabeledRound, Labeling, Stages, label, label_here
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.pipeline import PlanSummary, SelectionOutputs, SelectionSummary, select, select_listed
from dd_core.storage import read_json
from dd_core.storage.layout import RunLayout
from tests.pseudo.helpers import TTA, setup_pile


def _config(tmp_path, **extra):
    return parse_config({
        "run_id": "r", "storage": {"root": str(tmp_path / "store")}, "task": "keypoints",
        "labeled": {"annotations": "l.json", "images": "l"}, "unlabeled": {"images": str(tmp_path / "u")},
        "val": {"annotations": "v.json", "images": "v"}, **extra})


def _summary(kept: int) -> SelectionSummary:
    return SelectionSummary({"1": 0.5}, {"1": 1.0}, {"1": kept}, {"1": 2 * kept}, 4, {}, {}, {}, kept, 0, "p.json")


class Recorder:
    """Stub stages that record each call and give each checkpoint the name of what trained it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def train(self, role, job):
        self.calls.append(("train", role, job.init_checkpoint, job.pseudo_annotations, job.pseudo_images))
        return f"{role}.pth"

    def evaluate(self, name, checkpoint, with_tta):
        self.calls.append(("evaluate", name, checkpoint, with_tta))
        return {"AP": float(len(name))}

    def label(self, teacher, layout):
        self.calls.append(("label", teacher, layout.round))
        return LabeledRound(PlanSummary(2, 4, f"root{layout.round}", "d"), _summary(layout.round))

    def stages(self) -> Stages:
        return Stages(self.train, self.evaluate, self.label)


def test_distill_runs_the_paper_s_stages_in_order_each_student_labeling_the_next_round(tmp_path):
    config = _config(tmp_path, rounds=2, student={"init": "teacher"})
    layout = RunLayout(config.storage.root, "r")
    recorder = Recorder()
    distilled = method.distill(config, layout, recorder.stages())
    round2 = layout.for_round(2)
    assert recorder.calls == [
        ("train", "teacher", None, None, None),
        ("evaluate", "teacher", "teacher.pth", False), ("evaluate", "teacher_tta", "teacher.pth", True),
        ("label", "teacher.pth", 1),
        ("train", "student", "teacher.pth", layout.pseudo_annotations, "root1"),
        ("label", "student.pth", 2),
        ("train", "student round 2", "student.pth", round2.pseudo_annotations, "root2"),
        ("evaluate", "student", "student round 2.pth", False),
        ("evaluate", "student_tta", "student round 2.pth", True),
    ]
    assert list(distilled.metrics) == ["teacher", "teacher_tta", "student", "student_tta"]
    assert [r.selection.num_instances for r in distilled.rounds] == [1, 2]
    assert distilled.checkpoints == {"teacher": "teacher.pth", "student": "student round 2.pth"}


def test_distill_without_teacher_evaluation_and_with_an_upper_bound(tmp_path):
    config = _config(tmp_path, student={"init": "scratch"},
                     upper_bound={"annotations": "all.json", "images": "all"})
    recorder = Recorder()
    distilled = method.distill(config, RunLayout(config.storage.root, "r"), recorder.stages(), evaluate_teacher=False)
    assert [c[1] for c in recorder.calls] == ["teacher", "teacher.pth", "student", "student", "student_tta",
                                               "upper bound", "upper_bound"]
    assert recorder.calls[2][2] is None  # a student from scratch: no initial checkpoint
    assert list(distilled.metrics) == ["student", "student_tta", "upper_bound"]
    assert distilled.checkpoints["upper_bound"] == "upper bound.pth"


def test_results_pickle_as_prefect_passes_them(tmp_path):
    labeled = LabeledRound(PlanSummary(2, 4, "root", "d"), _summary(3))
    assert pickle.loads(pickle.dumps(labeled)) == labeled
    with pytest.raises(AttributeError):
        labeled.plan.num_shards = 3  # frozen


def test_label_plans_labels_every_shard_lists_them_and_selects_as_select_does(tmp_path):
    coco, ckpt, unlabeled = setup_pile(tmp_path, n=5)
    labeling = Labeling(unlabeled.root, str(tmp_path / "inference"), TTA, shard_size=2, device="cpu")
    outputs = SelectionOutputs.beside(str(tmp_path / "out/pseudo.json"), labeling.out_dir)
    calls = []

    def label_shards(job, num_shards):
        calls.append((job.fingerprint, job.plan_digest, num_shards))
        return label_here()(job, num_shards)

    def select_pseudo(manifest):
        return select_listed(manifest, coco["categories"], "keypoints", outputs, labeled=coco)

    labeled = label(ckpt, labeling, label_shards, select_pseudo)
    fingerprint = checkpoint_fingerprint(ckpt, TTA)
    assert calls == [(fingerprint, labeled.plan.digest, 3)]
    assert (labeled.plan.num_shards, labeled.plan.num_images, labeled.plan.root) == (3, 5, unlabeled.root)
    manifest = read_json(labeling.manifest_url)
    assert manifest["fingerprint"] == fingerprint and manifest["num_images"] == 5 and len(manifest["shards"]) == 3
    coco_out, selection, predictions = select([s["url"] for s in manifest["shards"]], coco["categories"], "keypoints",
                                              outputs, labeled=coco)
    assert labeled.selection == SelectionSummary.of(coco_out, selection, predictions, outputs.annotations)
    assert labeled.selection.num_instances == len(read_json(outputs.annotations)["annotations"])
    # Labeling again finds every shard done: nothing is relabeled, the same pseudo-labels come out.
    again = label(ckpt, labeling, label_shards, select_pseudo)
    assert again == labeled
