"""Reading a shard's images: several at once, the next batch ahead, in order, odd ones rejected alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from dd_core.data.unlabeled import UnlabeledImage
from dd_core.pseudo.reading import ImageRejected, read_batches
from dd_core.storage import StorageError


def _pile(tmp_path, n: int) -> list[UnlabeledImage]:
    """``n`` PNGs, image i being (10 + i) px high: its height tells where it went."""
    for i in range(n):
        Image.fromarray(np.full((10 + i, 12, 3), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return [UnlabeledImage(i, f"{i}.png") for i in range(n)]


def test_batches_come_back_in_order_with_odd_images_rejected_alone(tmp_path):
    images = _pile(tmp_path, 7)
    (tmp_path / "3.png").write_bytes(b"not a png")
    (tmp_path / "5.png").unlink()
    batches = [images[0:3], images[3:6], images[6:7]]
    reads = list(read_batches(batches, str(tmp_path), None, "cpu", threads=4))
    assert len(reads) == 3
    kept_ids = [[image.id for image in kept] for _, kept, _ in reads]
    assert kept_ids == [[0, 1, 2], [4], [6]]
    heights = [[int(t.shape[-2]) for t in tensors] for tensors, _, _ in reads]
    assert heights == [[10, 11, 12], [14], [16]]  # each tensor beside its own image
    assert float(reads[0][0][1].max()) == pytest.approx(1 / 255)  # image 1's pixels, as floats in [0, 1]
    refused = [(image.id, str(exc)) for image, exc in reads[1][2]]
    assert [i for i, _ in refused] == [3, 5]
    assert all(isinstance(exc, ImageRejected) for _, exc in reads[1][2])
    assert "no such file" in refused[1][1] and str(tmp_path / "5.png") in refused[1][1]


def test_images_are_read_at_once_and_the_next_batch_ahead(tmp_path):
    """Four images wait for each other inside the reads (a barrier): they only get through when
    read at once. The first batch's two and the next batch's two meet there too."""
    images = _pile(tmp_path, 4)
    barrier = threading.Barrier(4, timeout=10)

    def check(height: int, width: int) -> None:
        barrier.wait()  # raises BrokenBarrierError after 10 s if fewer than 4 reads run at once

    reads = read_batches([images[:2], images[2:]], str(tmp_path), None, "cpu", check_image=check, threads=4)
    assert [[image.id for image in kept] for _, kept, _ in reads] == [[0, 1], [2, 3]]


def test_leaving_early_reads_at_most_the_next_batch(tmp_path):
    images = _pile(tmp_path, 10)
    seen: list[int] = []
    lock = threading.Lock()

    def count(height: int, width: int) -> None:
        with lock:
            seen.append(height - 10)

    reads = read_batches([images[i:i + 2] for i in range(0, 10, 2)], str(tmp_path), None, "cpu",
                         check_image=count, threads=1)
    tensors, kept, _ = next(reads)
    reads.close()  # the shard stopped: what was queued is dropped, what runs is waited for
    assert [image.id for image in kept] == [0, 1]
    assert set(seen) <= {0, 1, 2, 3} and {0, 1} <= set(seen)


def test_a_storage_failure_fails_its_batch_not_a_single_image(tmp_path):
    images = _pile(tmp_path, 4)

    def storage_down(height: int, width: int) -> None:
        if height == 12:
            raise StorageError("endpoint unreachable")

    reads = read_batches([images[:2], images[2:]], str(tmp_path), None, "cpu", check_image=storage_down)
    assert [image.id for image in next(reads)[1]] == [0, 1]
    with pytest.raises(StorageError, match="endpoint unreachable"):
        next(reads)


def test_no_batches_read_nothing(tmp_path):
    assert list(read_batches([], str(tmp_path), None, "cpu")) == []


def test_leaving_early_does_not_wait_for_a_stalled_read(tmp_path):
    """Ctrl-C or a stop while a GET hangs: the shard ends now, the stalled read is left behind."""
    images = _pile(tmp_path, 4)
    release, finished = threading.Event(), threading.Event()

    def stall_image_2(height: int, width: int) -> None:
        if height == 12:
            release.wait(10)
            finished.set()

    reads = read_batches([images[:2], images[2:]], str(tmp_path), None, "cpu", check_image=stall_image_2)
    assert [image.id for image in next(reads)[1]] == [0, 1]
    reads.close()
    assert not finished.is_set()  # close() returned while image 2's read still hangs
    release.set()
