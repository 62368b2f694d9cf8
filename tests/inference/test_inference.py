"""Using a trained model (cnnlab.inference.loaded): rebuilding it from a checkpoint, reading images, top-k.

Hostile inputs (bombs, crafted checkpoints, truncated files) are in test_hostile.py; these are the ordinary
cases, on a checkpoint built here without training.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import CheckpointError
from cnnlab.inference.loaded import LoadedModel, load_image, load_trained, top_k
from cnnlab.models import create_model
from cnnlab.training.checkpoint import CHECKPOINT_VERSION, save_checkpoint


def _checkpoint(path, image_size=28, normalize=True, **overrides):
    torch.manual_seed(0)
    model = create_model("lenet-relu", image_size=image_size)
    state = {"version": CHECKPOINT_VERSION, "model_name": model.model_name, "model_kwargs": model.model_kwargs,
             "model_state": model.state_dict(), "epoch": 1,
             "data_settings": {"image_size": (image_size, image_size), "normalize": normalize}, **overrides}
    return save_checkpoint(state, path), model


def test_load_trained_rebuilds_the_same_model_from_file_or_folder(tmp_path):
    _, model = _checkpoint(tmp_path / "best.pt")
    for source in (tmp_path, tmp_path / "best.pt"):
        loaded = load_trained(source)
        assert loaded.checkpoint == tmp_path / "best.pt"
        assert loaded.image_size == (28, 28) and loaded.normalize
        assert not loaded.model.training
        X = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded.model(X), model.eval()(X))


def test_preprocess_scales_normalizes_and_resizes(tmp_path):
    _checkpoint(tmp_path / "best.pt", image_size=32, normalize=False)
    loaded = load_trained(tmp_path)
    assert loaded.image_size == (32, 32)
    X = loaded.preprocess(torch.full((3, 28, 28), 255, dtype=torch.uint8))
    assert X.shape == (3, 1, 32, 32) and torch.allclose(X, torch.ones_like(X))
    plain = LoadedModel(model=loaded.model, image_size=(28, 28), normalize=True, checkpoint=tmp_path,
                        state={})
    assert torch.allclose(plain.preprocess(torch.zeros(1, 28, 28, dtype=torch.uint8)),
                          torch.full((1, 1, 28, 28), -0.2860 / 0.3530))


def test_top_k_is_sorted_probabilities(tmp_path):
    _checkpoint(tmp_path / "best.pt")
    probs, classes = top_k(load_trained(tmp_path), torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8), k=3)
    assert probs.shape == classes.shape == (4, 3)
    assert torch.all(probs[:, :-1] >= probs[:, 1:]) and torch.all(probs.sum(1) <= 1 + 1e-6)
    assert top_k(load_trained(tmp_path), torch.zeros(1, 28, 28, dtype=torch.uint8), k=50)[0].shape == (1, 10)


def test_checkpoint_without_a_model_name_is_refused(tmp_path):
    _checkpoint(tmp_path / "best.pt", model_name=None)
    with pytest.raises(CheckpointError, match="does not name a registered model"):
        load_trained(tmp_path)


def test_checkpoint_with_weights_of_another_shape_is_refused(tmp_path):
    _checkpoint(tmp_path / "best.pt", model_kwargs={"num_classes": 7, "in_channels": 1, "image_size": 28})
    with pytest.raises(CheckpointError, match="do not fit model 'lenet-relu'"):
        load_trained(tmp_path)


def test_fashion_mnist_image_round_trips_through_a_png(tmp_path, data_dir):
    from cnnlab.data.fashion_mnist import load_fashion_mnist

    images, _ = load_fashion_mnist(data_dir, train=False)
    Image.fromarray(images[0].numpy()).save(tmp_path / "test0.png")
    assert torch.equal(load_image(tmp_path / "test0.png"), images[0])


def test_photo_on_white_is_inverted_to_light_on_black(tmp_path):
    a = np.full((90, 90, 3), 250, np.uint8)
    a[20:70, 30:60] = (40, 60, 200)  # a blue garment on white paper
    Image.fromarray(a).save(tmp_path / "photo.jpg")
    x = load_image(tmp_path / "photo.jpg")
    assert x.shape == (28, 28) and x.dtype == torch.uint8
    assert x[:3].float().mean() < 20 and x[12:16, 12:16].float().mean() > 120


def test_non_square_photo_is_padded_not_squashed(tmp_path):
    a = np.zeros((40, 120), np.uint8)
    a[10:30, 50:70] = 255  # a 20x20 square in a 3:1 frame
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png")
    rows = (x > 127).any(1).nonzero().flatten()
    cols = (x > 127).any(0).nonzero().flatten()
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert abs(height - width) <= 1 and 3 <= width <= 6  # still square, 28 * 20/120 wide, centred
    assert abs(int(rows[0]) + int(rows[-1]) - 27) <= 1 and abs(int(cols[0]) + int(cols[-1]) - 27) <= 1


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((28, 28), np.uint8)
    a[:, :7] = 255  # a bar on the left edge as stored...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...displayed rotated 90 degrees clockwise: the bar is at the top
    Image.fromarray(a).convert("RGB").save(tmp_path / "phone.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "phone.jpg")
    assert x[:5].float().mean() > 200 and x[-5:].float().mean() < 30
