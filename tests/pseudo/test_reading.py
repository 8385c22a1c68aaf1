"""Reading a shard's images: several at once, the next batch ahead, in order, odd ones rejected alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from dd_core.data.unlabeled import UnlabeledImage
from dd_core.ops.read_ahead import ReadAhead
from dd_core.pseudo.reading import ImageReading, ImageRejected, read_batches, read_one
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
    reads = list(read_batches(batches, ImageReading(str(tmp_path)), "cpu", threads=4))
    assert len(reads) == 3
    kept_ids = [[image.id for image in kept] for _, kept, *_ in reads]
    assert kept_ids == [[0, 1, 2], [4], [6]]
    heights = [[int(t.shape[-2]) for t in tensors] for tensors, *_ in reads]
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

    reads = read_batches([images[:2], images[2:]], ImageReading(str(tmp_path), None, check), "cpu", threads=4)
    assert [[image.id for image in kept] for _, kept, *_ in reads] == [[0, 1], [2, 3]]


def test_leaving_early_reads_at_most_the_next_batch(tmp_path):
    images = _pile(tmp_path, 10)
    seen: list[int] = []
    lock = threading.Lock()

    def count(height: int, width: int) -> None:
        with lock:
            seen.append(height - 10)

    reads = read_batches([images[i:i + 2] for i in range(0, 10, 2)], ImageReading(str(tmp_path), None, count), "cpu",
                         threads=1)
    tensors, kept, *_ = next(reads)
    reads.close()  # the shard stopped: what was queued is dropped, what runs is waited for
    assert [image.id for image in kept] == [0, 1]
    assert set(seen) <= {0, 1, 2, 3} and {0, 1} <= set(seen)


def test_a_storage_failure_fails_its_batch_not_a_single_image(tmp_path):
    images = _pile(tmp_path, 4)

    def storage_down(height: int, width: int) -> None:
        if height == 12:
            raise StorageError("endpoint unreachable")

    reads = read_batches([images[:2], images[2:]], ImageReading(str(tmp_path), None, storage_down), "cpu")
    assert [image.id for image in next(reads)[1]] == [0, 1]
    with pytest.raises(StorageError, match="endpoint unreachable"):
        next(reads)


def test_no_batches_read_nothing(tmp_path):
    assert list(read_batches([], ImageReading(str(tmp_path)), "cpu")) == []


def test_leaving_early_does_not_wait_for_a_stalled_read(tmp_path):
    """Ctrl-C or a stop while a GET hangs: the shard ends now, the stalled read is left behind."""
    images = _pile(tmp_path, 4)
    release, finished = threading.Event(), threading.Event()

    def stall_image_2(height: int, width: int) -> None:
        if height == 12:
            release.wait(10)
            finished.set()

    reads = read_batches([images[:2], images[2:]], ImageReading(str(tmp_path), None, stall_image_2), "cpu")
    assert [image.id for image in next(reads)[1]] == [0, 1]
    reads.close()
    assert not finished.is_set()  # close() returned while image 2's read still hangs
    release.set()


class _Counted:
    """An image check that counts the reads of each image (by height: image i is 10 + i px high)."""

    def __init__(self) -> None:
        self.reads: dict[int, int] = {}
        self.lock = threading.Lock()

    def __call__(self, height: int, width: int) -> None:
        with self.lock:
            self.reads[height - 10] = self.reads.get(height - 10, 0) + 1


def test_the_next_shards_first_images_are_read_ahead_once_and_taken_by_it(tmp_path):
    images = _pile(tmp_path, 8)
    first, second = images[:4], images[4:]
    check, ahead = _Counted(), ReadAhead(read_one, threads=2)
    reads = read_batches([first[:2], first[2:]], ImageReading(str(tmp_path), None, check), "cpu",
                         ahead=ahead, then=second[:2])
    assert [[image.id for image in kept] for _, kept, *_ in reads] == [[0, 1], [2, 3]]
    assert len(ahead) == 2  # images 4 and 5, read (or being read) for the next shard
    reads = list(read_batches([second[:2], second[2:]], ImageReading(str(tmp_path), None, check), "cpu", ahead=ahead))
    assert [[image.id for image in kept] for _, kept, *_ in reads] == [[4, 5], [6, 7]]
    assert [[int(t.shape[-2]) for t in tensors] for tensors, *_ in reads] == [[14, 15], [16, 17]]
    assert check.reads == {i: 1 for i in range(8)}  # nothing read twice
    assert len(ahead) == 0


def test_reads_ahead_with_other_storage_options_or_image_check_are_read_anew(tmp_path):
    images = _pile(tmp_path, 4)
    check, other = _Counted(), _Counted()
    ahead = ReadAhead(read_one)
    ahead.start(images[:2], str(tmp_path), {"key": "a"}, check)
    list(read_batches([images[:2]], ImageReading(str(tmp_path), {"key": "b"}, check), "cpu", ahead=ahead))
    ahead.start(images[2:], str(tmp_path), None, check)
    list(read_batches([images[2:]], ImageReading(str(tmp_path), None, other), "cpu", ahead=ahead))
    assert other.reads == {2: 1, 3: 1}  # the image check it was given, not the one the reads ahead ran
    assert len(ahead) == 0


def test_reads_ahead_of_a_shard_never_labeled_are_dropped_and_cleared(tmp_path):
    images = _pile(tmp_path, 6)
    ahead = ReadAhead(read_one, keep=2)
    for pair in (images[:2], images[2:4], images[4:]):
        ahead.start(pair, str(tmp_path), None, _Counted())
    assert len(ahead) == 4  # the oldest guess is dropped
    assert ahead.take(images[0], str(tmp_path), None, None) is None
    ahead.clear()
    assert len(ahead) == 0


def test_a_storage_failure_read_ahead_fails_the_next_shards_first_batch(tmp_path):
    images = _pile(tmp_path, 4)

    def storage_down(height: int, width: int) -> None:
        if height == 12:
            raise StorageError("endpoint unreachable")

    ahead = ReadAhead(read_one)
    list(read_batches([images[:2]], ImageReading(str(tmp_path), None, storage_down), "cpu",
                      ahead=ahead, then=images[2:]))
    with pytest.raises(StorageError, match="endpoint unreachable"):
        next(read_batches([images[2:]], ImageReading(str(tmp_path), None, storage_down), "cpu", ahead=ahead))


def test_a_shard_announced_again_is_read_again_and_only_the_newest_read_is_kept(tmp_path):
    """A retried shard announces its successor a second time: the files may have changed meanwhile."""
    images = _pile(tmp_path, 2)
    check, ahead = _Counted(), ReadAhead(read_one)
    ahead.start(images, str(tmp_path), None, check)
    Image.fromarray(np.full((30, 12, 3), 7, dtype=np.uint8)).save(tmp_path / "0.png")  # rewritten before the retry
    ahead.start(images, str(tmp_path), None, check)
    assert len(ahead) == 2
    tensors, kept, *_ = next(read_batches([images], ImageReading(str(tmp_path), None, check), "cpu", ahead=ahead))
    assert [int(t.shape[-2]) for t in tensors] == [30, 11]
    assert len(ahead) == 0


def test_clearing_ends_the_reading_threads_and_a_cleared_read_ahead_reads_again(tmp_path):
    images = _pile(tmp_path, 2)
    ahead = ReadAhead(read_one, threads=2)
    ahead.start(images, str(tmp_path), None, _Counted())
    threads = list(ahead._pool._threads)
    ahead.clear()
    for thread in threads:  # they end once the reads under way are done
        thread.join(timeout=10)
    assert threads and not any(thread.is_alive() for thread in threads)
    ahead.start(images, str(tmp_path), None, _Counted())
    assert ahead.take(images[0], str(tmp_path), None, None) is None  # another image check: read anew
    assert ahead.take(images[1], str(tmp_path), {"key": "x"}, None) is None  # other storage options
    assert len(ahead) == 0


def test_shards_read_with_a_read_ahead_use_its_threads_and_start_none_of_their_own(tmp_path):
    images = _pile(tmp_path, 12)
    ahead, threads = ReadAhead(read_one, threads=3), set()

    def note_thread(height: int, width: int) -> None:
        threads.add((threading.current_thread().name, threading.get_ident()))

    for shard in (images[:4], images[4:8], images[8:]):  # three shards in batches of 2, one after another
        reads = list(read_batches([shard[:2], shard[2:]], ImageReading(str(tmp_path), None, note_thread), "cpu",
                                  ahead=ahead))
        assert [image.id for _, kept, *_ in reads for image in kept] == [image.id for image in shard]
    assert 0 < len(threads) <= 3 and all(name.startswith("omnidistill-ahead") for name, _ in threads)
    ahead.clear()


def test_a_read_stalled_by_a_stopped_shard_does_not_hold_up_the_next_shards_reads(tmp_path):
    images = _pile(tmp_path, 6)
    stalled, release = threading.Event(), threading.Event()

    def stall_image_2(height: int, width: int) -> None:
        if height == 12:
            stalled.set()
            release.wait(20)

    ahead = ReadAhead(read_one, threads=1)
    try:
        reads = read_batches([images[:2], images[2:4]], ImageReading(str(tmp_path), None, stall_image_2), "cpu",
                             ahead=ahead)
        assert [image.id for image in next(reads)[1]] == [0, 1]
        assert stalled.wait(10)  # image 2's GET hangs on the only reading thread
        reads.close()  # the shard stops
        start = time.monotonic()
        _, kept, *_ = next(read_batches([images[4:]], ImageReading(str(tmp_path), None, stall_image_2), "cpu",
                                        ahead=ahead))
        assert [image.id for image in kept] == [4, 5] and time.monotonic() - start < 10  # not after the 20 s GET
    finally:
        release.set()
        ahead.clear()


def test_leaving_early_with_a_read_ahead_drops_this_shards_queued_reads_and_keeps_its_threads(tmp_path):
    images, count, ahead = _pile(tmp_path, 10), _Counted(), ReadAhead(read_one, threads=1)
    reads = read_batches([images[i:i + 2] for i in range(0, 10, 2)], ImageReading(str(tmp_path), None, count), "cpu",
                         ahead=ahead)
    assert [image.id for image in next(reads)[1]] == [0, 1]
    reads.close()  # the shard stopped: its queued reads are cancelled, the next shard still reads
    assert set(count.reads) <= {0, 1, 2, 3}
    assert [image.id for image in next(read_batches([images[8:]], ImageReading(str(tmp_path), None, count), "cpu",
                                                    ahead=ahead))[1]] == [8, 9]
    assert set(count.reads) <= {0, 1, 2, 3, 8, 9}
    ahead.clear()


def test_a_read_ahead_sent_to_another_process_arrives_empty(tmp_path):
    import pickle

    images = _pile(tmp_path, 2)
    ahead = ReadAhead(read_one, threads=3, keep=4)
    ahead.start(images, str(tmp_path), None, _Counted())
    copy = pickle.loads(pickle.dumps(ahead))
    assert len(copy) == 0 and (copy.threads, copy.keep) == (3, 4)
    ahead.clear()


# --- Large photos: a limit from the header, a reduced decode, and MemoryError as one image's rejection --


_DECODE_UNDER_A_MEMORY_LIMIT = """
import resource, sys
from dd_core.pseudo.reading import ImageRejected, read_pixels
from dd_core.pseudo.teacher import any_size
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, resource.RLIM_INFINITY))
try:
    read_pixels(sys.argv[1], None, any_size)  # no frame: decoded whole, 144 MB of pixels
except ImageRejected as exc:
    print(f"rejected: {exc}")
"""


def test_an_image_that_runs_out_of_memory_is_rejected_alone(tmp_path):
    import subprocess
    import sys

    from tests.data.test_images import write_big_png

    path = tmp_path / "big.png"
    write_big_png(path, 6000, 6000, square=(0, 0, 10, 10))
    run = subprocess.run([sys.executable, "-c", _DECODE_UNDER_A_MEMORY_LIMIT, str(path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == (f"rejected: {path}: 6000x6000 px (width x height): not enough memory to decode it "
                          f"(MemoryError)\n")


class _Frame:
    """An image check that takes any size and whose largest frame is 64 x 64 (a teacher's, in small)."""

    def __call__(self, height: int, width: int) -> str | None:
        return None

    def largest_frame(self, height: int, width: int) -> tuple[int, int]:
        return 64, 64


def test_a_large_image_is_read_reduced_with_its_reduction_and_one_over_max_pixels_is_rejected(tmp_path):
    from dd_core.data.images import Reduction

    pixels = np.zeros((600, 1000, 3), np.uint8)
    pixels[256:512, 128:384, 0] = 255
    Image.fromarray(pixels).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "1.png")
    images = [UnlabeledImage(0, "0.png"), UnlabeledImage(1, "1.png")]
    check = _Frame()
    [(tensors, kept, refused, reductions)] = read_batches([images], ImageReading(str(tmp_path), None, check), "cpu")
    assert [image.id for image in kept] == [0, 1] and refused == []
    assert reductions == [Reduction(600, 1000, 8), Reduction(10, 12, 1)]
    assert tensors[0].shape == (3, 75, 125) and tensors[1].shape == (3, 10, 12)
    ys, xs = (tensors[0][0] > 0.5).nonzero(as_tuple=True)
    assert [8 * int(v) for v in (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)] == [128, 256, 384, 512]
    [(tensors, kept, refused, reductions)] = read_batches([images], ImageReading(str(tmp_path), None, check,
                                                                                 max_pixels=599_999), "cpu")
    assert [image.id for image in kept] == [1]
    assert [(image.id, str(exc)) for image, exc in refused] == [
        (0, f"{tmp_path}/0.png: 1000x600 px (width x height) is 600,000 pixels, more than the 599,999 allowed "
            f"(max_pixels); refused before decoding")]


def test_a_too_thin_image_is_rejected_naming_the_files_size_not_the_reduced_one(tmp_path):
    from dd_core.pseudo.reading import read_unlabeled
    from dd_core.pseudo.teacher import teacher_from_checkpoint
    from dd_core.tta.settings import MultiTransformSettings
    from tests.conftest import save_random_checkpoint, write_tiny_coco

    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), write_tiny_coco(tmp_path / "t", 1, task="detection"),
                                  "detection")
    check = teacher_from_checkpoint(ckpt, MultiTransformSettings(scales=(64, 96)).for_task("detection")).check_image
    why = "too thin for the test-time transforms (its shorter side resizes to 0 px at scale 64; at least 1 px needed)"
    for (width, height), size in [((10, 100_000), "10x100000 px (width x height)"),  # decoded as 1x12500
                                  # the file passes, but 21 // 8 = 2 px by 250 is too thin at max_size 96
                                  ((21, 2000), "21x2000 px (width x height), decoded reduced to 2x250 px "
                                               "(width x height)")]:
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "thin.png")
        with pytest.raises(ImageRejected) as rejected:
            read_unlabeled(str(tmp_path / "thin.png"), None, check)
        assert str(rejected.value) == f"{tmp_path}/thin.png: {size}: {why}"


def test_read_ahead_refuses_a_reader_that_is_not_a_function():
    with pytest.raises(TypeError, match="read must be the function that reads one image"):
        ReadAhead(2)  # type: ignore[arg-type]
