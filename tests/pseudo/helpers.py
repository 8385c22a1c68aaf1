"""Small shared pieces of the pseudo-labeling tests: a tiny pile, a teacher with no model, odd images."""

from __future__ import annotations

import torch
from PIL import Image

from dd_core.data.unlabeled import Shard, list_unlabeled
from dd_core.ops.caches import TeacherCache
from dd_core.ops.labeling import LabelingOps
from dd_core.pseudo.infer import ShardJob, ShardSummary, pseudo_label_planned_shard
from dd_core.pseudo.teacher import Teacher
from dd_core.tta.settings import MultiTransformSettings
from tests.conftest import save_random_checkpoint, write_tiny_coco

TTA = MultiTransformSettings(scales=(56, 64), flip=True)
TTA_BOXES = MultiTransformSettings(scales=(56, 64)).for_task("detection")


def setup_pile(tmp_path, n=5):
    """(COCO dict, random-weight keypoint checkpoint, unlabeled set) of ``n`` noise images."""
    coco = write_tiny_coco(tmp_path / "pile", num_images=n)
    ckpt = save_random_checkpoint(str(tmp_path / "model_0000000.pth"), coco)
    return coco, ckpt, list_unlabeled(str(tmp_path / "pile" / "images"))


def planned(checkpoint: str, plan: str, out: str, fingerprint: str, index: int, tta=TTA) -> ShardSummary:
    """Shard ``index`` of ``plan`` pseudo-labeled on the CPU, as one shard task does it."""
    job = ShardJob(checkpoint, plan, out, tta, fingerprint)
    return pseudo_label_planned_shard(job, index, device="cpu", ops=LabelingOps(teachers=TeacherCache()))


class Predicting(torch.nn.Module):
    """A model without weights that predicts what ``predict(images)`` says."""

    def __init__(self, predict) -> None:
        super().__init__()
        self.predict = predict

    def forward(self, images):
        return self.predict(images)


def stub_teacher(predict=None) -> Teacher:
    """A teacher without a model: every image gets no predictions (or what ``predict(images)`` says)."""

    def nothing(images):
        return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
                for _ in images]

    return Teacher(Predicting(predict or nothing), {1: 1})


def save_image(path, height: int, width: int, seed: int = 0) -> None:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


def shard_of(folder, names) -> tuple[str, Shard]:
    """(images root, the one shard) of a .txt list of ``names`` in ``folder``: ids 1.. in name order."""
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    unlabeled = list_unlabeled(str(folder / "list.txt"))
    return unlabeled.root, Shard(0, unlabeled.images)
