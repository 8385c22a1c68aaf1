"""COCO's 17 person keypoints: names, skeleton and the left/right flip map."""

from __future__ import annotations

COCO_PERSON_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(COCO_PERSON_KEYPOINT_NAMES)

# 1-based pairs, exactly as in person_keypoints_*.json's "skeleton" field.
COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)


def flip_indices(names: tuple[str, ...] | list[str] = COCO_PERSON_KEYPOINT_NAMES) -> list[int]:
    """Index permutation that swaps every ``left_*`` keypoint with its ``right_*`` twin.

    ``flipped[:, flip_indices(names)]`` re-labels the keypoints of a horizontally flipped person.
    """
    index = {name: i for i, name in enumerate(names)}
    out = []
    for name in names:
        if name.startswith("left_"):
            twin = "right_" + name[len("left_"):]
        elif name.startswith("right_"):
            twin = "left_" + name[len("right_"):]
        else:
            twin = name
        out.append(index.get(twin, index[name]))
    return out


COCO_PERSON_FLIP_INDICES: tuple[int, ...] = tuple(flip_indices())

# Per-keypoint OKS sigmas used by COCOeval for people (pycocotools' defaults).
COCO_PERSON_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)

PERSON_CATEGORY: dict = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
    "skeleton": [list(p) for p in COCO_PERSON_SKELETON],
}
