import dataclasses
import itertools
import json
import sys
import tempfile
import time

import pytest
import torch

from dd_core.data.coco import load_coco
from dd_core.data.sampler import MixedBatchSampler
from dd_core.models import ModelConfig
from dd_core.storage import write_json_atomic
from dd_core.train import TrainConfig, train
from dd_core.models.checkpoint import checkpoint_url, list_checkpoints
from dd_core.train.distributed import DistributedContext, init_distributed, rank_seed, resolve_backend
from dd_core.train.job import TrainJob, resolve_hook, run_job
from dd_core.train.launch import _rank_error, _stream, launch_distributed
from dd_core.train.loop import Runtime, TrainHooks
from tests.conftest import write_tiny_coco


def test_context_is_read_from_torchruns_environment():
    assert DistributedContext.from_env({}) == DistributedContext(0, 1, 0)
    ctx = DistributedContext.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.distributed) == (3, 4, 1, False, True)
    assert ctx.device("cuda") == torch.device("cuda", 1) and ctx.device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        DistributedContext.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        DistributedContext.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert init_distributed("gloo", "cpu", env={}) == DistributedContext()  # one process: no group


def test_backend_follows_the_device():
    assert resolve_backend("auto", "cpu") == "gloo" and resolve_backend("auto", "cuda:0") == "nccl"
    with pytest.raises(ValueError, match="nccl needs CUDA devices, but training runs on cpu"):
        resolve_backend("nccl", "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        resolve_backend("mpi", "cpu")
    assert len({rank_seed(0, r, 0) for r in range(1, 5)} | {rank_seed(0, 1, 7)}) == 5


def test_global_batch_must_split_evenly_over_the_ranks():
    with pytest.raises(ValueError, match="batch_size 3 is the global batch .* multiple of the 2 processes"):
        train(torch.nn.Linear(1, 1), [], TrainConfig(batch_size=3), runtime=Runtime(world=DistributedContext(0, 2, 0)))
    job = TrainJob(task="keypoints", labeled_annotations="a.json", labeled_images="img", checkpoint_dir="ckpt",
                   train=TrainConfig(batch_size=3))
    with pytest.raises(ValueError, match="must be a multiple of nproc_per_node 2"):
        launch_distributed(job, 2)


def test_job_round_trips_through_json_and_names_bad_fields():
    job = TrainJob(task="keypoints", labeled_annotations="a.json", labeled_images="img", checkpoint_dir="ckpt",
                   train=TrainConfig(iterations=3), model=ModelConfig(preset="slim", min_size=(56, 64)),
                   stop_after=2, on_checkpoint="tests.train.probe:record_checkpoint", options={"key": "canary-31c"})
    assert TrainJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert "canary-31c" not in repr(job)
    with pytest.raises(ValueError, match=r"unknown fields \['gpus'\]"):
        TrainJob.from_dict({**job.to_dict(), "gpus": 2})
    with pytest.raises(TypeError, match="positional"):
        TrainJob("keypoints", "a.json", "img", "ckpt")
    with pytest.raises(TypeError, match=r"TrainJob.model: expected a ModelConfig, got dict \{'preset': 'slim'\}"):
        dataclasses.replace(job, model={"preset": "slim"})
    with pytest.raises(ValueError, match="on_step must be 'module:function'"):
        resolve_hook("tests.train.probe")
    with pytest.raises(ValueError, match="on_checkpoint 'json:nope': json has no function 'nope'"):
        resolve_hook("json:nope", "on_checkpoint")


def test_failed_launch_reports_exit_code_tail_and_the_ranks_error(tmp_path, capsys):
    code, tail = _stream([sys.executable, "-c", "print('x' * 5000); print('the end'); raise SystemExit(3)"], {})
    assert code == 3 and tail.endswith("the end\n") and len(tail) == 4000
    result = tmp_path / "result.json"
    (tmp_path / "result.json.rank0.error").write_text(
        json.dumps({"type": "RuntimeError", "input_error": None, "message": "peer gone"}))
    (tmp_path / "result.json.rank1.error").write_text(
        json.dumps({"type": "CocoFormatError", "input_error": "ValueError", "message": "a.json: bad label"}))
    error = _rank_error(result, 2)  # the cause, not the rank that lost its peer; still a ValueError
    assert isinstance(error, ValueError) and str(error) == "training rank 1 failed: CocoFormatError: a.json: bad label"
    (tmp_path / "result.json.rank1.error").unlink()
    error = _rank_error(result, 2)
    assert type(error) is RuntimeError and str(error) == "training rank 0 failed: RuntimeError: peer gone"


def _tiny_student_data(tmp_path):
    """A labeled set (image ids 1..6) and a pseudo-labeled one (ids 101..106)."""
    write_tiny_coco(tmp_path / "labeled", seed=0)
    pseudo = write_tiny_coco(tmp_path / "pseudo", seed=1)
    for record in pseudo["images"] + pseudo["annotations"]:
        record["id"] += 100
    for record in pseudo["annotations"]:
        record["image_id"] += 100
    write_json_atomic(str(tmp_path / "pseudo" / "annotations.json"), pseudo)
    labeled = (str(tmp_path / "labeled" / "annotations.json"), str(tmp_path / "labeled" / "images"))
    return labeled, (str(tmp_path / "pseudo" / "annotations.json"), str(tmp_path / "pseudo" / "images"))


def _read_probe(folder):
    records = [json.loads(line) for path in sorted(folder.glob("rank*.jsonl")) for line in path.read_text().splitlines()]
    steps = {r: [x for x in records if x["rank"] == r and "iteration" in x] for r in (0, 1)}
    return steps, [x for x in records if "saved" in x]


def test_two_cpu_ranks_train_as_one_and_resume_on_one(tmp_path, monkeypatch):
    """Acceptance (issue #7): 2 processes (torchrun, gloo), the slim keypoint student on labeled + pseudo."""
    labeled, pseudo = _tiny_student_data(tmp_path)
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("OMNIDISTILL_PROBE_DIR", str(probe))
    ckpt = str(tmp_path / "student")
    job = TrainJob(task="keypoints", labeled_annotations=labeled[0], labeled_images=labeled[1], checkpoint_dir=ckpt,
                   pseudo_annotations=pseudo[0], pseudo_images=pseudo[1],
                   labeled_ratio=0.5, train=TrainConfig(iterations=4, batch_size=2, lr=0.005, warmup_iters=1,
                                                        checkpoint_every=2, seed=0),
                   model=ModelConfig(test_size=64, min_size=(56, 64, 72), max_size=96), stop_after=3,
                   progress=False, on_step="tests.train.probe:record_step",
                   on_checkpoint="tests.train.probe:record_checkpoint")
    temp = tmp_path / "temp"  # the system's temp folder, for this process and the ranks
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    t0 = time.perf_counter()
    result = launch_distributed(job, nproc_per_node=2, backend="gloo")
    print(f"2 ranks, 3 steps through torchrun: {time.perf_counter() - t0:.1f} s")
    assert result.iteration == 3 and result.checkpoint == checkpoint_url(ckpt, 3)
    assert list(temp.iterdir()) == []  # nothing left behind (torchrun's own log folders included)

    steps, saved = _read_probe(probe)
    assert [s["iteration"] for s in steps[0]] == [s["iteration"] for s in steps[1]] == [1, 2, 3]
    for a, b in zip(steps[0], steps[1]):  # identical weights on both ranks after every step
        assert a["params"] == b["params"], a["iteration"]
    assert len({s["params"] for s in steps[0]}) == 3  # and they did train
    # The ranks' slices of each step make up exactly the single-process global batch of the mixed
    # sampler, so the labeled:pseudo coin flips (and their ratio) are those of one process.
    ids = [im["id"] for im in load_coco(*labeled).images] + [im["id"] for im in load_coco(*pseudo).images]
    expected = [[ids[i] for i in batch] for batch in itertools.islice(MixedBatchSampler(6, 6, 2, 0.5, 0), 4)]
    assert [a["image_ids"] + b["image_ids"] for a, b in zip(steps[0], steps[1])] == expected[:3]
    assert all(len(s["image_ids"]) == 1 for s in steps[0] + steps[1])
    drawn = [i for batch in expected[:3] for i in batch]
    assert any(i < 100 for i in drawn) and any(i > 100 for i in drawn)  # both kinds reached the ranks
    # Rank 0 alone wrote the checkpoints (at checkpoint_every and at the early stop).
    assert {s["rank"] for s in saved} == {0}
    assert [(s["saved_iteration"], s["saved"]) for s in saved] == [(i, checkpoint_url(ckpt, i)) for i in (2, 3)]
    assert [i for i, _ in list_checkpoints(ckpt)] == [2, 3]

    # The 2-rank run resumes on 1 process, with the global batch it would have drawn next.
    seen = []
    done = run_job(dataclasses.replace(job, stop_after=None, on_step=None, on_checkpoint=None),
                   hooks=TrainHooks(on_step=lambda it, model, targets: seen.append(
                       (it, [int(t["image_id"]) for t in targets]))))
    assert done.iteration == 4 and done.checkpoint == checkpoint_url(ckpt, 4)
    assert seen == [(4, expected[3])]


def test_storage_credentials_reach_the_ranks_through_the_environment_not_a_file(tmp_path, monkeypatch):
    from pathlib import Path

    from dd_core.train import launch

    seen = {}

    def record(cmd, env):  # stands in for torchrun: what would the ranks be handed?
        job_file = Path(cmd[cmd.index("dd_core.train.launch") + 1])
        seen.update(job=job_file.read_text(), env=env.get(launch.OPTIONS_ENV))
        return 1, "no ranks started"

    monkeypatch.setattr(launch, "_stream", record)
    job = TrainJob(task="keypoints", labeled_annotations=str(tmp_path / "a.json"), labeled_images=str(tmp_path),
                   checkpoint_dir=str(tmp_path / "ck"), train=TrainConfig(iterations=1, batch_size=2),
                   options={"secret": "canary-8f3a"})
    with pytest.raises(RuntimeError, match="exited with code 1"):
        launch.launch_distributed(job, 2, backend="gloo")
    assert "canary-8f3a" not in seen["job"]
    assert json.loads(seen["env"]) == {"secret": "canary-8f3a"}
