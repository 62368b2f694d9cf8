# d2l §7.6 as the seed writes it, with cnnlab standing in for d2l. The only change: the training call is
# shortened (CNNLAB_SEED_EPOCHS epochs on a slice) so that the test suite stays fast; `cnnlab train` runs it in full.
import os

import torch
from torch import nn

import cnnlab as d2l


def init_cnn(module):
    """Initialize weights for CNNs."""
    if type(module) == nn.Linear or type(module) == nn.Conv2d:  # noqa: E721
        nn.init.xavier_uniform_(module.weight)


class LeNet(d2l.Classifier):
    """The LeNet-5 model."""
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5, padding=2), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120), nn.Sigmoid(),
            nn.LazyLinear(84), nn.Sigmoid(),
            nn.LazyLinear(num_classes))


@d2l.add_to_class(d2l.Classifier)
def layer_summary(self, X_shape):
    X = torch.randn(*X_shape)
    for layer in self.net:
        X = layer(X)
        print(layer.__class__.__name__, 'output shape:\t', X.shape)


model = LeNet()
model.layer_summary((1, 1, 28, 28))

epochs = int(os.environ.get("CNNLAB_SEED_EPOCHS", "10"))
slice_ = dict(num_train=int(os.environ["CNNLAB_SEED_SLICE"]), num_val=1000) if "CNNLAB_SEED_SLICE" in os.environ else {}
trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1)
data = d2l.FashionMNIST(batch_size=128, **slice_)
model = LeNet(lr=0.1)
model.apply_init([next(iter(data.get_dataloader(True)))[0]], init_cnn)
trainer.fit(model, data)
