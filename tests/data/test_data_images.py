import numpy as np
import pytest
from PIL import Image

from kdpvlpa.data import CorruptImageError, MissingImagesError, check_images, load_image, scan_images

from lt_data_helpers import write_jpeg


def _random_image(mode, rng, size=(7, 5)):
    """A (7 x 5) image of `mode` with random samples, and the RGB pixels
    `load_image` promises for it, worked out here with numpy: gray repeated
    over the three channels, palette indices looked up, alpha dropped (not
    composited onto a background)."""
    w, h = size
    if mode == "1":
        bits = rng.integers(0, 2, size=(h, w)).astype(bool)
        gray = np.where(bits, 255, 0).astype(np.uint8)
        return Image.fromarray(bits), np.repeat(gray[..., None], 3, axis=-1)
    if mode == "P":
        palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        image = Image.fromarray(index, "L").convert("P")  # pixel values kept as indices
        image.putpalette(palette.tobytes())
        return image, palette[index]
    channels = {"RGB": 3, "L": 1, "LA": 2, "RGBA": 4}[mode]
    samples = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    image = Image.fromarray(samples[..., 0] if channels == 1 else samples, mode)
    if mode in ("L", "LA"):
        return image, np.repeat(samples[..., :1], 3, axis=-1)
    return image, samples[..., :3]


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "P-transparent", "1"])
def test_load_image_converts_modes_pixel_by_pixel(tmp_path, mode):
    rng = np.random.default_rng(len(mode))
    image, expected = _random_image(mode.split("-")[0], rng)
    if mode == "P-transparent":
        image.info["transparency"] = int(np.asarray(image)[0, 0])  # a used colour
    path = tmp_path / "x.png"
    image.save(path)
    with Image.open(path) as saved:  # the file really holds that mode
        assert saved.mode == mode.split("-")[0]
        assert ("transparency" in saved.info) == (mode == "P-transparent")
    pixels = load_image(path)
    assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) >= 2  # not a constant image
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("suffix", [".tiff", ".jpg"])
def test_load_image_cmyk_matches_pillow_conversion(tmp_path, suffix):
    rng = np.random.default_rng(3)
    cmyk = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    cmyk[:2, :, 3] = 0  # no black ink in the top rows
    path = tmp_path / f"x{suffix}"
    Image.fromarray(cmyk, "CMYK").save(path)
    with Image.open(path) as saved:
        assert saved.mode == "CMYK"
        reference = np.asarray(saved.convert("RGB"))
    pixels = load_image(path)
    assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, reference)
    if suffix == ".tiff":
        # Lossless: without black ink, each colour is 255 minus its ink.
        np.testing.assert_array_equal(pixels[:2], 255 - cmyk[:2, :, :3])


def test_load_image_corrupt_names_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        load_image(bad)
    good = write_jpeg(tmp_path / "truncated.jpg", size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        load_image(good)
    assert issubclass(CorruptImageError, ValueError)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.jpg")


def test_check_images_missing_message(tmp_path):
    present = [write_jpeg(tmp_path / f"ok{i}.jpg", i) for i in range(2)]
    missing = [tmp_path / "sub" / f"gone{i}.jpg" for i in range(7)]
    with pytest.raises(MissingImagesError) as info:
        check_images(present + missing, "Toy train", "Download it from example.org.")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "Toy train: 7 of 9 images are missing" in message
    for path in missing[:5]:
        assert str(path) in message
    assert str(missing[5]) not in message and "(and 2 more)" in message
    assert message.endswith("Download it from example.org.")


def test_check_images_verify_finds_corrupt(tmp_path):
    paths = [write_jpeg(tmp_path / f"ok{i}.jpg", i) for i in range(3)]
    paths[1].write_bytes(b"garbage")
    assert check_images([paths[0], paths[2]], "x", "y", verify=True).present == 2
    check_images(paths, "x", "y")  # existence only: passes
    with pytest.raises(CorruptImageError, match="ok1.jpg") as info:
        check_images(paths, "Toy", "y", verify=True)
    assert "1 of 3 images cannot be decoded" in str(info.value)


def test_scan_images_counts(tmp_path, capsys):
    paths = [write_jpeg(tmp_path / f"ok{i}.jpg", i) for i in range(3)]
    paths[2].write_bytes(b"garbage")
    scan = scan_images(paths + [tmp_path / "no.jpg"], verify=True, progress=True)
    assert (scan.total, scan.present, len(scan.missing), scan.corrupt) == (4, 3, 1, [paths[2]])
    assert "3/3 images" in capsys.readouterr().err


def test_high_bit_depth_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256).repeat(3, axis=0)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = load_image(tmp_path / "deep.png")
    assert pixels.shape == (3, 256, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[0, :, 0], np.rint(ramp[0] / 257.0).astype(np.uint8))
    assert (pixels[..., 0] == pixels[..., 2]).all()
    floats = np.linspace(0.0, 1.0, 11, dtype=np.float32).reshape(1, 11)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tiff")
    np.testing.assert_array_equal(load_image(tmp_path / "float.tiff")[0, :, 1],
                                  np.rint(floats[0].astype(np.float64) * 255).astype(np.uint8))


def test_folders_and_dangling_links_named_like_images_are_missing(tmp_path):
    from kdpvlpa.data import find_missing_images

    real = write_jpeg(tmp_path / "real.jpg", size=(8, 8))
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "not-there.jpg")
    (tmp_path / "link.jpg").symlink_to(real)
    paths = [tmp_path / n for n in ("real.jpg", "folder.jpg", "dangling.jpg", "link.jpg",
                                    "absent.jpg")]
    assert find_missing_images(paths) == [paths[1], paths[2], paths[4]]
    with pytest.raises(MissingImagesError, match="3 of 5 images are missing"):
        check_images(paths, "set", "Get it.")
