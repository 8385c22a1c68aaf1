"""Keypoint sets: COCO's 17 person keypoints (names, skeleton, sigmas), and any set's flip map and OKS sigmas."""

from __future__ import annotations

from typing import Sequence

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


# Per-keypoint OKS sigmas used by COCOeval for people (pycocotools' defaults).
COCO_PERSON_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)

def flip_indices(names: tuple[str, ...] | list[str] = COCO_PERSON_KEYPOINT_NAMES,
                 pairs: Sequence[Sequence[str]] | None = None) -> list[int]:
    """Index permutation that swaps every ``left_*`` keypoint with its ``right_*`` twin, or the
    name ``pairs`` given (for other naming; keypoints in no pair map to themselves).

    ``flipped[:, flip_indices(names)]`` re-labels the keypoints of a horizontally flipped person.
    """
    index = {name: i for i, name in enumerate(names)}
    if pairs is not None:
        out = list(range(len(names)))
        seen: set[str] = set()
        for pair in pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"flip pair {list(pair)}: expected two different keypoint names")
            for name in pair:
                if name not in index:
                    raise ValueError(f"flip pair {list(pair)}: {name!r} is not a keypoint name (expected one of {list(names)})")
                if name in seen:
                    raise ValueError(f"flip pair {list(pair)}: {name!r} is in two pairs")
                seen.add(name)
            a, b = index[pair[0]], index[pair[1]]
            out[a], out[b] = b, a
        return out
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


def oks_sigmas(names: Sequence[str], sigmas: Sequence[float] | None = None) -> tuple[float, ...]:
    """The OKS sigma of each keypoint: ``sigmas`` as given (one per name), else COCO's for its 17
    person keypoints, else 0.05 each (a guess: measure your set's, as COCO did, for comparable AP)."""
    if sigmas is not None:
        if len(sigmas) != len(names) or any(not s > 0 for s in sigmas):
            raise ValueError(f"OKS sigmas: expected {len(names)} positive numbers (one per keypoint: {list(names)}), "
                             f"got {list(sigmas)}")
        return tuple(float(s) for s in sigmas)
    if tuple(names) == COCO_PERSON_KEYPOINT_NAMES:
        return COCO_PERSON_SIGMAS
    return (0.05,) * len(names)


COCO_PERSON_FLIP_INDICES: tuple[int, ...] = tuple(flip_indices())

PERSON_CATEGORY: dict = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
    "skeleton": [list(p) for p in COCO_PERSON_SKELETON],
}
