"""`cnnlab viz kernels|features|mistakes` and `cnnlab demo edge --plot` on a small real run; PNGs read back."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.analysis import figures as viz
from cnnlab.cli.main import main
from cnnlab.data.fashion_mnist import load_fashion_mnist
from cnnlab.inference.loaded import load_trained
from cnnlab.nn.summary import conv_layers


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("viz") / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--num-train", "1000", "--num-val", "300",
                 "--out", str(out), "--no-progress", "--data-dir", str(data_dir)]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_trained(run_dir)


@pytest.fixture(scope="module")
def fashion_test(data_dir):
    return load_fashion_mnist(data_dir, train=False)


def _png(path, min_size=(300, 150), max_size=(2400, 2400)):
    """Open a PNG, check that its size fits a screen, and return it as RGB."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as img:
        img.load()
        width, height = img.size
        assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], img.size
        return img.convert("RGB")


def _reds(img) -> int:
    """Pixels at the red end of a diverging map (RdBu_r's dark red is about (103, 0, 31))."""
    rgb = np.asarray(img, dtype=int)
    return int(((rgb[..., 0] > 90) & (rgb[..., 0] - rgb[..., 2] > 60)).sum())


def _blues(img) -> int:
    """Pixels at the blue end (RdBu_r's dark blue is about (5, 48, 97))."""
    rgb = np.asarray(img, dtype=int)
    return int(((rgb[..., 2] > 90) & (rgb[..., 2] - rgb[..., 0] > 60)).sum())


# ---- kernels -------------------------------------------------------------------------------------

def test_kernels_default_is_the_first_conv_one_tile_per_output_channel(run_dir, loaded, capsys):
    assert main(["viz", "kernels", str(run_dir)]) == 0
    assert "6 kernels of net.0" in capsys.readouterr().out
    img = _png(run_dir / "kernels.png")
    # A diverging map centred on zero: trained weights have both signs, so both ends of the map show.
    assert _reds(img) > 200 and _blues(img) > 200

    first = conv_layers(loaded.model)[0][1]
    fig = viz.plot_layer_kernels(loaded.model, run_dir / "k.png")
    assert (fig.layer, fig.mode, fig.weight_shape) == ("net.0", "single", (6, 1, 5, 5))
    assert fig.tiles == first.out_channels == 6


def test_kernels_of_a_multi_input_layer_show_every_pair(run_dir, loaded, tmp_path, capsys):
    out = tmp_path / "second.png"
    assert main(["viz", "kernels", str(run_dir), "--layer", "net.3", "--out", str(out)]) == 0
    assert "96 kernels of net.3" in capsys.readouterr().out
    _png(out)
    fig = viz.plot_layer_kernels(loaded.model, tmp_path / "k.png", layer="net.3")
    assert (fig.mode, fig.tiles) == ("pairs", 16 * 6)


def test_kernels_of_a_wide_layer_are_averaged_over_inputs(tmp_path):
    from cnnlab.models import create_model

    model = create_model("vgg-small", image_size=32)
    fig = viz.plot_layer_kernels(model, tmp_path / "k.png", layer="net.1.0")  # 32 x 16 pairs: over the cap
    assert (fig.mode, fig.tiles, fig.weight_shape) == ("mean", 32, (32, 16, 3, 3))
    _png(tmp_path / "k.png")


@pytest.mark.parametrize("layer", ["bogus", "net.1"])
def test_kernels_of_an_unknown_or_non_conv_layer_list_the_conv_layers(run_dir, layer, capsys):
    assert main(["viz", "kernels", str(run_dir), "--layer", layer]) == 2
    err = capsys.readouterr().err
    assert layer in err and "net.0, net.3" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---- feature maps --------------------------------------------------------------------------------

def test_features_show_each_conv_stage_with_its_shape(run_dir, loaded, fashion_test, tmp_path, capsys):
    assert main(["viz", "features", str(run_dir), "--test-index", "5"]) == 0
    text = capsys.readouterr().out
    assert "net.1 6x28x28" in text and "net.4 16x10x10" in text
    _png(run_dir / "features-5.png", min_size=(500, 250))

    images, labels = fashion_test
    fig = viz.plot_test_features(loaded, images, labels, 5, tmp_path / "f.png")
    assert fig.stages == [("net.1", (6, 28, 28)), ("net.4", (16, 10, 10))]
    assert fig.true_class == int(labels[5])
    with torch.no_grad():
        logits = loaded.model(loaded.preprocess(images[5:6]))
    assert fig.predicted_class == int(logits.argmax())


@pytest.mark.parametrize("views", [{"name": "fastnet-flip"}, {"name": "fastnet-auto", "shift_tta": 1}])
def test_the_features_of_a_test_time_averaged_net_are_the_image_as_given(views):
    # It runs each stage once per view, and the hook kept the last: a flip-averaged net drew the mirror image's maps
    from cnnlab.models import create_model

    torch.manual_seed(0)
    kwargs = dict(views)
    model = create_model(kwargs.pop("name"), **kwargs).eval()
    x = torch.zeros(1, 1, 28, 28)
    x[..., 5:12, 3:10] = 3.0  # a patch in the upper left: its mirror image and its shifts are elsewhere
    expected = {}
    handles = [module.register_forward_hook(lambda m, i, out, name=name: expected.setdefault(name, out))
               for name, module in viz.feature_stages(model)]
    with torch.no_grad():
        model.net(x)  # the plain net, once, on the image alone
        for handle in handles:
            handle.remove()
        maps = viz.stage_outputs(model, x)
    assert list(maps) == list(expected) and len(maps) >= 5
    for name in maps:
        assert torch.equal(maps[name], expected[name]), name


def test_features_out_of_range_is_a_clear_error(run_dir, capsys):
    assert main(["viz", "features", str(run_dir), "--test-index", "10000"]) == 2
    err = capsys.readouterr().err
    assert "test index 10000 is out of range: the test set has 10,000 images (0..9,999)" in err
    assert main(["predict", str(run_dir), "--test-index", "10000"]) == 2
    assert capsys.readouterr().err == err  # one check, one message (inference.loaded.check_test_index)


def test_feature_stages_of_block_models_are_their_blocks():
    from cnnlab.models import create_model

    assert [n for n, _ in viz.feature_stages(create_model("vgg-small", image_size=32))] == \
        ["net.0", "net.1", "net.2", "net.3", "net.4"]
    assert [n for n, _ in viz.feature_stages(create_model("resnet18-small"))] == \
        ["net.b1", "net.b2", "net.b3", "net.b4", "net.b5"]
    assert [n for n, _ in viz.feature_stages(create_model("lenet"))] == ["net.1", "net.4"]


# ---- mistakes ------------------------------------------------------------------------------------

def test_mistakes_are_the_most_confident_wrong_predictions(run_dir, loaded, fashion_test, tmp_path, capsys):
    out = tmp_path / "mistakes.png"
    assert main(["viz", "mistakes", str(run_dir), "--n", "7", "--out", str(out)]) == 0
    assert "7 most confident" in capsys.readouterr().out
    _png(out, min_size=(500, 100))

    images, labels = fashion_test
    probs = viz.predict_probabilities(loaded, images, labels)
    fig = viz.plot_test_mistakes(loaded, images, labels, tmp_path / "m.png", n=24, probs=probs)
    confidence, predicted = probs.max(dim=1)
    wrong = predicted != labels
    assert fig.total == 10_000 and fig.wrong == int(wrong.sum())
    assert len(fig.indices) == 24 and all(bool(wrong[i]) for i in fig.indices)
    shown = confidence[fig.indices]
    assert torch.all(shown[:-1] >= shown[1:])  # surest first
    assert float(shown[-1]) >= float(confidence[wrong].sort(descending=True).values[23])  # and the surest 24


def test_mistakes_default_path_and_count(run_dir):
    assert main(["viz", "mistakes", str(run_dir)]) == 0
    _png(run_dir / "mistakes.png", min_size=(800, 300))


# ---- the book's edge demo ------------------------------------------------------------------------

def test_demo_edge_plot(tmp_path, capsys):
    out = tmp_path / "edge.png"
    assert main(["demo", "edge", "--plot", str(out)]) == 0
    assert "figure:" in capsys.readouterr().out
    img = _png(out)
    assert _reds(img) > 500 and _blues(img) > 500  # the +1 and -1 edges of Y, and the learned kernel
