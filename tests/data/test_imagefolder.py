"""Training on image folders (cnnlab.data.imagefolder) and the image reader under it (cnnlab.data.images).

Real data only: a Fashion-MNIST slice exported to PNG files, generated colour images, and bad files made by
damaging good ones in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import imagedecode
from cnnlab.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from cnnlab.data.imagedecode import ImageFolderError
from cnnlab.data.imagefolder import FASHION_FOLDERS, ImageFolderData, export_folder
from cnnlab.data.images import decode_image, open_image
from cnnlab.errors import ImageError
from cnnlab.models import create_model
from cnnlab.recipes import TrainConfig, make_optimizer, make_scheduler, resolve_config
from cnnlab.training import Display, Optimization, Trainer
from cnnlab.training.evaluation import evaluate

QUIET = dict(log=None, progress=False)


@pytest.fixture(scope="module")
def fashion_folder(data_dir, tmp_path_factory) -> Path:
    """The first 2,000 training and 500 test images of Fashion-MNIST as PNG files, train/ and test/."""
    out = tmp_path_factory.mktemp("fashion-folder")
    export_folder(out, "train", limit=2000, progress=False)
    export_folder(out, "test", limit=500, progress=False)
    return out


def write_png(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def grey_folder(root: Path, classes=("a", "b"), per_class: int = 3, side: int = 8) -> Path:
    """A small flat folder of grey PNGs, class ``k`` a uniform image of value ``40 * (k + 1)``."""
    for k, name in enumerate(classes):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", np.full((side, side), 40 * (k + 1), np.uint8))
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that declare a ``width`` x ``height`` greyscale PNG (the pixels never follow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def train_and_evaluate(data, *, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                       epochs: int = 2, batch_size: int | None = None) -> float:
    """The lenet-relu recipe's optimizer and schedule, seeded; the validation accuracy."""
    config = resolve_config(TrainConfig(model="lenet-relu", epochs=epochs, batch_size=batch_size))
    torch.manual_seed(0)  # the initial weights: the Trainer's seed applies only from fit() on
    model = create_model("lenet-relu", num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    Trainer(max_epochs=epochs, seed=0, optimization=Optimization(make_optimizer(config), make_scheduler(config)),
            display=Display(progress=False, log=None)).fit(model, data)
    return evaluate(model, data.val_dataloader()).accuracy


# ---- Fashion-MNIST through PNG files ------------------------------------------------------------------------

def test_export_writes_the_layout_with_safe_class_folders(fashion_folder):
    assert FASHION_FOLDERS[0] == "0_T-shirt_top" and FASHION_FOLDERS[9] == "9_Ankle_boot"
    assert sorted(p.name for p in (fashion_folder / "train").iterdir()) == list(FASHION_FOLDERS)
    assert sum(1 for _ in (fashion_folder / "train").rglob("*.png")) == 2000
    assert sum(1 for _ in (fashion_folder / "test").rglob("*.png")) == 500
    images, labels = load_fashion_mnist(train=False)
    first = fashion_folder / "test" / FASHION_FOLDERS[int(labels[0])] / "00000.png"
    assert np.array_equal(np.asarray(Image.open(first)), images[0].numpy())
    assert not [p for p in fashion_folder.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_exported_fashion_subset_trains_as_the_idx_files_do(fashion_folder):
    """Same 2,000 images, same order, same seed: the PNG round trip must lose nothing, so training on the folder
    sees exactly the IDX files' batches (the issue asks for accuracies within 0.02: equal batches make them equal,
    so one training shows that it learns)."""
    folder = ImageFolderData(fashion_folder, batch_size=128, seed=0, **QUIET)
    assert folder.classes == FASHION_FOLDERS and folder.image_shape == (1, 28, 28) and folder.channels == 1
    assert (len(folder.train_labels), len(folder.val_labels), len(folder.test_labels)) == (2000, 500, 500)
    idx = FashionMNIST(batch_size=128, seed=0, num_train=2000, num_val=500)
    # The folder lists class by class (label order, thanks to the folder names), by index within a class.
    order = torch.sort(idx.train_labels, stable=True).indices
    idx.train_images, idx.train_labels = idx.train_images[order], idx.train_labels[order]
    assert torch.equal(folder.train_images[:, 0], idx.train_images)  # lossless, pixel for pixel
    assert torch.equal(folder.train_labels, idx.train_labels)
    val_order = torch.sort(idx.val_labels, stable=True).indices
    assert torch.equal(folder.val_images[:, 0], idx.val_images[val_order])
    assert torch.equal(folder.val_labels, idx.val_labels[val_order])
    for epoch in range(2):  # what train_and_evaluate's two epochs draw, batch for batch
        batches = []
        for data in (folder, idx):
            loader = data.train_dataloader()
            loader.set_epoch(epoch)
            batches.append(list(loader))
        for (X, y), (X_idx, y_idx) in zip(*batches, strict=True):
            assert torch.equal(X, X_idx) and torch.equal(y, y_idx)
    assert train_and_evaluate(folder) > 0.6  # it learned


def test_folder_statistics_normalize_each_channel(fashion_folder):
    data = ImageFolderData(fashion_folder, batch_size=500, normalize=True, **QUIET)
    assert abs(data.mean[0] - 0.2860) < 0.01 and abs(data.std[0] - 0.3530) < 0.01  # the slice resembles the set
    X = torch.cat([X for X, _ in data.train_dataloader()]).double()
    assert abs(float(X.mean())) < 1e-4 and abs(float(X.std()) - 1) < 1e-3


def test_settings_are_plain_values_and_rebuild_the_data(fashion_folder):
    data = ImageFolderData(fashion_folder, batch_size=32, image_size=(30, 36), augment=True, seed=4, **QUIET)
    settings = data.settings()
    assert settings["classes"] == list(FASHION_FOLDERS) and settings["image_size"] == (30, 36)
    assert settings["dataset"] == "imagefolder" and settings["channels"] == 1
    assert all(type(v) in (str, int, float, bool, tuple, list, type(None)) for v in settings.values())
    rebuilt = ImageFolderData.from_settings(settings, **QUIET)
    assert rebuilt.settings() == settings
    for (X, y), (X2, y2) in zip(data.train_dataloader(), rebuilt.train_dataloader(), strict=True):
        assert X.shape[1:] == (1, 30, 36) and torch.equal(X, X2) and torch.equal(y, y2)
    assert data.text_labels([0, 9]) == ["0_T-shirt_top", "9_Ankle_boot"]


def test_export_refuses_an_existing_folder_and_leaves_no_half_folder(fashion_folder, tmp_path, monkeypatch):
    with pytest.raises(ImageFolderError, match="already exists"):
        export_folder(fashion_folder, "train", limit=5)
    saved = []
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        if len(saved) == 20:
            raise OSError("No space left on device")
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        export_folder(tmp_path / "out", "test", limit=50, progress=False)
    assert len(saved) == 20 and list((tmp_path / "out").iterdir()) == []  # neither test/ nor its temp folder
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        export_folder(tmp_path / "out", "val")


# ---- colour ----------------------------------------------------------------------------------------------------

def test_colour_folder_trains_with_three_channels(tmp_path):
    """Two classes told apart by hue alone: both colours have the same brightness, so grey would not do."""
    rng = np.random.default_rng(0)
    colours = {"orange": (200, 100, 50), "teal": (50, 147, 200)}  # both 124 in Pillow's grey (ITU-R 601)
    for name, rgb in colours.items():
        for i in range(80):
            noise = rng.normal(0, 30, (32, 32, 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            write_png(tmp_path / "flat" / name / f"{i:02d}.png", pixels)
    data = ImageFolderData(tmp_path / "flat", batch_size=16, normalize=True, val_split=0.25, **QUIET)
    assert data.channels == 3 and data.image_shape == (3, 32, 32) and data.classes == ("orange", "teal")
    assert len(data.val_labels) == 40 and data.val_labels.bincount().tolist() == [20, 20]
    assert not data.has_test
    grey = ImageFolderData(tmp_path / "flat", channels=1, **QUIET)
    by_class = [float(grey.train_images[grey.train_labels == k].float().mean()) for k in (0, 1)]
    assert abs(by_class[0] - by_class[1]) < 2  # in grey the two classes look alike
    accuracy = train_and_evaluate(data, in_channels=3, num_classes=2, image_size=32, epochs=3, batch_size=16)
    assert accuracy >= 0.95


def test_channels_are_decided_by_the_images(tmp_path):
    root = grey_folder(tmp_path / "g")
    grey_palette = Image.fromarray(np.full((8, 8), 1, np.uint8), mode="P")
    grey_palette.putpalette([0, 0, 0, 128, 128, 128])
    grey_palette.save(root / "a" / "palette.gif")
    write_png(root / "b" / "alpha.png", np.full((8, 8, 2), 200, np.uint8))  # LA
    data = ImageFolderData(root, **QUIET)
    assert data.channels == 1 and data.image_shape == (1, 28, 28)  # grey default: 28x28
    values = set(torch.cat([data.train_images, data.val_images]).unique().tolist())
    assert {40, 80, 128} <= values  # the two classes' greys, and the palette's grey
    write_png(root / "b" / "colour.png", np.zeros((8, 8, 3), np.uint8))
    assert ImageFolderData(root, **QUIET).image_shape == (3, 32, 32)  # one colour image: all RGB, 32x32
    assert ImageFolderData(root, channels=1, image_size=12, **QUIET).image_shape == (1, 12, 12)


# ---- the formats and modes one reads --------------------------------------------------------------------------

def test_every_format_decodes(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    smooth = np.broadcast_to(np.linspace(0, 255, 24, dtype=np.uint8), (20, 24))
    write_png(tmp_path / "a.bmp", rgb)
    write_png(tmp_path / "a.tiff", rgb)
    write_png(tmp_path / "a.webp", rgb, lossless=True)
    write_png(tmp_path / "a.jpg", np.stack([smooth] * 3, axis=-1), quality=95)
    for name in ("a.bmp", "a.tiff", "a.webp"):
        x = decode_image(tmp_path / name, channels=3)
        assert x.dtype == torch.uint8 and x.shape == (3, 20, 24)
        assert torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1)), name
    jpeg = decode_image(tmp_path / "a.jpg", channels=1)
    assert jpeg.shape == (1, 20, 24) and (jpeg[0].int() - torch.from_numpy(smooth.copy()).int()).abs().max() <= 8
    assert decode_image(tmp_path / "a.jpg", channels=3, image_size=(10, 12)).shape == (3, 10, 12)
    # A phone's MPO (a JPEG with a second picture) is a JPEG here.
    frames = [Image.fromarray(np.full((20, 24, 3), c, np.uint8)) for c in (60, 200)]
    frames[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "phone.jpg").format == "MPO"
    assert abs(int(decode_image(tmp_path / "phone.jpg", channels=1)[0, 10, 10]) - 60) <= 2


def test_a_large_jpeg_is_decoded_at_reduced_scale_to_nearly_the_same_pixels(tmp_path):
    y, x = np.mgrid[0:480, 0:640]
    photo = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], axis=-1).astype(np.uint8)
    write_png(tmp_path / "photo.jpg", photo, quality=95)
    small = decode_image(tmp_path / "photo.jpg", channels=3, image_size=(30, 40))  # JPEG draft: 1/8 scale decode
    with Image.open(tmp_path / "photo.jpg") as full:
        reference = np.asarray(full.convert("RGB").resize((40, 30), Image.Resampling.BILINEAR))
    assert small.shape == (3, 30, 40)
    assert (small.permute(1, 2, 0).int() - torch.from_numpy(reference.copy()).int()).abs().max() <= 6


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((10, 10, 3), c, np.uint8)) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    x = decode_image(tmp_path / "anim.gif", channels=3)
    assert x[:, 5, 5].tolist() == [255, 0, 0]  # red, the first frame, not the blue second one


def test_palette_png_with_transparency_is_composited(tmp_path):
    index = np.zeros((12, 12), np.uint8)
    index[3:9, 3:9] = 1  # a red square on transparent index 0
    img = Image.fromarray(index, mode="P")
    img.putpalette([0, 255, 0, 255, 0, 0])  # index 0 is green, but transparent
    img.save(tmp_path / "pa.png", transparency=0)
    opened = open_image(tmp_path / "pa.png")
    assert opened.mode == "RGB"
    x = decode_image(tmp_path / "pa.png", channels=3)
    assert x[:, 5, 5].tolist() == [255, 0, 0]
    assert x[:, 0, 0].tolist() == [255, 255, 255]  # the hidden green is not shown; a dark drawing gets white
    assert decode_image(tmp_path / "pa.png", channels=1)[0, 0, 0] == 255


def test_rgba_png_and_sixteen_bit_grey(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (250, 240, 230, 255)  # a light drawing on transparency: composited on black
    write_png(tmp_path / "rgba.png", rgba)
    x = decode_image(tmp_path / "rgba.png", channels=3)
    assert x[:, 3, 3].tolist() == [250, 240, 230] and x[:, 0, 0].tolist() == [0, 0, 0]
    write_png(tmp_path / "g16.png", np.full((4, 4), 1000, np.uint16) + np.eye(4, dtype=np.uint16) * 1000)
    x = decode_image(tmp_path / "g16.png", channels=3)
    assert x.shape == (3, 4, 4) and x[:, 0, 0].tolist() == [255] * 3 and x[:, 0, 1].tolist() == [0] * 3


# ---- bad input ----------------------------------------------------------------------------------------------

@pytest.fixture
def folder_with_bad_files(tmp_path) -> tuple[Path, dict[str, str]]:
    """Six good images and four bad ones, each with the words its error must contain."""
    root = grey_folder(tmp_path / "bad", per_class=3, side=40)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    good = write_png(tmp_path / "noise.png", noise).read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[100:140] = bytes(40)  # zeros in the middle of the compressed pixels
    (root / "a" / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "b" / "notes.jpg").write_text("not a picture, a shopping list\n")
    (root / "b" / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    expected = {"truncated.png": "damaged or truncated", "corrupt.png": "damaged or truncated",
                "notes.jpg": "not an image file", "bomb.png": "pixel limit"}
    return root, expected


def test_bad_files_are_listed_in_one_error(folder_with_bad_files):
    root, expected = folder_with_bad_files
    with pytest.raises(ImageFolderError) as info:
        ImageFolderData(root, **QUIET)
    message = str(info.value)
    assert message.startswith("4 of 10 image files in") and "skip_bad=True" in message
    lines = message.splitlines()
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in lines), (name, message)


def test_skip_bad_leaves_them_out_and_says_so(folder_with_bad_files):
    root, expected = folder_with_bad_files
    notes = []
    data = ImageFolderData(root, skip_bad=True, val_split=0.34, log=notes.append, progress=False)
    assert data.num_skipped == 4 and {Path(p).name for p, _ in data.skipped} == set(expected)
    assert len(data.train_labels) + len(data.val_labels) == 6
    assert any("skipped 4 unreadable image files" in note for note in notes)


def test_the_cached_decode_remembers_the_bad_files(folder_with_bad_files, tmp_path, monkeypatch):
    root, _ = folder_with_bad_files
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert ImageFolderData(root, skip_bad=True, **QUIET).num_skipped == 4
    with pytest.raises(ImageFolderError, match="4 of 10 image files"):  # from the cache, still refused
        ImageFolderData(root, **QUIET)
    assert ImageFolderData(root, skip_bad=True, **QUIET).num_skipped == 4


def test_a_bomb_is_refused_without_allocating_it(tmp_path):
    import tracemalloc

    root = grey_folder(tmp_path / "f")
    (root / "a" / "bomb.png").write_bytes(png_header_only(2**31 - 1, 2**31 - 1))
    tracemalloc.start()
    try:
        with pytest.raises(ImageFolderError, match=r"bomb\.png (is|declares) .*-pixel limit"):
            ImageFolderData(root, cache=False, **QUIET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_empty_class_folder(tmp_path):
    root = grey_folder(tmp_path / "f")
    (root / "c").mkdir()
    (root / "c" / "README.txt").write_text("photos to come")
    with pytest.raises(ImageFolderError, match=r"1 class folder\(s\) in .* hold no images: 'c'; cnnlab reads"):
        ImageFolderData(root, **QUIET)


def test_no_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="holds no class folders: put each class's images"):
        ImageFolderData(tmp_path / "empty", **QUIET)
    write_png(tmp_path / "loose" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageFolderError, match=r"holds 1 image file\(s\) but no class folders"):
        ImageFolderData(tmp_path / "loose", **QUIET)
    with pytest.raises(ImageFolderError, match="does not exist or is not a folder"):
        ImageFolderData(tmp_path / "nowhere", **QUIET)


def test_a_single_class(tmp_path):
    with pytest.raises(ImageFolderError, match="single class folder, 'a'; a classifier needs at least two"):
        ImageFolderData(grey_folder(tmp_path / "f", classes=("a",)), **QUIET)
    # test/ alone is a split without its train/, not a class called 'test'
    grey_folder(tmp_path / "g" / "test", classes=("a", "b"))
    with pytest.raises(ImageFolderError, match="holds test/ but no train/ beside it"):
        ImageFolderData(tmp_path / "g", **QUIET)


def test_test_may_hold_fewer_classes_than_train_and_keeps_their_labels(tmp_path):
    # train/ holds a, b, c (grey levels 40, 80, 120); test/ only c and a: its labels must be train/'s (2 and 0),
    # not its own folder order (1 and 0), or every test image of c would be scored as b
    grey_folder(tmp_path / "f" / "train", classes=("a", "b", "c"))
    for name, value in (("a", 40), ("c", 120)):
        for i in range(2):
            write_png(tmp_path / "f" / "test" / name / f"{i}.png", np.full((8, 8), value, np.uint8))
    lines = []
    data = ImageFolderData(tmp_path / "f", log=lines.append, progress=False)
    assert data.classes == ("a", "b", "c")
    assert data.test_labels.tolist() == [0, 0, 2, 2]
    assert data.test_images[:, 0, 0, 0].tolist() == [40, 40, 120, 120]
    assert any("holds 2 of the 3 classes (none of ['b'])" in line for line in lines)
    # the same from the cache, and a test/ of one class is a split, not a one-class folder
    again = ImageFolderData(tmp_path / "f", **QUIET)
    assert again.test_labels.tolist() == [0, 0, 2, 2]
    shutil.rmtree(tmp_path / "f" / "test" / "a")
    assert ImageFolderData(tmp_path / "f", **QUIET).test_labels.tolist() == [2, 2]


def test_a_split_with_a_class_train_lacks_is_refused(tmp_path):
    grey_folder(tmp_path / "f" / "train", classes=("cat", "dog"))
    grey_folder(tmp_path / "f" / "test", classes=("cat", "fox"))
    with pytest.raises(ImageFolderError, match=r"holds class\(es\) \['fox'\] that train/ does not .* every class "
                                               r"of test needs its folder in train/ too"):
        ImageFolderData(tmp_path / "f", **QUIET)


def test_memory_cap_is_checked_before_decoding(tmp_path, monkeypatch):
    root = grey_folder(tmp_path / "f", per_class=5)
    calls = []
    monkeypatch.setattr(imagedecode, "decode_array", lambda *a: calls.append(a))
    with pytest.raises(ImageFolderError, match=r"10 images of 1x28x28 need 7,840 bytes .* over the limit of "
                                               r"7,000 bytes"):
        ImageFolderData(root, max_bytes=7000, **QUIET)
    with pytest.raises(ImageFolderError, match="10 images of 3x64x64 need 122,880 bytes"):
        ImageFolderData(root, channels=3, image_size=64, max_bytes=100_000, **QUIET)
    assert calls == []  # refused before a single image was decoded
    assert imagedecode.default_max_bytes() > 1 << 20


def test_a_split_whose_files_are_all_bad(tmp_path):
    grey_folder(tmp_path / "f" / "train")
    for name in ("a", "b"):
        (tmp_path / "f" / "test" / name).mkdir(parents=True)
        (tmp_path / "f" / "test" / name / "x.png").write_text("not a picture")
    with pytest.raises(ImageFolderError, match="none of the image files of .*'s test split can be read"):
        ImageFolderData(tmp_path / "f", skip_bad=True, **QUIET)


def test_validation_split_needs_two_images_in_a_class(tmp_path):
    with pytest.raises(ImageFolderError, match="too few images to hold out a validation split"):
        ImageFolderData(grey_folder(tmp_path / "f", per_class=1), **QUIET)


def test_val_folder_and_val_split_conflict_and_test_loader_needs_a_test_folder(tmp_path):
    grey_folder(tmp_path / "f" / "train")
    grey_folder(tmp_path / "f" / "val")
    with pytest.raises(ImageFolderError, match="has a val folder, so val_split=0.2 has nothing to do"):
        ImageFolderData(tmp_path / "f", val_split=0.2, **QUIET)
    data = ImageFolderData(tmp_path / "f", **QUIET)
    assert len(data.train_labels) == len(data.val_labels) == 6 and not data.has_test
    with pytest.raises(ImageFolderError, match="has no test split"):
        data.test_dataloader()
    with pytest.raises(ValueError, match="fraction strictly between 0 and 1"):
        ImageFolderData(tmp_path / "f", val_split=1.0, **QUIET)


def test_flat_folder_split_is_stratified_and_seeded(tmp_path):
    root = grey_folder(tmp_path / "f", classes=("a", "b", "c"), per_class=20)
    one, again = ImageFolderData(root, seed=1, **QUIET), ImageFolderData(root, seed=1, **QUIET)
    other = ImageFolderData(root, seed=2, **QUIET)
    assert one.val_labels.bincount().tolist() == [2, 2, 2] and len(one.train_labels) == 54  # default 0.1
    assert torch.equal(one.val_images, again.val_images) and torch.equal(one.train_labels, again.train_labels)
    assert other.val_labels.bincount().tolist() == [2, 2, 2]
    # which files went to validation depends on the seed: give every file its own value to tell
    for k, name in enumerate("abc"):
        for i in range(20):
            write_png(root / name / f"{i}.png", np.full((8, 8), 10 * i + k, np.uint8))
    pick = [set(ImageFolderData(root, seed=s, **QUIET).val_images[:, 0, 0, 0].tolist()) for s in (1, 1, 2)]
    assert pick[0] == pick[1] != pick[2]


def test_ignored_and_hidden_files(tmp_path):
    root = grey_folder(tmp_path / "f")
    (root / "a" / "notes.txt").write_text("x")
    (root / ".ipynb_checkpoints").mkdir()
    write_png(root / ".ipynb_checkpoints" / "x.png", np.zeros((4, 4), np.uint8))
    write_png(root / "a" / ".hidden.png", np.zeros((4, 4), np.uint8))
    write_png(root / "b" / "nested" / "deeper.png", np.full((8, 8), 80, np.uint8))  # subfolders count
    notes = []
    data = ImageFolderData(root, val_split=0.5, log=notes.append, progress=False)
    assert data.classes == ("a", "b") and len(data.train_labels) + len(data.val_labels) == 7
    assert any("ignored 1 files" in note for note in notes)


# ---- the cache ----------------------------------------------------------------------------------------------

def test_second_load_comes_from_the_cache_and_any_change_invalidates_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = grey_folder(tmp_path / "f", per_class=4)
    calls = []
    real = imagedecode.decode_array

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(imagedecode, "decode_array", counting)

    def load():
        calls.clear()
        return ImageFolderData(root, **QUIET)

    first = load()
    assert len(calls) == 8
    second = load()
    assert calls == [] and torch.equal(first.train_images, second.train_images)
    assert second.cache_file == first.cache_file and second.cache_file.parent == tmp_path / "cache" / "imagefolders"
    touched = root / "a" / "0.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    load()
    assert len(calls) == 8  # a touched file: decoded afresh
    load()
    assert calls == []
    write_png(root / "b" / "new.png", np.zeros((8, 8), np.uint8))
    added = load()
    assert len(calls) == 9 and len(added.train_labels) + len(added.val_labels) == 9  # an added file
    (root / "b" / "new.png").unlink()
    load()
    assert len(calls) == 8  # a removed one
    assert len(list((tmp_path / "cache" / "imagefolders").iterdir())) == 1  # older listings are removed
    load()
    assert calls == []
    ImageFolderData(root, image_size=10, **QUIET)  # other settings, another entry
    assert len(list((tmp_path / "cache" / "imagefolders").iterdir())) == 2


def test_a_damaged_cache_file_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = grey_folder(tmp_path / "f")
    first = ImageFolderData(root, **QUIET)
    first.cache_file.write_bytes(first.cache_file.read_bytes()[:100])
    again = ImageFolderData(root, **QUIET)
    assert torch.equal(first.train_images, again.train_images)
    assert ImageFolderData(root, cache=False, **QUIET).cache_file is None


# ---- names are data -----------------------------------------------------------------------------------------

def test_hostile_folder_names_stay_plain_strings(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    names = ["<img src=x onerror=alert(1)>", "$(touch pwned)", "-rf", "a\nb", "名前", "%s%n{0}", "a..b",
             "evil\\..\\..", " "]
    root = tmp_path / "f"
    for name in [*names, "...", "..x"]:  # ".." itself cannot be made; names starting with "." are hidden
        write_png(root / name / "x.png", np.zeros((4, 4), np.uint8))
        write_png(root / name / "y.png", np.zeros((4, 4), np.uint8))
    before = {p for p in tmp_path.rglob("*") if "cache" not in p.parts}
    data = ImageFolderData(root, val_split=0.5, **QUIET)
    assert data.classes == tuple(sorted(names)) and all(type(c) is str for c in data.classes)
    assert data.text_labels(range(len(names))) == sorted(names)
    assert data.settings()["classes"] == sorted(names)
    after = {p for p in tmp_path.rglob("*") if "cache" not in p.parts}
    assert after == before and not Path("pwned").exists()  # nothing written outside the cache...
    written = list((tmp_path / "cache").rglob("*"))
    assert [p.name for p in written if p.is_file()] == [data.cache_file.name]  # ...whose name is a hash
    assert set(data.cache_file.stem) <= set("0123456789abcdef-")


# ---- special files: FIFOs, sockets, devices, links --------------------------------------------------------------

@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when something blocks: opening a FIFO waits for a writer forever."""
    import signal

    class Blocked(Exception):  # not an OSError (TimeoutError is one): no `except OSError` may swallow it
        pass

    def fail(signum, frame):
        raise Blocked("blocked for 20 s: something opened a special file")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_fifos_sockets_and_devices_are_bad_files_listed_at_once(tmp_path, no_hang):
    import socket

    root = grey_folder(tmp_path / "special", per_class=3)
    os.mkfifo(root / "a" / "x.png")  # a reader that opened it would wait for a writer forever
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", root / "a" / "link-to-fifo.png")
    os.symlink("/dev/zero", root / "b" / "zero.png")  # a device that never ends
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "b" / "sock.png"))
    os.symlink(root / "a" / "0.png", root / "b" / "link-to-good.png")  # a link to a regular file: followed
    try:
        data = ImageFolderData(root, skip_bad=True, val_split=0.25, **QUIET)
        with pytest.raises(ImageFolderError) as info:
            ImageFolderData(root, **QUIET)
    finally:
        sock.close()
    reasons = {Path(p).name: reason for p, reason in data.skipped}
    assert set(reasons) == {"x.png", "link-to-fifo.png", "zero.png", "sock.png"}
    assert "FIFO" in reasons["x.png"] and "FIFO" in reasons["link-to-fifo.png"]
    assert "character device" in reasons["zero.png"] and "socket" in reasons["sock.png"]
    assert len(data.train_labels) + len(data.val_labels) == 7  # six images and the linked one
    assert str(info.value).startswith("4 of 11 image files in") and "x.png" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_given_to_the_image_reader_is_refused_unopened(tmp_path, no_hang):
    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(ImageError, match="is not a file but a FIFO"):
        open_image(tmp_path / "x.png")
    with pytest.raises(ImageError, match="is not a file but a folder"):
        open_image(tmp_path)


def test_a_bug_in_the_conversion_is_a_bug_not_a_bad_file(tmp_path, monkeypatch):
    # Only the user's file may be blamed: an error in cnnlab's own grey conversion must surface as itself.
    from cnnlab.data import images

    path = write_png(tmp_path / "a.png", np.full((8, 8), 7, np.uint8))

    def broken(img):
        raise ZeroDivisionError("a bug in _to_grey")

    monkeypatch.setattr(images, "_to_grey", broken)
    with pytest.raises(ZeroDivisionError):
        open_image(path, channels=1)


def test_a_png_chunk_longer_than_the_file_is_refused_before_pillow_reads_it(tmp_path):
    # Found by tests/data/test_image_fuzz.py: Pillow reads a chunk by its declared length, and Python allocates all
    # of it first; a 200-byte PNG declaring a 64 MiB IDAT cost 64 MiB.
    import tracemalloc

    data = bytearray(write_png(tmp_path / "ok.png", np.full((9, 13), 7, np.uint8)).read_bytes())
    i = data.index(b"IDAT") - 4
    data[i:i + 4] = struct.pack(">I", 0x03FEFFFF)
    (tmp_path / "x.png").write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"damaged or truncated \(its 'IDAT' chunk declares 67,043,327 bytes"):
            open_image(tmp_path / "x.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
