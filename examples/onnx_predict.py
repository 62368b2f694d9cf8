"""Classify an image with a model exported by ``cnnlab export``, using onnxruntime, numpy and Pillow only.

No torch and no cnnlab: everything the model needs is in the .onnx file's metadata (input size, channels, mean,
std, class names). Usage::

    pip install onnxruntime numpy pillow
    python examples/onnx_predict.py model.onnx shirt.png            # prints the three likeliest classes
    python examples/onnx_predict.py model.onnx photo.jpg --invert   # dark garment on a light background

Fashion-MNIST's images are light garments on black; ``--invert`` turns a photo on white into that form.
"""

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_model(path):
    """The onnxruntime session and the metadata cnnlab stored in the file."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    info = {
        "class_names": json.loads(meta["class_names"]),
        "image_size": json.loads(meta["input_size"]),  # [H, W]
        "channels": int(meta["channels"]),
        "mean": np.array(json.loads(meta["mean"]), dtype=np.float32),
        "std": np.array(json.loads(meta["std"]), dtype=np.float32),
    }
    return session, info


def preprocess(path, info, invert=False):
    """Image file -> float32 (1, C, H, W): resized, scaled to [0, 1], normalized per channel."""
    height, width = info["image_size"]
    with Image.open(path) as img:
        img = img.convert("L" if info["channels"] == 1 else "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
    if invert:
        x = 1.0 - x
    x = x.reshape(height, width, -1).transpose(2, 0, 1)  # (C, H, W)
    x = (x - info["mean"][:, None, None]) / info["std"][:, None, None]
    return x[None].astype(np.float32)


def printable(text):
    # Class names come from data (folder names): keep terminal control characters out of the output.
    return "".join(c if c.isprintable() else "?" for c in text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file written by cnnlab export")
    parser.add_argument("image", help="an image file (PNG, JPEG...)")
    parser.add_argument("--invert", action="store_true", help="invert the image (dark object on light ground)")
    parser.add_argument("-k", type=int, default=3, help="how many classes to print (default 3)")
    args = parser.parse_args()

    session, info = load_model(args.model)
    x = preprocess(args.image, info, args.invert)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for i in np.argsort(-probs, kind="stable")[:args.k]:
        print(f"{probs[i]:.4f}  {printable(info['class_names'][i])}")


if __name__ == "__main__":
    main()
