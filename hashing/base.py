"""The interface every hash learner implements, and its persistence.

A hasher maps float features of either modality to packed binary codes of a fixed bit length.
Persistence is the `save_pretrained` / `from_pretrained` / `push_to_hub` trio of the Hugging Face
ecosystem, stored as ``config.json`` (method, bits, hyper-parameters, ``format_version``) next to
``model.safetensors`` (every learned array). Never pickle: a saved hasher is data, not code.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from common.atomic import atomic_write_dir

Modality = Literal["image", "text"]
MODALITIES: tuple[str, ...] = ("image", "text")
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_REGISTRY: dict[str, type["Hasher"]] = {}


def register_hasher(cls: type["Hasher"]) -> type["Hasher"]:
    """Class decorator: makes ``cls`` loadable by its ``method`` name."""
    if not getattr(cls, "method", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `method`")
    _REGISTRY[cls.method] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def hasher_class(method: str) -> type["Hasher"]:
    try:
        return _REGISTRY[method]
    except KeyError:
        raise ValueError(
            f"unknown hash method {method!r}; available: {', '.join(available_methods())}"
        ) from None


def check_bits(bits: int) -> int:
    """Any whole number of bytes: codes are packed uint8 rows. The README measures 16 to 128 bits."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8 (a whole number of bytes), got {bits!r}")
    return int(bits)


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    return modality


def as_features(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Validates a 2-D finite float feature matrix and returns it as float32."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, expected {dim} (as fitted)")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def pack_signs(real_codes: np.ndarray) -> np.ndarray:
    """Packs ``real_codes >= 0`` into uint8 bytes, numpy bit order (what faiss binary indexes use).

    Zero maps to bit 1 so that the code is a deterministic function of the sign, as in sign(0)=+1.
    """
    return np.packbits(np.asarray(real_codes) >= 0, axis=1)


def unpack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_signs` as {-1, +1} float32, for code-space arithmetic."""
    return np.unpackbits(codes, axis=1, count=bits).astype(np.float32) * 2.0 - 1.0


class Hasher(ABC):
    """Learns binary codes shared by images and texts.

    Subclasses set ``method``, implement :meth:`fit`, :meth:`_project` (real-valued codes whose
    sign is the bit, public as :meth:`project`), :meth:`get_config` and :meth:`state_dict` / :meth:`load_state_dict`.
    """

    method: ClassVar[str] = ""

    def __init__(self, bits: int = 64, seed: int = 0) -> None:
        self.bits = check_bits(bits)
        self.seed = int(seed)
        self.input_dims: dict[str, int] = {}

    # -- learning ---------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        image_features: np.ndarray,
        text_features: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> "Hasher":
        """Fits on paired rows: ``image_features[i]`` and ``text_features[i]`` describe one item.

        ``labels`` (n,) class ids or (n, c) multi-hot, used only by supervised variants.
        """

    @abstractmethod
    def _project(self, features: np.ndarray, modality: str) -> np.ndarray:
        """Real-valued (n, bits) codes; the bit is ``value >= 0``."""

    def project(self, features: np.ndarray, modality: Modality) -> np.ndarray:
        """Real-valued codes of shape (n, bits), before the sign: bit j of :meth:`encode` is
        ``project(...)[:, j] >= 0`` (``encode`` packs exactly this array, so the two always agree).

        For asymmetric search, where the query stays real-valued and is scored against stored
        binary codes (``hashing.index.asymmetric``; Gordo, Perronnin, Gong and Lazebnik, TPAMI
        2014): the query keeps how far each coordinate is from its sign flip, which symmetric
        Hamming distance throws away. For ITQ it is the centred features through the rotated PCA
        (or CCA) projection.
        """
        return self._project(self._checked(features, modality, "project"), modality)

    def encode(self, features: np.ndarray, modality: Modality) -> np.ndarray:
        """Packed uint8 codes of shape (n, bits // 8): the signs of :meth:`project`."""
        return pack_signs(self._project(self._checked(features, modality, "encode"), modality))

    def _checked(self, features: np.ndarray, modality: str, caller: str) -> np.ndarray:
        """``features`` validated for a fitted ``modality`` (dimension as fitted, finite), float32."""
        check_modality(modality)
        if modality not in self.input_dims:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() before {caller}()")
        return as_features(features, f"{modality} features", self.input_dims[modality])

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    # -- persistence ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (``bits`` and ``seed`` are added here)."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """Every learned array, by name."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        if not self.input_dims:
            raise RuntimeError("refusing to save an unfitted hasher")
        config = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "bits": self.bits,
            "seed": self.seed,
            "input_dims": self.input_dims,
            **self.get_config(),
        }

        def write(tmp: Path) -> None:
            state = {k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))

        return atomic_write_dir(save_directory, write)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> "Hasher":
        """Loads from a local directory or a Hub repo id (``HF_HUB_OFFLINE`` and the cache respected).

        Called on :class:`Hasher` itself it dispatches on the saved ``method``.
        """
        from safetensors.numpy import load_file

        from common.hub import resolve_pretrained_dir

        directory = resolve_pretrained_dir(path_or_repo_id, [CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs)
        config_file = directory / CONFIG_NAME
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read hasher config {config_file}: {e}") from e
        version = config.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{config_file}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        method = config.pop("method", None)
        klass = hasher_class(method) if cls is Hasher else cls
        if klass.method != method:
            raise ValueError(f"{config_file} holds a {method!r} hasher, not {klass.method!r}")
        input_dims = config.pop("input_dims")
        hasher = klass(**config)
        hasher.input_dims = {k: int(v) for k, v in input_dims.items()}
        hasher.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return hasher

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload hasher") -> str:
        """Saves to a temporary directory and uploads it as one commit; returns the commit URL."""
        from common.hub import push_folder

        return push_folder(self.save_pretrained, repo_id, private=private, token=token,
                           commit_message=commit_message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits})"


def create_hasher(method: str, bits: int = 64, **kwargs: Any) -> Hasher:
    """``create_hasher("itq", 64)``: an unfitted hasher of a registered method."""
    return hasher_class(method)(bits=bits, **kwargs)
