"""The layer tables the seed prints (d2l §7.6, §8.2, §8.6), shared by the model tests and the seed-script tests.

The seed prints them with varying spacing; :func:`table` normalizes whitespace so the comparison is exact on
everything else.
"""

LENET_TABLE = """
Conv2d output shape: torch.Size([1, 6, 28, 28])
Sigmoid output shape: torch.Size([1, 6, 28, 28])
AvgPool2d output shape: torch.Size([1, 6, 14, 14])
Conv2d output shape: torch.Size([1, 16, 10, 10])
Sigmoid output shape: torch.Size([1, 16, 10, 10])
AvgPool2d output shape: torch.Size([1, 16, 5, 5])
Flatten output shape: torch.Size([1, 400])
Linear output shape: torch.Size([1, 120])
Sigmoid output shape: torch.Size([1, 120])
Linear output shape:      torch.Size([1, 84])
Sigmoid output shape:     torch.Size([1, 84])
Linear output shape:      torch.Size([1, 10])
"""

VGG_TABLE = """
Sequential output shape:      torch.Size([1, 64, 112, 112])
Sequential output shape:      torch.Size([1, 128, 56, 56])
Sequential output shape:      torch.Size([1, 256, 28, 28])
Sequential output shape:      torch.Size([1, 512, 14, 14])
Sequential output shape:      torch.Size([1, 512, 7, 7])
Flatten output shape:         torch.Size([1, 25088])
Linear output shape:           torch.Size([1, 4096])
ReLU output shape:            torch.Size([1, 4096])
Dropout output shape:          torch.Size([1, 4096])
Linear output shape:           torch.Size([1, 4096])
ReLU output shape:            torch.Size([1, 4096])
Dropout output shape:          torch.Size([1, 4096])
Linear output shape:           torch.Size([1, 10])
"""

# The seed prints the first five rows; the table goes on with `last` (pool, flatten, linear).
RESNET18_TABLE = """
Sequential output shape:      torch.Size([1, 64, 24, 24])
Sequential output shape:      torch.Size([1, 64, 24, 24])
Sequential output shape:      torch.Size([1, 128, 12, 12])
Sequential output shape:      torch.Size([1, 256, 6, 6])
Sequential output shape:      torch.Size([1, 512, 3, 3])
Sequential output shape:      torch.Size([1, 10])
"""


def table(text: str) -> list[str]:
    """Whitespace-normalized, non-empty lines."""
    return [" ".join(line.split()) for line in text.strip().splitlines() if line.strip()]
