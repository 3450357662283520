"""The chunked embedding cache: resume after interruption, misses on any change, corruption recovery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from eval.embedding_cache import cached_encode, encoder_fingerprint


class Interrupted(RuntimeError):
    pass


class FakeEncoder:
    """Deterministic per-item embeddings (hash of the text); records every call it gets."""

    dim = 8
    precision = "fp32"

    def __init__(self, model_id: str = "fake", fail_after: int | None = None, offset: float = 0.0) -> None:
        self.model_id = model_id
        self.fail_after = fail_after
        self.offset = offset
        self.calls: list[list[str]] = []

    def _embed(self, items: list[str]) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Interrupted("simulated crash")
        self.calls.append(list(items))
        rows = [np.frombuffer(hashlib.sha256(str(s).encode()).digest()[: self.dim], np.uint8) for s in items]
        x = np.asarray(rows, np.float32).reshape(len(items), self.dim) + self.offset
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts, batch_size: int = 256, progress=None) -> np.ndarray:
        return self._embed(list(texts))

    def encode_images(self, images, batch_size: int = 64, progress=None) -> np.ndarray:
        return self._embed([str(p) for p in images])


ITEMS = [f"caption {i}" for i in range(23)]  # 23 items in chunks of 5: the last chunk is partial


def encoded_items(encoder: FakeEncoder) -> list[str]:
    return [s for call in encoder.calls for s in call]


def test_cached_equals_uncached_and_second_run_reads_only(tmp_path: Path) -> None:
    enc = FakeEncoder()
    first = cached_encode(enc, ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    np.testing.assert_array_equal(first, FakeEncoder().encode_texts(ITEMS))
    assert len(enc.calls) == 5 and encoded_items(enc) == ITEMS
    again = cached_encode(enc, ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    assert len(enc.calls) == 5, "a complete cache must not call the encoder"
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float32 and again.shape == (23, 8)


def test_resume_after_interruption_encodes_only_missing_chunks(tmp_path: Path) -> None:
    crashing = FakeEncoder(fail_after=2)
    with pytest.raises(Interrupted):
        cached_encode(crashing, ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    assert encoded_items(crashing) == ITEMS[:10]
    resumed = FakeEncoder()
    out = cached_encode(resumed, ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    assert encoded_items(resumed) == ITEMS[10:], "chunks saved before the crash must be reused"
    assert len(resumed.calls) == 3
    np.testing.assert_array_equal(out, FakeEncoder().encode_texts(ITEMS))


@pytest.mark.parametrize("change", ["items", "order", "encoder_id", "modality", "chunk_size"])
def test_any_change_of_key_misses_the_cache(tmp_path: Path, change: str) -> None:
    cached_encode(FakeEncoder(), ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    enc = FakeEncoder(model_id="other" if change == "encoder_id" else "fake")
    items = {"items": ITEMS[:-1] + ["a new caption"], "order": ITEMS[::-1]}.get(change, ITEMS)
    modality = "image" if change == "modality" else "text"
    chunk = 7 if change == "chunk_size" else 5
    out = cached_encode(enc, items, modality, tmp_path, chunk_size=chunk, progress=False)
    assert encoded_items(enc) == items, f"changing {change} must re-encode everything"
    np.testing.assert_array_equal(out, FakeEncoder().encode_texts(items))
    assert len(list(tmp_path.iterdir())) == 2, "a different key is a different entry, the old one kept"


def test_fingerprint_sees_weights_and_config() -> None:
    torch = pytest.importorskip("torch")

    class WithModel(FakeEncoder):
        def __init__(self, seed: int, config: dict) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.model = torch.nn.Linear(3, 2)
            self.config = config

    base = encoder_fingerprint(WithModel(0, {"a": 1}))
    assert base == encoder_fingerprint(WithModel(0, {"a": 1}))
    assert base["weights_sha256"] != encoder_fingerprint(WithModel(1, {"a": 1}))["weights_sha256"]
    assert base["config_sha256"] != encoder_fingerprint(WithModel(0, {"a": 2}))["config_sha256"]


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete", "swap_chunks"])
def test_damaged_chunk_is_detected_and_recomputed(tmp_path: Path, damage: str) -> None:
    reference = cached_encode(FakeEncoder(), ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    (entry,) = tmp_path.iterdir()
    chunk = entry / "chunk-000002.safetensors"
    blob = chunk.read_bytes()
    if damage == "truncate":  # a partial write that bypassed the atomic rename
        chunk.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip_byte":  # silent corruption inside the tensor data (the file's last bytes)
        chunk.write_bytes(blob[:-3] + bytes([blob[-3] ^ 0xFF]) + blob[-2:])
    elif damage == "delete":
        chunk.unlink()
    else:  # a valid file of another chunk in this chunk's place
        chunk.write_bytes((entry / "chunk-000001.safetensors").read_bytes())
    enc = FakeEncoder()
    out = cached_encode(enc, ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    assert encoded_items(enc) == ITEMS[10:15], "only the damaged chunk is encoded again"
    np.testing.assert_array_equal(out, reference)


def test_shards_fill_disjoint_chunks_then_read_all(tmp_path: Path) -> None:
    """What each of two processes does under eval.sharded (here one after the other)."""
    rank1 = FakeEncoder()
    barrier_calls = []
    with pytest.raises(RuntimeError, match="missing or invalid"):  # rank 0 has not written its chunks yet
        cached_encode(rank1, ITEMS, "text", tmp_path, chunk_size=5, progress=False, shard=(1, 2),
                      barrier=lambda: barrier_calls.append(1))
    assert barrier_calls == [1]
    assert encoded_items(rank1) == ITEMS[5:10] + ITEMS[15:20]
    rank0 = FakeEncoder()
    out = cached_encode(rank0, ITEMS, "text", tmp_path, chunk_size=5, progress=False, shard=(0, 2))
    assert encoded_items(rank0) == ITEMS[0:5] + ITEMS[10:15] + ITEMS[20:]
    np.testing.assert_array_equal(out, FakeEncoder().encode_texts(ITEMS))


def test_bad_input_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"items\[1\].*keys="):
        cached_encode(FakeEncoder(), ["a", np.zeros((2, 2, 3))], "image", tmp_path, progress=False)
    with pytest.raises(ValueError, match="keys has 1 entries"):
        cached_encode(FakeEncoder(), ["a", "b"], "text", tmp_path, keys=["k"], progress=False)
    with pytest.raises(ValueError, match="modality"):
        cached_encode(FakeEncoder(), ["a"], "audio", tmp_path, progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        cached_encode(FakeEncoder(), ["a"], "text", tmp_path, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="shard"):
        cached_encode(FakeEncoder(), ["a"], "text", tmp_path, shard=(2, 2), progress=False)


def test_manifest_of_unknown_version_is_a_clear_error(tmp_path: Path) -> None:
    cached_encode(FakeEncoder(), ITEMS, "text", tmp_path, chunk_size=5, progress=False)
    (entry,) = tmp_path.iterdir()
    manifest = entry / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ValueError, match="format_version 99"):
        cached_encode(FakeEncoder(), ITEMS, "text", tmp_path, chunk_size=5, progress=False)


def test_keys_let_in_memory_images_be_cached(tmp_path: Path) -> None:
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
    keys = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
    enc = FakeEncoder()
    first = cached_encode(enc, images, "image", tmp_path, chunk_size=2, keys=keys, progress=False)
    second = cached_encode(enc, images, "image", tmp_path, chunk_size=2, keys=keys, progress=False)
    assert len(enc.calls) == 2 and first.shape == (3, 8)
    np.testing.assert_array_equal(first, second)
