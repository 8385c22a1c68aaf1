"""decode_image: every mode to the RGB uint8 a torchvision model takes, upright, with exact pixels."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dd_core.data.images import (
    MAX_PIXELS,
    ImageDecodeError,
    Reduction,
    decode_image,
    decode_reduced,
    reduction_factor,
)

SIXTEEN = np.array([[0, 255, 256, 0x8000, 0xFFFF, 0x01FF]], np.uint16)
HIGH_BYTE = np.array([[0, 0, 1, 128, 255, 1]], np.uint8)  # SIXTEEN >> 8, by hand


def _pixels(data: bytes) -> np.ndarray:
    """(H, W, 3) of what decode_image gives."""
    return decode_image(data).permute(1, 2, 0).numpy()


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def _saved(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow does not write 16-bit RGB): 0 = grey, 2 = RGB."""
    height, width = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_sixteen_bit_grey_png_keeps_each_sample_s_high_byte_not_white():
    assert Image.open(io.BytesIO(_png16(SIXTEEN, 0))).mode == "I;16"
    assert (_pixels(_png16(SIXTEEN, 0)) == _grey(HIGH_BYTE)).all()


def test_sixteen_bit_grey_equals_the_same_samples_as_sixteen_bit_rgb():
    """Pillow decodes 16-bit RGB PNGs by keeping the high byte: grey must agree with it."""
    rgb = np.stack([SIXTEEN, SIXTEEN[:, ::-1], SIXTEEN // 2], axis=2)
    got = _pixels(_png16(rgb, 2))
    assert (got == np.stack([HIGH_BYTE, HIGH_BYTE[:, ::-1], (SIXTEEN // 2 >> 8).astype(np.uint8)], axis=2)).all()
    assert (_pixels(_png16(SIXTEEN, 0)) == _pixels(_png16(np.repeat(SIXTEEN[:, :, None], 3, axis=2), 2))).all()


def test_sixteen_bit_big_endian_tiff_and_sixteen_bit_pgm_mode_i():
    big_endian = Image.frombytes("I;16B", (6, 1), SIXTEEN.astype(">u2").tobytes())
    tiff = _saved(big_endian, "TIFF")
    assert Image.open(io.BytesIO(tiff)).mode == "I;16B"
    assert (_pixels(tiff) == _grey(HIGH_BYTE)).all()
    pgm = b"P5\n6 1\n65535\n" + SIXTEEN.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    assert (_pixels(pgm) == _grey(HIGH_BYTE)).all()


def test_mode_i_beyond_sixteen_bits_is_clipped_not_wrapped():
    tiff = _saved(Image.fromarray(np.array([[-7, 70_000, 0x1234]], np.int32)), "TIFF")
    assert Image.open(io.BytesIO(tiff)).mode == "I"
    assert (_pixels(tiff) == _grey(np.array([[0, 255, 0x12]], np.uint8))).all()


def test_float_images_in_zero_one_are_scaled_and_others_clipped():
    unit = np.array([[0.0, 0.5, 1.0, 1 / 255, np.nan]], np.float32)
    # torchvision's to_dtype(scale=True): value * (256 - 1e-3), truncated; NaN is 0.
    assert (_pixels(_saved(Image.fromarray(unit), "TIFF")) == _grey(np.array([[0, 127, 255, 1, 0]], np.uint8))).all()
    wide = np.array([[0.0, 0.5, 2.0, 254.6, 300.0, -5.0]], np.float32)
    # Pillow's convert("L"): clipped to 0..255 and truncated.
    assert (_pixels(_saved(Image.fromarray(wide), "TIFF")) == _grey(np.array([[0, 0, 2, 254, 255, 0]], np.uint8))).all()


def test_one_bit_la_palette_with_transparency_and_cmyk():
    one = Image.fromarray(np.array([[False, True, True, False]]))
    assert (_pixels(_saved(one, "PNG")) == _grey(np.array([[0, 255, 255, 0]], np.uint8))).all()
    la = Image.fromarray(np.array([[[10, 0], [200, 255]]], np.uint8), "LA")
    assert (_pixels(_saved(la, "PNG")) == _grey(np.array([[10, 200]], np.uint8))).all()  # alpha dropped
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.putdata([0, 1, 2])
    png = _saved(palette, "PNG", transparency=1)
    assert Image.open(io.BytesIO(png)).info["transparency"] == 1
    assert (_pixels(png) == np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)).all()
    cmyk = Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255], [100, 0, 0, 100]]], np.uint8),
                           "CMYK")
    # (255 - C) * (255 - K) / 255 per channel: cyan, white, black, and 155 * 155 / 255 = 94.2.
    expected = np.array([[[0, 255, 255], [255, 255, 255], [0, 0, 0], [94, 155, 155]]], np.uint8)
    assert (_pixels(_saved(cmyk, "TIFF")) == expected).all()


# A 2 x 3 image stored as A = [[0, 1, 2], [3, 4, 5]]: what each EXIF orientation shows upright.
STORED = np.array([[0, 1, 2], [3, 4, 5]])
UPRIGHT = {
    1: [[0, 1, 2], [3, 4, 5]],
    2: [[2, 1, 0], [5, 4, 3]],    # mirrored
    3: [[5, 4, 3], [2, 1, 0]],    # rotated 180
    4: [[3, 4, 5], [0, 1, 2]],    # flipped upside down
    5: [[0, 3], [1, 4], [2, 5]],  # transposed
    6: [[3, 0], [4, 1], [5, 2]],  # rotated 90 clockwise
    7: [[5, 2], [4, 1], [3, 0]],  # transversed
    8: [[2, 5], [1, 4], [0, 3]],  # rotated 90 counter-clockwise
}


def _rgb(index: np.ndarray) -> np.ndarray:
    """Distinct colours per pixel and channel, so a transpose cannot pass for a rotation."""
    index = np.asarray(index)
    return np.stack([index * 40, index * 40 + 1, 250 - index * 7], axis=2).astype(np.uint8)


def _with_orientation(im: Image.Image, fmt: str, orientation: int, **kwargs) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _saved(im, fmt, exif=exif, **kwargs)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_png(orientation):
    got = _pixels(_with_orientation(Image.fromarray(_rgb(STORED)), "PNG", orientation))
    assert got.shape == _rgb(UPRIGHT[orientation]).shape and (got == _rgb(UPRIGHT[orientation])).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_jpeg(orientation):
    """JPEG is lossy, so: the same stored pixels under tag ``orientation`` are exactly those under
    tag 1 moved as the tag says, and (8x8 blocks, no chroma subsampling) within 1 of the picture."""
    stored = Image.fromarray(np.kron(_rgb(STORED), np.ones((8, 8, 1), np.uint8)))
    as_stored = _pixels(_with_orientation(stored, "JPEG", 1, quality=95, subsampling=0))
    got = _pixels(_with_orientation(stored, "JPEG", orientation, quality=95, subsampling=0))
    assert (got == _upright_numpy(as_stored, orientation)).all()
    upright = _rgb(np.kron(np.asarray(UPRIGHT[orientation]), np.ones((8, 8), int)))
    assert got.shape == upright.shape and (np.abs(got.astype(int) - upright) <= 1).all()


def _upright_numpy(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF orientations as NumPy index moves on an (H, W, C) array (the table above, generalised)."""
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    return ops[orientation](stored)


def test_unreadable_exif_leaves_the_image_as_stored():
    png = _saved(Image.fromarray(_rgb(STORED)), "PNG")
    body = b"not a TIFF header"
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    with_bad_exif = png[:33] + chunk + png[33:]  # right after IHDR
    assert (_pixels(with_bad_exif) == _rgb(STORED)).all()


def test_empty_truncated_non_image_and_bomb_files_are_refused_naming_the_url():
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = _saved(Image.fromarray(noise), "PNG")
    with pytest.raises(ImageDecodeError, match=r"a\.png: empty file"):
        decode_image(b"", "a.png")
    with pytest.raises(ImageDecodeError, match=r"b\.png: not a readable image"):
        decode_image(png[: len(png) // 2], "b.png")
    with pytest.raises(ImageDecodeError, match=r"c\.png: not a readable image"):
        decode_image(b"just some text", "c.png")
    bomb = _saved(Image.new("1", (20_000, 20_000)), "PNG", optimize=True)
    with pytest.raises(ImageDecodeError, match=r"d\.png: image too large to decode safely"):
        decode_image(bomb, "d.png")


# --- Large photos: refused from the header, or decoded reduced within bounded memory --------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_big_png(path, width: int, height: int, square: tuple[int, int, int, int]) -> None:
    """An 8-bit RGB PNG, black with a red ``square`` (x0, y0, x1, y1), written row by row: a
    12000 x 12000 one takes a few hundred KB on disk and never its 432 MB of pixels in memory."""
    x0, y0, x1, y1 = square
    plain, band = bytearray(1 + 3 * width), bytearray(1 + 3 * width)
    band[1 + 3 * x0:1 + 3 * x1:3] = b"\xff" * (x1 - x0)
    packer = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for y in range(height):
            data = packer.compress(bytes(band if y0 <= y < y1 else plain))
            if data:
                f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IDAT", packer.flush()) + _chunk(b"IEND", b""))


def _red_box(pixels) -> list[int]:
    """xyxy of the red pixels of decoded CHW pixels: a 'prediction' made on them."""
    ys, xs = np.nonzero(pixels[0].numpy() > 127)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


_DECODE_BIG = """
import json, resource, sys
from dd_core.data.images import decode_reduced
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels, reduction = decode_reduced(data, sys.argv[1], 150_000_000, frame=lambda h, w: (160, 160))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
ys, xs = (pixels[0] > 127).nonzero(as_tuple=True)
box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
print(json.dumps({"grown_kb": grown, "shape": list(pixels.shape), "factor": reduction.factor,
                  "size": [reduction.width, reduction.height], "box": box}))
"""


def test_a_12000_px_square_png_is_decoded_reduced_within_bounded_memory(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "big.png"
    write_big_png(path, 12000, 12000, square=(6400, 3200, 7680, 4480))  # block-aligned at 64 px
    assert path.stat().st_size < 2_000_000
    run = subprocess.run([sys.executable, "-c", _DECODE_BIG, str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    # 4 bytes per pixel for Pillow's buffer (576 MB); a whole decode to float took 8.4 GB
    assert found["grown_kb"] < 1.5 * 2**20, found
    assert found["factor"] == 64 and found["shape"] == [3, 187, 187] and found["size"] == [12000, 12000]
    assert [64 * v for v in found["box"]] == [6400, 3200, 7680, 4480]  # the square, mapped back exactly


def test_a_header_over_max_pixels_is_refused_before_decoding(tmp_path):
    # 13000 x 13000: a header, and no pixels at all (decoding would fail as truncated)
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0))
    data = header + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match=r"^x.png: 13000x13000 px \(width x height\) is 169,000,000 pixels, "
                                               r"more than the 150,000,000 allowed \(max_pixels\); refused before"):
        decode_image(data, "x.png", max_pixels=MAX_PIXELS)
    # 20000 x 20000: over Pillow's own limit too, which refuses it before telling its size
    huge = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    with pytest.raises(ImageDecodeError) as refused:
        decode_reduced(huge + _chunk(b"IEND", b""), "h.png", max_pixels=MAX_PIXELS)
    assert str(refused.value) == ("h.png: 400,000,000 pixels, more than the 150,000,000 allowed (max_pixels); "
                                  "refused before decoding")
    small = _saved(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"100x100 px .* 10,000 pixels, more than the 9,999 allowed"):
        decode_reduced(small, "s.png", max_pixels=9_999)
    assert decode_image(small, "s.png", max_pixels=10_000).shape == (3, 100, 100)
    from dd_core.config.schema import UnlabeledConfig

    assert UnlabeledConfig(images="x").max_pixels == MAX_PIXELS  # the setting's default is the library's


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_reduced_image_maps_back_to_the_original_exactly(fmt):
    """A red square on black, reduced 8x (JPEG: while decoding); the square found on the reduced
    pixels, mapped back, is the square of the original."""
    pixels = np.zeros((2048, 4096, 3), np.uint8)
    pixels[512:1024, 1024:2048, 0] = 255
    data = _saved(Image.fromarray(pixels), fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    reduced, reduction = decode_reduced(data, "x", frame=lambda h, w: (256, 512))
    assert reduction == Reduction(2048, 4096, 8) and reduced.shape == (3, 256, 512)
    box = _red_box(reduced)
    assert box == [128, 64, 256, 128]
    mapped = reduction.to_original({"boxes": torch.tensor([box], dtype=torch.float32),
                                    "keypoints": torch.tensor([[[128.0, 64.0, 1.0], [255.5, 127.5, 0.0]]]),
                                    "scores": torch.tensor([0.9])})
    assert mapped["boxes"].tolist() == [[1024, 512, 2048, 1024]]
    assert mapped["keypoints"].tolist() == [[[1024, 512, 1], [2044, 1020, 0]]]  # visibility untouched
    assert mapped["scores"].tolist() == [pytest.approx(0.9)]
    same = Reduction(10, 10).to_original({"boxes": np.array([[1.5, 2, 3, 4]])})
    assert same["boxes"].tolist() == [[1.5, 2, 3, 4]]


def test_an_exif_rotated_photo_is_turned_upright_then_reduced_and_maps_back(tmp_path):
    pixels = np.zeros((1024, 2048, 3), np.uint8)  # as stored: 2048 wide, 1024 high
    pixels[0:256, 0:512, 0] = 255  # top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to show: 1024 wide, 2048 high, the square top-right
    data = _saved(Image.fromarray(pixels), "PNG", exif=exif)
    reduced, reduction = decode_reduced(data, "x", frame=lambda h, w: (256, 128))
    assert reduction == Reduction(2048, 1024, 8) and reduced.shape == (3, 256, 128)
    assert reduction.to_original({"boxes": torch.tensor([_red_box(reduced)])})["boxes"].tolist() == [
        [1024 - 256, 0, 1024, 512]]
    assert _red_box(decode_image(data)) == [1024 - 256, 0, 1024, 512]  # as a whole decode shows it


def test_no_frame_or_a_small_image_decodes_whole_as_before():
    im = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3) % 251)
    data = _saved(im, "PNG")
    whole, reduction = decode_reduced(data, "x", frame=lambda h, w: (200, 300))
    assert reduction == Reduction(48, 64, 1) and torch.equal(whole, decode_image(data))
    assert reduction_factor(48, 64, (24, 32)) == 2 and reduction_factor(47, 64, (24, 32)) == 1


def test_a_gif_in_an_unlabeled_folder_is_listed_and_decoded_as_its_first_frame_in_rgb(tmp_path):
    from dd_core.data.unlabeled import list_unlabeled

    red, blue = Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))
    red.save(tmp_path / "a.gif", save_all=True, append_images=[blue], duration=100)  # an animation of 2 frames
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    assert [image.file_name for image in list_unlabeled(str(tmp_path)).images] == ["a.gif", "b.png"]
    data = (tmp_path / "a.gif").read_bytes()
    assert Image.open(io.BytesIO(data)).n_frames == 2
    pixels = decode_image(data, "a.gif")
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 48, 64)
    assert pixels[:, 0, 0].tolist() == [255, 0, 0] and bool((pixels == pixels[:, :1, :1]).all())
    reduced, reduction = decode_reduced(data, "a.gif", frame=lambda h, w: (12, 16))  # palette: RGB before averaging
    assert reduction == Reduction(48, 64, 4) and reduced.shape == (3, 12, 16)
    assert bool((reduced == pixels[:, :1, :1]).all())
