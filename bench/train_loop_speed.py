"""Seconds per training iteration of dd_core.train.train: slim keypoints, 48 synthetic 128-px people,
batch 8, 40 iterations; prints the median and mean of the last 35. Runs on whatever code is on
PYTHONPATH, so an older commit can be timed the same way (its ``git archive`` on PYTHONPATH):

    OMP_NUM_THREADS=2 python bench/train_loop_speed.py NAME
"""
import pathlib
import statistics
import sys
import tempfile
import time

import torch

from dd_core.data.coco import load_coco
from dd_core.data.dataset import CocoDataset
from dd_core.data.synthetic.people import make_keypoints_dataset
from dd_core.models.builders import build_model
from dd_core.train.detector import spec_for, training_transforms
from dd_core.train import TrainConfig, train
from dd_core.train.loop import TrainHooks
try:
    from dd_core.models import ModelConfig as M
except ImportError:
    from dd_core.models import ModelOverrides as M
d = pathlib.Path(tempfile.mkdtemp())
make_keypoints_dataset(d, 48, seed=0, size=128)
coco = load_coco(str(d / "annotations.json"), str(d / "images"))
torch.manual_seed(0)
model = build_model(spec_for("keypoints", coco, M()))
times = []
last = [time.perf_counter()]
def on_step(it, m, t):
    now = time.perf_counter(); times.append(now - last[0]); last[0] = now
cfg = TrainConfig(iterations=40, batch_size=8, lr=0.02, warmup_iters=10, checkpoint_every=40)
kw = dict(hooks=TrainHooks(on_step=on_step))
try:
    from dd_core.train.loop import Runtime
    kw["runtime"] = Runtime(progress=False)
except ImportError:
    kw["progress"] = False
train(model, CocoDataset(coco, training_transforms(coco)), cfg, **kw)
print(sys.argv[1], "median s/it", round(statistics.median(times[5:]), 4), "mean", round(statistics.mean(times[5:]), 4))
