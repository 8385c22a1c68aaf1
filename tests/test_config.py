import pytest
import yaml

from dd_core.config import ConfigError, apply_overrides, load_config, parse_config, train_config, tta_options

BASE = {"labeled": {"annotations": "l.json", "images": "l"}, "unlabeled": {"images": "u"},
        "val": {"annotations": "v.json", "images": "v"}}


def _config(**extra):
    return {**BASE, **extra}


def test_defaults_follow_the_contract():
    c = parse_config(_config())
    assert (c.task, c.storage.root, c.model.preset, c.rounds) == ("keypoints", "./runs", "slim", 1)
    assert (c.student.labeled_ratio, c.student.init, c.shards.size) == (0.6, "scratch", 64)
    assert (c.teacher.iterations, c.student.iterations) == (2000, 4000) and c.tta.flip


@pytest.mark.parametrize("extra, path", [
    ({"teacher": {"iterations": 10, "lr_x": 1}}, r"teacher.lr_x: Extra inputs are not permitted"),
    ({"bogus": 1}, r"bogus: Extra inputs are not permitted"),
    ({"teacher": {"iterations": "many"}}, r"teacher.iterations: Input should be a valid integer"),
    ({"student": {"labeled_ratio": -0.5}}, r"student.labeled_ratio: Input should be greater than 0"),
    ({"tta": {"scales": []}}, r"tta.scales: Value error, needs at least one scale"),
    ({"tta": {"scales": [100, -1]}}, r"tta.scales: Value error, scales must be positive"),
    ({"model": {"preset": "r34"}}, r"model.preset: Input should be 'slim'"),
    ({"run_id": "../escape"}, r"run_id: Value error, must be a plain name"),
    ({"shards": {"size": 0}}, r"shards.size: Input should be greater than 0"),
])
def test_bad_configs_name_the_field(extra, path):
    with pytest.raises(ConfigError, match=path):
        parse_config(_config(**extra), "run.yaml")


def test_missing_section_is_named():
    with pytest.raises(ConfigError, match=r"run.yaml: invalid configuration\n  val: Field required"):
        parse_config({k: v for k, v in BASE.items() if k != "val"}, "run.yaml")


def test_set_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config()))
    c = load_config(path, ["teacher.iterations=50", "tta.scales=[64, 96]", "tta.flip=false", "storage.root=s3://b/x"])
    assert c.teacher.iterations == 50 and c.tta.scales == [64, 96] and not c.tta.flip and c.storage.root == "s3://b/x"
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["teacher.iterations"])
    with pytest.raises(ConfigError, match="'task' is not a section"):
        apply_overrides({"task": "keypoints"}, ["task.x=1"])


def test_storage_options_never_serialise():
    c = parse_config(_config(storage={"root": "s3://b", "options": {"secret": "hunter2"}}))
    assert c.storage.options == {"secret": "hunter2"}
    assert "hunter2" not in c.model_dump_json() and "hunter2" not in repr(c)


def test_train_config_clamps_warmup_and_checkpoints_to_the_schedule():
    c = parse_config(_config(teacher={"iterations": 5, "warmup_iters": 100, "checkpoint_every": 500}))
    t = train_config(c.teacher, seed=3)
    assert (t.iterations, t.warmup_iters, t.checkpoint_every, t.seed) == (5, 5, 5, 3)


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "a.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="a.yaml: not valid YAML"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "b.yaml")


def test_student_schedule_factor_lengthens_the_teacher_schedule():
    c = parse_config(_config(teacher={"iterations": 300}, student={"schedule_factor": 2.5}))
    assert c.student_stage().iterations == 750 and c.student.iterations == 4000
    assert parse_config(_config()).student_stage().iterations == 4000


def test_tta_options_carry_box_merging_only_for_detection():
    c = parse_config(_config(tta={"scales": [64, 96], "scoring": "AVG"}))
    assert tta_options(c.tta, "keypoints") == {"scales": [64, 96], "flip": True}
    assert tta_options(c.tta, "detection") == {"scales": [64, 96], "flip": True, "nms_threshold": 0.5,
                                              "voting_threshold": 0.8, "scoring": "AVG"}


def test_run_inputs_are_checked_before_a_run(tmp_path):
    from dd_core.config import check_run_inputs
    from tests.flows.conftest import local_config, make_sets

    make_sets(tmp_path, (2, 1, 1))
    assert check_run_inputs(local_config(tmp_path)) == {"labeled": 2, "val": 1}
    missing = local_config(tmp_path, unlabeled={"images": f"{tmp_path}/nowhere"})
    with pytest.raises(FileNotFoundError, match=r"nowhere: unlabeled images not found \(unlabeled.images\)"):
        check_run_inputs(missing)
