"""The training settings of a run: one type from the YAML stage to the training signature."""

import hashlib
import pickle

import pytest

from dd_core.config import parse_config
from dd_core.data.coco import CocoData
from dd_core.train.detector import spec_for, training_signature
from dd_core.train.settings import TrainConfig

_BASE = {"labeled": {"annotations": "l.json", "images": "l"}, "unlabeled": {"images": "u"},
         "val": {"annotations": "v.json", "images": "v"}, "task": "detection", "seed": 7}
_LABELED = CocoData(source="l.json", images_root="l", images=[{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
                    annotations=[], categories=[{"id": 1, "name": "person"}])
_SHORT = {"iterations": 5, "warmup_iters": 100, "checkpoint_every": 500, "lr": 1, "lr_steps": [0.5, 0.9]}


def _schedule(iterations: int, lr: float, warmup: int, steps: tuple[float, ...] | None) -> str:
    return (f"{{'iterations': {iterations}, 'batch_size': 8, 'lr': {lr}, 'momentum': 0.9, 'weight_decay': 0.0001, "
            f"'warmup_iters': {warmup}, 'warmup_factor': 0.3333333333333333, 'seed': 7, 'lr_steps': {steps}}}")


# The signatures written into checkpoints by the version that started these runs: a run resumes only
# if the same YAML gives the same bytes (the checkpoint pickles the signature).
@pytest.mark.parametrize("stage, role, schedule, digest", [
    (_SHORT, "teacher", _schedule(5, 1.0, 5, (0.5, 0.9)),
     "e8e9070067f57159b22460715e6c01607d2de2bfc0732aab1d99c3ed048bbb7a"),
    ({}, "teacher", _schedule(2000, 0.02, 100, None),
     "86d58d39a897dd14f0235cf6df306c2e8f6ca1a32fb1608b8b2c96c89d232e74"),
    ({}, "student", _schedule(4000, 0.02, 100, None),
     "dfbe618bf6f58a9e86ba2ed519e142b1c5365b8841c2164288eb1ecb641a600e"),
])
def test_the_training_signature_of_a_yaml_stage_is_the_one_runs_were_started_with(stage, role, schedule, digest):
    config = parse_config({**_BASE, "teacher": stage, "student": stage})
    cfg = TrainConfig.from_config(config.teacher if role == "teacher" else config.student_stage(), config.seed)
    signature = training_signature(spec_for("detection", _LABELED, config.model, config.keypoints), cfg, _LABELED,
                                   None, 1.0, None)
    assert repr(signature["schedule"]) == schedule
    assert hashlib.sha256(pickle.dumps(signature, protocol=2)).hexdigest() == digest


def test_a_stage_of_the_yaml_takes_only_its_own_keys_and_the_run_gives_the_seed():
    from dd_core.config import ConfigError
    from dd_core.config.schema import TeacherConfig

    for key in ("seed", "momentum", "keep_checkpoints"):
        with pytest.raises(ConfigError, match=rf"teacher.{key}: Extra inputs are not permitted"):
            parse_config({**_BASE, "teacher": {key: 1}})
    cfg = TrainConfig.from_config(TeacherConfig(iterations=0), 7)  # the published detector is the teacher
    assert (cfg.iterations, cfg.warmup_iters, cfg.checkpoint_every, cfg.seed) == (0, 0, 1, 7)
    with pytest.raises(ValueError, match="frozen"):
        cfg.lr = 0.1


def test_a_training_job_round_trips_through_json_with_its_settings():
    import json

    from dd_core.train.job import TrainJob

    stage = parse_config({**_BASE, "teacher": {**_SHORT, "report_every": 5}}).teacher
    job = TrainJob(task="detection", labeled_annotations="l.json", labeled_images="l", checkpoint_dir="ck",
                   train=TrainConfig.from_config(stage, 7))
    again = TrainJob.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again == job and again.train.lr_steps == (0.5, 0.9) and again.train.report_every == 5
