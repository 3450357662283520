"""The embedded offline dual encoder ("lite"): :mod:`common.lite_model`'s towers behind the Encoder interface.

On CPU in fp32 both forward passes run in ONNX Runtime (exported from the loaded model at load
time); elsewhere in PyTorch.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.lite_model import WEIGHTS_DIR, LiteModel, image_transform, load_lite_model

from .base import Encoder


RUNTIMES = ("onnxruntime", "torch")


def onnxruntime_available() -> bool:
    """Both packages: onnx for the export, onnxruntime to run it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _ImageGraph(nn.Module):
    def __init__(self, model: LiteModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixels)


class _TextGraph(nn.Module):
    def __init__(self, model: LiteModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.text_features(input_ids, attention_mask)


class OnnxTowers:
    """Both forward passes exported to ONNX (in memory, at load time) and run by ONNX Runtime.

    Why: on CPU the image forward pass is the whole cost of encoding, and on the project's 2-core
    AMD EPYC machine PyTorch runs it at 41 images/s (68 channels_last) where ONNX Runtime runs the
    same fp32 graph at 311/s (``python -m eval.bench --stages encode``, README). The
    graphs are traced from the loaded model, so they carry exactly its weights (cosine to the
    PyTorch forward >= 0.9999 is tested); exporting both takes under a second, so nothing is cached
    on disk. ``int8`` quantises the text tower's matrix products dynamically (ONNX Runtime's
    ``quantize_dynamic``, as sentence-transformers' ONNX int8 exports do): approximate, opt-in.
    """

    def __init__(self, model: LiteModel, threads: int, int8: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        tokens = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
        image = export(_ImageGraph(model), (torch.zeros(2, 3, model.config["image_size"], model.config["image_size"]),),
                       ["pixels"], {"pixels": {0: "batch"}})
        text = export(_TextGraph(model), (tokens["input_ids"], tokens["attention_mask"]), ["input_ids", "attention_mask"],
                      {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}})
        if int8:
            text = quantize_dynamic(text)
        providers = ["CPUExecutionProvider"]
        self.image = ort.InferenceSession(image, options, providers=providers)
        self.text = ort.InferenceSession(text, options, providers=providers)
        self.int8 = int8

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.image.run(None, {"pixels": x})[0])

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        return torch.from_numpy(self.text.run(None, feeds)[0])


def export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
           dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """TorchScript-based ONNX export (opset 17) to bytes; the tracer's warnings are expected."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer, input_names=names, output_names=["features"],
                          dynamic_axes={**dynamic_axes, "features": {0: "batch"}}, opset_version=17, dynamo=False)
    return buffer.getvalue()


def quantize_dynamic(graph: bytes) -> bytes:
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic as quantize

    with tempfile.TemporaryDirectory(prefix="lite-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # its advice to run ORT's pre-processing first: not needed here
            try:
                quantize(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
            finally:
                logging.disable(logging.NOTSET)
        return target.read_bytes()


class LiteEncoder(Encoder):
    """The embedded default encoder: ``load_encoder("lite")``.

    ``runtime``: ``"onnxruntime"`` (the default on CPU in fp32; a dependency of this package) or
    ``"torch"`` (the default otherwise: CUDA, fp16/bf16, onnxruntime not importable), where the
    image tower runs channels_last (about 2x on CPU, same outputs). ``int8=True`` (onnxruntime only)
    is the approximate, faster text path; its R@K change is in the README. Threads: the session
    uses ``torch.get_num_threads()`` at construction, so ``torch.set_num_threads`` first.
    """

    model_id = "lite"

    def __init__(self, path: str | Path = WEIGHTS_DIR, device: str | torch.device | None = None,
                 precision: str | None = None, runtime: str | None = None, int8: bool = False) -> None:
        super().__init__(device, precision)
        if runtime is None:
            cpu_fp32 = self.device.type == "cpu" and self.precision == "fp32"
            runtime = "onnxruntime" if cpu_fp32 and onnxruntime_available() else "torch"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "onnxruntime" and (self.device.type != "cpu" or self.precision != "fp32"):
            raise ValueError(f"runtime='onnxruntime' runs fp32 on CPU; got device {self.device}, "
                             f"precision {self.precision}: use runtime='torch'")
        if runtime == "onnxruntime" and not onnxruntime_available():
            raise ImportError("runtime='onnxruntime' needs the onnxruntime and onnx packages: "
                              "pip install onnxruntime onnx")
        if int8 and runtime != "onnxruntime":
            raise ValueError("int8=True needs runtime='onnxruntime'")
        self.runtime = runtime
        self.model = load_lite_model(path).to(self.device)
        self.onnx = OnnxTowers(self.model, torch.get_num_threads(), int8) if runtime == "onnxruntime" else None
        self.model.image_tower.to(memory_format=torch.channels_last)  # after the export: ONNX has no layouts
        self.config = self.model.config
        self.transform = image_transform(self.config)
        if Path(path).resolve() != WEIGHTS_DIR:
            self.model_id = str(path)
        elif int8:
            self.model_id = "lite:int8"  # other vectors than "lite": caches and saved retrievers tell them apart

    @property
    def dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k.startswith("image_") and k not in
                ("image_trainable_stages", "image_pool", "image_pool_heads", "image_tower")}

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.model.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config["text_max_length"], return_tensors="pt"
        ))

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return self.onnx.image_features(pixels)
        return self.model.image_features(pixels.contiguous(memory_format=torch.channels_last))

    def forward_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.onnx is not None:
            return self.onnx.text_features(tokens["input_ids"], tokens["attention_mask"])
        return self.model.text_features(tokens["input_ids"], tokens["attention_mask"])

    def __repr__(self) -> str:
        runtime = self.runtime + (" int8" if self.onnx is not None and self.onnx.int8 else "")
        return f"{type(self).__name__}({self.model_id!r}, dim={self.dim}, device={self.device}, runtime={runtime})"
