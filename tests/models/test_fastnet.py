"""FastNet, the time-to-accuracy recipes' network: its flip-averaging variants and what the recipes build."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.models import create_model
from cnnlab.recipes import RECIPES, TrainConfig, resolve_config


@pytest.mark.parametrize("name", ["fastnet-flip", "fastnet-wide"])
def test_flip_averaging_happens_in_eval_mode_only(name):
    torch.manual_seed(0)
    model = create_model(name).eval()  # BatchNorm on its running statistics: the same net for every call
    X = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        plain = model.net(X)
        mirrored = model.net(X.flip(-1))
        assert torch.allclose(model(X), (plain + mirrored) / 2, atol=1e-6)
        model.train()  # BatchNorm on the batch's statistics, whatever the running ones became
        assert torch.equal(model(X), model.net(X))  # training sees each image once, as the loss expects
        model.eval()
        assert not torch.allclose(plain, mirrored, atol=1e-3)  # so the averaging above could have failed
    # A mirrored image gets the very same prediction: what flip averaging buys.
    with torch.no_grad():
        assert torch.allclose(model.eval()(X), model(X.flip(-1)), atol=1e-5)


def test_plain_fastnet_does_not_average():
    torch.manual_seed(0)
    model = create_model("fastnet").eval()
    X = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(X), model.net(X))


@pytest.mark.parametrize("recipe, model, widths, epochs", [("fast", "fastnet-flip", (24, 48, 96), 7),
                                                           ("fast-long", "fastnet-wide", (32, 64, 128), 12)])
def test_the_time_to_accuracy_recipes_build_flip_averaging_fastnets(recipe, model, widths, epochs, monkeypatch):
    monkeypatch.setenv("CNNLAB_BF16", "0")
    config = resolve_config(TrainConfig(), recipe)
    assert (config.model, config.epochs, config.batch_size, config.lr) == (model, epochs, 256, 0.2)
    built = create_model(config.model)
    assert built.hparams["widths"] == widths and built.hparams["flip_tta"] is True
    assert RECIPES[recipe]["model"] == model


def test_each_docstring_that_names_a_recipe_names_the_recipes_own_model():
    import re

    from cnnlab.models import registry

    claims = {}
    for name, builder in registry._MODELS.items():
        for words in re.findall(r"``--recipe ([\w-]+)``(?: and ``([\w-]+)``)?", builder.__doc__ or ""):
            for recipe in filter(None, words):
                claims[recipe] = name
                assert RECIPES[recipe]["model"] == name, f"{name}'s docstring names --recipe {recipe}"
    assert claims == {"fast": "fastnet-flip", "fast-long": "fastnet-wide"}


def test_a_pixel_blend_mixes_the_two_models_probabilities_in_eval_mode_only():
    from cnnlab.models.fastnet import blend_logits

    torch.manual_seed(0)
    model = create_model("fastnet-auto", num_classes=3, in_channels=3, image_size=8, pixel_blend=0.25).eval()
    assert model.pixel_head.weight.shape == (3, 3 * 8 * 8) and model.model_kwargs["pixel_blend"] == 0.25
    torch.nn.init.normal_(model.pixel_head.weight)  # zeros until fitted: any head will do here
    X = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        net, head = model.net(X).softmax(1), model.pixel_head(X.flatten(1)).softmax(1)
        mixed = model(X)
        assert torch.allclose(mixed.exp(), 0.75 * net + 0.25 * head, atol=1e-6)  # logits of the mixture
        assert torch.allclose(mixed.softmax(1), 0.75 * net + 0.25 * head, atol=1e-6)
        assert not torch.allclose(net, head, atol=0.05)  # so the mixture could have been either alone
        assert torch.equal(model.train()(X), model.net(X))  # training sees the net alone
    # Stable where a softmax underflows: a log of the mixture, not of a sum of exps
    assert torch.isfinite(blend_logits(torch.tensor([[1e4, 0.0]]), torch.tensor([[0.0, 1e4]]), 0.5)).all()
    # The blend's weights live in the model's state dict: a checkpoint rebuilds it from its kwargs
    again = create_model("fastnet-auto", **{k: v for k, v in model.model_kwargs.items()})
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(X), model.eval()(X))


@pytest.mark.parametrize("weight", [1.0, -0.1])
def test_a_pixel_blend_outside_zero_to_one_is_refused(weight):
    with pytest.raises(ValueError, match="pixel_blend must be in"):
        create_model("fastnet-auto", pixel_blend=weight)


def test_without_a_pixel_blend_fastnet_auto_has_no_head():
    model = create_model("fastnet-auto")
    assert model.pixel_head is None and not any("pixel" in key for key in model.state_dict())


def test_a_white_balanced_fastnet_reads_two_tints_of_one_image_alike_in_training_and_eval():
    torch.manual_seed(0)
    model = create_model("fastnet-auto", num_classes=3, in_channels=3, image_size=8, white_balance=True,
                         pixel_blend=0.5)
    torch.nn.init.normal_(model.pixel_head.weight)
    grey = torch.rand(4, 1, 8, 8)
    warm, cold = grey * torch.tensor([1.5, 1.0, 0.5]).view(1, 3, 1, 1), grey * torch.tensor([0.5, 1.0, 1.5]).view(
        1, 3, 1, 1)  # the same mean gain: only the cast differs
    with torch.no_grad():
        for training in (False, True):  # training: BatchNorm of a batch of 4 magnifies the balance's rounding
            model.train(training)
            assert torch.allclose(model(warm), model(cold), atol=1e-3), training
        model.eval()
        plain = create_model("fastnet-auto", num_classes=3, in_channels=3, image_size=8, pixel_blend=0.5).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain(warm), plain(cold), atol=1e-2)  # without the balance the cast shows
        # The head reads what the net reads; a checkpoint rebuilds the balance from the model's kwargs
        assert model.model_kwargs["white_balance"] is True
        again = create_model("fastnet-auto", **model.model_kwargs)
        again.load_state_dict(model.state_dict())
        assert torch.equal(again.eval()(warm), model.eval()(warm))


def test_shift_tta_is_the_mean_of_the_probabilities_over_the_nine_shifts_in_eval_only():
    torch.manual_seed(0)
    model = create_model("fastnet-auto", num_classes=4, in_channels=3, image_size=12, shift_tta=1)
    x = torch.rand(5, 3, 12, 12)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    with torch.no_grad():
        model.eval()
        by_hand = torch.stack([model.net(padded[:, :, 1 + dy:13 + dy, 1 + dx:13 + dx]).softmax(1)
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).mean(0)
        assert torch.allclose(model(x).exp(), by_hand, atol=1e-6)
        assert not torch.allclose(model.net(x).softmax(1), by_hand, atol=1e-3)  # the views change the answer
        assert torch.equal(model.single_view(x), model.net(x))
        again = create_model("fastnet-auto", **model.model_kwargs)  # a checkpoint rebuilds it
        again.load_state_dict(model.state_dict())
        assert again.model_kwargs["shift_tta"] == 1 and torch.equal(again.eval()(x), model(x))
        model.train()
        assert torch.equal(model(x), model.net(x))  # training reads one view: the crops are the data's
