"""Whether a folder's colour cast tells its classes (cnnlab.recipes.colour), and the automatic recipe that removes
it where it does not."""

from __future__ import annotations

import torch

from cnnlab.cli.main import main
from cnnlab.data.imagefolder import ImageFolderData
from cnnlab.inference.loaded import evaluate_checkpoint, load_trained
from cnnlab.recipes.colour import MIN_IMAGES, cast_test, chromaticity
from cnnlab.training.checkpoint import load_checkpoint
from image_sets import load_set, short_run, write_set


def _tinted(count: int, tint_of_class: bool, seed: int = 0):
    """Grey noise images of 4 classes (their mean brightness tells the class), each under a tint: drawn at random,
    or one per class with a little jitter."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 4
    grey = torch.rand(count, 1, 8, 8, generator=g) * (0.4 + 0.15 * labels.view(-1, 1, 1, 1))
    if tint_of_class:
        palette = torch.tensor([[1.0, 0.4, 0.4], [0.4, 1.0, 0.4], [0.4, 0.4, 1.0], [1.0, 1.0, 0.4]])
        tint = palette[labels] * (0.9 + 0.2 * torch.rand(count, 3, generator=g))
    else:
        tint = 0.3 + 0.7 * torch.rand(count, 3, generator=g)
    return (255 * grey * tint.view(count, 3, 1, 1)).to(torch.uint8), labels


def test_chromaticity_is_the_cast_whatever_the_brightness():
    images, _ = _tinted(8, tint_of_class=False)
    darker = (images.float() * 0.5).round().to(torch.uint8)
    assert torch.allclose(chromaticity(images), chromaticity(darker), atol=0.05)
    assert chromaticity(images).sum(1).abs().max() < 1e-5  # brightness is left out: the logs sum to zero


def test_a_random_tint_is_noise_and_a_tint_of_the_class_is_kept():
    noise = cast_test(*_tinted(600, tint_of_class=False))
    assert noise.cast_is_noise and abs(noise.accuracy - noise.chance) < 0.08
    assert "colour cast: noise, removed from every image" in noise.describe()
    kept = cast_test(*_tinted(600, tint_of_class=True))
    assert not kept.cast_is_noise and kept.accuracy > 0.9 and 0.2 <= kept.chance <= 0.3
    assert "colour cast: kept" in kept.describe()


def test_too_few_images_keep_their_colour():
    few = cast_test(*_tinted(MIN_IMAGES - 1, tint_of_class=False))
    assert few.images == MIN_IMAGES - 1 and not few.cast_is_noise


def test_the_collections_colour_sets_are_told_apart():
    # Real images: photos-32's colour is its class (astronaut, cat, coffee, rocket); fashion-64-colour is
    # Fashion-MNIST under a random tint
    for name, noise in (("photos-32", False), ("fashion-64-colour", True)):
        train_x, train_y = load_set(name)[:2]
        images = torch.from_numpy(train_x).permute(0, 3, 1, 2)
        assert cast_test(images, torch.from_numpy(train_y).long()).cast_is_noise is noise, name


def test_the_automatic_recipe_balances_a_randomly_tinted_folder_unless_told_not_to(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_BF16", "0")
    folder, run, out = short_run("fashion-64-colour", tmp_path, capsys, 30, 0.01)
    assert "colour cast: noise, removed from every image" in out
    assert load_checkpoint(run / "best.pt")["model_kwargs"]["white_balance"] is True
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert abs(evaluate_checkpoint(run)[1].accuracy - accuracy) < 1e-4  # evaluation balances as the run did
    # The pixel head was fitted on the balanced images the model gives it: the blended model's validation loss
    # is the one the blend's line reported
    reported = float(out.split("pixel blend: ")[1].split(" -> ")[1].split(";")[0])
    loaded = load_trained(run)
    data = ImageFolderData(folder, image_size=32, val_split=0.1, seed=0, progress=False, log=None)
    with torch.no_grad():
        logits = loaded.model.eval()(loaded.preprocess(data.val_images))
    assert abs(float(torch.nn.functional.cross_entropy(logits, data.val_labels)) - reported) < 2e-3
    # Resumed when finished, the model is rebuilt balanced from the run's config: the same score
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert float(capsys.readouterr().out.split("test accuracy ")[1].split()[0]) == accuracy
    # Told not to, it neither tests nor balances
    _, kept, out = short_run("fashion-64-colour", tmp_path, capsys, 30, 0.01, "--no-pixel-blend", "--no-white-balance",
                             out="kept")
    assert "colour cast" not in out
    assert not load_checkpoint(kept / "best.pt")["model_kwargs"].get("white_balance")


def test_a_white_balance_for_a_model_without_one_is_refused_in_one_line(tmp_path, capsys):
    folder = str(write_set("shapes-25", tmp_path / "f"))
    assert main(["train", "--images", folder, "--model", "lenet-bn", "--white-balance", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--white-balance needs a model that removes a colour cast" in err[0]
