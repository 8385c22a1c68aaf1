import pytest

from dd_core.data.coco import CocoFormatError, coco_from_dict
from dd_core.data.keypoints import PERSON_CATEGORY
from dd_core.models.data_fit import check_data_fits_model

BOX = {"id": 1, "name": "box"}
BALL = {"id": 2, "name": "ball"}


def _data(*categories):
    return coco_from_dict({"images": [], "annotations": [], "categories": list(categories)}, "v.json", "")


def test_the_set_a_model_was_trained_on_fits_it():
    check_data_fits_model(_data(PERSON_CATEGORY), [PERSON_CATEGORY], "keypoints", "m.pth", same_categories=True)
    check_data_fits_model(_data(BOX, BALL), [BALL, BOX], "detection", "m.pth", same_categories=True)
    check_data_fits_model(_data(BALL), [BOX, BALL], "detection", "m.pth")  # evaluated on some of its categories
    # A box model trained on a keypoint set (person boxes) fits a person set with or without keypoints.
    check_data_fits_model(_data({"id": 1, "name": "person"}), [PERSON_CATEGORY], "detection", "m.pth")


@pytest.mark.parametrize("data, categories, task, same, message", [
    (_data(BOX), [PERSON_CATEGORY], "keypoints", False, "v.json: no category lists 'keypoints' (a detection json), "
     "but m.pth is a keypoints model (spec.task 'keypoints', 17 keypoints); expected a keypoints json"),
    (_data(BOX), [BOX, BALL], "detection", True, "v.json: category ids [1] differ from those of m.pth ([1, 2]); "
     "expected the categories the model was trained on"),
    (_data(BOX, BALL), [BOX], "detection", False, "v.json: categories [2] are not among those of m.pth ([1])"),
    (_data(), [BOX, BALL], "detection", False, "v.json: field 'categories' is empty; expected some of those of "
     "m.pth ([1, 2])"),
    (_data(), [PERSON_CATEGORY], "keypoints", False, "v.json: field 'categories' is empty; expected some of those of "
     "m.pth ([1])"),
    (_data({"id": 1, "name": "person"}), [BOX], "detection", False, "v.json: categories[0] (id 1) field 'name' is "
     "'person', but in m.pth category 1 is 'box'"),
    (_data({**PERSON_CATEGORY, "keypoints": PERSON_CATEGORY["keypoints"][:5]}), [PERSON_CATEGORY], "keypoints", False,
     "v.json: categories[0] (id 1) field 'keypoints' lists 5 keypoints, but m.pth has 17 for this category"),
    (_data({**PERSON_CATEGORY, "keypoints": ["eye", *PERSON_CATEGORY["keypoints"][1:]]}), [PERSON_CATEGORY],
     "keypoints", True, "v.json: categories[0] (id 1) field 'keypoints'[0] is 'eye', but in m.pth it is 'nose'"),
])
def test_a_set_the_model_does_not_fit_is_one_line_naming_the_field(data, categories, task, same, message):
    with pytest.raises(CocoFormatError) as refused:
        check_data_fits_model(data, categories, task, "m.pth", same_categories=same)
    assert str(refused.value) == message
