"""Tests for cnnlab.data.fashion_mnist and cnnlab.data.idx: real Fashion-MNIST, corrupted copies, batching, download."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cnnlab.data import batching, files
from cnnlab.data import fashion_mnist as data
from cnnlab.data.batching import BatchLoader, stratified_split
from cnnlab.data.download import download
from cnnlab.data.fashion_mnist import (
    CLASS_NAMES,
    MEAN,
    STD,
    FashionMNIST,
    load_fashion_mnist,
)
from cnnlab.data.files import find_data_dir
from cnnlab.data.idx import read_idx
from cnnlab.errors import DataError
from io_counting import count_idx_reads

T10K_IMAGES, T10K_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the verification cache and the default data dir out of the user's home."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)


@pytest.fixture(scope="module")
def real_dir(data_dir) -> Path:
    # conftest's data_dir fails (not skips) without the real files: `make test` installs them.
    return data_dir


@pytest.fixture(scope="module")
def fmnist(real_dir, tmp_path_factory) -> FashionMNIST:
    """The full data set, decoded once for the whole module (later FashionMNIST objects reuse the decode)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("module-cache")))
        return FashionMNIST(batch_size=128)


@pytest.fixture(scope="module")
def t10k(real_dir) -> dict[str, bytes]:
    """The decompressed bytes of the test split, to corrupt copies of."""
    return {name: gzip.decompress((real_dir / f"{name}.gz").read_bytes()) if not (real_dir / name).exists()
            else (real_dir / name).read_bytes() for name in (T10K_IMAGES, T10K_LABELS)}


def write_t10k_dir(root: Path, images: bytes, labels: bytes, gz: bool = False) -> Path:
    """A data dir whose test split holds the given bytes; the training files are empty placeholders."""
    root.mkdir(exist_ok=True)
    for name, content in ((T10K_IMAGES, images), (T10K_LABELS, labels)):
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=1))
        else:
            (root / name).write_bytes(content)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (root / name).touch()
    return root


def idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


# -- the real files ------------------------------------------------------------------------------------------

def test_real_data_counts_dtypes_and_classes(fmnist):
    assert fmnist.train_images.shape == (60000, 28, 28) and fmnist.val_images.shape == (10000, 28, 28)
    assert fmnist.train_images.dtype == torch.uint8 and fmnist.train_labels.dtype == torch.int64
    assert fmnist.train_labels.bincount().tolist() == [6000] * 10
    assert fmnist.val_labels.bincount().tolist() == [1000] * 10
    assert fmnist.train_images.min() == 0 and fmnist.train_images.max() == 255
    assert fmnist.num_classes == 10 and fmnist.classes == CLASS_NAMES and fmnist.image_shape == (1, 28, 28)


def test_real_data_known_labels(fmnist):
    assert fmnist.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert fmnist.val_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_mean_and_std_constants_match_the_training_set(fmnist):
    x = fmnist.train_images.float() / 255
    assert abs(x.mean().item() - data.MEAN) < 1e-4 and abs(x.std().item() - data.STD) < 1e-4


def test_checksums_are_verified_then_remembered(real_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "_DECODED", {})  # as in a fresh process
    images, labels = load_fashion_mnist(train=False)
    entries = (tmp_path / "verified.json").read_text()
    assert data.FILE_MD5[T10K_IMAGES] in entries and data.FILE_MD5[T10K_LABELS] in entries

    def no_hashing(tensor):
        raise AssertionError("a verified file was hashed again")

    monkeypatch.setattr(data, "_DECODED", {})
    monkeypatch.setattr(data, "_md5", no_hashing)
    again, _ = load_fashion_mnist(train=False)
    assert torch.equal(images, again)


def test_split_is_decoded_once_per_process(fmnist):
    assert FashionMNIST(num_train=10).train_images.data_ptr() == fmnist.train_images.data_ptr()


def test_gzip_is_detected_by_content_not_name(t10k, tmp_path):
    (tmp_path / "labels.gz").write_bytes(t10k[T10K_LABELS])  # raw bytes behind a .gz name
    (tmp_path / "labels").write_bytes(gzip.compress(t10k[T10K_LABELS]))  # gzip behind a plain name
    assert torch.equal(read_idx(tmp_path / "labels.gz"), read_idx(tmp_path / "labels"))


# -- finding the files ---------------------------------------------------------------------------------------

def test_default_places_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    assert files.default_data_dirs() == (
        tmp_path / "d", tmp_path / "d" / "FashionMNIST" / "raw", tmp_path / "c" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    )


def test_torchvision_layout_and_env_var_are_found(real_dir, monkeypatch, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in files.FILE_NAMES:
        (raw / f"{name}.gz").symlink_to(files.data_file(real_dir, name))
    assert find_data_dir(tmp_path) == raw
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert find_data_dir() == raw


def test_with_no_folder_named_the_error_names_every_place_and_both_remedies(monkeypatch, tmp_path):
    partial = write_t10k_dir(tmp_path / "partial", b"", b"")
    (partial / T10K_LABELS).unlink()
    monkeypatch.setattr(files, "default_data_dirs", lambda: (partial, tmp_path / "elsewhere"))
    with pytest.raises(DataError) as err:
        find_data_dir()
    message = str(err.value)
    for text in (f"{partial} (lacks {T10K_LABELS})", str(tmp_path / "elsewhere"),
                 "sudo apt-get install dataset-fashion-mnist", "cnnlab data download"):
        assert text in message
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nothing-here")


def _link_data(real_dir: Path, dest: Path, names=files.FILE_NAMES) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = files.data_file(real_dir, name)
        (dest / source.name).symlink_to(source)
    return dest


# A folder the user names (root=, --data-dir, $CNNLAB_DATA) is obeyed: never silently swapped for another copy.
# Each case has the real data at a default place, the one a silent fallback would take.

@pytest.fixture
def data_elsewhere(real_dir, monkeypatch, tmp_path) -> Path:
    elsewhere = _link_data(real_dir, tmp_path / "elsewhere")
    monkeypatch.setattr(files, "default_data_dirs", lambda: (elsewhere,))
    assert find_data_dir() == elsewhere  # the fallback a named folder must not take
    return elsewhere


@pytest.mark.parametrize("named_by", ["root", "CNNLAB_DATA"])
def test_a_named_folder_with_some_files_missing_is_an_error(real_dir, data_elsewhere, monkeypatch, tmp_path,
                                                            named_by):
    named = _link_data(real_dir, tmp_path / "mine", files.FILE_NAMES[:3])
    if named_by == "CNNLAB_DATA":
        monkeypatch.setenv("CNNLAB_DATA", str(named))
    root = named if named_by == "root" else None
    for call in (lambda: find_data_dir(root), lambda: FashionMNIST(batch_size=128, root=root)):
        with pytest.raises(DataError) as err:
            call()
        message = str(err.value)
        assert f"it lacks {files.FILE_NAMES[3]}" in message and str(named) in message
        assert f"`cnnlab data download --data-dir {named}`" in message
        assert str(data_elsewhere) not in message


@pytest.mark.parametrize("named_by", ["root", "CNNLAB_DATA"])
def test_a_named_empty_folder_says_where_the_data_is_instead(data_elsewhere, monkeypatch, tmp_path, named_by):
    named = tmp_path / "empty"
    named.mkdir()
    if named_by == "CNNLAB_DATA":
        monkeypatch.setenv("CNNLAB_DATA", str(named))
    with pytest.raises(DataError) as err:
        find_data_dir(named if named_by == "root" else None)
    message = str(err.value)
    option = "--data-dir" if named_by == "root" else "CNNLAB_DATA"
    assert f"{named} " in message and "holds none of the Fashion-MNIST files" in message
    assert f"they were found in {data_elsewhere}: drop" in message and option in message
    assert f"cnnlab data download --data-dir {named}" in message


def test_a_named_folder_with_a_bad_file_names_it_and_the_remedy(real_dir, data_elsewhere, tmp_path, t10k):
    named = _link_data(real_dir, tmp_path / "mine", files.FILE_NAMES[:3])
    labels = bytearray(t10k[T10K_LABELS])
    labels[100] = (labels[100] + 1) % 10  # still a valid label: only the checksum can tell
    (named / T10K_LABELS).write_bytes(bytes(labels))
    with pytest.raises(DataError) as err:
        load_fashion_mnist(named, train=False)
    message = str(err.value)
    assert f"{named / T10K_LABELS} has MD5" in message and f"cnnlab data download --data-dir {named}" in message


def test_a_named_folder_is_used_even_when_the_default_places_hold_the_data(real_dir, data_elsewhere,
                                                                           monkeypatch, tmp_path):
    named = _link_data(real_dir, tmp_path / "mine" / "FashionMNIST" / "raw").parent.parent  # torchvision layout
    assert find_data_dir(named) == named / "FashionMNIST" / "raw"
    monkeypatch.setenv("CNNLAB_DATA", str(named))
    assert find_data_dir() == named / "FashionMNIST" / "raw"
    assert find_data_dir(data_elsewhere) == data_elsewhere  # root= wins over $CNNLAB_DATA


def test_cli_data_dir_is_obeyed(real_dir, data_elsewhere, tmp_path, capsys):
    from cnnlab.cli.main import main

    named = _link_data(real_dir, tmp_path / "mine", files.FILE_NAMES[1:])
    assert main(["train", "--data-dir", str(named), "--epochs", "1", "--num-train", "64", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"it lacks {files.FILE_NAMES[0]}" in err and "--data-dir" in err
    assert not (tmp_path / "run" / "last.pt").exists()


# -- corrupted copies ----------------------------------------------------------------------------------------

def test_truncated_gzip(real_dir, tmp_path):
    bad = tmp_path / f"{T10K_IMAGES}.gz"
    bad.write_bytes(files.data_file(real_dir, T10K_IMAGES).read_bytes()[:1_000_000])
    with pytest.raises(DataError, match=f"{bad}.*truncated"):
        read_idx(bad)


@pytest.mark.parametrize("byte, value, message", [(0, 0x01, "not an IDX file"), (2, 0x0D, "data type 0x0d"),
                                                  (3, 0x00, "0 dimensions")])
def test_bad_magic(t10k, tmp_path, byte, value, message):
    content = bytearray(t10k[T10K_LABELS])
    content[byte] = value
    root = write_t10k_dir(tmp_path / "d", t10k[T10K_IMAGES], bytes(content))
    with pytest.raises(DataError, match=message) as err:
        load_fashion_mnist(root, train=False)
    assert T10K_LABELS in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_header_count_disagrees_with_size(t10k, tmp_path, gz):
    content = idx_header(9999) + t10k[T10K_LABELS][8:]  # one label more than the header says
    root = write_t10k_dir(tmp_path / "d", t10k[T10K_IMAGES], content, gz=gz)
    with pytest.raises(DataError, match=f"{T10K_LABELS}.*header promises 9,999 bytes") as err:
        load_fashion_mnist(root, train=False)
    assert ("more" if gz else "10,000") in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_huge_header_is_rejected_before_allocating(tmp_path, gz, monkeypatch):
    content = idx_header(2**31, 28, 28) + bytes(784 * 10)
    path = tmp_path / "huge"
    path.write_bytes(gzip.compress(content) if gz else content)
    reads = count_idx_reads(monkeypatch)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"{path}.*header promises 1,683,627,180,032 bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused from the header alone: nothing past its 16 bytes was decompressed, and a raw file was read no
    # further than its 2-byte gzip probe and the header; the peak holds no buffer for the data.
    assert peak < 1 << 20
    if gz:
        assert reads["gzip"] == 16
    else:
        assert reads["file"] == 2 + 16


def test_image_and_label_counts_must_agree(t10k, tmp_path):
    labels = idx_header(9000) + t10k[T10K_LABELS][8:9008]
    root = write_t10k_dir(tmp_path / "d", t10k[T10K_IMAGES], labels)
    with pytest.raises(DataError, match="10,000 images but .* 9,000 labels") as err:
        load_fashion_mnist(root, train=False, verify=False)
    assert T10K_IMAGES in str(err.value) and T10K_LABELS in str(err.value)


def test_labels_out_of_range(t10k, tmp_path):
    labels = bytearray(t10k[T10K_LABELS])
    labels[100] = 10
    root = write_t10k_dir(tmp_path / "d", t10k[T10K_IMAGES], bytes(labels))
    with pytest.raises(DataError, match=f"{T10K_LABELS} holds label 10"):
        load_fashion_mnist(root, train=False, verify=False)


def test_checksum_mismatch_names_file_and_both_md5s(t10k, tmp_path):
    images = bytearray(t10k[T10K_IMAGES])
    images[16 + 784 * 5000 + 400] ^= 0xFF  # one pixel of one image
    root = write_t10k_dir(tmp_path / "d", bytes(images), t10k[T10K_LABELS])
    got, expected = hashlib.md5(images).hexdigest(), data.FILE_MD5[T10K_IMAGES]
    with pytest.raises(DataError) as err:
        load_fashion_mnist(root, train=False)
    assert all(text in str(err.value) for text in (str(root / T10K_IMAGES), got, expected, "verify=False"))
    loaded, _ = load_fashion_mnist(root, train=False, verify=False)  # a deliberately edited copy still loads
    assert loaded.view(-1)[784 * 5000 + 400] == images[16 + 784 * 5000 + 400]


def expected_idx(content: bytes) -> np.ndarray | None:
    """The array a correct reader makes of ``content``, decoded independently of cnnlab (zlib, struct, numpy),
    or None if the bytes are not a whole IDX file of unsigned bytes."""
    if content[:2] == b"\x1f\x8b":
        stream = zlib.decompressobj(wbits=31)  # one gzip member, its CRC-32 and length checked
        try:
            plain = stream.decompress(content)
        except zlib.error:
            return None
        if not stream.eof or stream.unused_data.strip(b"\0"):  # cut short, or followed by more than padding
            return None
    else:
        plain = content
    if len(plain) < 4 or plain[:3] != b"\0\0\x08" or len(plain) < 4 + 4 * plain[3]:
        return None
    ndim = plain[3]
    dims = struct.unpack(f">{ndim}I", plain[4:4 + 4 * ndim])
    payload = plain[4 + 4 * ndim:]
    if len(payload) != int(np.prod(dims, dtype=object)):
        return None
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(dtype=st.sampled_from([0x08, 0x08, 0x08, 0x0D]),
       dims=st.lists(st.one_of(st.integers(1, 4), st.integers(0, 4), st.integers(0, 2**32 - 1)), max_size=9),
       body=st.binary(max_size=64), exact=st.booleans(), gz=st.booleans(), cut=st.integers(0, 400),
       junk=st.one_of(st.just(b""), st.binary(max_size=8)))
def test_read_idx_fuzzed_raises_data_error_or_returns_exactly_the_file(tmp_path_factory, dtype, dims, body, exact,
                                                                       gz, cut, junk):
    if exact:  # half the draws are a whole IDX file (before any gzip damage), so that reads succeed often
        dtype, dims = 0x08, [d % 7 for d in dims[:4]] or [3]
    header = bytes([0, 0, dtype, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    if exact:
        size = int(np.prod(dims))
        body = ((body or b"\x2a") * size)[:size]
    content = header + body
    if gz:
        packed = gzip.compress(content)
        content = packed[:cut] + junk if cut < len(packed) else packed + junk
    path = tmp_path_factory.mktemp("fuzz") / "f"
    path.write_bytes(content)
    try:
        result = read_idx(path)
    except DataError:
        event("DataError")  # `pytest --hypothesis-show-statistics` shows the mix
        return
    event("read")
    expected = expected_idx(content)
    assert expected is not None, "read_idx accepted bytes that are not a whole IDX file of unsigned bytes"
    assert result.dtype == torch.uint8 and tuple(result.shape) == expected.shape
    assert result.numpy().tobytes() == expected.tobytes()


# -- batches -------------------------------------------------------------------------------------------------

def test_batches_shapes_dtypes_and_range(fmnist):
    assert len(fmnist.train_dataloader()) == 469  # 468 full batches of 128 and one of 96
    sizes = []
    for X, y in FashionMNIST(batch_size=7000).train_dataloader():  # few batches: fast on a busy machine
        assert X.dtype == torch.float32 and y.dtype == torch.int64 and X.shape[1:] == (1, 28, 28)
        assert 0 <= X.min() and X.max() <= 1
        sizes.append(len(y))
    assert sizes == [7000] * 8 + [4000]
    val = FashionMNIST(batch_size=128, val_batch_size=3000).val_dataloader()
    assert [len(y) for _, y in val] == [3000, 3000, 3000, 1000]
    X, y = next(iter(val))
    torch.testing.assert_close(X[:, 0], fmnist.val_images[:3000] / 255, atol=1e-7, rtol=0)  # in order, as is


def test_normalize(fmnist):
    total = squares = 0.0
    for X, _ in FashionMNIST(batch_size=4096, normalize=True).train_dataloader():
        total, squares = total + X.double().sum(), squares + X.double().square().sum()
    mean = total / fmnist.train_images.numel()
    assert abs(mean) < 1e-3 and abs((squares / fmnist.train_images.numel() - mean**2).sqrt() - 1) < 1e-3


@pytest.mark.parametrize("resize, size", [(96, (96, 96)), ((32, 40), (32, 40)), (14, (14, 14))])
def test_resize_matches_interpolate(fmnist, resize, size):
    small = FashionMNIST(batch_size=50, resize=resize, num_train=100, num_val=100)
    assert small.image_shape == (1, *size) and small.image_size == small.resize == size  # d2l's attribute too
    X, _ = next(iter(small.val_dataloader()))
    expected = F.interpolate(fmnist.val_images[:50, None].float() / 255, size=size, mode="bilinear",
                             antialias=True, align_corners=False)
    assert X.shape == (50, 1, *size)
    torch.testing.assert_close(X, expected, atol=1e-5, rtol=0)


def index_loader(n: int, batch_size: int, **kwargs) -> BatchLoader:
    """A loader whose labels are the example indices and whose images are the index mod 256."""
    images = (torch.arange(n) % 256).to(torch.uint8)[:, None, None].expand(n, 6, 6).contiguous()
    return BatchLoader(images, torch.arange(n), batch_size, **kwargs)


@pytest.mark.parametrize("chunk", [None, 3 * 64 * 36])  # one op for the whole pass, or 3 batches per op
def test_every_index_once_per_epoch(monkeypatch, chunk):
    if chunk:
        monkeypatch.setattr(batching, "_CHUNK_ELEMENTS", chunk)
    loader = index_loader(1000, 64, shuffle=True)
    assert len(loader) == 16
    for _ in range(2):
        batches = list(loader)
        ys = torch.cat([y for _, y in batches])
        assert [len(y) for _, y in batches] == [64] * 15 + [40]
        assert torch.equal(ys.sort().values, torch.arange(1000))
        assert all(torch.equal((X[:, 0, 0, 0] * 255).round(), (y % 256).float()) for X, y in batches)
    assert len(index_loader(1000, 64, drop_last=True)) == 15


def test_real_slice_is_covered_once(fmnist):
    loader = FashionMNIST(batch_size=64, num_train=1000).train_dataloader()
    ys = torch.cat([y for _, y in loader])
    assert len(loader) == 16 and len(ys) == 1000
    assert torch.equal(ys.bincount(minlength=10), fmnist.train_labels[:1000].bincount(minlength=10))


def test_order_is_seeded_per_epoch():
    def order(loader):
        return torch.cat([y for _, y in loader])

    a, b = index_loader(500, 64, shuffle=True, seed=3), index_loader(500, 64, shuffle=True, seed=3)
    first = order(a)
    assert torch.equal(first, order(b))
    assert torch.equal(first, torch.randperm(500, generator=torch.Generator().manual_seed(3 * 1_000_003)))
    second = order(a)  # the next pass advances to epoch 1 by itself
    assert a.epoch == 2 and not torch.equal(first, second)
    b.set_epoch(1)
    assert torch.equal(order(b), second)
    assert not torch.equal(first, order(index_loader(500, 64, shuffle=True, seed=4)))


def test_shards_are_disjoint_equal_and_form_the_global_batches():
    n, world_size = 1000, 3
    full = index_loader(n, 96, shuffle=True)
    full.set_epoch(7)
    global_batches = [y for _, y in full]
    shards = [index_loader(n, 96, shuffle=True) for rank in range(world_size)]
    for rank, loader in enumerate(shards):
        assert loader.shard(rank, world_size) is loader  # in place, as the Trainer calls it
    per_rank = []
    for loader in shards:
        loader.set_epoch(7)
        per_rank.append([y for _, y in loader])
    assert len({len(batches) for batches in per_rank}) == 1 == len({len(s) for s in shards})
    assert all(len(y) == 32 for y in per_rank[0][:-1])
    everything = torch.cat([torch.cat(batches) for batches in per_rank])
    assert len(everything) == n - n % world_size == len(everything.unique())
    for step, batch in enumerate(global_batches[:-1]):
        together = torch.cat([batches[step] for batches in per_rank])
        assert torch.equal(together.sort().values, batch.sort().values)
    with pytest.raises(ValueError, match="does not split evenly"):
        index_loader(n, 100).shard(0, 3)
    with pytest.raises(ValueError, match="rank must be"):
        index_loader(n, 96).shard(3, 3)


def test_augmentation_is_a_reproducible_crop_and_flip(fmnist):
    aug = FashionMNIST(batch_size=32, num_train=64, augment=True, seed=1)
    plain = FashionMNIST(batch_size=32, num_train=64, seed=1)
    X, y = next(iter(aug.train_dataloader()))
    X0, y0 = next(iter(plain.train_dataloader()))
    assert torch.equal(y, y0) and X.shape == X0.shape and 0 <= X.min() and X.max() <= 1
    assert not torch.equal(X, X0)
    padded = F.pad(X0[:, 0], (2, 2, 2, 2))
    for i in range(len(X)):  # each image is one of the 25 crops of its padded original, maybe flipped
        crops = torch.stack([padded[i, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)])
        candidates = torch.cat([crops, crops.flip(-1)])
        assert (candidates == X[i, 0]).flatten(1).all(1).any()
    again, _ = next(iter(FashionMNIST(batch_size=32, num_train=64, augment=True, seed=1).train_dataloader()))
    assert torch.equal(X, again)
    loader = aug.train_dataloader()
    loader.set_epoch(1)
    assert not torch.equal(X, next(iter(loader))[0])
    X96, _ = next(iter(FashionMNIST(batch_size=32, num_train=64, augment=True, resize=96).train_dataloader()))
    assert X96.shape == (32, 1, 96, 96) and 0 <= X96.min() and X96.max() <= 1


def test_cutout_erases_one_square_per_image_and_leaves_the_crops_and_flips_as_they_were(fmnist):
    images = fmnist.train_images[:200].clamp(min=1)  # no zero pixel of its own: the zeros are padding or cutout
    kwargs = dict(shuffle=True, augment=True, seed=3, image_size=(32, 32), flip=True)
    plain = list(BatchLoader(images, fmnist.train_labels[:200], 50, **kwargs))
    cut = list(BatchLoader(images, fmnist.train_labels[:200], 50, cutout=0.25, **kwargs))
    sides = []
    for (X0, y0), (X, y) in zip(plain, cut, strict=True):
        assert torch.equal(y, y0)
        changed = X != X0  # (B, 1, 32, 32)
        assert (X[changed] == 0).all()  # erased to 0, nothing else moved
        for mask in changed[:, 0]:
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            if len(rows):  # a square of 8 px (fewer where clipped or over padding), in one piece
                assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
                sides.append(int(rows.max() - rows.min() + 1))
    assert len(sides) >= 190 and sides.count(8) >= 100  # most squares whole and inside the image
    again = list(BatchLoader(images, fmnist.train_labels[:200], 50, cutout=0.25, **kwargs))
    assert all(torch.equal(X, X2) for (X, _), (X2, _) in zip(cut, again, strict=True))
    with pytest.raises(ValueError, match="cutout"):
        BatchLoader(images, fmnist.train_labels[:200], 50, cutout=1.0)


def test_cutout_shards_form_the_global_batches(fmnist):
    images, labels = fmnist.train_images[:300], fmnist.train_labels[:300]
    kwargs = dict(shuffle=True, augment=True, seed=2, cutout=0.3)
    full = list(BatchLoader(images, labels, 60, **kwargs))
    ranks = [list(BatchLoader(images, labels, 60, **kwargs).shard(r, 2)) for r in range(2)]
    for step, (X, y) in enumerate(full):
        for r in range(2):  # rank r holds positions r, r + 2, ... of the global batch
            Xr, yr = ranks[r][step]
            assert torch.equal(yr, y[r::2]) and torch.equal(Xr, X[r::2])


def test_batches_do_not_depend_on_how_many_are_built_at_once(fmnist, monkeypatch):
    small = FashionMNIST(batch_size=32, num_train=300, augment=True, normalize=True, resize=(30, 36))
    whole = list(small.train_dataloader())
    monkeypatch.setattr(batching, "_CHUNK_ELEMENTS", 2 * 32 * 30 * 36)  # two batches per op
    for (X, y), (X2, y2) in zip(whole, small.train_dataloader(), strict=True):
        assert torch.equal(y, y2)
        torch.testing.assert_close(X, X2, atol=1e-6, rtol=0)


def test_settings_rebuild_the_same_batches(fmnist):
    original = FashionMNIST(batch_size=32, resize=(32, 40), augment=True, seed=5, num_train=100, num_val=50)
    rebuilt = FashionMNIST.from_settings(original.settings())
    assert original.settings() == rebuilt.settings()
    for (X, y), (X2, y2) in zip(original.train_dataloader(), rebuilt.train_dataloader(), strict=True):
        assert torch.equal(X, X2) and torch.equal(y, y2)
    assert original.to("cpu") is original and original.train_images.device.type == "cpu"
    with pytest.raises(ValueError, match="num_train must be between 1 and 60000"):
        FashionMNIST(num_train=60001)


# -- images with channels (image folders) ---------------------------------------------------------------------

def three_channels(images: torch.Tensor) -> torch.Tensor:
    """Real images as three different channels: the image, its negative, and half its brightness."""
    return torch.stack([images, 255 - images, images // 2], dim=1)  # (N, 3, H, W)


def test_channel_images_are_batched_channel_by_channel_like_grey_ones(fmnist):
    """Each channel of a (N, C, H, W) batch is what the grey loader makes of that channel alone: the same crop
    and flip for every channel of an image, the resize and the normalization per channel."""
    images, labels = fmnist.train_images[:300], fmnist.train_labels[:300]
    colour = three_channels(images)
    means, stds = (0.3, 0.6, 0.15), (0.35, 0.3, 0.2)
    kwargs = dict(shuffle=True, augment=True, image_size=(30, 36), seed=7)
    batches = list(BatchLoader(colour, labels, 64, normalize=(means, stds), **kwargs))
    assert [tuple(X.shape) for X, _ in batches] == [(64, 3, 30, 36)] * 4 + [(44, 3, 30, 36)]
    for c in range(3):
        grey = BatchLoader(colour[:, c].contiguous(), labels, 64, normalize=(means[c], stds[c]), **kwargs)
        for (X, y), (Xc, yc) in zip(batches, grey, strict=True):
            assert torch.equal(y, yc)
            torch.testing.assert_close(X[:, c:c + 1], Xc, atol=1e-6, rtol=0)
    # and the channels did differ: the loader did not send one channel three times
    assert not torch.allclose(batches[0][0][:, 0], batches[0][0][:, 1])


def test_one_channel_images_give_exactly_the_grey_batches(fmnist):
    images, labels = fmnist.train_images[:200], fmnist.train_labels[:200]
    kwargs = dict(shuffle=True, augment=True, image_size=(32, 32), seed=2)
    grey = list(BatchLoader(images, labels, 50, normalize=(MEAN, STD), **kwargs))
    one = list(BatchLoader(images[:, None], labels, 50, normalize=((MEAN,), (STD,)), **kwargs))
    assert all(torch.equal(X, X1) and torch.equal(y, y1) for (X, y), (X1, y1) in zip(grey, one, strict=True))


def test_per_channel_normalize_standardizes_each_channel(fmnist):
    colour = three_channels(fmnist.train_images[:2000])
    x = colour.double() / 255
    means, stds = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
    X = torch.cat([X for X, _ in BatchLoader(colour, fmnist.train_labels[:2000], 500, normalize=(means, stds))])
    torch.testing.assert_close(X.double().mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(X.double().std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("normalize, message", [
    (((0.5, 0.5), (0.2, 0.2, 0.2)), "2 means and 3 standard deviations"),
    (((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)), "positive standard deviations"),
    (("mean", "std"), "each a number or one number per channel"),
    ((0.5,), "each a number or one number per channel"),
])
def test_bad_normalize_is_refused(normalize, message):
    images = torch.zeros(4, 3, 6, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        BatchLoader(images, torch.zeros(4, dtype=torch.int64), 2, normalize=normalize)


def test_images_of_other_shapes_are_refused():
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W\) or \(N, C, H, W\)"):
        BatchLoader(torch.zeros(4, 1, 3, 6, 6, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), 2)


# -- validation split -----------------------------------------------------------------------------------------

def test_stratified_split_keeps_class_proportions(fmnist):
    labels = fmnist.train_labels[:5000]
    train_idx, val_idx = stratified_split(labels, 0.2, seed=0)
    counts, val_counts = labels.bincount(minlength=10), labels[val_idx].bincount(minlength=10)
    assert torch.equal(val_counts, (counts * 0.2 + 0.5).floor().long())  # round(fraction * count), per class
    assert torch.equal(train_idx, train_idx.sort().values) and torch.equal(val_idx, val_idx.sort().values)
    assert train_idx.dtype == val_idx.dtype == torch.int64
    together = torch.cat([train_idx, val_idx])
    assert len(together.unique()) == len(together) == 5000  # disjoint, and every example is in one of them


def test_stratified_split_is_seeded():
    labels = torch.arange(300) % 3
    first = stratified_split(labels, 0.1, seed=1)
    again = stratified_split(labels.tolist(), 0.1, seed=1)  # a plain list works too
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = stratified_split(labels, 0.1, seed=2)
    assert not torch.equal(first[1], other[1]) and len(first[1]) == len(other[1]) == 30


def test_stratified_split_small_classes():
    labels = torch.tensor([0] * 2 + [1] * 1 + [2] * 10 + [3] * 3)
    _, val_idx = stratified_split(labels, 0.01, seed=0)
    # a class of 2 or 3 gives one to validation even at 1%, a class of 1 keeps its only example for training
    assert labels[val_idx].bincount(minlength=4).tolist() == [1, 0, 1, 1]
    _, val_idx = stratified_split(labels, 0.99, seed=0)
    assert labels[val_idx].bincount(minlength=4).tolist() == [1, 0, 9, 2]  # each class keeps one to train on


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "0.1", float("nan")])
def test_stratified_split_refuses_a_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"fraction strictly between 0 and 1, such as 0.1 for 10%, got"):
        stratified_split(torch.arange(10) % 2, fraction, seed=0)


def test_fashion_mnist_val_split_holds_out_training_images(fmnist):
    d = FashionMNIST(batch_size=100, num_train=2000, num_val=500, val_split=0.1, seed=3)
    held_out = int((fmnist.train_labels[:2000].bincount() * 0.1 + 0.5).floor().sum())  # rounded per class
    assert 195 <= held_out <= 205
    assert (len(d.train_labels), len(d.val_labels), len(d.test_labels)) == (2000 - held_out, held_out, 500)
    train_idx, val_idx = stratified_split(fmnist.train_labels[:2000], 0.1, seed=3)  # the data seed
    assert torch.equal(d.val_images, fmnist.train_images[val_idx])
    assert torch.equal(d.train_labels, fmnist.train_labels[train_idx])
    assert torch.equal(torch.cat([y for _, y in d.val_dataloader()]), fmnist.train_labels[val_idx])
    X, y = next(iter(d.test_dataloader()))
    assert torch.equal(y, fmnist.val_labels[:100])
    torch.testing.assert_close(X[:, 0], fmnist.val_images[:100] / 255, atol=1e-7, rtol=0)
    assert d.settings()["val_split"] == 0.1
    rebuilt = FashionMNIST.from_settings(d.settings())
    assert torch.equal(rebuilt.val_images, d.val_images) and torch.equal(rebuilt.test_images, d.test_images)
    assert d.to("cpu") is d and d.val_images is not d.test_images
    with pytest.raises(ValueError, match="fraction strictly between 0 and 1"):
        FashionMNIST(val_split=10)


def test_without_val_split_validation_is_the_test_split(fmnist):
    d = FashionMNIST(batch_size=250, num_train=100, num_val=500)
    assert d.settings()["val_split"] is None and d.val_images is d.test_images
    val, test = list(d.val_dataloader()), list(d.test_dataloader())
    assert all(torch.equal(X, X2) and torch.equal(y, y2) for (X, y), (X2, y2) in zip(val, test, strict=True))
    assert d.to("cpu").val_images is d.test_images  # moved once, still one tensor


def test_text_labels_and_describe(fmnist, real_dir):
    assert fmnist.text_labels([0, 9]) == ["t-shirt", "ankle boot"]
    assert data.text_labels(torch.tensor([5, 8])) == ["sandal", "bag"]
    summary = data.describe()
    assert str(real_dir) in summary and "60,000 images of 28x28, 6,000 to 6,000 per class" in summary


def test_visualize_saves_a_png(fmnist, tmp_path):
    batch = next(iter(fmnist.val_dataloader()))
    fig = fmnist.visualize(batch, nrows=2, ncols=4, path=tmp_path / "batch.png")
    assert (tmp_path / "batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["ankle boot", "pullover"]


def test_import_has_no_side_effects(tmp_path):
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache")}
    code = "import cnnlab.data.fashion_mnist, cnnlab.data.idx, cnnlab.visual.plotting"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "" and not (tmp_path / "cache").exists()


# -- download ------------------------------------------------------------------------------------------------

@pytest.fixture
def mirror(real_dir, tmp_path) -> Path:
    """A file:// mirror holding copies of the installed (Debian-recompressed) archives."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name in files.FILE_NAMES:
        source = files.data_file(real_dir, name)
        if source.suffix == ".gz":
            shutil.copyfile(source, root / f"{name}.gz")
        else:
            (root / f"{name}.gz").write_bytes(gzip.compress(source.read_bytes(), compresslevel=1))
    return root


def test_download_from_a_mirror(mirror, tmp_path):
    dest = download(tmp_path / "dest", base_url=mirror.as_uri(), check_archive=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{name}.gz" for name in files.FILE_NAMES)
    assert find_data_dir(dest) == dest
    images, labels = load_fashion_mnist(dest, train=False)
    assert images.shape == (10000, 28, 28) and labels[:3].tolist() == [9, 2, 1]
    # Everything present and valid: nothing is fetched, so even a dead mirror is fine.
    assert download(dest, base_url=(tmp_path / "gone").as_uri()) == dest
    # A corrupt uncompressed copy (which would be read first) is replaced by a fresh archive.
    (dest / T10K_LABELS).write_bytes(idx_header(3) + b"\x00\x01\x02")
    download(dest, base_url=mirror.as_uri(), check_archive=False)
    assert not (dest / T10K_LABELS).exists() and (dest / f"{T10K_LABELS}.gz").exists()


def test_download_failures_leave_no_files(mirror, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="could not download .*network connection"):
        download(dest, base_url=(tmp_path / "gone").as_uri())
    with pytest.raises(DataError, match="could not download http://127.0.0.1:9/"):
        download(dest, base_url="http://127.0.0.1:9/", timeout=5)
    with pytest.raises(DataError, match="MD5 .* expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d.*check_archive"):
        download(dest, base_url=mirror.as_uri())  # Debian's archives are not byte-identical to Zalando's
    archive = mirror / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:100_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is a corrupt gzip archive"):
        download(dest, base_url=mirror.as_uri(), check_archive=False)
    assert list(dest.iterdir()) == []


def test_a_sigkilled_download_leaves_a_temp_file_the_next_download_removes(mirror, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    child = (
        "import os, signal, sys\n"
        "import cnnlab.data.download as dl\n"
        "def stream(url, out, timeout):\n"
        "    out.write(b'\\x1f\\x8b' + bytes(2 << 20))\n"
        "    out.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "dl._stream = stream\n"
        f"dl.download({str(dest)!r}, base_url={mirror.as_uri()!r}, check_archive=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    temps = [p.name for p in dest.iterdir()]
    assert len(temps) == 1 and temps[0].startswith(".train-images-idx3-ubyte.gz.tmp-")
    download(dest, base_url=mirror.as_uri(), check_archive=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{name}.gz" for name in files.FILE_NAMES)
