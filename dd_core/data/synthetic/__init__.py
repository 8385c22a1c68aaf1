"""Deterministic synthetic COCO data sets, small enough to train and evaluate on a CPU.

* :func:`make_keypoints_dataset` -- stick-figure people with COCO's 17 person keypoints; a
  person's left limbs are warm-hued and right limbs cool-hued, so left/right (and hence flips)
  can be learned from appearance.
* :func:`make_detection_dataset` -- 8 shape categories (:data:`DETECTION_CATEGORIES`) with
  unequal frequency and look-alike pairs.

Both write ``out_dir/annotations.json`` and ``out_dir/images/*.png``; :data:`STYLES` ("coco",
"sports") stand in for two different data distributions.
"""

from dd_core.data.synthetic.people import make_keypoints_dataset
from dd_core.data.synthetic.shapes import DETECTION_CATEGORIES, make_detection_dataset
from dd_core.data.synthetic.styles import STYLES, Style, get_style

__all__ = ["DETECTION_CATEGORIES", "STYLES", "Style", "get_style", "make_detection_dataset", "make_keypoints_dataset"]
