"""safetensors: bit-identical round trips for every registered model, the commands that take a file in place of
a run, and hostile files, each refused in one line with exit code 2 before anything the file's size does not
pay for is allocated."""

import json
import struct
import tracemalloc

import pytest
import torch

import cnnlab
from cnnlab.cli.main import main
from cnnlab.errors import CheckpointError
from cnnlab.inference.safetensors_io import MAX_HEADER_BYTES, read_safetensors, save_safetensors
from cnnlab.models import create_model, list_models
from cnnlab.recipes import model_defaults

# The smallest input each model builds with (AlexNet's and NiN's recipes ask for 224); round trips do not depend
# on the size, only on the weights. Most take seconds each to build on 2 cores: `pytest -m slow` runs them.
SIZE = {"alexnet": 67, "nin": 67}
FAST = {"lenet", "lenet-bn", "fastnet", "nin-small"}  # one of each kind of layer, default suite


def _models():
    return [pytest.param(name, marks=pytest.mark.slow) if name not in FAST else name for name in list_models()]


def _save(model, path, size, channels=1):
    return save_safetensors(model, path, class_names=[f"c{i}" for i in range(10)], image_shape=(channels, size, size),
                            mean=0.5, std=0.25)


@pytest.mark.parametrize("name", _models())
def test_every_model_round_trips_to_bit_identical_logits(name, tmp_path):
    torch.manual_seed(0)
    size = SIZE.get(name, model_defaults(name)["image_size"])
    model = create_model(name, image_size=size).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so that buffers are compared too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    loaded = cnnlab.load_model(_save(model, tmp_path / "m.safetensors", size))
    x = torch.randn(3, 1, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.image_size == (size, size) and loaded.class_names[3] == "c3"


def test_bad_metadata_is_refused_as_the_onnx_export_refuses_it(tmp_path):
    """The metadata checks are shared with the ONNX export (cnnlab.inference.metadata): the same one-line errors,
    before anything is written; names outside ASCII are kept as they are."""
    model = create_model("lenet-bn")
    kw = dict(class_names=[f"c{i}" for i in range(10)], image_shape=(1, 28, 28), mean=0.5, std=0.25)
    for change, message in [(dict(class_names="abc"), "list of strings"), (dict(image_shape=(28, 28)), r"\(C, H, W\)"),
                            (dict(mean=[0.1, 0.2]), "one per channel"), (dict(std=float("nan")), "finite")]:
        with pytest.raises(ValueError, match=message):
            save_safetensors(model, tmp_path / "m.safetensors", **{**kw, **change})
    assert list(tmp_path.iterdir()) == []
    names = ["é😀", "a/b"] + [f"c{i}" for i in range(8)]
    loaded = cnnlab.load_model(save_safetensors(model, tmp_path / "m.safetensors", **{**kw, "class_names": names}))
    assert list(loaded.class_names) == names


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("st") / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--num-train", "128", "--num-val", "64",
                 "--out", str(out), "--no-progress", "--data-dir", str(data_dir)]) == 0
    return out


@pytest.fixture(scope="module")
def exported(run):
    path = run / "model.safetensors"
    assert main(["export", str(run), "--format", "safetensors"]) == 0  # the default place: beside the run
    return path


def test_export_writes_the_documented_metadata(exported):
    from safetensors import safe_open

    with safe_open(exported, "pt") as f:
        meta = f.metadata()
    assert meta["model_name"] == "lenet-relu" and json.loads(meta["model_kwargs"])["in_channels"] == 1
    assert json.loads(meta["class_names"])[0] == "t-shirt" and json.loads(meta["input_size"]) == [28, 28]
    assert meta["channels"] == "1" and len(json.loads(meta["mean"])) == 1 and meta["cnnlab_version"]
    assert set(meta) >= {"std", "data_settings"}


def test_commands_take_the_file_in_place_of_the_run(run, exported, capsys, data_dir):
    for target in (run, exported):
        assert main(["predict", str(target), "--test-index", "0", "5", "--data-dir", str(data_dir)]) == 0
    first, second = _halves(capsys)
    assert first == second  # the same predictions, to the printed digit


@pytest.mark.slow
def test_evaluate_and_report_take_the_file(run, exported, capsys, tmp_path, data_dir):
    for target in (run, exported):
        assert main(["evaluate", str(target), "--data-dir", str(data_dir), "--out", str(tmp_path / "c.png")]) == 0
    first, second = (text.split("\n", 1)[1] for text in capsys.readouterr().out.split("checkpoint ")[1:])
    assert first == second
    # A file away from its run: no metrics.jsonl or config.json beside it, and the page says so.
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(exported.read_bytes())
    assert main(["report", str(alone), "--data-dir", str(data_dir)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "weights from alone.safetensors" in page and "No metrics.jsonl" in page


def _halves(capsys):
    lines = capsys.readouterr().out.splitlines()
    return lines[:2], lines[2:]


def test_loading_never_unpickles(exported, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert cnnlab.load_model(exported).state["model_name"] == "lenet-relu"


# ---- hostile files -------------------------------------------------------------------------------------------

def _parts(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header, body):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def _header_past_file(path, tmp):
    data = path.read_bytes()
    return _raw(tmp, struct.pack("<Q", len(data) * 2) + data[8:])


def _huge_header(path, tmp):
    out = tmp / "bad.safetensors"
    with open(out, "wb") as f:  # a sparse 100 MB file: a header of 100 MB that is all zeros
        f.write(struct.pack("<Q", 100_000_000))
        f.truncate(8 + 100_000_000)
    return out


def _out_of_range(path, tmp):
    header, body = _parts(path)
    header[_first_tensor(header)]["data_offsets"][1] = len(body) + 4096
    return _write(tmp / "bad.safetensors", header, body)


def _overlapping(path, tmp):
    header, body = _parts(path)
    keys = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    header[keys[1]]["data_offsets"] = list(header[keys[0]]["data_offsets"])
    header[keys[1]]["shape"], header[keys[1]]["dtype"] = header[keys[0]]["shape"], header[keys[0]]["dtype"]
    return _write(tmp / "bad.safetensors", header, body)


def _wrong_dtype(path, tmp):
    header, body = _parts(path)
    entry = header["net.0.weight"]
    entry["dtype"], entry["shape"] = "I32", entry["shape"]  # same size in bytes, wrong type
    return _write(tmp / "bad.safetensors", header, body)


def _wrong_shape(path, tmp):
    header, body = _parts(path)
    entry = header["net.0.weight"]
    entry["shape"] = [entry["shape"][1], entry["shape"][0], *entry["shape"][2:]]  # transposed: same byte count
    return _write(tmp / "bad.safetensors", header, body)


def _unregistered(path, tmp):
    header, body = _parts(path)
    header["__metadata__"]["model_name"] = "os.system"
    return _write(tmp / "bad.safetensors", header, body)


def _not_json(path, tmp):
    header, body = _parts(path)
    header["__metadata__"]["model_kwargs"] = "{in_channels: 1"
    return _write(tmp / "bad.safetensors", header, body)


def _raw(tmp, data):
    out = tmp / "bad.safetensors"
    out.write_bytes(data)
    return out


HOSTILE = {"header length past the file": (_header_past_file, "header claims"),
           "100 MB header": (_huge_header, "header is 100,000,000 bytes"),
           "offsets out of range": (_out_of_range, "outside the file"),
           "overlapping offsets": (_overlapping, "overlaps"),
           "wrong dtype": (_wrong_dtype, "I32"),
           "wrong shape": (_wrong_shape, "net.0.weight"),
           "unregistered model": (_unregistered, "not registered"),
           "metadata not JSON": (_not_json, "not JSON")}


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    torch.manual_seed(0)
    return _save(create_model("lenet-relu").eval(), tmp_path_factory.mktemp("ok") / "m.safetensors", 28)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_one_line_and_exit_2(case, small_file, tmp_path, capsys):
    make, words = HOSTILE[case]
    bad = make(small_file, tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=words):
            read_safetensors(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Nothing beyond what a file of that size pays for (the 100 MB header file is refused from 8 bytes).
    assert peak < 8 * 2**20 + 4 * min(bad.stat().st_size, MAX_HEADER_BYTES)
    assert main(["predict", str(bad), "--test-index", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnnlab: error: ") and str(bad) in err
