"""Synthetic COCO data sets: determinism, COCO validity, the left/right cue, styles, categories."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from dd_core.data.coco import validate_coco
from dd_core.data.keypoints import COCO_PERSON_KEYPOINT_NAMES, PERSON_CATEGORY
from dd_core.data.synthetic import DETECTION_CATEGORIES, STYLES, make_detection_dataset, make_keypoints_dataset
from dd_core.data.synthetic.figures import Body, build_figure
from dd_core.data.synthetic.people import Person, paint_person, sample_palette
from dd_core.data.synthetic.poses import Pose
from dd_core.data.synthetic.writer import is_empty_image

MAKERS = {"keypoints": make_keypoints_dataset, "detection": make_detection_dataset}
KP = {name: i for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root: Path, coco: dict) -> dict[int, np.ndarray]:
    return {im["id"]: np.asarray(Image.open(root / "images" / im["file_name"]).convert("RGB"), dtype=np.int32)
            for im in coco["images"]}


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_same_arguments_give_identical_bytes_and_other_seeds_differ(tmp_path: Path, task: str) -> None:
    make = MAKERS[task]
    a = make(tmp_path / "a", 4, seed=3, style="sports")
    b = make(tmp_path / "b", 4, seed=3, style="sports")
    make(tmp_path / "c", 4, seed=4, style="sports")
    files_a, files_b, files_c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert files_a == files_b
    assert sorted(files_a) == ["annotations.json"] + [f"images/00000{i}.png" for i in range(1, 5)]  # no temp files left
    assert files_a.keys() == files_c.keys()
    assert all(files_a[k] != files_c[k] for k in files_a)
    assert json.loads(files_a["annotations.json"]) == a


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_empty_fraction_empties_the_chosen_images_and_leaves_the_others_byte_identical(tmp_path: Path,
                                                                                      task: str) -> None:
    make = MAKERS[task]
    full = make(tmp_path / "full", 12, seed=5)
    half = make(tmp_path / "half", 12, seed=5, empty_fraction=0.5)
    chosen = {i for i in range(1, 13) if is_empty_image(5, task, "coco", i, 0.5)}
    assert 0 < len(chosen) < 12  # with this seed both kinds occur
    assert [im["id"] for im in half["images"]] == list(range(1, 13))  # empty images stay listed
    assert {a["image_id"] for a in half["annotations"]} == {a["image_id"] for a in full["annotations"]} - chosen
    assert [a for a in half["annotations"] if a["image_id"] not in chosen] == \
        [a for a in full["annotations"] if a["image_id"] not in chosen]
    files_full, files_half = _files(tmp_path / "full"), _files(tmp_path / "half")
    for i in range(1, 13):
        name = f"images/{i:06d}.png"
        assert (files_half[name] == files_full[name]) == (i not in chosen)
    # same size and background: an empty image is the full one without its objects
    empty = next(iter(chosen))
    a = np.asarray(Image.open(tmp_path / "half" / "images" / f"{empty:06d}.png"))
    b = np.asarray(Image.open(tmp_path / "full" / "images" / f"{empty:06d}.png"))
    assert a.shape == b.shape
    assert "empty_fraction=0.5" in half["info"]["description"]
    assert make(tmp_path / "none", 12, seed=5, empty_fraction=0.0) == full
    assert make(tmp_path / "all", 6, seed=5, empty_fraction=1.0)["annotations"] == []


def test_a_larger_empty_fraction_empties_a_superset() -> None:
    for fraction, larger in ((0.2, 0.5), (0.5, 0.9)):
        small = {i for i in range(1, 200) if is_empty_image(0, "keypoints", "coco", i, fraction)}
        big = {i for i in range(1, 200) if is_empty_image(0, "keypoints", "coco", i, larger)}
        assert small < big
    assert 70 <= len({i for i in range(1, 200) if is_empty_image(0, "keypoints", "coco", i, 0.5)}) <= 130


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_empty_fraction_out_of_range_is_refused(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="empty_fraction must be between 0 and 1"):
        make_keypoints_dataset(tmp_path, 1, seed=0, empty_fraction=fraction)
    assert not (tmp_path / "annotations.json").exists()


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_start_id_gives_disjoint_ids_and_images(tmp_path: Path, task: str) -> None:
    first = MAKERS[task](tmp_path / "first", 3, seed=0, start_id=1)
    second = MAKERS[task](tmp_path / "second", 3, seed=0, start_id=4)
    assert [im["id"] for im in first["images"]] == [1, 2, 3]
    assert [im["id"] for im in second["images"]] == [4, 5, 6]
    assert [im["file_name"] for im in second["images"]] == ["000004.png", "000005.png", "000006.png"]
    assert not {a["id"] for a in first["annotations"]} & {a["id"] for a in second["annotations"]}
    assert not set(_files(tmp_path / "first").values()) & set(_files(tmp_path / "second").values())


@pytest.mark.parametrize("style", sorted(STYLES))
def test_keypoints_json_is_valid_coco(tmp_path: Path, style: str) -> None:
    written = make_keypoints_dataset(tmp_path, 12, seed=1, style=style, size=96)
    validate_coco(written, "synthetic")
    coco = COCO(str(tmp_path / "annotations.json"))
    assert coco.loadCats(coco.getCatIds()) == [PERSON_CATEGORY]
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and len(anns) == len(written["annotations"])
    for img in coco.loadImgs(coco.getImgIds()):
        assert min(img["width"], img["height"]) == 96 and max(img["width"], img["height"]) <= 128
        with Image.open(tmp_path / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
    sizes = {im["id"]: (im["width"], im["height"]) for im in written["images"]}
    for ann in anns:
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert ann["iscrowd"] == 0 and ann["area"] > 0
        kps = ann["keypoints"]
        assert len(kps) == 51
        assert all(type(v) is int and v in (0, 1, 2) for v in kps[2::3])
        assert ann["num_keypoints"] == sum(v > 0 for v in kps[2::3]) > 0
        for kx, ky, v in zip(kps[0::3], kps[1::3], kps[2::3]):
            if v > 0:
                assert 0 <= kx < width and 0 <= ky < height
            else:
                assert kx == 0 and ky == 0


def test_keypoint_visibility_covers_all_three_flags(tmp_path: Path) -> None:
    coco = make_keypoints_dataset(tmp_path, 30, seed=2)
    flags = collections.Counter(v for a in coco["annotations"] for v in a["keypoints"][2::3])
    assert flags[2] > flags[1] > 0 and flags[0] > 0  # mostly visible, some occluded, some unlabeled


def test_canonical_person_has_warm_left_and_cool_right_limbs() -> None:
    """A person facing the camera: their left limbs appear on the image's right, and are warm-hued."""
    figure = build_figure(Pose(arm_abduct=(0.7, 0.7), leg_abduct=(0.25, 0.25)), Body(), 100.0, (64.0, 64.0))
    gray = (128, 128, 128)
    palette = sample_palette(np.random.default_rng(0), STYLES["coco"], np.array(gray))
    image = Image.new("RGB", (128, 128), gray)
    paint_person(ImageDraw.Draw(image), None, Person(figure, (0.0, 0.0, 128.0, 128.0), palette), 1)
    pixels = np.asarray(image, dtype=np.int32)
    kps = figure.keypoints

    def limb_color(a: str, b: str) -> np.ndarray:
        pts = [kps[KP[a]] + t * (kps[KP[b]] - kps[KP[a]]) for t in np.linspace(0.2, 0.8, 7)]
        return np.mean([pixels[int(y), int(x)] for x, y in pts], axis=0)

    assert kps[KP["left_wrist"], 0] > kps[KP["right_wrist"], 0]
    for a, b in (("elbow", "wrist"), ("shoulder", "elbow"), ("knee", "ankle"), ("hip", "knee")):
        left, right = limb_color(f"left_{a}", f"left_{b}"), limb_color(f"right_{a}", f"right_{b}")
        assert left[0] - left[2] > 40, (a, b, left)  # warm: red well above blue
        assert right[2] - right[0] > 40, (a, b, right)  # cool: blue well above red


@pytest.mark.parametrize("style", sorted(STYLES))
def test_generated_forearms_follow_the_left_right_cue(tmp_path: Path, style: str) -> None:
    """In generated images (noise, clutter, overlaps and all), forearm midpoints mostly show the cue."""
    coco = make_keypoints_dataset(tmp_path, 30, seed=7, style=style)
    images = _images(tmp_path, coco)
    red_minus_blue: dict[str, list[int]] = {"left": [], "right": []}
    for ann in coco["annotations"]:
        kps = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        for side in red_minus_blue:
            elbow, wrist = kps[KP[f"{side}_elbow"]], kps[KP[f"{side}_wrist"]]
            if elbow[2] == 2 and wrist[2] == 2:
                x, y = (elbow[:2] + wrist[:2]) / 2
                pixel = images[ann["image_id"]][int(y), int(x)]
                red_minus_blue[side].append(int(pixel[0] - pixel[2]))
    left, right = np.array(red_minus_blue["left"]), np.array(red_minus_blue["right"])
    assert len(left) >= 20 and len(right) >= 20
    assert (left > 0).mean() > 0.7 and (right < 0).mean() > 0.7


def test_styles_differ_in_background_and_people(tmp_path: Path) -> None:
    stats = {}
    for style in ("coco", "sports"):
        coco = make_keypoints_dataset(tmp_path / style, 16, seed=5, style=style)
        pixels = np.concatenate([im.reshape(-1, 3) for im in _images(tmp_path / style, coco).values()])
        greenness = float((pixels[:, 1] - (pixels[:, 0] + pixels[:, 2]) / 2).mean())
        heights = [a["bbox"][3] for a in coco["annotations"]]
        stats[style] = (greenness, len(coco["annotations"]) / 16, float(np.median(heights)))
    assert stats["sports"][0] > stats["coco"][0] + 10  # green fields
    assert stats["sports"][1] > stats["coco"][1]  # more people ...
    assert stats["sports"][2] < stats["coco"][2]  # ... and smaller ones


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_unknown_style_raises_and_names_known_styles(tmp_path: Path, task: str) -> None:
    with pytest.raises(ValueError, match="coco, sports"):
        MAKERS[task](tmp_path, 1, seed=0, style="imagenet")
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        MAKERS[task](tmp_path, 1, seed=-1)


def test_detection_json_is_valid_and_categories_are_unequal(tmp_path: Path) -> None:
    written = make_detection_dataset(tmp_path, 100, seed=0, size=64)
    validate_coco(written, "synthetic")
    coco = COCO(str(tmp_path / "annotations.json"))
    assert coco.loadCats(coco.getCatIds()) == list(DETECTION_CATEGORIES)
    assert [c["id"] for c in DETECTION_CATEGORIES] == list(range(1, len(DETECTION_CATEGORIES) + 1))
    assert len(DETECTION_CATEGORIES) >= 6
    anns = coco.loadAnns(coco.getAnnIds())
    sizes = {im["id"]: (im["width"], im["height"]) for im in written["images"]}
    for ann in anns:
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w >= 4 and h >= 4 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert 0 < ann["area"] <= w * h and "keypoints" not in ann
    per_image = collections.Counter(a["image_id"] for a in anns)
    assert len(per_image) == 100 and max(per_image.values()) <= 8  # every image has objects
    counts = collections.Counter(a["category_id"] for a in anns)
    assert set(counts) == {c["id"] for c in DETECTION_CATEGORIES}
    assert max(counts.values()) >= 3 * min(counts.values())
