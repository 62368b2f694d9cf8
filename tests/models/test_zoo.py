"""The chapter-8 networks: AlexNet (§8.1), NiN (§8.3), GoogLeNet (§8.4), ResNeXt (§8.6.5), DenseNet (§8.7),
AnyNet/RegNetX-32 (§8.8), and their blocks.

Layer tables are compared with the book's (tests/book_tables.py); parameter counts and FLOPs with formulas
written here from the layer definitions, never with the code's own output.
"""

import contextlib
import inspect
import io

import pytest
import torch
from torch import nn

import cnnlab
import cnnlab.models
from book_tables import (
    ALEXNET_TABLE,
    DENSENET_TABLE,
    GOOGLENET_224_TABLE,
    GOOGLENET_TABLE,
    NIN_TABLE,
    REGNETX32_TABLE,
)
from cnnlab.cli.main import main
from cnnlab.models import (
    AlexNet,
    AnyNet,
    DenseBlock,
    DenseNet,
    GoogleNet,
    Inception,
    NiN,
    RegNetX32,
    create_model,
    list_models,
    nin_block,
    transition_block,
)
from cnnlab.nn.layers import ResNeXtBlock
from cnnlab.nn.summary import layer_stats
from cnnlab.recipes import TrainConfig, model_defaults, resolve_config
from seed_tables import table

UNINITIALIZED = nn.parameter.UninitializedParameter


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary_lines(model, shape) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.layer_summary(shape)
    return table(out.getvalue())


# Parameter counts of the layers, by definition.
def conv(c_in, c_out, k, groups=1):
    return c_in // groups * c_out * k * k + c_out


def linear(n_in, n_out):
    return n_in * n_out + n_out


def bn(c):
    return 2 * c


# --- layer tables at the book's input sizes ------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet224():
    return create_model("alexnet", image_size=224)


def test_alexnet_layer_summary_matches_the_book(alexnet224):
    assert summary_lines(alexnet224, (1, 1, 224, 224)) == table(ALEXNET_TABLE)


@pytest.mark.parametrize(
    "build, size, expected",
    [
        (lambda: NiN(), 224, NIN_TABLE),
        (lambda: GoogleNet(), 96, GOOGLENET_TABLE),
        pytest.param(lambda: GoogleNet(), 224, GOOGLENET_224_TABLE, marks=pytest.mark.slow),
        (lambda: DenseNet(), 96, DENSENET_TABLE),
        (lambda: RegNetX32(), 96, REGNETX32_TABLE),
    ],
    ids=["nin-224", "googlenet-96", "googlenet-224", "densenet-96", "regnetx32-96"],
)
def test_layer_summary_matches_the_book(build, size, expected):
    assert summary_lines(build(), (1, 1, size, size)) == table(expected)


def output_shapes(model, size) -> list[tuple[int, ...]]:
    """Each top-level layer's output shape for one zero image (the summary's walk, without the counting)."""
    X = torch.zeros(1, 1, size, size)
    shapes = []
    model.eval()
    with torch.no_grad():
        for layer in model.net:
            X = layer(X)
            shapes.append(tuple(X.shape))
    return shapes


def test_small_stems_keep_native_images_alive():
    # 28 -> 28 (3x3/1 conv) -> 13 -> 6 -> 2 through the three 3x3/2 max pools.
    shapes = output_shapes(AlexNet(small_stem=True), 28)
    assert shapes[2] == (1, 96, 13, 13) and shapes[12] == (1, 256, 2, 2) and shapes[13] == (1, 1024)
    shapes = output_shapes(NiN(small_stem=True), 28)
    assert shapes[0] == (1, 96, 28, 28) and shapes[5] == (1, 384, 2, 2) and shapes[-1] == (1, 10)
    # The book's stem at 56 and the small stem at 28 give the same sizes: 14, 7, 3, 1.
    book = output_shapes(DenseNet(), 56)
    small = output_shapes(DenseNet(small_stem=True), 28)
    assert book == small and small[-2] == (1, 248, 1, 1)


@pytest.mark.parametrize(
    "name, fits, too_small", [("alexnet", 65, 64), ("nin", 67, 66), ("densenet", 29, 28), ("densenet-small", 15, 14)]
)
def test_smallest_input_is_as_documented(name, fits, too_small):
    assert create_model(name, image_size=fits)(torch.randn(2, 1, fits, fits)).shape == (2, 10)
    with pytest.raises(ValueError, match="larger image_size"):
        create_model(name, image_size=too_small)


# --- parameter counts, from the definitions -----------------------------------------------------------


def test_alexnet_parameter_count(alexnet224):
    convs = conv(1, 96, 11) + conv(96, 256, 5) + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)
    head = linear(256 * 5 * 5, 4096) + linear(4096, 4096) + linear(4096, 10)
    assert n_params(alexnet224) == convs + head
    small_convs = convs - conv(1, 96, 11) + conv(1, 96, 3)
    small_head = head - linear(256 * 5 * 5, 4096) + linear(256 * 2 * 2, 4096)
    assert n_params(create_model("alexnet-small", image_size=28)) == small_convs + small_head


def test_nin_parameter_count_needs_no_forward():
    def block(c_in, c, k):
        return conv(c_in, c, k) + 2 * conv(c, c, 1)

    expected = block(1, 96, 11) + block(96, 256, 5) + block(256, 384, 3) + block(384, 10, 3)
    model = NiN()
    assert not any(isinstance(p, UNINITIALIZED) for p in model.parameters())
    assert n_params(model) == expected
    assert n_params(NiN(small_stem=True, in_channels=3)) == expected - block(1, 96, 11) + block(3, 96, 3)


def inception(c_in, c1, c2, c3, c4):
    branches = conv(c_in, c1, 1) + conv(c_in, c2[0], 1) + conv(c2[0], c2[1], 3)
    return branches + conv(c_in, c3[0], 1) + conv(c3[0], c3[1], 5) + conv(c_in, c4, 1)


def test_googlenet_parameter_count_needs_no_forward():
    # d2l §8.4.2's channel numbers, block by block, with each block's input width.
    blocks = [
        (192, 64, (96, 128), (16, 32), 32), (256, 128, (128, 192), (32, 96), 64),
        (480, 192, (96, 208), (16, 48), 64), (512, 160, (112, 224), (24, 64), 64),
        (512, 128, (128, 256), (24, 64), 64), (512, 112, (144, 288), (32, 64), 64),
        (528, 256, (160, 320), (32, 128), 128), (832, 256, (160, 320), (32, 128), 128),
        (832, 384, (192, 384), (48, 128), 128),
    ]  # fmt: skip
    expected = conv(1, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3) + sum(inception(*b) for b in blocks)
    expected += linear(1024, 10)
    model = GoogleNet()
    assert not any(isinstance(p, UNINITIALIZED) for p in model.parameters())
    assert n_params(model) == expected


def densenet_params(c=64, growth=32, arch=(4, 4, 4, 4), stem_k=7, in_channels=1):
    total = conv(in_channels, c, stem_k) + bn(c)
    for i, num_convs in enumerate(arch):
        for j in range(num_convs):
            total += bn(c + j * growth) + conv(c + j * growth, growth, 3)
        c += num_convs * growth
        if i != len(arch) - 1:
            total += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return total + bn(c) + linear(c, 10)


def test_densenet_parameter_count_needs_no_forward():
    assert n_params(DenseNet()) == densenet_params()
    assert n_params(DenseNet(small_stem=True)) == densenet_params(stem_k=3)
    assert n_params(DenseNet(32, 16, (2, 3), in_channels=3)) == densenet_params(32, 16, (2, 3), in_channels=3)


def resnext_params(c_in, c, groups, bot_mul, proj):
    b = int(round(c * bot_mul))
    total = conv(c_in, b, 1) + conv(b, b, 3, groups=b // groups) + conv(b, c, 1) + bn(b) + bn(b) + bn(c)
    return total + (conv(c_in, c, 1) + bn(c) if proj else 0)


def test_regnetx32_parameter_count_needs_no_forward():
    # Stem 32; stage 1: 4 blocks of width 32; stage 2: 6 blocks of width 80; group width 16, bot_mul 1.
    expected = conv(1, 32, 3) + bn(32)
    expected += resnext_params(32, 32, 16, 1, True) + 3 * resnext_params(32, 32, 16, 1, False)
    expected += resnext_params(32, 80, 16, 1, True) + 5 * resnext_params(80, 80, 16, 1, False)
    expected += linear(80, 10)
    model = RegNetX32()
    assert not any(isinstance(p, UNINITIALIZED) for p in model.parameters())
    assert n_params(model) == expected


def test_anynet_takes_any_design():
    model = AnyNet(((1, 8, 4, 0.5), (2, 16, 8, 1), (1, 24, 4, 0.5)), stem_channels=8, num_classes=3, in_channels=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert [name for name, _ in model.net.named_children()] == ["0", "stage1", "stage2", "stage3", "head"]


# --- FLOPs ----------------------------------------------------------------------------------------------


def test_alexnet_flops_match_the_textbook_count(alexnet224):
    # 2 * C_out * H_out * W_out * C_in * k * k per conv, 2 * in * out per linear, at the book's shapes.
    convs = [(96, 54, 1, 11), (256, 26, 96, 5), (384, 12, 256, 3), (384, 12, 384, 3), (256, 12, 384, 3)]
    expected = sum(2 * c_out * h * h * c_in * k * k for c_out, h, c_in, k in convs)
    expected += 2 * (6400 * 4096 + 4096 * 4096 + 4096 * 10)
    stats = layer_stats(alexnet224, (1, 1, 224, 224))
    assert sum(s.flops for s in stats) == expected


def test_every_model_has_recipe_defaults_and_a_cli_summary(capsys):
    # `cnnlab summary NAME` reads the recipe's input size, registered with every model.
    for name in list_models():
        assert 8 <= model_defaults(name)["image_size"] <= 224, name
    for name in ("regnetx32", "lenet-bn-scratch"):
        assert main(["summary", name]) == 0
        out = capsys.readouterr().out
        assert "Total FLOPs" in out and int(out.split("Total FLOPs: ")[1].replace(",", "")) > 0


@pytest.mark.parametrize(
    "name, image_size, lr",
    [("alexnet", 224, 0.01), ("nin", 224, 0.05), ("googlenet", 96, 0.01), ("densenet", 96, 0.01),
     ("regnetx32", 96, 0.05), ("lenet-bn", 28, 0.1), ("lenet-bn-scratch", 28, 0.1)],
)  # fmt: skip
def test_recipes_follow_the_books_training_cells(name, image_size, lr):
    # d2l trains each with plain SGD, batch 128, 10 epochs, at this size and learning rate.
    config = resolve_config(TrainConfig(model=name, bf16=False))
    assert (config.image_size, config.lr, config.optimizer, config.batch_size, config.epochs) == (
        image_size, lr, "sgd", 128, 10,
    )  # fmt: skip
    builder = getattr(cnnlab.models, name.replace("-", "_"))
    assert inspect.signature(builder).parameters["lr"].default == lr  # the builder's default is the book's too


# --- blocks -----------------------------------------------------------------------------------------------


def test_nin_block_shape():
    assert nin_block(8, kernel_size=3, strides=2, padding=1)(torch.randn(2, 3, 9, 9)).shape == (2, 8, 5, 5)
    assert n_params(nin_block(8, 3, 1, 1, in_channels=3)) == conv(3, 8, 3) + 2 * conv(8, 8, 1)


def test_inception_concatenates_its_branches():
    blk = Inception(4, (3, 5), (2, 6), 7, in_channels=3)
    X = torch.randn(2, 3, 6, 6)
    Y = blk(X)
    assert Y.shape == (2, 4 + 5 + 6 + 7, 6, 6)
    torch.testing.assert_close(Y[:, :4], torch.relu(blk.b1_1(X)))  # branch 1 comes first
    assert n_params(blk) == inception(3, 4, (3, 5), (2, 6), 7)
    lazy = Inception(4, (3, 5), (2, 6), 7)
    lazy(X)
    lazy.load_state_dict(blk.state_dict())
    torch.testing.assert_close(lazy(X), Y)


def test_dense_and_transition_blocks_book_shapes():
    # d2l §8.7.2-8.7.3: 3 + 2 * 10 = 23 channels, then a transition to 10 channels at half the size.
    X = torch.randn(4, 3, 8, 8)
    blk = DenseBlock(2, 10)
    Y = blk(X)
    assert Y.shape == (4, 23, 8, 8)
    torch.testing.assert_close(Y[:, :3], X)  # the input is passed on unchanged
    assert transition_block(10)(Y).shape == (4, 10, 4, 4)
    explicit = DenseBlock(2, 10, in_channels=3)
    assert n_params(explicit) == bn(3) + conv(3, 10, 3) + bn(13) + conv(13, 10, 3)
    explicit.load_state_dict(blk.state_dict())
    torch.testing.assert_close(explicit(X), Y)


def test_resnext_block_book_example():
    # d2l §8.6.5: ResNeXtBlock(32, 16, 1) keeps a (4, 32, 96, 96) input's shape; its 3x3 conv has
    # 32 // 16 = 2 groups: `groups` is the group width.
    blk = cnnlab.ResNeXtBlock(32, 16, 1)
    assert blk(torch.randn(4, 32, 96, 96)).shape == (4, 32, 96, 96)
    assert blk.conv2.groups == 2
    assert ResNeXtBlock(16, 4, 0.5, use_1x1conv=True, strides=2)(torch.randn(2, 8, 7, 7)).shape == (2, 16, 4, 4)


@pytest.mark.parametrize("use_1x1conv, strides, c_in", [(False, 1, 16), (True, 1, 8), (True, 2, 8)])
def test_resnext_explicit_matches_lazy(use_1x1conv, strides, c_in):
    X = torch.randn(2, c_in, 7, 7)
    lazy = ResNeXtBlock(16, 4, 0.5, use_1x1conv, strides)
    explicit = ResNeXtBlock(16, 4, 0.5, use_1x1conv, strides, in_channels=c_in)
    assert not any(isinstance(p, UNINITIALIZED) for p in explicit.parameters())
    Y = lazy(X)
    explicit.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(explicit(X), Y)
    assert n_params(explicit) == resnext_params(c_in, 16, 4, 0.5, use_1x1conv)


def test_resnext_is_identity_plus_branch():
    blk = ResNeXtBlock(8, 4, 1, in_channels=8).eval()
    nn.init.zeros_(blk.bn3.weight)
    nn.init.zeros_(blk.bn3.bias)
    X = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(blk(X), torch.relu(X))


def test_resnext_refuses_bad_arguments():
    with pytest.raises(ValueError, match="must divide the bottleneck width"):
        ResNeXtBlock(30, 16, 1)
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        ResNeXtBlock(16, 4, 1, strides=2)
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        ResNeXtBlock(16, 4, 1, in_channels=8)


def test_book_names_are_importable():
    from cnnlab.models import ResNeXtBlock as FromModels  # noqa: F401 (the brief's import paths)

    assert cnnlab.ResNeXtBlock is ResNeXtBlock
    from cnnlab.nn import batchnorm

    for name in ("AlexNet", "NiN", "GoogleNet", "Inception", "DenseNet", "AnyNet", "RegNetX32", "BatchNorm",
                 "batch_norm", "BNLeNet", "BNLeNetScratch", "nin_block", "conv_block", "transition_block"):
        home = batchnorm if name in ("BatchNorm", "batch_norm") else cnnlab.models
        assert name in cnnlab.__all__ and getattr(cnnlab, name) is getattr(home, name), name
    assert isinstance(cnnlab.nin_block(4, kernel_size=3, strides=1, padding=1), nn.Sequential)
