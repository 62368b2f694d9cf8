"""cnnlab: convolutional networks from their operators up (d2l.ai chapters 7 and 8), trained for real.

One flat API, so that the book's snippets run with ``import cnnlab as d2l``::

    import cnnlab as d2l
    model = d2l.LeNet(lr=0.1)
    data = d2l.FashionMNIST(batch_size=128)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    d2l.Trainer(max_epochs=10).fit(model, data)

Importing cnnlab does no work: no downloads, no file reads, no prints, no backend flags.
"""

# The book's names (cnnlab.compat). d2l/torch.py's tensor aliases (d2l.tensor, d2l.zeros, d2l.reshape, ...,
# listed in compat.ALIASES) are attributes, as in d2l, but not in __all__, so that `from cnnlab import *` keeps
# Python's own abs.
from cnnlab.analysis.explain import explain
from cnnlab.compat import (  # noqa: F401
    DataModule,
    HyperParameters,
    Module,
    Timer,
    abs,
    add_to_class,
    arange,
    argmax,
    astype,
    batch_matmul,
    concat,
    cos,
    cosh,
    cpu,
    exp,
    expand_dims,
    eye,
    float32,
    gpu,
    int32,
    int64,
    linspace,
    log,
    matmul,
    meshgrid,
    nn_Module,
    normal,
    num_gpus,
    numpy,
    ones,
    ones_like,
    rand,
    randn,
    reduce_mean,
    reduce_sum,
    repeat,
    reshape,
    sigmoid,
    sin,
    sinh,
    size,
    stack,
    swapaxes,
    tanh,
    tensor,
    to,
    transpose,
    try_all_gpus,
    try_gpu,
    zeros,
    zeros_like,
)
from cnnlab.data.batching import BatchLoader
from cnnlab.data.fashion_mnist import CLASS_NAMES, FashionMNIST, load_fashion_mnist
from cnnlab.data.files import find_data_dir
from cnnlab.data.idx import read_idx
from cnnlab.errors import CheckpointError, DataError, TrainingDiverged, UserError
from cnnlab.inference.loaded import LoadedModel
from cnnlab.inference.loaded import load_trained as load_model
from cnnlab.models import (
    VGG,
    AlexNet,
    AnyNet,
    BNLeNet,
    BNLeNetScratch,
    DenseBlock,
    DenseNet,
    GoogleNet,
    Inception,
    LeNet,
    LeNetReLU,
    NiN,
    RegNetX32,
    ResNet,
    ResNet18,
    conv_block,
    create_model,
    list_models,
    nin_block,
    register_model,
    transition_block,
)
from cnnlab.nn.batchnorm import BatchNorm, batch_norm
from cnnlab.nn.classifier import Classifier, init_cnn
from cnnlab.nn.layers import Conv2D, Residual, ResNeXtBlock, vgg_block
from cnnlab.nn.ops import (
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
from cnnlab.nn.summary import model_summary
from cnnlab.training.callbacks import Callback
from cnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.training.evaluation import evaluate
from cnnlab.training.options import Display, Optimization, Speed
from cnnlab.training.runfolder import RunFolder
from cnnlab.training.trainer import Trainer
from cnnlab.version import __version__
from cnnlab.visual.board import ProgressBoard
from cnnlab.visual.plotting import plot, show_images

__all__ = [
    "__version__",
    "AlexNet", "AnyNet", "BNLeNet", "BNLeNetScratch", "BatchLoader", "BatchNorm", "CLASS_NAMES", "Callback",
    "CheckpointError",
    "Classifier", "Conv2D", "DataError", "DataModule", "DenseBlock", "DenseNet", "Display", "FashionMNIST",
    "GoogleNet", "HyperParameters", "Inception", "LeNet", "LeNetReLU", "Module", "NiN", "Optimization",
    "ProgressBoard", "RegNetX32", "ResNeXtBlock", "ResNet", "ResNet18", "Residual", "RunFolder", "Speed", "Timer",
    "Trainer", "TrainingDiverged",
    "UserError", "VGG", "add_to_class",
    "avg_pool2d", "batch_norm", "conv2d", "conv_block", "conv_output_shape", "corr2d", "corr2d_multi_in",
    "corr2d_multi_in_out", "corr2d_multi_in_out_1x1", "cpu", "create_model", "evaluate", "explain", "find_data_dir",
    "gpu", "init_cnn", "list_models", "load_checkpoint", "load_model", "LoadedModel", "load_fashion_mnist",
    "max_pool2d", "model_summary", "nin_block", "num_gpus", "plot", "pool2d", "read_idx", "register_model",
    "save_checkpoint", "show_images", "transition_block", "try_all_gpus", "try_gpu", "vgg_block",
]
