"""Peak memory of `omnidistill label` on one 12000 x 12000 PNG (issue 28, item 3), against a 640 x 480 one.

    .venv/bin/python bench/big_image.py [--side 12000] [--workdir DIR]

Makes a random-weight slim detection teacher (the preset's own test scale and max size), a folder
with one black PNG of ``side`` x ``side`` px with a red square (written row by row: a few hundred KB
on disk), and runs ``omnidistill label --checkpoint ... --images ... --out ... --score-threshold 0.5
--device cpu --quiet`` on it in a child process; the child's peak RSS comes from ``wait4``. Prints
one JSON line per image: command, peak RSS (MiB), wall seconds, the width/height the output json
gives the image, and how many pseudo-labels it kept.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_png(path: Path, width: int, height: int) -> None:
    """Black, with a red square in the middle third; never holds more than two rows in memory."""
    x0, x1, y0, y1 = width // 3, 2 * width // 3, height // 3, 2 * height // 3
    plain, band = bytearray(1 + 3 * width), bytearray(1 + 3 * width)
    band[1 + 3 * x0:1 + 3 * x1:3] = b"\xff" * (x1 - x0)
    packer = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for y in range(height):
            data = packer.compress(bytes(band if y0 <= y < y1 else plain))
            if data:
                f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IDAT", packer.flush()) + _chunk(b"IEND", b""))


def make_teacher(work: Path) -> str:
    """A random-weight slim detection checkpoint that keeps plenty of boxes (class 1 biased high)."""
    import torch

    from dd_core.data.coco import load_coco
    from dd_core.models import ModelConfig, build_model
    from dd_core.models.checkpoint import save_checkpoint
    from dd_core.train.detector import checkpoint_meta, spec_for

    omnidistill = str(Path(sys.executable).parent / "omnidistill")
    subprocess.run([omnidistill, "synth", "detection", str(work / "labeled"), "--images", "2", "--seed", "0"],
                   check=True, capture_output=True)
    data = load_coco(str(work / "labeled" / "annotations.json"), str(work / "labeled" / "images"))
    torch.manual_seed(0)
    spec = spec_for("detection", data, ModelConfig())
    model = build_model(spec)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    url = str(work / "teacher.pth")
    save_checkpoint(url, {"model": model.state_dict(), "iteration": 0, **checkpoint_meta(spec, data)})
    return url


def label_peak(checkpoint: str, images: Path, out: Path) -> dict:
    command = [str(Path(sys.executable).parent / "omnidistill"), "label", "--checkpoint", checkpoint,
               "--images", str(images), "--out", str(out), "--score-threshold", "0.5", "--device", "cpu", "--quiet"]
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    stderr = child.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    result = json.loads(out.read_text())
    image = result["images"][0]
    return {"command": " ".join(command), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1),
            "image": [image["width"], image["height"]], "pseudo_labels": len(result["annotations"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="big-image-"))
    checkpoint = make_teacher(work)
    for name, (width, height) in {"small": (640, 480), "big": (args.side, args.side)}.items():
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / "photo.png", width, height)
        found = label_peak(checkpoint, folder, work / f"{name}.json")
        print(json.dumps({"png": [width, height], "png_bytes": (folder / "photo.png").stat().st_size, **found}))


if __name__ == "__main__":
    main()
