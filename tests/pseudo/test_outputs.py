import json
import os

import pytest

from dd_core.pseudo.outputs import LabelOutputs, check_not_inputs, check_replaceable, label_wrote
from dd_core.storage import canonical_location, join, list_files, remove, write_bytes_atomic, write_json_atomic


def test_outputs_of_a_json_and_of_a_folder():
    assert LabelOutputs.of("s3://b/a/pseudo.json") == LabelOutputs(
        "s3://b/a/pseudo.json", "s3://b/a/pseudo.thresholds.json", "s3://b/a/pseudo.predictions")
    assert LabelOutputs.of("out/") == LabelOutputs(
        "out/annotations.json", "out/annotations.thresholds.json", "out/annotations.predictions")


def test_every_spelling_of_one_object_is_one_canonical_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    spellings = ["d/x.json", "./d/x.json", "d/../d/x.json", f"file://{tmp_path}/d/x.json", "link/x.json",
                 f"{tmp_path}//d/./x.json"]
    same = {canonical_location(url) for url in spellings}
    assert same == {("file", f"{tmp_path}/d/x.json")}
    assert {canonical_location(url) for url in ["s3://b/k/x.json", "s3://b//k/x.json", "s3a://b/k/./x.json",
                                                "s3://b/k/x.json/"]} == {("s3", "b/k/x.json")}
    assert canonical_location("s3://b/k/X.json") != canonical_location("s3://b/k/x.json")  # S3 keys are case-sensitive


@pytest.mark.parametrize("inputs, message", [
    ({"--images": "s3://b//set/list.json"}, "--out would write the pseudo-label json s3://b/set/list.json over the "
     "--images input s3://b//set/list.json; choose another --out"),
    ({"--images": "s3://b/set"}, "--out would write the pseudo-label json s3://b/set/list.json inside the --images "
     "input s3://b/set; choose an --out outside it"),
    ({"--labeled": "s3://b/set/list.thresholds.json"}, "--out would write its thresholds "
     "s3://b/set/list.thresholds.json over the --labeled input"),
    ({"--checkpoint": "s3://b/set/list.predictions/teacher/model.pth"}, "the --checkpoint input "
     "s3://b/set/list.predictions/teacher/model.pth lies inside s3://b/set/list.predictions, the folder where --out "
     "keeps its predictions"),
])
def test_an_s3_out_that_is_or_holds_an_input_is_refused(inputs, message):
    with pytest.raises(ValueError) as refused:
        check_not_inputs(LabelOutputs.of("s3://b/set/list.json"), inputs)
    assert str(refused.value).startswith(message)


def test_outputs_beside_inputs_are_allowed(tmp_path):
    check_not_inputs(LabelOutputs.of(str(tmp_path / "set" / "pseudo.json")), {
        "--checkpoint": str(tmp_path / "m.pth"), "--images": str(tmp_path / "set" / "images"),
        "--labeled": str(tmp_path / "set" / "annotations.json"), "--root": None})
    check_not_inputs(LabelOutputs.of("s3://b/set-2"), {"--images": "s3://b/set"})  # a prefix, not a folder above
    check_not_inputs(LabelOutputs.of("s3://b/set"), {"--images": "file:///b/set"})  # another storage


PSEUDO = {"info": {"description": "omnidistill pseudo-labels"}, "images": [], "annotations": [], "categories": []}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_only_a_json_label_wrote_is_replaced_without_overwrite(tmp_path, request, where):
    root, options = (str(tmp_path), None) if where == "local" else request.getfixturevalue("s3")
    outputs = LabelOutputs.of(join(root, "set"))
    check_replaceable(outputs, options=options)  # nothing there yet
    write_json_atomic(outputs.annotations, {**PSEUDO, "info": {"description": "ground truth"}}, options)
    with pytest.raises(ValueError, match=r"set/annotations.json: exists and omnidistill label did not write it .* "
                                         r"pass --overwrite to replace it, or choose another --out$"):
        check_replaceable(outputs, options=options)
    check_replaceable(outputs, overwrite=True, options=options)
    # A run's pseudo-labels bear the description but have no thresholds beside them: not label's.
    write_json_atomic(outputs.annotations, PSEUDO, options)
    assert not label_wrote(outputs.annotations, outputs.thresholds, options)
    with pytest.raises(ValueError, match="did not write it"):
        check_replaceable(outputs, options=options)
    write_json_atomic(outputs.thresholds, {"thresholds": {"1": 0.5}, "num_images": 2}, options, indent=1)
    assert label_wrote(outputs.annotations, outputs.thresholds, options)
    check_replaceable(outputs, options=options)
    # Someone else's thresholds file, with no json beside it.
    remove(outputs.annotations, options)
    write_json_atomic(outputs.thresholds, {"num_images": 2, "thresholds": {}}, options)
    with pytest.raises(ValueError, match="annotations.thresholds.json: exists and is not the thresholds json"):
        check_replaceable(outputs, options=options)
    assert list_files(join(root, "set"), options=options) == ["annotations.thresholds.json"]


def test_the_mark_is_read_from_the_start_of_the_file_only(tmp_path):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"info": {"description": "omnidistill pseudo-labels"}, "images": [0] * 1_000_000}))
    (tmp_path / "huge.thresholds.json").write_text('{\n "thresholds": {}}')
    assert label_wrote(str(huge), str(tmp_path / "huge.thresholds.json"))
    # Another tool's spelling of the same json (keys reordered) carries no mark.
    write_bytes_atomic(str(huge), json.dumps({"images": [], **PSEUDO}).encode())
    assert not label_wrote(str(huge), str(tmp_path / "huge.thresholds.json"))


def test_a_fifo_out_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "annotations.json")
    with pytest.raises(ValueError, match="did not write it"):
        check_replaceable(LabelOutputs.of(str(tmp_path)))
