"""cnnlab: convolutional networks from their operators up (d2l.ai chapters 7 and 8), trained for real.

One flat API, so that the book's snippets run with ``import cnnlab as d2l``::

    import cnnlab as d2l
    model = d2l.LeNet(lr=0.1)
    data = d2l.FashionMNIST(batch_size=128)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    d2l.Trainer(max_epochs=10).fit(model, data)

Importing cnnlab does no work: no downloads, no file reads, no prints, no backend flags.
"""

from cnnlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cnnlab.classifier import Classifier, init_cnn
from cnnlab.compat import add_to_class
from cnnlab.data import CLASS_NAMES, BatchLoader, FashionMNIST, load_fashion_mnist
from cnnlab.idx import DataError, find_data_dir, read_idx
from cnnlab.layers import Conv2D, Residual, vgg_block
from cnnlab.models import VGG, LeNet, LeNetReLU, ResNet, ResNet18, create_model, list_models, register_model
from cnnlab.ops import (
                           avg_pool2d,
                           conv2d,
                           conv_output_shape,
                           corr2d,
                           corr2d_multi_in,
                           corr2d_multi_in_out,
                           corr2d_multi_in_out_1x1,
                           max_pool2d,
                           pool2d,
)
from cnnlab.plotting import show_images
from cnnlab.summary import model_summary
from cnnlab.train import Trainer, TrainingDiverged, evaluate

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES", "VGG", "BatchLoader", "CheckpointError", "Classifier", "Conv2D", "DataError", "FashionMNIST",
    "LeNet", "LeNetReLU", "ResNet", "ResNet18", "Residual", "Trainer", "TrainingDiverged", "add_to_class",
    "avg_pool2d", "conv2d", "conv_output_shape", "corr2d", "corr2d_multi_in", "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1", "create_model", "evaluate", "find_data_dir", "init_cnn", "list_models",
    "load_checkpoint", "load_fashion_mnist", "max_pool2d", "model_summary", "pool2d", "read_idx",
    "register_model", "save_checkpoint", "show_images", "vgg_block",
]
