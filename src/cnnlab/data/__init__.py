"""Data in, checked: Fashion-MNIST from its IDX files (found, downloaded, verified), the user's own image folders,
and the batch loader that keeps a whole split on the training device."""

# Names that are also submodules (download, idx, images) are not re-exported: `import cnnlab.data.download`
# must give the module.

from cnnlab.data.batching import BatchLoader, stratified_split
from cnnlab.data.fashion_mnist import CLASS_NAMES, MEAN, STD, FashionMNIST, load_fashion_mnist
from cnnlab.data.files import find_data_dir
from cnnlab.data.idx import read_idx
from cnnlab.data.imagedecode import ImageFolderError
from cnnlab.data.imagefolder import ImageFolderData
from cnnlab.errors import DataError

__all__ = [
    "CLASS_NAMES", "MEAN", "STD", "BatchLoader", "DataError", "FashionMNIST", "ImageFolderData", "ImageFolderError",
    "find_data_dir", "load_fashion_mnist", "read_idx", "stratified_split",
]
