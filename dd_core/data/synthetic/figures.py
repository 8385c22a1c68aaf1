"""Stick-figure people: a 3-D skeleton with COCO's 17 keypoints, projected and turned into primitives.

The skeleton is built in the person's frame (x = the person's left, y = up, z = where they face;
units of standing height), turned by the pose's yaw, projected orthographically and tilted by its
roll. Every part keeps its camera depth so parts are painted back to front; face keypoints carry
a surface normal so a face turned away from the camera is not labeled (as in COCO).

Every part is tagged with a color *role*; ``left``/``right`` roles get the warm/cool hue families
of :mod:`colors` -- the appearance cue that tells a person's left from their right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dd_core.data.keypoints import COCO_PERSON_KEYPOINT_NAMES
from dd_core.data.synthetic.canvas import Disc, Point, Polygon, Primitive, Segment
from dd_core.data.synthetic.poses import Pose

SIDES: tuple[tuple[int, str], ...] = ((+1, "left"), (-1, "right"))


@dataclass(frozen=True)
class Body:
    """Proportions and stroke widths, in units of standing height."""

    head_radius: float = 0.068
    neck: float = 0.04
    torso: float = 0.30
    shoulder_half: float = 0.11
    hip_half: float = 0.07
    upper_arm: float = 0.17
    forearm: float = 0.15
    thigh: float = 0.245
    shin: float = 0.245
    foot: float = 0.06
    arm_width: float = 0.04
    leg_width: float = 0.055
    torso_width: float = 0.12
    neck_width: float = 0.04


def sample_body(rng: np.random.Generator) -> Body:
    """Per-person variation: limb lengths +-10%, head size, build (stroke thickness)."""
    limb = rng.uniform(0.9, 1.1)
    build = rng.uniform(0.8, 1.35)
    b = Body()
    return Body(head_radius=b.head_radius * rng.uniform(0.9, 1.15), neck=b.neck, torso=b.torso * rng.uniform(0.92, 1.08),
                shoulder_half=b.shoulder_half * rng.uniform(0.85, 1.15), hip_half=b.hip_half * rng.uniform(0.85, 1.2),
                upper_arm=b.upper_arm * limb, forearm=b.forearm * limb, thigh=b.thigh * limb, shin=b.shin * limb,
                foot=b.foot, arm_width=b.arm_width * build, leg_width=b.leg_width * build,
                torso_width=b.torso_width * build, neck_width=b.neck_width * build)


# --- rotations (column vectors; x = left, y = up, z = forward) ---------------------------------

def _rot_x(a: float) -> np.ndarray:
    """Pitch: turns "down" (0, -1, 0) toward "forward" (0, 0, 1) by ``a``."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _rot_y(a: float) -> np.ndarray:
    """Yaw: turns "forward" (0, 0, 1) toward x by ``a``."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    """Roll in the x-y plane: turns "down" (0, -1, 0) toward +x by ``a``."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_DOWN = np.array([0.0, -1.0, 0.0])
_UP = np.array([0.0, 1.0, 0.0])


def _limb_dir(pitch: float, abduct: float, side: int) -> np.ndarray:
    return _rot_x(pitch) @ _rot_z(side * abduct) @ _DOWN


# Face landmarks relative to the head center, in head radii, with the normal that must face the
# camera for the landmark to be labeled (and its threshold on the normal's camera-z).
_FACE: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "nose": ((0.0, -0.1, 1.0), (0.0, 0.0, 1.0), 0.05),
    "left_eye": ((0.38, 0.22, 0.85), (0.35, 0.0, 0.94), 0.15),
    "right_eye": ((-0.38, 0.22, 0.85), (-0.35, 0.0, 0.94), 0.15),
    "left_ear": ((1.0, 0.0, -0.05), (1.0, 0.0, 0.0), -0.3),
    "right_ear": ((-1.0, 0.0, -0.05), (-1.0, 0.0, 0.0), -0.3),
}


def skeleton(pose: Pose, body: Body) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """3-D points (person frame, hip center at the origin) and which face landmarks face the camera.

    Points: the 17 COCO keypoints plus ``shoulder_center``, ``hip_center``, ``neck_top``, ``head``,
    ``hair``, ``left_toe`` and ``right_toe``.
    """
    pts: dict[str, np.ndarray] = {"hip_center": np.zeros(3)}
    torso_rot = _rot_z(pose.torso_roll) @ _rot_x(-pose.torso_pitch)
    pts["shoulder_center"] = torso_rot @ (_UP * body.torso)
    for i, (side, name) in enumerate(SIDES):
        hip = np.array([side * body.hip_half, 0.0, 0.0])
        knee = hip + body.thigh * _limb_dir(pose.leg_pitch[i], pose.leg_abduct[i], side)
        ankle = knee + body.shin * _limb_dir(pose.leg_pitch[i] - pose.knee[i], pose.leg_abduct[i], side)
        shoulder = pts["shoulder_center"] + torso_rot @ np.array([side * body.shoulder_half, 0.0, 0.0])
        elbow = shoulder + torso_rot @ (body.upper_arm * _limb_dir(pose.arm_pitch[i], pose.arm_abduct[i], side))
        wrist = elbow + torso_rot @ (body.forearm * _limb_dir(pose.arm_pitch[i] + pose.elbow[i], pose.arm_abduct[i], side))
        pts.update({f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_ankle": ankle,
                    f"{name}_toe": ankle + body.foot * np.array([0.0, -0.15, 1.0]),
                    f"{name}_shoulder": shoulder, f"{name}_elbow": elbow, f"{name}_wrist": wrist})
    r = body.head_radius
    pts["neck_top"] = pts["shoulder_center"] + torso_rot @ (_UP * body.neck)
    pts["head"] = pts["shoulder_center"] + torso_rot @ (_UP * (body.neck + r))
    head_rot = _rot_y(pose.yaw) @ torso_rot @ _rot_y(pose.head_yaw)
    pts["hair"] = pts["head"] + torso_rot @ _rot_y(pose.head_yaw) @ (np.array([0.0, 0.3, -0.35]) * r)
    faces_camera: dict[str, bool] = {}
    for name, (offset, normal, threshold) in _FACE.items():
        pts[name] = pts["head"] + torso_rot @ _rot_y(pose.head_yaw) @ (np.array(offset) * r)
        faces_camera[name] = bool((head_rot @ np.array(normal))[2] > threshold)
    return pts, faces_camera


def project(points: dict[str, np.ndarray], pose: Pose, scale: float) -> tuple[dict[str, Point], dict[str, float]]:
    """Image-plane positions (y down, origin at the hip center) and camera depth (larger = nearer)."""
    cam = _rot_y(pose.yaw)
    c, s = math.cos(pose.roll), math.sin(pose.roll)
    xy: dict[str, Point] = {}
    depth: dict[str, float] = {}
    for name, p in points.items():
        x, y, z = cam @ p
        xr, yr = x * c - y * s, x * s + y * c
        xy[name] = (float(xr * scale), float(-yr * scale))
        depth[name] = float(z)
    return xy, depth


@dataclass
class Part:
    """Primitives painted together (one limb, the torso, the head) at one depth, each with a color role."""

    depth: float
    strokes: list[tuple[Primitive, str]] = field(default_factory=list)


@dataclass
class Figure:
    """One person ready to paint and to annotate."""

    parts: list[Part]  # back to front
    keypoints: np.ndarray  # (17, 2) image coordinates, COCO order
    labelable: np.ndarray  # (17,) bool: False for face landmarks turned away from the camera
    height_px: float


def _limb_parts(xy: dict[str, Point], depth: dict[str, float], arm_w: float, leg_w: float) -> list[Part]:
    parts = []
    for _, name in SIDES:
        sh, el, wr = xy[f"{name}_shoulder"], xy[f"{name}_elbow"], xy[f"{name}_wrist"]
        arm = Part(np.mean([depth[f"{name}_{j}"] for j in ("shoulder", "elbow", "wrist")]),
                   [(Segment(sh, el, arm_w), name), (Segment(el, wr, arm_w), name), (Disc(sh, arm_w / 2), name),
                    (Disc(el, arm_w / 2), name), (Disc(wr, arm_w * 0.65), name)])
        hp, kn, an, toe = xy[f"{name}_hip"], xy[f"{name}_knee"], xy[f"{name}_ankle"], xy[f"{name}_toe"]
        leg = Part(np.mean([depth[f"{name}_{j}"] for j in ("hip", "knee", "ankle")]),
                   [(Segment(hp, kn, leg_w), name), (Segment(kn, an, leg_w), name), (Segment(an, toe, leg_w * 0.8), name),
                    (Disc(hp, leg_w / 2), name), (Disc(kn, leg_w / 2), name), (Disc(an, leg_w / 2), name)])
        parts += [arm, leg]
    return parts


def _torso_part(xy: dict[str, Point], depth: dict[str, float], width: float) -> Part:
    quad = Polygon((xy["left_shoulder"], xy["right_shoulder"], xy["right_hip"], xy["left_hip"]))
    spine = Segment(xy["shoulder_center"], xy["hip_center"], width)
    # slightly behind the limbs that hang beside it
    return Part((depth["shoulder_center"] + depth["hip_center"]) / 2 - 0.02,
                [(quad, "torso"), (spine, "torso"), (Disc(xy["shoulder_center"], width / 2), "torso"),
                 (Disc(xy["hip_center"], width / 2), "torso")])


def _head_part(xy: dict[str, Point], depth: dict[str, float], faces: dict[str, bool], r: float, neck_w: float) -> Part:
    hair: tuple[Primitive, str] = (Disc(xy["hair"], r * 0.9), "hair")
    strokes: list[tuple[Primitive, str]] = [(Segment(xy["shoulder_center"], xy["neck_top"], neck_w), "skin")]
    hair_in_front = depth["hair"] > depth["head"]
    strokes += ([] if hair_in_front else [hair]) + [(Disc(xy["head"], r), "skin")] + ([hair] if hair_in_front else [])
    for name, role, radius in (("left_eye", "eye", 0.14), ("right_eye", "eye", 0.14), ("nose", "nose", 0.13),
                               ("left_ear", "left", 0.26), ("right_ear", "right", 0.26)):
        if faces[name]:
            strokes.append((Disc(xy[name], max(0.6, radius * r)), role))
    return Part(depth["head"] + 0.01, strokes)


def build_figure(pose: Pose, body: Body, height_px: float, center: Point) -> Figure:
    """The figure of ``height_px`` standing height whose extent is centered on ``center``."""
    pts, faces = skeleton(pose, body)
    xy, depth = project(pts, pose, height_px)
    r = body.head_radius * height_px
    xs = np.array([p[0] for p in xy.values()])
    ys = np.array([p[1] for p in xy.values()])
    dx = center[0] - (xs.min() + xs.max()) / 2
    dy = center[1] - (ys.min() - r + ys.max()) / 2
    xy = {k: (p[0] + dx, p[1] + dy) for k, p in xy.items()}
    def w(v: float) -> float:
        return max(1.0, v * height_px)
    parts = _limb_parts(xy, depth, w(body.arm_width), w(body.leg_width))
    parts += [_torso_part(xy, depth, w(body.torso_width)), _head_part(xy, depth, faces, r, w(body.neck_width))]
    parts.sort(key=lambda p: p.depth)
    keypoints = np.array([xy[n] for n in COCO_PERSON_KEYPOINT_NAMES])
    labelable = np.array([faces.get(n, True) for n in COCO_PERSON_KEYPOINT_NAMES])
    return Figure(parts, keypoints, labelable, height_px)


def figure_extent(figure: Figure) -> tuple[float, float]:
    """(width, height) of the keypoints' bounding box, a cheap size estimate for placement."""
    span = figure.keypoints.max(axis=0) - figure.keypoints.min(axis=0)
    return float(span[0]), float(span[1])
