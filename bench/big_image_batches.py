"""Peak memory of reading 12000 x 12000 photos for labeling, by batch size (README, "A large but legal photo").

    OMP_NUM_THREADS=1 .venv/bin/python bench/big_image_batches.py BATCH_SIZE [NUM_IMAGES] [--workdir DIR]

Writes ``NUM_IMAGES`` (default 16) black 12000 x 12000 8-bit RGB PNGs with a red square (row by row,
a few hundred KB each; kept in ``DIR`` for the next run) and reads them all through
:func:`dd_core.pseudo.reading.read_batches` in batches of ``BATCH_SIZE``, as a shard's labeling
does (8 reading threads, the next batch read while this one would be labeled; no model: the
teacher's largest frame is taken as 160 x 160, the slim preset's, so each photo is reduced 64x).
Prints how much this process's peak RSS (``ru_maxrss``) grew while reading, and the wall time.
Run one batch size per process: the peak is the process's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.big_image import write_png  # noqa: E402
from dd_core.data.unlabeled import UnlabeledImage  # noqa: E402
from dd_core.pseudo.reading import ImageReading, read_batches  # noqa: E402


class Frame160:
    """An image check that takes every image, and the teacher's largest frame, 160 x 160 px."""

    def __call__(self, height: int, width: int) -> None:
        return None

    def largest_frame(self, height: int, width: int) -> tuple[int, int]:
        return 160, 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch_size", type=int)
    parser.add_argument("num_images", type=int, nargs="?", default=16)
    parser.add_argument("--workdir", default="/tmp/bigpngs")
    args = parser.parse_args()
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.num_images):
        if not (folder / f"{i}.png").exists():
            write_png(folder / f"{i}.png", 12000, 12000)
    images = [UnlabeledImage(i + 1, f"{i}.png") for i in range(args.num_images)]
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    for _, _, refused, _ in read_batches(batches, ImageReading(str(folder), None, Frame160()), "cpu"):
        assert not refused, refused
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    print(f"batch_size {args.batch_size}, {args.num_images} images: peak RSS grew {grew:.2f} GB "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
