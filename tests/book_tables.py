"""Layer tables of the chapter-8 networks at the book's input sizes (d2l §8.1, §8.3-§8.5, §8.7, §8.8).

The book prints AlexNet's and NiN's tables at 224x224 and GoogLeNet's and RegNetX-32's at 96x96; they are
copied here from its rendered pages. It prints none for DenseNet (trained at 96x96) or the batch-norm
LeNets (28x28): those are worked out by hand from the layer definitions, with the arithmetic beside them
(conv/pool output = floor((n + 2 padding - kernel) / stride) + 1). Compare with `seed_tables.table`.
"""

# d2l §8.1.2, AlexNet().layer_summary((1, 1, 224, 224)).
ALEXNET_TABLE = """
Conv2d output shape:     torch.Size([1, 96, 54, 54])
ReLU output shape:       torch.Size([1, 96, 54, 54])
MaxPool2d output shape:  torch.Size([1, 96, 26, 26])
Conv2d output shape:     torch.Size([1, 256, 26, 26])
ReLU output shape:       torch.Size([1, 256, 26, 26])
MaxPool2d output shape:  torch.Size([1, 256, 12, 12])
Conv2d output shape:     torch.Size([1, 384, 12, 12])
ReLU output shape:       torch.Size([1, 384, 12, 12])
Conv2d output shape:     torch.Size([1, 384, 12, 12])
ReLU output shape:       torch.Size([1, 384, 12, 12])
Conv2d output shape:     torch.Size([1, 256, 12, 12])
ReLU output shape:       torch.Size([1, 256, 12, 12])
MaxPool2d output shape:  torch.Size([1, 256, 5, 5])
Flatten output shape:    torch.Size([1, 6400])
Linear output shape:     torch.Size([1, 4096])
ReLU output shape:       torch.Size([1, 4096])
Dropout output shape:    torch.Size([1, 4096])
Linear output shape:     torch.Size([1, 4096])
ReLU output shape:       torch.Size([1, 4096])
Dropout output shape:    torch.Size([1, 4096])
Linear output shape:     torch.Size([1, 10])
"""

# d2l §8.3.2, NiN().layer_summary((1, 1, 224, 224)).
NIN_TABLE = """
Sequential output shape:         torch.Size([1, 96, 54, 54])
MaxPool2d output shape:          torch.Size([1, 96, 26, 26])
Sequential output shape:         torch.Size([1, 256, 26, 26])
MaxPool2d output shape:          torch.Size([1, 256, 12, 12])
Sequential output shape:         torch.Size([1, 384, 12, 12])
MaxPool2d output shape:          torch.Size([1, 384, 5, 5])
Dropout output shape:            torch.Size([1, 384, 5, 5])
Sequential output shape:         torch.Size([1, 10, 5, 5])
AdaptiveAvgPool2d output shape:  torch.Size([1, 10, 1, 1])
Flatten output shape:            torch.Size([1, 10])
"""

# d2l §8.4.2, GoogleNet().layer_summary((1, 1, 96, 96)).
GOOGLENET_TABLE = """
Sequential output shape:     torch.Size([1, 64, 24, 24])
Sequential output shape:     torch.Size([1, 192, 12, 12])
Sequential output shape:     torch.Size([1, 480, 6, 6])
Sequential output shape:     torch.Size([1, 832, 3, 3])
Sequential output shape:     torch.Size([1, 1024])
Linear output shape:         torch.Size([1, 10])
"""

# GoogLeNet at 224 (the size; not printed by the book): the stem and each of b2-b4 halve the side,
# 224 -> 112 -> 56 -> 28 -> 14 -> 7, before b5's global pool.
GOOGLENET_224_TABLE = """
Sequential output shape:     torch.Size([1, 64, 56, 56])
Sequential output shape:     torch.Size([1, 192, 28, 28])
Sequential output shape:     torch.Size([1, 480, 14, 14])
Sequential output shape:     torch.Size([1, 832, 7, 7])
Sequential output shape:     torch.Size([1, 1024])
Linear output shape:         torch.Size([1, 10])
"""

# d2l §8.8.3, RegNetX32().layer_summary((1, 1, 96, 96)).
REGNETX32_TABLE = """
Sequential output shape:     torch.Size([1, 32, 48, 48])
Sequential output shape:     torch.Size([1, 32, 24, 24])
Sequential output shape:     torch.Size([1, 80, 12, 12])
Sequential output shape:     torch.Size([1, 10])
"""

# DenseNet() at 96x96, by hand: the stem's 7x7/2 conv and 3x3/2 pool give 96 -> 48 -> 24; each dense block
# adds 4 * 32 = 128 channels, each transition halves channels and side: 64 + 128 = 192 -> 96 (12x12),
# 96 + 128 = 224 -> 112 (6x6), 112 + 128 = 240 -> 120 (3x3), 120 + 128 = 248.
DENSENET_TABLE = """
Sequential output shape:     torch.Size([1, 64, 24, 24])
DenseBlock output shape:     torch.Size([1, 192, 24, 24])
Sequential output shape:     torch.Size([1, 96, 12, 12])
DenseBlock output shape:     torch.Size([1, 224, 12, 12])
Sequential output shape:     torch.Size([1, 112, 6, 6])
DenseBlock output shape:     torch.Size([1, 240, 6, 6])
Sequential output shape:     torch.Size([1, 120, 3, 3])
DenseBlock output shape:     torch.Size([1, 248, 3, 3])
Sequential output shape:     torch.Size([1, 10])
"""

# BNLeNet() at 28x28, by hand: unpadded 5x5 convs and 2x2/2 average pools, 28 -> 24 -> 12 -> 8 -> 4, so the
# flattened width is 16 * 4 * 4 = 256. BNLeNetScratch prints `BatchNorm` where this prints BatchNorm2d/1d.
BN_LENET_TABLE = """
Conv2d output shape:       torch.Size([1, 6, 24, 24])
BatchNorm2d output shape:  torch.Size([1, 6, 24, 24])
Sigmoid output shape:      torch.Size([1, 6, 24, 24])
AvgPool2d output shape:    torch.Size([1, 6, 12, 12])
Conv2d output shape:       torch.Size([1, 16, 8, 8])
BatchNorm2d output shape:  torch.Size([1, 16, 8, 8])
Sigmoid output shape:      torch.Size([1, 16, 8, 8])
AvgPool2d output shape:    torch.Size([1, 16, 4, 4])
Flatten output shape:      torch.Size([1, 256])
Linear output shape:       torch.Size([1, 120])
BatchNorm1d output shape:  torch.Size([1, 120])
Sigmoid output shape:      torch.Size([1, 120])
Linear output shape:       torch.Size([1, 84])
BatchNorm1d output shape:  torch.Size([1, 84])
Sigmoid output shape:      torch.Size([1, 84])
Linear output shape:       torch.Size([1, 10])
"""
