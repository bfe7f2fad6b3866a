import numpy as np
import pytest
from PIL import Image

from kdpvlpa.data import CorruptImageError, MissingImagesError, check_images, load_image, scan_images

from lt_data_helpers import write_jpeg


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_load_image_modes(tmp_path, mode):
    image = Image.new(mode, (7, 5))
    if mode == "P":
        image.info["transparency"] = 0
    path = tmp_path / f"x.{'png' if mode != 'CMYK' else 'jpg'}"
    image.save(path)
    pixels = load_image(path)
    assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8


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
