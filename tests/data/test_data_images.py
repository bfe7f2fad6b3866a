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
