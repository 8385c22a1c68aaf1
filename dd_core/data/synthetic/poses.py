"""Random body poses: a few archetypes (standing, walking, sitting, ...) with jittered joint angles.

Angles are in the person's own frame: *pitch* swings a limb forward (toward where the person
faces), *abduction* swings it sideways away from the body, the elbow bends the forearm forward and
the knee bends the shin backward. The 3-D skeleton built from a pose (``people``) is then turned
by a random *yaw* and projected, so facing, profile and back views -- and thus mirror-image
layouts of left and right -- all occur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

Pair = tuple[float, float]  # (left, right), radians


@dataclass(frozen=True)
class Pose:
    """Joint angles of one person (radians); ``yaw=0`` faces the camera, ``roll`` tilts the whole image."""

    yaw: float = 0.0
    head_yaw: float = 0.0
    roll: float = 0.0
    torso_pitch: float = 0.0
    torso_roll: float = 0.0
    arm_pitch: Pair = (0.0, 0.0)
    arm_abduct: Pair = (0.2, 0.2)
    elbow: Pair = (0.0, 0.0)
    leg_pitch: Pair = (0.0, 0.0)
    leg_abduct: Pair = (0.05, 0.05)
    knee: Pair = (0.0, 0.0)


def _deg(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.radians(rng.uniform(lo, hi))


def _pair(rng: np.random.Generator, lo: float, hi: float) -> Pair:
    return _deg(rng, lo, hi), _deg(rng, lo, hi)


def _standing_legs(rng: np.random.Generator) -> dict[str, Pair]:
    return {"leg_pitch": _pair(rng, -8, 8), "leg_abduct": _pair(rng, 0, 10), "knee": _pair(rng, 0, 12)}


def _hanging_arms(rng: np.random.Generator) -> dict[str, Pair]:
    return {"arm_pitch": _pair(rng, -15, 20), "arm_abduct": _pair(rng, 3, 25), "elbow": _pair(rng, 0, 35)}


def _standing(rng: np.random.Generator) -> Pose:
    return Pose(torso_pitch=_deg(rng, -5, 8), torso_roll=_deg(rng, -5, 5), **_hanging_arms(rng), **_standing_legs(rng))


def _walking(rng: np.random.Generator, lo: float = 12, hi: float = 35) -> Pose:
    s = _deg(rng, lo, hi)
    return Pose(torso_pitch=_deg(rng, 0, 10), arm_pitch=(s, -s), arm_abduct=_pair(rng, 3, 15), elbow=_pair(rng, 10, 45),
                leg_pitch=(-s, s), leg_abduct=_pair(rng, 0, 6), knee=(_deg(rng, 10, 45), _deg(rng, 0, 15)))


def _running(rng: np.random.Generator) -> Pose:
    s = _deg(rng, 30, 65)
    return Pose(torso_pitch=_deg(rng, 8, 25), arm_pitch=(s, -s), arm_abduct=_pair(rng, 5, 20), elbow=_pair(rng, 70, 110),
                leg_pitch=(-0.8 * s, s), leg_abduct=_pair(rng, 0, 8), knee=(_deg(rng, 50, 110), _deg(rng, 20, 60)))


def _arms_up(rng: np.random.Generator) -> Pose:
    if rng.random() < 0.5:  # overhead, forward route
        arms = {"arm_pitch": _pair(rng, 140, 185), "arm_abduct": _pair(rng, 0, 25)}
    else:  # sideways route (jumping jack, cheering)
        arms = {"arm_pitch": _pair(rng, -10, 20), "arm_abduct": _pair(rng, 100, 170)}
    return Pose(torso_pitch=_deg(rng, -10, 5), elbow=_pair(rng, 0, 50), **arms, **_standing_legs(rng))


def _reaching(rng: np.random.Generator) -> Pose:
    base = _standing(rng) if rng.random() < 0.6 else _walking(rng)
    return replace(base, arm_pitch=(_deg(rng, 50, 170), base.arm_pitch[1]), arm_abduct=(_deg(rng, 0, 80), base.arm_abduct[1]),
                   elbow=(_deg(rng, 0, 40), base.elbow[1]))


def _sitting(rng: np.random.Generator) -> Pose:
    return Pose(torso_pitch=_deg(rng, -15, 10), arm_pitch=_pair(rng, 5, 60), arm_abduct=_pair(rng, 0, 20),
                elbow=_pair(rng, 20, 90), leg_pitch=_pair(rng, 65, 105), leg_abduct=_pair(rng, 0, 20), knee=_pair(rng, 60, 110))


def _crouching(rng: np.random.Generator) -> Pose:
    return Pose(torso_pitch=_deg(rng, 20, 50), arm_pitch=_pair(rng, 20, 80), arm_abduct=_pair(rng, 0, 30),
                elbow=_pair(rng, 10, 90), leg_pitch=_pair(rng, 50, 110), leg_abduct=_pair(rng, 0, 25), knee=_pair(rng, 100, 150))


def _random(rng: np.random.Generator) -> Pose:
    return Pose(torso_pitch=_deg(rng, -20, 50), torso_roll=_deg(rng, -20, 20), arm_pitch=_pair(rng, -60, 180),
                arm_abduct=_pair(rng, 0, 150), elbow=_pair(rng, 0, 140), leg_pitch=_pair(rng, -40, 110),
                leg_abduct=_pair(rng, 0, 45), knee=_pair(rng, 0, 140))


POSE_ARCHETYPES: dict[str, Callable[[np.random.Generator], Pose]] = {
    "standing": _standing, "walking": _walking, "running": _running, "arms_up": _arms_up, "reaching": _reaching,
    "sitting": _sitting, "crouching": _crouching, "random": _random,
}


def _swap_sides(pose: Pose) -> Pose:
    """The same pose with left and right limbs exchanged (so asymmetric archetypes favor neither side)."""
    def sw(p: Pair) -> Pair:
        return p[1], p[0]
    return replace(pose, arm_pitch=sw(pose.arm_pitch), arm_abduct=sw(pose.arm_abduct), elbow=sw(pose.elbow),
                   leg_pitch=sw(pose.leg_pitch), leg_abduct=sw(pose.leg_abduct), knee=sw(pose.knee),
                   torso_roll=-pose.torso_roll)


def _sample_yaw(rng: np.random.Generator) -> float:
    """Mostly facing the camera, some from behind, the rest from any side."""
    u = rng.random()
    if u < 0.4:
        return math.radians(rng.normal(0.0, 35.0))
    if u < 0.55:
        return math.radians(rng.normal(180.0, 35.0))
    return rng.uniform(0.0, 2 * math.pi)


def sample_pose(rng: np.random.Generator, weights: tuple[tuple[str, float], ...], tumble_prob: float) -> Pose:
    """A random pose: archetype by ``weights``, random side swap, yaw, head turn and image-plane roll."""
    names = [n for n, _ in weights]
    probs = np.array([w for _, w in weights], dtype=float)
    pose = POSE_ARCHETYPES[names[int(rng.choice(len(names), p=probs / probs.sum()))]](rng)
    if rng.random() < 0.5:
        pose = _swap_sides(pose)
    roll = _deg(rng, -110, 110) if rng.random() < tumble_prob else math.radians(rng.normal(0.0, 4.0))
    return replace(pose, yaw=_sample_yaw(rng), head_yaw=math.radians(float(np.clip(rng.normal(0, 25), -60, 60))), roll=roll)
