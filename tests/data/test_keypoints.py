import pytest

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES, COCO_PERSON_SIGMAS, flip_indices, oks_sigmas


def test_flip_pairs_come_from_left_and_right_names_or_from_the_pairs_given():
    assert flip_indices() == list(COCO_PERSON_FLIP_INDICES)
    assert flip_indices(["beak", "left_wing", "right_wing"]) == [0, 2, 1]
    names = ["beak", "wing_l", "wing_r", "foot_l", "foot_r"]
    assert flip_indices(names) == [0, 1, 2, 3, 4]  # no left_/right_ names: nothing mirrors
    assert flip_indices(names, [["wing_l", "wing_r"], ["foot_r", "foot_l"]]) == [0, 2, 1, 4, 3]


@pytest.mark.parametrize("pairs, message", [
    ([["wing_l", "tail"]], r"flip pair \['wing_l', 'tail'\]: 'tail' is not a keypoint name"),
    ([["wing_l", "wing_r"], ["wing_r", "beak"]], r"'wing_r' is in two pairs"),
    ([["beak", "beak"]], "expected two different keypoint names"),
])
def test_wrong_flip_pairs_are_refused_by_name(pairs, message):
    with pytest.raises(ValueError, match=message):
        flip_indices(["beak", "wing_l", "wing_r"], pairs)


def test_oks_sigmas_are_coco_s_for_its_set_else_given_else_a_guess():
    assert oks_sigmas(flip_indices.__defaults__[0]) == COCO_PERSON_SIGMAS
    assert oks_sigmas(["a", "b"]) == (0.05, 0.05)
    assert oks_sigmas(["a", "b"], [0.1, 0.2]) == (0.1, 0.2)
    with pytest.raises(ValueError, match=r"expected 2 positive numbers"):
        oks_sigmas(["a", "b"], [0.1, 0.0])
