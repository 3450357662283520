import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from eval import hash_metrics as hm
from eval import hashing as cli
from eval.datasets_hashing import load_flickr8k, load_wiki
from hashing import base

WIKI = Path(__file__).resolve().parents[1] / "../shared/data/wiki/wikiData.mat"


class NearestMeanHasher(base.Hasher):
    """Test-only. Unsupervised: sign of a random projection (shared when both modalities have the
    same dim, as in a CLIP space). Supervised: the code of the nearest class mean, so perfectly
    separable data gives perfect codes and MAP 1."""

    method = "test-nearest-mean"

    def fit(self, image_features, text_features, labels=None):
        self.input_dims = {"image": image_features.shape[1], "text": text_features.shape[1]}
        self.fitted_labels = labels
        rng = np.random.default_rng(self.seed)
        self.state = {}
        if labels is None:
            shared = rng.standard_normal((image_features.shape[1], self.bits))
            for m, dim in self.input_dims.items():
                same = dim == image_features.shape[1]
                self.state[f"proj_{m}"] = shared if same else rng.standard_normal((dim, self.bits))
        else:
            classes = np.unique(labels)
            self.state["codes"] = rng.choice([-1.0, 1.0], size=(len(classes), self.bits))
            for m, x in (("image", image_features), ("text", text_features)):
                self.state[f"means_{m}"] = np.stack([x[labels == c].mean(0) for c in classes])
        return self

    def _project(self, features, modality):
        if "codes" not in self.state:
            return features @ self.state[f"proj_{modality}"]
        means = self.state[f"means_{modality}"]
        nearest = ((features[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        return self.state["codes"][nearest]

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = dict(state)


@pytest.fixture
def test_hasher(monkeypatch):
    monkeypatch.setitem(base._REGISTRY, NearestMeanHasher.method, NearestMeanHasher)
    return NearestMeanHasher.method


def write_wiki_like(path, n_tr=60, n_te=15, seed=0):
    """Wiki layout: I_* (n, 12) images, T_* (n, 5) texts, L_* (n, 1) uint8 classes 1..3."""
    rng = np.random.default_rng(seed)
    centres_i, centres_t = rng.normal(0, 5, (3, 12)), rng.normal(0, 5, (3, 5))
    arrays = {}
    for split, n in (("tr", n_tr), ("te", n_te)):
        y = rng.integers(0, 3, n)
        arrays[f"I_{split}"] = centres_i[y] + rng.normal(0, 0.1, (n, 12))
        arrays[f"T_{split}"] = centres_t[y] + rng.normal(0, 0.1, (n, 5))
        arrays[f"L_{split}"] = (y + 1).astype(np.uint8)[:, None]
    savemat(path, arrays)
    return arrays


# ---------------------------------------------------------------------------------------------
def test_load_wiki_layout(tmp_path):
    arrays = write_wiki_like(tmp_path / "w.mat")
    data = load_wiki(tmp_path / "w.mat")
    assert data.query.image.shape == (15, 12) and data.query.text.shape == (15, 5)
    assert data.retrieval.image.shape == (60, 12) and data.query.image.dtype == np.float32
    assert data.train is data.retrieval  # Wiki fits on the retrieval set
    np.testing.assert_array_equal(data.query.image_labels, arrays["L_te"][:, 0])
    assert data.relevance_for("i2t").shape == (15, 60)


def test_load_wiki_names_what_is_wrong(tmp_path):
    arrays = write_wiki_like(tmp_path / "w.mat")
    del arrays["T_te"]
    savemat(tmp_path / "missing.mat", arrays)
    with pytest.raises(ValueError, match="no key 'T_te'"):
        load_wiki(tmp_path / "missing.mat")
    arrays = write_wiki_like(tmp_path / "w.mat")
    arrays["L_tr"] = arrays["L_tr"][:-1]
    savemat(tmp_path / "short.mat", arrays)
    with pytest.raises(ValueError, match="L_tr has 59 rows, expected 60"):
        load_wiki(tmp_path / "short.mat")
    with pytest.raises(FileNotFoundError):
        load_wiki(tmp_path / "nope.mat")


def test_cli_end_to_end_on_wiki_layout(tmp_path, test_hasher, capsys):
    write_wiki_like(tmp_path / "w.mat")
    out, plots = tmp_path / "out.json", tmp_path / "plots"
    cli.main(["--dataset", "wiki", "--data", str(tmp_path / "w.mat"), "--method", test_hasher,
              "--bits", "16", "32", "--output", str(out), "--plots", str(plots), "--no-progress"])
    report = json.loads(out.read_text())
    assert report["format_version"] == 1 and "random" in report["conventions"]["ties"]
    for bits in ("16", "32"):
        for direction in ("i2t", "t2i"):
            res = report["results"][test_hasher][bits][direction]
            assert {"map@50", "map@all", "p@10", "p@h<=2"} <= set(res)
            assert all(0.0 <= res[k] <= 1.0 for k in res)
            curves = report["curves"][test_hasher][bits][direction]
            assert len(curves["pr_curve"]["recall"]) == int(bits) + 1
        for kind in ("pr", "topk"):
            png = plots / f"{kind}_{bits}bits.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| method | bits | i2t MAP@50 | i2t MAP@all | i2t P@10 | t2i MAP@50 |" in table
    assert "expected value over a uniformly random order of tied items" in table

    # the JSON numbers are image queries vs retrieval texts (i2t), recomputed here independently
    data = load_wiki(tmp_path / "w.mat")
    hasher = NearestMeanHasher(bits=32, seed=0).fit(data.train.image, data.train.text)
    d = hm.hamming_distances(hasher.encode(data.query.image, "image"), hasher.encode(data.retrieval.text, "text"))
    rel = hm.label_relevance(data.query.image_labels, data.retrieval.text_labels)
    assert report["results"][test_hasher]["32"]["i2t"]["map@all"] == pytest.approx(hm.mean_average_precision(d, rel))


def test_cli_supervised_passes_labels(tmp_path, test_hasher):
    write_wiki_like(tmp_path / "w.mat")
    report = cli.main(["--dataset", "wiki", "--data", str(tmp_path / "w.mat"), "--method", test_hasher,
                       "--bits", "16", "--supervised", "--no-progress"])
    # separable classes + class-mean codes: every item at distance 0 shares the query's class
    for direction in ("i2t", "t2i"):
        assert report["results"][test_hasher]["16"][direction]["map@all"] == pytest.approx(1.0)


def test_cli_rejects_unknown_method(tmp_path, capsys):
    write_wiki_like(tmp_path / "w.mat")
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "wiki", "--data", str(tmp_path / "w.mat"), "--method", "no-such-hasher"])
    assert "unknown --method no-such-hasher" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
def write_flickr_like(tmp_path, n_train=4, n_test=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    images = [{"filename": f"{i}.jpg", "split": "train" if i < n_train else "test",
               "sentences": [{"raw": f"caption {j} of {i}"} for j in range(5)]} for i in range(n_train + n_test)]
    (tmp_path / "images").mkdir()
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img = rng.standard_normal((n, dim))
        arrays[f"{split}_image"] = img
        arrays[f"{split}_text"] = np.repeat(img, 5, axis=0) + rng.normal(0, 0.01, (5 * n, dim))
    np.savez(tmp_path / "emb.npz", **arrays)
    return tmp_path / "dataset_flickr8k.json", tmp_path / "emb.npz"


def test_load_flickr8k_pairs(tmp_path):
    annotations, emb = write_flickr_like(tmp_path)
    data = load_flickr8k(emb, annotations)
    assert data.relevance == "paired" and not data.has_class_labels
    assert data.train.image.shape == data.train.text.shape == (20, 8)  # one row per train caption
    np.testing.assert_array_equal(data.relevance_for("i2t").block(0, 3),
                                  np.kron(np.eye(3, dtype=bool), np.ones((1, 5), dtype=bool)))
    np.savez(emb, train_image=np.zeros((4, 8)), train_text=np.zeros((19, 8)),
             test_image=np.zeros((3, 8)), test_text=np.zeros((15, 8)))
    with pytest.raises(ValueError, match="re-encode"):
        load_flickr8k(emb, annotations)


def test_cli_flickr8k_from_embedding_cache(tmp_path, test_hasher):
    annotations, emb = write_flickr_like(tmp_path)
    args = ["--dataset", "flickr8k", "--data", str(annotations), "--embeddings", str(emb),
            "--method", test_hasher, "--bits", "32", "--no-progress"]
    report = cli.main(args)
    assert report["dataset"]["relevance"] == "paired"
    assert report["results"][test_hasher]["32"]["i2t"]["map@all"] > 0.9  # captions = image + tiny noise
    with pytest.raises(SystemExit):
        cli.main(args + ["--supervised"])


@pytest.mark.data
@pytest.mark.skipif(not WIKI.is_file(), reason="needs ../shared/data/wiki/wikiData.mat")
def test_real_wiki_split():
    data = load_wiki(WIKI)
    assert data.query.image.shape == (693, 128) and data.query.text.shape == (693, 10)
    assert data.retrieval.image.shape == (2173, 128)
    assert set(np.unique(data.retrieval.image_labels)) == set(range(1, 11))


def test_flickr8k_cache_is_reencoded_unless_made_by_that_very_encoder(tmp_path, monkeypatch):
    """A cache named cache/flickr8k-lite.npz must not outlive the weights that made it."""
    import retrieval.encoders
    from eval import datasets_hashing as dh
    from eval.embedding_cache import encoder_fingerprint
    from toy_encoder import ToyEncoder

    current = {"dim": 8}
    encoded = []
    monkeypatch.setattr(retrieval.encoders, "load_encoder", lambda model_id: ToyEncoder(dim=current["dim"]))

    def fake_encode(model_id, annotations, images, out, progress=True, encoder=None):
        encoded.append(encoder.dim)
        return dh.save_embeddings(out, {"test_image": np.zeros((2, encoder.dim))}, encoder_fingerprint(encoder))

    monkeypatch.setattr(dh, "encode_flickr8k", fake_encode)
    cache = tmp_path / "flickr8k-toy.npz"
    with pytest.raises(FileNotFoundError, match="pass --model"):
        dh.flickr8k_embeddings(cache, None, "ann.json", None)
    assert dh.flickr8k_embeddings(cache, "toy", "ann.json", None) == cache and encoded == [8]
    dh.flickr8k_embeddings(cache, "toy", "ann.json", None)
    assert encoded == [8], "made by the same encoder: reused"
    assert dh.cache_fingerprint(cache) == json.loads(json.dumps(encoder_fingerprint(ToyEncoder(dim=8))))
    current["dim"] = 4
    dh.flickr8k_embeddings(cache, "toy", "ann.json", None)
    assert encoded == [8, 4], "another encoder under the same id: re-encoded"
    assert dh.flickr8k_embeddings(cache, None, "ann.json", None) == cache, "no model: taken as it is"
    dh.save_embeddings(cache, {"test_image": np.zeros((2, 4))})
    assert dh.cache_fingerprint(cache) is None
    dh.flickr8k_embeddings(cache, "toy", "ann.json", None)
    assert encoded == [8, 4, 4], "a cache from before fingerprints: re-encoded once"


def test_fit_embeddings_made_by_another_encoder_are_refused(tmp_path, capsys):
    from eval import datasets_hashing as dh
    from eval.embedding_cache import encoder_fingerprint
    from eval.retrieval import check_cache_encoder
    from toy_encoder import ToyEncoder

    cache = tmp_path / "fit.npz"
    dh.save_embeddings(cache, {"train_image": np.zeros((2, 8))}, encoder_fingerprint(ToyEncoder(dim=8)))
    check_cache_encoder(cache, ToyEncoder(dim=8))
    with pytest.raises(SystemExit, match="made by another encoder than 'toy'"):
        check_cache_encoder(cache, ToyEncoder(dim=4))
    dh.save_embeddings(cache, {"train_image": np.zeros((2, 8))})
    check_cache_encoder(cache, ToyEncoder(dim=4))
    assert "records no encoder fingerprint" in capsys.readouterr().out


def test_cli_hasher_arg_reaches_the_method_and_a_bad_one_is_a_usage_error(tmp_path, capsys):
    write_wiki_like(tmp_path / "w.mat")
    report = cli.main(["--dataset", "wiki", "--data", str(tmp_path / "w.mat"), "--method", "mgsgh", "--bits", "16",
                       "--supervised", "--no-progress", "--hasher-arg", "mgsgh.epochs=2",
                       "--hasher-arg", "mgsgh.hidden_dim=16", "--hasher-arg", "mgsgh.progress=false"])
    assert report["hasher_args"] == {"mgsgh": {"epochs": 2, "hidden_dim": 16, "progress": False}}
    assert 0 <= report["results"]["mgsgh"]["16"]["i2t"]["map@50"] <= 1
    for bad, says in ((["--hasher-arg", "mgsgh.no_such=1"], "--hasher-arg mgsgh"),
                      (["--hasher-arg", "itq.epochs=1"], "not among --method")):
        with pytest.raises(SystemExit):
            cli.main(["--dataset", "wiki", "--data", str(tmp_path / "w.mat"), "--method", "mgsgh", "--bits", "16",
                      *bad])
        assert says in capsys.readouterr().err
