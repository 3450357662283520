"""One interface for every image-text dual encoder.

Subclasses supply preprocessing and the two forward passes; this class owns what must be the
same everywhere: input validation with the offending index named, batching, parallel image
decoding, device and dtype choice, ``torch.inference_mode``, progress bars and L2 normalisation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from common.texts import check_texts

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch

    from common.images import ImageInput


def check_images(images: Sequence[ImageInput]) -> Sequence[ImageInput]:
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
        raise TypeError("images must be a sequence (list of paths, PIL images or arrays)")
    return images


class Encoder(ABC):
    """Embeds images and texts into one space; outputs are float32, L2-normalised, shape (n, dim).

    ``device`` defaults to CUDA when present; ``precision`` defaults to fp16 on CUDA, fp32 on CPU.
    """

    #: Identifier that :func:`retrieval.load_encoder` resolves back to this encoder.
    model_id: str = ""

    def __init__(self, device: "str | torch.device | None" = None, precision: str | None = None) -> None:
        import torch

        from common.device import default_device

        self.device = torch.device(device) if device is not None else default_device()
        if precision is None:
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.precision = precision

    # -- what a backend provides -------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def preprocess_image(self, image: Any) -> torch.Tensor:
        """RGB PIL image -> (C, H, W) float tensor, with this model's own preprocessing."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def forward_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @property
    def preprocess_config(self) -> dict[str, Any]:
        """The image preprocessing this model expects (size, mean, std, resize...), JSON-serialisable.

        A saved retriever records it, and loading refuses an encoder whose preprocessing changed
        (open_clip issue #1068: the right weights behind the wrong normalisation fail silently).
        """
        return {}

    @property
    def weights_id(self) -> str | None:
        """A fingerprint of the weights this encoder's vectors come from, or None when it has none.

        Why: a saved retriever holds gallery vectors and codes from the encoder that built it; a
        model id alone ("lite") stays the same when the weights behind it are retrained, and new
        queries against old vectors fail silently. A retriever records this and opening refuses a
        mismatch (:meth:`retrieval.Retriever.from_pretrained`, ``check_weights``). Hub encoders
        return None (their repo id and revision name them).
        """
        return None

    def load(self, modalities: Sequence[str] = ("image", "text")) -> None:
        """Loads what encoding ``modalities`` needs now rather than at first use.

        Encoders that load in their constructor have nothing left to do; a lazy one (the lite
        encoder loads each tower on first use) loads here, so a caller can time loading apart from
        encoding (the folder indexer reports both).
        """

    # -- shared machinery ----------------------------------------------------------------------
    def autocast(self) -> Any:
        import torch

        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def batch_pixels(self, image: Any) -> Any:
        """RGB PIL image -> what :meth:`embed_pixels` takes in a batch: :meth:`preprocess_image`'s tensor.

        With :meth:`embed_pixels`, the one place an encoder may leave torch out of image encoding
        (the lite encoder on ONNX Runtime preprocesses and runs in numpy: an image search then
        imports no torch).
        """
        return self.preprocess_image(image)

    def embed_pixels(self, pixels: list[Any]) -> np.ndarray:
        """A batch of :meth:`batch_pixels` results -> (n, dim) float32 unit vectors."""
        import torch

        with torch.inference_mode(), self.autocast():
            return normalize(self.forward_images(torch.stack(pixels).to(self.device)))

    def _load_and_preprocess(self, indexed: tuple[int, ImageInput]) -> Any:
        from common.images import load_image  # PIL: imported by image encoding, not by a text search

        index, item = indexed
        return self.batch_pixels(load_image(item, index))

    def _load_or_reason(self, indexed: tuple[int, ImageInput]) -> Any:
        try:
            return self._load_and_preprocess(indexed)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem only
            from common.images import describe

            prefix = f"{describe(indexed[1], indexed[0])}: "
            message = str(e)
            return message[len(prefix):] if message.startswith(prefix) else f"{type(e).__name__}: {message}"

    def _image_batches(self, images: Sequence[ImageInput], batch_size: int, num_workers: int, skip: bool,
                       progress: bool | None = None) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
        """The one batching loop: yields (positions, their unit vectors, failures) per batch.

        Batch i + 1 is decoded by the pool while batch i runs through the model, so decoding
        costs no wall time as long as it is faster than the forward pass (issue 13). With
        ``skip`` an unreadable image becomes ``(position, reason)``; without, its error is raised.
        """
        from concurrent.futures import ThreadPoolExecutor

        n = len(check_images(images))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        load = self._load_or_reason if skip else self._load_and_preprocess
        bar = progress_bar(n, "encode images", "img", show(progress, n, batch_size))
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            def submit(start: int) -> list[Future]:
                return [pool.submit(load, item) for item in enumerate(images[start:start + batch_size], start)]

            pending = submit(0) if n else []
            for start in range(0, n, batch_size):
                loaded = [f.result() for f in pending]
                pending = submit(start + batch_size) if start + batch_size < n else []
                good = [(i, t) for i, t in enumerate(loaded, start) if not isinstance(t, str)]
                failed = [(i, t) for i, t in enumerate(loaded, start) if isinstance(t, str)]  # the reasons
                vectors = self.embed_pixels([t for _, t in good]) if good else np.empty((0, self.dim), np.float32)
                bar.update(len(loaded))
                yield [i for i, _ in good], vectors, failed
        bar.close()

    def encode_images(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 64,
        progress: bool | None = None,
        num_workers: int = 4,
    ) -> np.ndarray:
        """Paths, PIL images or HWC arrays -> (n, dim) float32 unit vectors."""
        out = np.empty((len(check_images(images)), self.dim), dtype=np.float32)
        batches = self._image_batches(images, batch_size, num_workers, skip=False, progress=progress)
        for positions, vectors, _ in batches:
            out[positions] = vectors
        return out

    def encode_images_skipping(
        self, images: Sequence[ImageInput], batch_size: int = 64, num_workers: int = 4
    ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Like :meth:`encode_images`, but an image that cannot be read is reported, not raised.

        Returns the vectors of the readable images, their positions in ``images``, and
        ``(position, reason)`` for each unreadable one: a folder indexer skips broken files
        (empty, truncated, not an image) instead of dying on the first.
        """
        vectors, kept, failed = [], [], []
        for positions, batch, errors in self._image_batches(images, batch_size, num_workers, skip=True,
                                                             progress=False):
            vectors.append(batch)
            kept += positions
            failed += errors
        out = np.concatenate(vectors) if vectors else np.empty((0, self.dim), dtype=np.float32)
        return out, kept, failed

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None
    ) -> np.ndarray:
        """Strings -> (n, dim) float32 unit vectors; texts over the context length are truncated.

        Batches keep the input order (no sorting by length): ``eval.sharded`` and the embedding
        cache rely on a batch's texts, hence its padding and its numbers, being the same in any run.
        """
        import torch

        texts = check_texts(texts)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        bar = progress_bar(n, "encode texts", "txt", show(progress, n, batch_size))
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                chunk = texts[start:start + batch_size]
                tokens = {k: v.to(self.device) for k, v in self.tokenize(chunk).items()}
                with self.autocast():
                    features = self.forward_texts(tokens)
                out[start:start + len(chunk)] = normalize(features)
                bar.update(len(chunk))
        bar.close()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, dim={self.dim}, device={self.device})"


def normalize(features: "torch.Tensor") -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy()


def unit_rows(features: np.ndarray) -> np.ndarray:
    """:func:`normalize` in numpy, for encoders that run without torch (the same eps as F.normalize)."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def show(progress: bool | None, n: int, batch_size: int) -> bool:
    """Progress bars by default only when there is more than one batch."""
    return n > batch_size if progress is None else progress


class NoBar:
    """What :func:`progress_bar` gives when no bar is shown: ``update`` and ``close`` that do nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, shown: bool) -> Any:
    """A tqdm bar, or a :class:`NoBar` without importing tqdm.

    Why not ``tqdm(disable=True)``: importing ``tqdm.auto`` (asyncio with it) and making a bar
    (a multiprocessing lock) cost about 0.05 s, a twentieth of a command-line text search that
    encodes one query and shows no bar (issue 22).
    """
    if not shown:
        return NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
