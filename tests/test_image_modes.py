"""Photos in every mode Pillow decodes (RGBA, LA, L, P with and without transparency, 16-bit, CMYK,
1-bit), sideways (EXIF orientation) and of any size, through `load_image` and `ImageProcessor`,
against the RGB array a viewer shows. Lossless formats: exact, or within 1 where alpha is blended
(Pillow's integer compositing); JPEG (4:2:0 chroma on small photos): mean error under 3 levels,
99% of values within 12."""

import numpy as np
import pytest
import torch
from PIL import Image

from multimodaltransformer.modalities import ImageProcessor, load_image
from multimodaltransformer.modalities.image import to_rgb

data = pytest.importorskip("skimage.data")


def small(x: np.ndarray, w: int = 120, h: int = 90) -> np.ndarray:
    """A photo shrunk (non-square) so each test takes milliseconds."""
    return np.asarray(Image.fromarray(x).resize((w, h), Image.BICUBIC))


ASTRONAUT, CHELSEA, CAMERA = small(data.astronaut()), small(data.chelsea(), 90, 60), small(data.camera())


def grey3(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[..., None], 3, axis=2)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def alpha_ramp(shape: tuple[int, ...]) -> np.ndarray:
    """0 (fully transparent) on the left to 255 (opaque) on the right."""
    return np.broadcast_to(np.linspace(0, 255, shape[1]).round().astype(np.uint8), shape[:2]).copy()


def saved(im: Image.Image, path, **kwargs) -> np.ndarray:
    im.save(path, **kwargs)
    out = load_image(path)
    assert out.mode == "RGB"
    return np.asarray(out).astype(np.int16)


def assert_jpeg_close(got: np.ndarray, want: np.ndarray) -> None:
    err = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert err.mean() < 3 and np.percentile(err, 99) <= 12, (err.mean(), np.percentile(err, 99))


def test_rgba_is_composited_on_white_not_on_the_hidden_colour(tmp_path):
    alpha = alpha_ramp(ASTRONAUT.shape)
    hidden = ASTRONAUT.copy()
    hidden[alpha == 0] = (0, 255, 0)  # what a transparent pixel happens to store
    got = saved(Image.fromarray(np.dstack([hidden, alpha])), tmp_path / "a.png")
    assert np.abs(got - on_white(hidden, alpha)).max() <= 1
    assert (got[alpha == 0] == 255).all()


def test_la_and_l(tmp_path):
    alpha = alpha_ramp(CAMERA.shape)
    got = saved(Image.fromarray(np.dstack([CAMERA, alpha]), "LA"), tmp_path / "la.png")
    assert np.abs(got - on_white(grey3(CAMERA), alpha)).max() <= 1
    assert (saved(Image.fromarray(CAMERA), tmp_path / "l.png") == grey3(CAMERA)).all()


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.fromarray(ASTRONAUT).quantize(64)
    index = np.asarray(p)
    colours = np.array(p.getpalette()[:64 * 3]).reshape(-1, 3)[index]
    assert (saved(p, tmp_path / "p.png") == colours).all()
    hole = int(index[0, 0])  # one palette entry fully transparent (GIF-style)
    p.info["transparency"] = hole
    got = saved(p, tmp_path / "p-key.png")
    assert (got[index == hole] == 255).all() and (got[index != hole] == colours[index != hole]).all()
    p.info["transparency"] = bytes(range(0, 256, 4))  # an alpha per entry (PNG tRNS)
    got = saved(p, tmp_path / "p-alpha.png")
    assert np.abs(got - on_white(colours, (index * 4).astype(np.uint8))).max() <= 1
    gif = saved(Image.open(tmp_path / "p-key.png"), tmp_path / "p.gif")
    assert (gif[index == hole] == 255).all()


# Each EXIF orientation and how a camera stores an upright view U under it (the EXIF 2.3 table):
STORED = {1: lambda u: u, 2: np.fliplr, 3: lambda u: np.rot90(u, 2), 4: np.flipud, 5: lambda u: u.swapaxes(0, 1),
          6: lambda u: np.rot90(u, 1), 7: lambda u: np.rot90(u, 2).swapaxes(0, 1), 8: lambda u: np.rot90(u, -1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_comes_out_upright(tmp_path, orientation):
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](CHELSEA)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    got = saved(stored, tmp_path / "o.png", exif=exif)
    assert got.shape == CHELSEA.shape and (got == CHELSEA).all()
    # and a processor given the opened image itself, not the path
    proc = ImageProcessor(image_size=32)
    assert torch.equal(proc.to_uint8(Image.open(tmp_path / "o.png")), proc.to_uint8(Image.fromarray(CHELSEA)))


def test_sideways_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    got = saved(Image.fromarray(np.rot90(CHELSEA).copy()), tmp_path / "o.jpg", exif=exif, quality=95)
    assert got.shape == CHELSEA.shape
    assert_jpeg_close(got, CHELSEA)


def test_sixteen_bit_uses_the_whole_range(tmp_path):
    rng = np.random.default_rng(0)
    x16 = (CAMERA.astype(np.uint16) * 257 + rng.integers(0, 257, CAMERA.shape)).astype(np.uint16)
    want = grey3(np.clip(np.rint(x16 / 257), 0, 255).astype(np.uint8))
    im = Image.fromarray(x16)
    assert im.mode == "I;16"
    got = saved(im, tmp_path / "16.png")
    assert (got == want).all() and len(np.unique(got)) > 200  # not clipped to white at 255
    big_endian = Image.frombytes("I;16B", im.size, x16.astype(">u2").tobytes())
    assert (np.asarray(to_rgb(big_endian)) == want).all()
    assert (np.asarray(to_rgb(Image.fromarray(x16.astype(np.int32)))) == want).all()  # mode I


def test_cmyk_jpeg(tmp_path):
    got = saved(Image.fromarray(ASTRONAUT).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    assert_jpeg_close(got, ASTRONAUT)
    # with black ink: R = (255 - C)(255 - K) / 255, as print separations store it
    rng = np.random.default_rng(1)
    cmyk = np.dstack([255 - ASTRONAUT, np.full(CAMERA.shape, 80, np.uint8)]).astype(np.uint8)
    cmyk[..., 3] = np.clip(cmyk[..., 3].astype(int) + rng.integers(-8, 8, CAMERA.shape), 0, 255)
    want = np.rint(ASTRONAUT * (255 - cmyk[..., 3:].astype(np.float64)) / 255)
    got = saved(Image.fromarray(cmyk, "CMYK"), tmp_path / "k.jpg", quality=95)
    assert_jpeg_close(got, want)


def test_one_bit(tmp_path):
    bits = CAMERA > 128
    got = saved(Image.fromarray(bits), tmp_path / "1.png")
    assert (got == grey3(np.where(bits, 255, 0).astype(np.uint8))).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "CMYK", "1"])
def test_processor_takes_any_mode_as_the_file_would_load(tmp_path, mode):
    """A PIL image given directly and the same image saved and loaded give the same tensor."""
    rgba = Image.fromarray(np.dstack([ASTRONAUT, alpha_ramp(ASTRONAUT.shape)]))
    im = {"LA": rgba.convert("LA"), "P": rgba.convert("RGB").quantize(32), "CMYK": rgba.convert("CMYK"),
          "I;16": Image.fromarray(CAMERA.astype(np.uint16) * 257)}.get(mode) or rgba.convert(mode)
    assert im.mode == mode
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    proc = ImageProcessor(image_size=48)
    assert torch.equal(proc.to_uint8(im), proc.to_uint8(path))
    assert proc(im).shape == (3, 48, 48)


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (2000, 30), (90, 120)])
def test_any_size_is_resized_as_before(size):
    x = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    proc = ImageProcessor(image_size=32)
    want = np.asarray(Image.fromarray(x).resize((32, 32), Image.BICUBIC))
    assert torch.equal(proc.to_uint8(Image.fromarray(x)), torch.from_numpy(want.copy()).permute(2, 0, 1))
    assert torch.equal(proc.to_uint8(Image.fromarray(x).convert("RGBA")), proc.to_uint8(Image.fromarray(x)))


def test_plain_rgb_loads_unchanged(tmp_path):
    assert (saved(Image.fromarray(ASTRONAUT), tmp_path / "rgb.png") == ASTRONAUT).all()
    im = Image.fromarray(ASTRONAUT)
    assert to_rgb(im) is im  # no copy on the common path
