"""FastNet, the time-to-accuracy recipes' network: its flip-averaging variants and what the recipes build."""

import pytest
import torch

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
