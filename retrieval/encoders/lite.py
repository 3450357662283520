"""The embedded offline dual encoder ("lite"): :mod:`common.lite_model`'s towers behind the Encoder interface.

On CPU in fp32 the forward passes run in ONNX Runtime, from graphs exported once per user and
weights (:mod:`.onnx_cache`); elsewhere in PyTorch. Nothing is loaded at construction: each tower
is loaded the first time it is used, so a text search loads only the text graph, an image search
only the image graph, and opening a retriever to find that nothing needs encoding loads neither.
With the ONNX runtime, neither text nor image encoding imports torch: the ``tokenizers`` library,
PIL and numpy (:class:`common.lite_pixels.LitePixels`) prepare the inputs, ONNX Runtime runs them.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from common.device import gpu_may_be_present
from common.lite_files import WEIGHTS_DIR, WEIGHTS_NAME, minilm_dir, read_config
from common.texts import check_texts

from .base import Encoder, progress_bar, show, unit_rows
from .onnx_cache import cached_graphs, optimised_graph, remembered_vectors_key

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from common.lite_model import LiteModel


RUNTIMES = ("onnxruntime", "torch")


def onnxruntime_available() -> bool:
    """Both packages: onnx for the export, onnxruntime to run it."""
    from importlib.util import find_spec

    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


def _graph_modules(model: "LiteModel") -> tuple["nn.Module", "nn.Module"]:
    """The two forward passes as modules torch.onnx can trace (defined here so torch loads only on export)."""
    from torch import nn

    class ImageGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: "torch.Tensor") -> "torch.Tensor":
            return self.model.image_features(pixels)

    class TextGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
            return self.model.text_features(input_ids, attention_mask)

    return ImageGraph(), TextGraph()


def export_graphs(model: "LiteModel", int8: bool = False) -> dict[str, bytes]:
    """Both towers of a loaded model as ONNX graphs: ``{"image": ..., "text": ...}``.

    The graphs are traced from the loaded model, so they carry exactly its weights (cosine to the
    PyTorch forward >= 0.9999 is tested). ``int8`` quantises the text tower's matrix products
    dynamically (ONNX Runtime's ``quantize_dynamic``, as sentence-transformers' ONNX int8 exports do).
    """
    import torch

    image_graph, text_graph = _graph_modules(model)
    size = model.config["image_size"]
    tokens = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    image = export(image_graph, (torch.zeros(2, 3, size, size),), ["pixels"], {"pixels": {0: "batch"}})
    text = export(text_graph, tokens, ["input_ids", "attention_mask"],
                  {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}})
    return {"image": image, "text": quantize_dynamic(text) if int8 else text}


class OnnxTowers:
    """The two forward passes in ONNX Runtime, each session made on first use.

    Why: on CPU the image forward pass is the whole cost of encoding, and on the project's 2-core
    AMD EPYC machine PyTorch runs it at 41 images/s (68 channels_last) where ONNX Runtime runs the
    same fp32 graph at 311/s (``python -m eval.bench --stages encode``, README). Exporting the
    graphs means loading both PyTorch towers (seconds), so it happens once per user and weights:
    :func:`.onnx_cache.cached_graphs` keeps them keyed by the weights' SHA-256, and a session only
    reads its file, or rather ORT's offline-optimised form of it with the weights as external data
    (:func:`.onnx_cache.optimised_graph`), which ORT maps instead of parsing: 0.1-0.15 s to start the
    text session instead of 0.35-0.5 s (issue 22). ``int8``: see :func:`export_graphs`; approximate, opt-in.
    """

    def __init__(self, weights: Path, config: dict[str, Any], threads: int | None, int8: bool = False,
                 model: Any = None) -> None:
        self.weights, self.config, self.threads, self.int8 = weights, config, threads, int8
        self._model = model  # a loaded LiteModel to export from on a cache miss (else loaded then)
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _export(self) -> dict[str, bytes]:
        from common.lite_model import load_lite_model

        model = self._model() if callable(self._model) else self._model
        if model is None:
            model = load_lite_model(self.weights, self.config.get("concept_weight", 0.0))
        return export_graphs(model, self.int8)

    def session(self, tower: str) -> Any:
        with self._lock:
            if tower not in self._sessions:
                import onnxruntime as ort

                ort.set_default_logger_severity(3)  # errors only: its optimiser's notes are not the user's business
                options = ort.SessionOptions()
                if self.threads:
                    options.intra_op_num_threads = max(1, self.threads)
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                if tower == "text":
                    # a query is a few tokens: worker threads that spin between its small operators only
                    # take a core from the main thread (on 2 cores: 0.19 -> 0.11 s to start, README issue 22)
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                graph = cached_graphs(self.weights, self.config, self.int8, self._export)[tower]
                if not isinstance(graph, bytes):
                    graph = str(optimised_graph(graph) or graph)  # its weights mapped, not parsed (issue 22)
                self._sessions[tower] = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            return self._sessions[tower]

    @property
    def image(self) -> Any:
        return self.session("image")

    @property
    def text(self) -> Any:
        return self.session("text")

    def image_array(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def text_array(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                 "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        return self.text.run(None, feeds)[0]

    def image_features(self, pixels: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.image_array(pixels.detach().cpu().numpy()))

    def text_features(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.text_array(input_ids.cpu().numpy(), attention_mask.cpu().numpy()))


def export(module: "nn.Module", args: tuple["torch.Tensor", ...], names: list[str],
           dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """TorchScript-based ONNX export (opset 17) to bytes; the tracer's warnings are expected."""
    import torch

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


def text_tokenizer(max_length: int) -> Any:
    """all-MiniLM-L6-v2's fast tokenizer from its ``tokenizer.json`` through the ``tokenizers`` library.

    The same Rust tokenizer transformers' ``AutoTokenizer`` wraps (ids and masks are tested equal),
    without importing transformers (and so torch): padding to the longest text of a batch,
    truncation to ``max_length`` tokens, as ``tokenizer(texts, padding=True, truncation=True)``.
    """
    from tokenizers import Tokenizer

    directory = minilm_dir()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    pad = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
    return tokenizer


class LiteEncoder(Encoder):
    """The embedded default encoder: ``load_encoder("lite")``.

    ``runtime``: ``"onnxruntime"`` (the default on CPU in fp32; a dependency of this package) or
    ``"torch"`` (the default otherwise: CUDA, fp16/bf16, onnxruntime not importable), where the
    image tower runs channels_last (about 2x on CPU, same outputs). ``int8=True`` (onnxruntime only)
    is the approximate, faster text path; its R@K change is in the README. Threads: the sessions use
    ``torch.get_num_threads()`` when torch is imported, else ONNX Runtime's default (one per
    physical core), so ``torch.set_num_threads`` first to choose.

    Construction reads only ``config.json``; the towers load on first use (:attr:`model` for
    PyTorch, :attr:`onnx` sessions per tower). ``device=None`` is the CPU, without importing torch,
    when no GPU driver is present (:func:`common.device.gpu_may_be_present`).
    """

    model_id = "lite"

    def __init__(self, path: str | Path = WEIGHTS_DIR, device: "str | torch.device | None" = None,
                 precision: str | None = None, runtime: str | None = None, int8: bool = False,
                 concepts: bool = False, heads: bool = False) -> None:
        if device is None and not gpu_may_be_present():
            device = "cpu"
        if device is not None and str(device) == "cpu" and runtime != "torch":
            self._cpu_without_torch(precision)  # torch.device is not needed to run ONNX Runtime
        else:
            super().__init__(device, precision)
        if runtime is None:
            cpu_fp32 = self.device_type == "cpu" and self.precision == "fp32"
            runtime = "onnxruntime" if cpu_fp32 and onnxruntime_available() else "torch"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "onnxruntime" and (self.device_type != "cpu" or self.precision != "fp32"):
            raise ValueError(f"runtime='onnxruntime' runs fp32 on CPU; got device {self.device_type}, "
                             f"precision {self.precision}: use runtime='torch'")
        if runtime == "onnxruntime" and not onnxruntime_available():
            raise ImportError("runtime='onnxruntime' needs the onnxruntime and onnx packages: "
                              "pip install onnxruntime onnx")
        if int8 and runtime != "onnxruntime":
            raise ValueError("int8=True needs runtime='onnxruntime'")
        self.runtime = runtime
        self.path = Path(path)
        if not (self.path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{self.path / WEIGHTS_NAME} not found: the lite encoder's trained heads are missing. Train them "
                f"with `python scripts/train_lite.py` or reinstall the package.")
        self.config = read_config(self.path)
        if concepts:
            if int8:
                raise ValueError("concepts=True and int8=True are not offered together")
            if "concept_weight_opt_in" not in self.config:
                raise ValueError(f"{self.path / 'config.json'} has no concept_weight_opt_in: these weights "
                                 "have no ImageNet concepts chosen for them")
            self.config = {**self.config, "concept_weight": self.config["concept_weight_opt_in"]}
        if heads:  # the Flickr8K heads alone, as "lite" was before issue 23's concepts became its default
            if concepts:
                raise ValueError("concepts=True and heads=True contradict each other")
            self.config = {**self.config, "concept_weight": 0.0}
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self.onnx = (OnnxTowers(self.path, self.config, self._threads(), int8, model=lambda: self._model)
                     if runtime == "onnxruntime" else None)
        self._pixels: Any = None
        if self.path.resolve() != WEIGHTS_DIR:
            self.model_id = str(path)
        elif int8:
            self.model_id = "lite:int8"  # other vectors than "lite": caches and saved retrievers tell them apart
        elif concepts:
            self.model_id = "lite:concepts"
        elif heads:
            self.model_id = "lite:heads"

    def _cpu_without_torch(self, precision: str | None) -> None:
        precision = "fp32" if precision is None else precision
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.precision = precision
        self._device: Any = None

    @staticmethod
    def _threads() -> int | None:
        torch = sys.modules.get("torch")
        return torch.get_num_threads() if torch is not None else None

    @property
    def device_type(self) -> str:
        return self.__dict__["device"].type if "device" in self.__dict__ else "cpu"

    def __getattr__(self, name: str) -> Any:
        # ``device`` of an encoder made for the CPU without torch: a torch.device made when asked for
        if name == "device" and "_device" in self.__dict__:
            import torch

            self.__dict__["device"] = torch.device("cpu")
            return self.__dict__["device"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def model(self) -> "LiteModel":
        """The PyTorch towers, loaded on first use (the ONNX runtime needs them only to export)."""
        with self._load_lock:
            if self._model is None:
                import torch

                from common.lite_model import load_lite_model

                model = load_lite_model(self.path, self.config["concept_weight"]).to(self.device)
                if self.onnx is None:
                    model.image_tower.to(memory_format=torch.channels_last)  # ONNX has no layouts: only torch's
                self._model = model
            return self._model

    def load(self, modalities: Sequence[str] = ("image", "text")) -> None:
        for modality in modalities:
            if modality not in ("image", "text"):
                raise ValueError(f"modalities must be 'image' and/or 'text', got {modality!r}")
            if self.onnx is not None:
                self.onnx.session(modality)
            else:
                self.model  # noqa: B018 - loads both towers
            if modality == "text":
                self.tokenizer  # noqa: B018
            else:
                self.pixels  # noqa: B018 - loads here, not mid-encoding

    @property
    def is_loaded(self) -> dict[str, bool]:
        """Which parts are loaded so far: the torch ``model`` and each ONNX session."""
        sessions = self.onnx._sessions if self.onnx is not None else {}
        return {"model": self._model is not None, "image": "image" in sessions, "text": "text" in sessions}

    @property
    def dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def weights_id(self) -> str:
        """:func:`.onnx_cache.vectors_key`: the heads, the vector-shaping settings, the concepts if on."""
        return remembered_vectors_key(self.path, self.config)

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k.startswith("image_") and k not in
                ("image_trainable_stages", "image_pool", "image_pool_heads", "image_tower")}

    @property
    def pixels(self) -> Any:
        """The tower's preprocessing (:class:`common.lite_pixels.LitePixels`): PIL and numpy, no torch."""
        if self._pixels is None:
            from common.lite_pixels import LitePixels

            self._pixels = LitePixels(self.config)
        return self._pixels

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = text_tokenizer(int(self.config["text_max_length"]))
        return self._tokenizer

    def preprocess_image(self, image: "Image.Image") -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.pixels(image))

    def batch_pixels(self, image: "Image.Image") -> Any:
        """On ONNX Runtime the numpy array itself (no torch), else the base's tensor."""
        return self.pixels(image) if self.onnx is not None else super().batch_pixels(image)

    def embed_pixels(self, pixels: list[Any]) -> np.ndarray:
        if self.onnx is None:
            return super().embed_pixels(pixels)
        return unit_rows(self.onnx.image_array(np.stack(pixels)))

    def token_arrays(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 arrays, padded to the longest text."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def tokenize(self, texts: list[str]) -> dict[str, "torch.Tensor"]:
        import torch

        ids, mask = self.token_arrays(texts)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None) -> np.ndarray:
        """With ONNX Runtime: the base class's loop on numpy alone (no torch import); else the base's."""
        if self.onnx is None:
            return super().encode_texts(texts, batch_size, progress)
        texts = check_texts(texts)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        bar = progress_bar(n, "encode texts", "txt", show(progress, n, batch_size))
        for start in range(0, n, batch_size):
            chunk = texts[start:start + batch_size]
            out[start:start + len(chunk)] = unit_rows(self.onnx.text_array(*self.token_arrays(chunk)))
            bar.update(len(chunk))
        bar.close()
        return out

    def forward_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        if self.onnx is not None:
            return self.onnx.image_features(pixels)
        import torch

        return self.model.image_features(pixels.contiguous(memory_format=torch.channels_last))

    def forward_texts(self, tokens: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        if self.onnx is not None:
            return self.onnx.text_features(tokens["input_ids"], tokens["attention_mask"])
        return self.model.text_features(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))

    def __repr__(self) -> str:
        runtime = self.runtime + (" int8" if self.onnx is not None and self.onnx.int8 else "")
        return f"{type(self).__name__}({self.model_id!r}, dim={self.dim}, device={self.device_type}, runtime={runtime})"
