"""ONNX export: every registered model, a LeNet trained on real Fashion-MNIST, the check that refuses a bad file,
untrusted class names, dynamic batches, and the standalone example that needs no torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlab
from cnnlab import Display, FashionMNIST, Optimization, Trainer
from cnnlab.data.fashion_mnist import CLASS_NAMES, MEAN, STD
from cnnlab.errors import MissingExtra
from cnnlab.extras import require
from cnnlab.inference.export import ExportCheckFailed, export_onnx, read_metadata
from cnnlab.models import create_model, list_models
from cnnlab.recipes import model_defaults

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "onnx_predict.py"

# The recipe's input size, except where the smallest size the model builds with exports the same graph with far
# fewer weights (AlexNet's first Linear layer at 224 pixels holds 38M of its 46M parameters).
SMALLEST = {"alexnet": 67, "nin": 67}
# Seconds each on 2 cores, nearly all of it torch.export tracing and onnxscript's graph optimization, which grow
# with the number of layers, not with the image size: kept for `pytest -m slow`.
SLOW = {"alexnet", "densenet", "densenet-small", "googlenet", "regnetx32", "resnet34"}
# The same class as a model exported by default, only wider or larger (so the same graph of ops): also slow-only.
SAME_GRAPH = {"resnet18": "resnet18-small", "vgg11": "vgg-small", "fastnet-wide": "fastnet-flip", "nin": "nin-small"}


def _models():
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW | set(SAME_GRAPH) else name
            for name in list_models()]


def test_the_default_run_exports_one_model_of_each_class():
    import inspect

    from cnnlab.models.registry import _MODELS

    default = {name for name in list_models() if name not in SLOW | set(SAME_GRAPH)}
    for slow, twin in SAME_GRAPH.items():  # the builders' declared classes (building vgg11 takes seconds)
        kinds = {inspect.signature(_MODELS[name]).return_annotation for name in (slow, twin)}
        assert twin in default and len(kinds) == 1, (slow, kinds)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(model, x):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    return out.numpy()


@pytest.mark.parametrize("name", _models())
def test_every_model_exports_with_a_dynamic_batch(name, tmp_path):
    torch.manual_seed(0)
    size = SMALLEST.get(name, model_defaults(name)["image_size"])
    model = create_model(name, image_size=size)
    images = torch.randn(7, 1, size, size)
    path = tmp_path / "model.onnx"
    result = export_onnx(model, path, image_shape=(1, size, size), class_names=CLASS_NAMES, mean=MEAN, std=STD,
                         check_images=images)
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0 and result.num_checked == 7
    assert result.path == path and result.size_bytes == path.stat().st_size and result.opset >= 18
    assert result.model_name == name
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file: weights inside, no temp left
    assert model.training  # the caller's model keeps its mode
    session = _session(path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, size, size]  # a named, dynamic batch axis
    assert isinstance(out.shape[0], str) and out.shape[1] == 10
    for n in (1, 7):
        got = session.run(None, {"images": images[:n].numpy()})[0]
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, _logits(model, images[:n]), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A LeNet trained for one short epoch on real Fashion-MNIST, exported with its 500 test images checked."""
    torch.manual_seed(0)
    data = FashionMNIST(batch_size=32, root=data_dir, num_train=2000, num_val=500, normalize=True, seed=0)
    model = create_model("lenet-relu")
    adam = Optimization(lambda params: torch.optim.Adam(params, lr=3e-3))
    Trainer(max_epochs=1, seed=0, optimization=adam, display=Display(progress=False, log=None)).fit(model, data)
    images = torch.cat([X for X, _ in data.val_dataloader()])  # preprocessed as in training: normalized
    path = tmp_path_factory.mktemp("export") / "lenet.onnx"
    result = export_onnx(model, path, image_shape=data.image_shape, class_names=data.classes, mean=MEAN, std=STD,
                         check_images=images)
    return model, data, images, result


def test_trained_lenet_matches_pytorch_and_carries_its_metadata(trained):
    model, data, images, result = trained
    assert result.num_checked == 500 and result.top1_agreement == 1.0 and result.max_abs_diff <= 1e-4
    # The model learned something: the check ran on meaningful logits, not on a constant.
    predicted = _session(result.path).run(None, {"images": images.numpy()})[0].argmax(axis=1)
    assert (predicted == data.val_labels.numpy()).mean() > 0.5
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["channels"] == "1" and props["model_name"] == "lenet-relu"
    assert props["cnnlab_version"] == cnnlab.__version__
    meta = read_metadata(result.path)
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["input_size"] == [28, 28] and meta["channels"] == 1
    assert meta["mean"] == [MEAN] and meta["std"] == [STD]


def test_untrusted_class_names_are_data_only(tmp_path):
    names = ["<img src=x onerror=alert(1)>", "../../x", "ok", 'quote " and \\ back', "tab\there", "é😀", "", "a/b",
             "\x1b[31mred", "/etc/passwd"]
    model = create_model("lenet-bn", num_classes=len(names))
    out = tmp_path / "out"
    out.mkdir()
    result = export_onnx(model, out / "m.onnx", image_shape=(1, 28, 28), class_names=names, mean=0, std=1)
    assert read_metadata(result.path)["class_names"] == names
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out", "out/m.onnx"]


class _DiffersOutsideExport(nn.Module):
    """A model whose eager output is shifted from the graph that torch.export traces: the check must notice."""

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.net = create_model("lenet-bn")
        self.register_buffer("shift", shift)

    def forward(self, x):
        logits = self.net(x)
        return logits if torch.compiler.is_exporting() else logits + self.shift


@pytest.mark.parametrize("shift, agreement", [(torch.full((10,), 1e-3), 1.0),  # small: only |Δlogit| fails
                                              (torch.eye(10)[3] * 100, None)])  # class 3 always wins in PyTorch
def test_a_failed_check_writes_nothing(tmp_path, shift, agreement):
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportCheckFailed, match=r"max \|logit difference\| .*nothing was written") as info:
        export_onnx(_DiffersOutsideExport(shift), path, image_shape=(1, 28, 28), class_names=CLASS_NAMES, mean=0,
                    std=1, check_images=torch.randn(20, 1, 28, 28))
    assert info.value.max_abs_diff > 1e-4 and info.value.num_checked == 20
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file
    if agreement is None:
        assert info.value.top1_agreement < 0.999
        return
    assert info.value.top1_agreement == agreement and "top-1 agreement 100.00%" in str(info.value)
    # An older export at the same path is left exactly as it was.
    path.write_bytes(b"previous export")
    with pytest.raises(ExportCheckFailed):
        export_onnx(_DiffersOutsideExport(shift), path, image_shape=(1, 28, 28), class_names=CLASS_NAMES, mean=0,
                    std=1)
    assert path.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_arguments_that_do_not_fit_the_model_are_one_line_errors(tmp_path):
    model = create_model("lenet-bn")
    kw = dict(image_shape=(1, 28, 28), class_names=CLASS_NAMES, mean=MEAN, std=STD)
    cases = [(dict(class_names=CLASS_NAMES[:9]), "9 class names"),
             (dict(class_names="abc"), "list of strings"),
             (dict(class_names=[1] * 10), "list of strings"),
             (dict(image_shape=(28, 28)), r"\(C, H, W\)"),
             (dict(image_shape=(3, 28, 28)), "cannot take 3x28x28"),
             (dict(mean=[0.1, 0.2]), "one per channel"),
             (dict(std=0), "positive"),
             (dict(check_images=torch.zeros(4, 1, 32, 32)), r"\(N, 1, 28, 28\)")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            export_onnx(model, tmp_path / "m.onnx", **{**kw, **change})
        assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_names_the_pip_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    with pytest.raises(MissingExtra) as info:
        export_onnx(create_model("lenet-bn"), tmp_path / "m.onnx", image_shape=(1, 28, 28), class_names=CLASS_NAMES,
                    mean=0, std=1)
    assert str(info.value) == ("ONNX export needs the 'export' extra (onnxruntime is not installed): "
                               "pip install 'cnnlab[export]'")
    assert list(tmp_path.iterdir()) == []
    assert require("json", "export") is sys.modules["json"]


def test_example_script_classifies_a_png_without_torch(trained, tmp_path):
    model, data, images, result = trained
    index = 7
    png = tmp_path / "garment.png"
    Image.fromarray(data.val_images[index].numpy(), mode="L").save(png)
    # torch and cnnlab are made unimportable, so the script runs on onnxruntime, numpy and Pillow alone.
    runner = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['cnnlab'] = None; "
              f"sys.argv = ['onnx_predict.py'] + sys.argv[1:]; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__'); "
              "assert not [m for m in sys.modules if sys.modules[m] and m.split('.')[0] in ('torch', 'cnnlab')]")
    proc = subprocess.run([sys.executable, "-c", runner, str(result.path), str(png)], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    # The same three classes, in the same order and with the same probabilities, as PyTorch gives.
    probs = torch.softmax(torch.from_numpy(_logits(model, images[index:index + 1]))[0], dim=0)
    top = probs.topk(3)
    assert [line.split("  ", 1)[1] for line in lines] == [CLASS_NAMES[i] for i in top.indices]
    assert [float(line.split()[0]) for line in lines] == pytest.approx(top.values.tolist(), abs=1e-4)
