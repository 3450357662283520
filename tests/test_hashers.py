"""Hash learners: shapes, determinism, persistence (local + fake Hub cache), validation, and that the
codes actually carry the cross-modal pairing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import hashing
from hashing import Hasher, available_methods, create_hasher
from hashing.base import unpack_codes
from hashing.itq import ITQHasher, pca_basis, quantization_error

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wiki" / "wikiData.mat"

# small, fast settings for the learned heads; the defaults are tuned for real data
FAST = {"contrastive": {"hidden_dim": 64, "epochs": 30, "batch_size": 64, "progress": False}}
METHODS = ["lsh", "itq", "contrastive"]


def make(method: str, bits: int = 32, **kwargs) -> Hasher:
    return create_hasher(method, bits, **{**FAST.get(method, {}), **kwargs})


def paired_data(n: int = 400, dim_image: int = 48, dim_text: int = 20, latent: int = 8, noise: float = 0.3,
                seed: int = 0, n_classes: int = 0, shared: bool = False):
    """Images and texts as noisy linear views of one latent per item (optionally class-clustered).

    ``shared``: both views use the same map (CLIP-like: one space, ``dim_text`` ignored).
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    labels = None
    if n_classes:
        labels = rng.integers(0, n_classes, n)
        centers = 2.0 * rng.standard_normal((n_classes, latent))
        z = 0.5 * z + centers[labels]
    a = rng.standard_normal((latent, dim_image))
    if shared:
        dim_text = dim_image
    b = a if shared else rng.standard_normal((latent, dim_text))
    x = z @ a + noise * rng.standard_normal((n, dim_image)) * np.abs(z @ a).mean()
    y = z @ b + noise * rng.standard_normal((n, dim_text)) * np.abs(z @ b).mean()
    return x.astype(np.float32), y.astype(np.float32), labels


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance between two packed code arrays."""
    return np.unpackbits(a ^ b, axis=1).sum(1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny problems: BLAS/torch threads only add contention on a shared machine (restored after)."""
    import contextlib

    import torch

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency; without it only torch is limited
        threadpool_limits = None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return paired_data()


@pytest.fixture(scope="module")
def fitted(data):
    x, y, _ = data
    return {m: make(m).fit(x, y) for m in METHODS}


def test_registry_lists_every_method():
    assert set(METHODS) <= set(available_methods())
    for m in METHODS:
        assert create_hasher(m, 16).method == m
    with pytest.raises(ValueError, match="unknown hash method 'nope'"):
        create_hasher("nope", 16)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [16, 128])
def test_codes_shape_and_dtype(method, bits, data):
    x, y, _ = data
    h = make(method, bits).fit(x, y)
    for feats, modality in ((x[:7], "image"), (y[:7], "text")):
        codes = h.encode(feats, modality)
        assert codes.dtype == np.uint8 and codes.shape == (7, bits // 8)
    # different items get different codes (nothing collapsed to a constant)
    assert len({c.tobytes() for c in h.encode(x, "image")}) > len(x) // 2


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_codes_other_seed_other_codes(method, data):
    x, y, _ = data
    a = make(method, seed=3).fit(x, y).encode(y, "text")
    b = make(method, seed=3).fit(x, y).encode(y, "text")
    c = make(method, seed=4).fit(x, y).encode(y, "text")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_contrastive_leaves_global_torch_rng_alone(data):
    import torch

    x, y, _ = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make("contrastive").fit(x, y)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("method", METHODS)
def test_paired_items_are_closer_than_random_pairs(method, fitted, data):
    x, y, _ = data
    h = fitted[method]
    ci, ct = h.encode(x, "image"), h.encode(y, "text")
    paired = hamming(ci, ct).mean()
    shuffled = hamming(ci, ct[np.random.default_rng(0).permutation(len(ct))]).mean()
    assert paired < 0.6 * shuffled, (paired, shuffled)


@pytest.mark.parametrize("method", ["lsh", "itq"])
def test_same_dim_embeddings_use_the_features_as_shared_space(method):
    # CLIP-like: same dim, and a constant image/text offset (the modality gap) that centring removes
    x, y, _ = paired_data(dim_image=32, shared=True)
    y = y + 3.0 * np.abs(y).mean()
    h = make(method, 32).fit(x, y)
    ci, ct = h.encode(x, "image"), h.encode(y, "text")
    shuffled = hamming(ci, ct[np.random.default_rng(0).permutation(len(ct))]).mean()
    assert hamming(ci, ct).mean() < 0.6 * shuffled
    with pytest.raises(ValueError, match="shared_space='none' needs equal dims, got image 48 vs text 20"):
        make(method, 32, shared_space="none").fit(*paired_data()[:2])


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, fitted, data, tmp_path):
    x, y, _ = data
    h = fitted[method]
    out = h.save_pretrained(tmp_path / "hasher")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["bits"] == 32 and config["format_version"] == 1
    assert "progress" not in config
    loaded = Hasher.from_pretrained(out)
    assert type(loaded) is type(h)
    for feats, m in ((x, "image"), (y, "text")):
        np.testing.assert_array_equal(loaded.encode(feats, m), h.encode(feats, m))


def test_from_pretrained_reads_the_hub_cache_offline(fitted, data, tmp_path, monkeypatch):
    """A repo id resolves through the Hub client's cache layout with HF_HUB_OFFLINE=1."""
    import huggingface_hub.constants as hf_constants

    x, y, _ = data
    h = fitted["contrastive"]
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--name"
    h.save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    # the client reads these at import time, so patch the module as well as the environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # "org/name" must not resolve as a relative path
    loaded = Hasher.from_pretrained("org/name")
    np.testing.assert_array_equal(loaded.encode(y, "text"), h.encode(y, "text"))
    np.testing.assert_array_equal(loaded.encode(x, "image"), h.encode(x, "image"))
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1"):
        Hasher.from_pretrained("org/missing")


def test_push_to_hub_uploads_the_saved_folder(fitted, monkeypatch):
    """No network: a stand-in HfApi records what would be uploaded."""
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            seen["config"] = json.loads((Path(folder_path) / "config.json").read_text())
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = fitted["lsh"].push_to_hub("org/name", private=True, token="t")
    assert url.endswith("org/name/commit/abc") and seen["repo"] == ("org/name", True, True)
    assert seen["files"] == ["config.json", "model.safetensors"] and seen["config"]["method"] == "lsh"


def test_load_rejects_unknown_format_and_wrong_method(fitted, tmp_path):
    from hashing.lsh import LSHHasher

    out = fitted["itq"].save_pretrained(tmp_path / "h")
    with pytest.raises(ValueError, match="holds a 'itq' hasher, not 'lsh'"):
        LSHHasher.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        Hasher.from_pretrained(out)


def test_load_rejects_weights_that_do_not_match_the_config(fitted, tmp_path):
    for method, bits in (("itq", 64), ("contrastive", 64)):
        out = fitted[method].save_pretrained(tmp_path / method)
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "bits": bits}))
        with pytest.raises(ValueError, match="shape"):
            Hasher.from_pretrained(out)


@pytest.mark.parametrize("method", METHODS)
def test_bad_inputs_fail_early_with_clear_errors(method, fitted, data):
    x, y, _ = data
    h = fitted[method]
    with pytest.raises(ValueError, match="image features has dimension 20, expected 48"):
        h.encode(y, "image")
    with pytest.raises(ValueError, match="modality must be 'image' or 'text'"):
        h.encode(x, "audio")
    with pytest.raises(ValueError, match="2-D"):
        h.encode(x[0], "image")
    with pytest.raises(TypeError, match="numeric"):
        h.encode(np.full((2, 48), "a"), "image")
    with pytest.raises(ValueError, match="NaN"):
        h.encode(np.full((2, 48), np.nan, np.float32), "image")
    with pytest.raises(RuntimeError, match="not fitted"):
        make(method).encode(x, "image")
    with pytest.raises(ValueError, match="image_features has 400 rows but text_features has 399"):
        make(method).fit(x, y[:-1])
    with pytest.raises(ValueError, match="labels has 3 rows, expected 400"):
        make(method).fit(x, y, labels=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="integer class ids"):
        make(method).fit(x, y, labels=np.zeros(400, np.float32))
    with pytest.raises(ValueError, match="only 0 and 1"):
        make(method).fit(x, y, labels=np.full((400, 3), 2))
    with pytest.raises(ValueError, match="needs non-negative features"):
        make(method, image_transform="sqrt_l2").fit(x, y)


@pytest.mark.parametrize("method", METHODS)
def test_auto_transform_is_hellinger_for_histograms_and_l2_for_signed_features(method, data, tmp_path):
    x, y, _ = data
    h = make(method, 16).fit(np.abs(x), y)  # image: non-negative (bag-of-words like); text: signed
    config = json.loads((h.save_pretrained(tmp_path / "h") / "config.json").read_text())
    assert (config["image_transform"], config["text_transform"]) == ("sqrt_l2", "l2")
    with pytest.raises(ValueError, match="image features: transform 'sqrt_l2'.*needs non-negative"):
        h.encode(x, "image")
    h.fit(x, y)  # "auto" is resolved again on refit
    assert h.get_config()["image_transform"] == "l2"
    assert h.encode(x, "image").shape == (len(x), 2)


@pytest.mark.parametrize("bits", [24, 256])
def test_any_whole_number_of_bytes_is_a_code_length(data, bits):
    x, y, _ = data
    h = make("itq" if bits == 24 else "lsh", bits).fit(x, y)  # ITQ's rotation needs bits <= the CCA space
    codes = h.encode(x, "image")
    assert codes.shape == (len(x), bits // 8) and codes.dtype == np.uint8


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [0, 12, -8, 8.0, "64", True])
def test_bits_must_be_a_positive_multiple_of_8(method, bits):
    with pytest.raises(ValueError, match="bits must be a positive multiple of 8"):
        create_hasher(method, bits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_transform": "l1"}, "image_transform must be one of"),
        ({"shared_space": "pca"}, "shared_space must be one of"),
        ({"center": "none"}, "center must be one of"),
    ],
)
def test_linear_hasher_options_are_checked(kwargs, message):
    for method in ("lsh", "itq"):
        with pytest.raises(ValueError, match=message):
            create_hasher(method, 32, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "temperature must be a positive number"),
        ({"epochs": 2.5}, "epochs must be an int >= 1"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"neighbor_image_weight": 2.0}, r"neighbor_image_weight must be in \[0, 1\]"),
        ({"text_transform": "tfidf"}, "text_transform must be one of"),
    ],
)
def test_contrastive_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_hasher("contrastive", 32, **kwargs)


def test_itq_rotation_lowers_quantization_error_below_pca_sign():
    x, y, _ = paired_data(dim_image=32, shared=True)
    h = ITQHasher(16, n_iter=50).fit(x, y)
    errors = h.quantization_errors_
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), "ITQ error must not increase"
    # PCA-sign: the same stacked, centred, L2-normalised features, top-16 PCA, no rotation
    from hashing.lsh import apply_transform

    z = [apply_transform(f, "l2", "f") for f in (x, y)]
    v = np.concatenate([f - f.mean(0) for f in z])
    v = v @ pca_basis(v, 16)
    assert errors[-1] < 0.9 * quantization_error(v)
    # and the saved projection reproduces the rotated codes
    codes = unpack_codes(h.encode(x, "image"), 16)
    assert (codes == np.where(((z[0] - z[0].mean(0)) @ h._weight["image"]) >= 0, 1, -1)).all()


def test_itq_with_more_bits_than_shared_dims(data):
    x, y, _ = data  # CCA space has min(48, 20) = 20 dims, asked for 64 bits
    h = make("itq", 64).fit(x, y)
    codes = unpack_codes(h.encode(x, "image"), 64)
    assert len({tuple(col) for col in codes.T}) == 64, "every bit should be a different hyperplane"


def test_contrastive_bits_are_balanced(fitted, data):
    x, y, _ = data
    h = fitted["contrastive"]
    for feats, m in ((x, "image"), (y, "text")):
        means = unpack_codes(h.encode(feats, m), h.bits).mean(0)  # in [-1, 1]; 0 = half the items
        assert np.abs(means).max() < 0.3 and np.abs(means).mean() < 0.1, means


def test_contrastive_supervised_groups_classes_across_modalities():
    x, y, labels = paired_data(n=600, noise=0.5, n_classes=4, seed=1)
    x, x_te, y, y_te, labels, labels_te = x[:400], x[400:], y[:400], y[400:], labels[:400], labels[400:]
    h = make("contrastive", 32, epochs=40).fit(x, y, labels)
    ci, ct = h.encode(x_te, "image"), h.encode(y_te, "text")
    d = np.unpackbits(ci[:, None, :] ^ ct[None, :, :], axis=2).sum(2)
    same = labels_te[:, None] == labels_te[None, :]
    assert d[same].mean() < 0.25 * d[~same].mean()  # unsupervised codes only reach ~0.4 here
    # (n, 1) integer column vectors, as .mat files hold them, are class ids too
    h1 = make("contrastive", 32, epochs=40).fit(x, y, labels[:, None].astype(np.uint8))
    np.testing.assert_array_equal(h1.encode(x_te, "image"), h.encode(x_te, "image"))


def test_contrastive_neighbor_smoothing_runs_and_is_saved(data, tmp_path):
    x, y, _ = data
    h = make("contrastive", 16, neighbor_k=5).fit(x, y)
    assert len(h.loss_history_) == 30 and np.isfinite(h.loss_history_).all()
    assert h.loss_history_[-1] < h.loss_history_[0]
    config = json.loads((h.save_pretrained(tmp_path / "h") / "config.json").read_text())
    assert config["neighbor_k"] == 5


@pytest.mark.data
@pytest.mark.skipif(not WIKI.exists(), reason="needs ../shared/data/wiki")
def test_cca_itq_on_wiki_beats_chance():
    """Quick MAP@50 (ties broken by index) of CCA-ITQ on the Wiki split: regression guard only."""
    from scipy.io import loadmat

    d = loadmat(WIKI)
    h = create_hasher("itq", 32, image_transform="sqrt_l2").fit(d["I_tr"], d["T_tr"])
    lab_tr, lab_te = d["L_tr"].ravel(), d["L_te"].ravel()

    def map50(q, r):
        dist = np.unpackbits(q[:, None, :] ^ r[None, :, :], axis=2).sum(2)
        rel = lab_tr[np.argsort(dist, axis=1, kind="stable")[:, :50]] == lab_te[:, None]
        prec = np.cumsum(rel, 1) / np.arange(1, 51)
        return float(((prec * rel).sum(1) / np.maximum(rel.sum(1), 1)).mean())

    i2t = map50(h.encode(d["I_te"], "image"), h.encode(d["T_tr"], "text"))
    t2i = map50(h.encode(d["T_te"], "text"), h.encode(d["I_tr"], "image"))
    assert i2t > 0.22 and t2i > 0.38, (i2t, t2i)  # chance is about 0.12; measured 0.26 / 0.44


def test_package_exports_every_registered_hasher_under_its_method():
    exported = {getattr(hashing, name) for name in hashing.__all__ if name.endswith("Hasher") and name != "Hasher"}
    assert {cls.method for cls in exported} == set(available_methods()) == {"contrastive", "itq", "lsh", "mgsgh", "uddh"}
    for cls in exported:
        assert issubclass(cls, Hasher) and hashing.hasher_class(cls.method) is cls


def test_contrastive_settings_are_one_config_saved_with_the_resolved_transforms(data, tmp_path):
    from dataclasses import fields

    from hashing.contrastive import ContrastiveConfig

    x, y, _ = data
    h = make("contrastive", 16, neighbor_k=0).fit(np.abs(x), y)
    saved = json.loads((h.save_pretrained(tmp_path / "c") / "config.json").read_text())
    assert {f.name for f in fields(ContrastiveConfig)} <= set(saved)
    assert h.config.image_transform == "auto" and saved["image_transform"] == "sqrt_l2"  # resolved at fit
    loaded = Hasher.from_pretrained(tmp_path / "c")
    np.testing.assert_array_equal(loaded.encode(np.abs(x), "image"), h.encode(np.abs(x), "image"))
    for bad, match in ((dict(dropout=1.0), "dropout must be in"), (dict(batch_size=1), "at least 2"),
                       (dict(neighbor_weight=1.5), "neighbor_weight must be in"), (dict(epoch=3), "epoch")):
        with pytest.raises((ValueError, TypeError), match=match):
            ContrastiveConfig(**bad)


def test_shipped_itq_hasher_loads_into_its_config_and_saves_the_same_keys(tmp_path):
    from dataclasses import asdict

    from hashing.itq import ITQConfig

    shipped = Path(hashing.__file__).resolve().parents[1] / "retrieval" / "weights" / "lite" / "hasher"
    on_disk = json.loads((shipped / "config.json").read_text())
    h = Hasher.from_pretrained(shipped)
    assert isinstance(h.config, ITQConfig) and asdict(h.config) == {k: on_disk[k] for k in asdict(h.config)}
    resaved = json.loads((h.save_pretrained(tmp_path / "again") / "config.json").read_text())
    assert resaved == on_disk
    with pytest.raises(TypeError, match="n_iters"):
        create_hasher("itq", 64, n_iters=3)  # a misspelt setting is not silently ignored
    with pytest.raises(ValueError, match="n_iter must be an int >= 1"):
        create_hasher("itq", 64, n_iter=0)
    with pytest.raises(TypeError, match="n_iter"):
        create_hasher("lsh", 64, n_iter=3)  # ITQ's own setting is not a linear hasher's


#: small settings per registered hasher, so every method's projection is checked in a few seconds
SMALL = {
    **FAST,
    "uddh": {"n_buckets": 4, "n_iter": 2, "epochs_per_iter": 2, "batch_size": 40, "hidden_dim": 16, "progress": False},
    "mgsgh": {"epochs": 5, "hidden_dim": 32, "k": 5, "progress": False},
}


@pytest.mark.parametrize("method", available_methods())
def test_project_is_the_real_code_whose_sign_encode_packs(method):
    """``project`` is public for asymmetric search: its signs must be encode's bits, bit for bit,
    for every registered hasher (a hasher whose encode took another path would break the scorer)."""
    x, y, labels = paired_data(n=160, n_classes=4)
    h = create_hasher(method, 24, **SMALL.get(method, {}))
    with pytest.raises(RuntimeError, match=r"call fit\(\) before project\(\)"):
        h.project(x, "image")
    h.fit(x, y, labels)
    for feats, modality in ((x, "image"), (y, "text")):
        real = h.project(feats, modality)
        assert real.shape == (len(feats), 24) and np.issubdtype(real.dtype, np.floating)
        assert np.isfinite(real).all() and (real != 0).mean() > 0.99  # real-valued, not already signs
        assert len(np.unique(np.abs(real))) > 24  # magnitudes vary: there is something beyond the sign
        np.testing.assert_array_equal(np.packbits(real >= 0, axis=1), h.encode(feats, modality))
        np.testing.assert_array_equal(unpack_codes(h.encode(feats, modality), 24) * real >= 0, True)
    with pytest.raises(ValueError, match="dimension"):
        h.project(x[:, :-1], "image")
    with pytest.raises(ValueError, match="modality"):
        h.project(x, "audio")
