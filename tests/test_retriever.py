"""Retriever: build, add, search (both directions, batch, rerank), persistence, thread safety."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hashing.base import unpack_codes
from hashing.index import available_indexes
from hub_cache import add_to_hub_cache
from rerank import FloatReranker, fuse
from retrieval import Hit, Retriever
from retrieval.gallery import Gallery
from retrieval.store import Transaction
from common.hub import ModelNotAvailableError
from toy_encoder import COLORS, ToyEncoder, solid_images

NAMES = list(COLORS)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import faiss

    faiss.omp_set_num_threads(1)


@pytest.fixture
def paths(tmp_path: Path) -> list[str]:
    return solid_images(tmp_path)


def build(paths: list[str], **kwargs) -> Retriever:
    """Images of ``paths`` (colours in NAMES order) and one caption per colour, paired by colour."""
    kwargs.setdefault("fit_pairs", (np.arange(len(paths)), np.arange(len(paths))))
    kwargs.setdefault("encoder", ToyEncoder())
    return Retriever.build(
        images=paths, texts=[f"a {n} square" for n in NAMES], bits=16,
        image_payloads=[{"name": n} for n in NAMES[:len(paths)]], text_payloads=[{"caption": n} for n in NAMES], **kwargs)


def hits_of(hits: list[Hit]) -> list[tuple]:
    return [(h.id, round(h.score, 5), h.hamming, json.dumps(h.payload)) for h in hits]


def test_text_query_finds_its_image_and_hits_carry_stage1_facts(paths):
    r = build(paths)
    for name in ("red", "navy", "green"):
        hits = r.search(f"{name}", k=len(NAMES), rerank="float")
        assert hits[0].payload == {"name": name} and hits[0].modality == "image"
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Hamming distances are those of the codes; stage-1-only scores are 1 - 2d/bits
    query_code = r.hasher.encode(r.encoder.encode_texts(["navy"]), "text")
    image_codes = r.hasher.encode(r.galleries["image"].vectors, "image")
    expected = (unpack_codes(query_code, 16) != unpack_codes(image_codes, 16)).sum(1)
    for h in r.search("navy", k=5, rerank=False):
        assert h.hamming == expected[h.id]
        assert h.score == pytest.approx(1 - 2 * h.hamming / 16)


def test_image_query_searches_texts(paths):
    r = build(paths)
    hits = r.search(Path(paths[NAMES.index("yellow")]), k=3, rerank="float")
    assert hits[0].payload == {"caption": "yellow"} and hits[0].modality == "text"


def test_float_rerank_scores_are_exact_cosines_of_the_candidates(paths):
    r = build(paths)
    q = r.encoder.encode_texts(["orange"])[0]
    hits = r.search("orange", k=4, candidates=6, rerank="float")
    assert len(hits) == 4
    vectors = r.galleries["image"].vectors
    for h in hits:
        assert h.score == pytest.approx(float(vectors[h.id] @ q), abs=1e-5)
    stage1 = {h.id for h in r.search("orange", k=6, rerank=False)}
    assert {h.id for h in hits} <= stage1  # reranking never looks beyond the candidates


def test_fusion_weight_mixes_stage1_back_in(paths):
    r = build(paths, reranker="float", fusion_weight=0.5)
    hits = r.search("purple", k=12, candidates=12)  # every candidate is a hit: z-scores over all of them
    ids = np.array([h.id for h in hits])
    cosine = r.galleries["image"].vectors[ids] @ r.encoder.encode_texts(["purple"])[0]
    stage1 = 1 - 2 * np.array([h.hamming for h in hits]) / 16
    assert np.allclose([h.score for h in hits], fuse(stage1, cosine, 0.5), atol=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_batch_search_equals_single_searches_in_both_directions(paths):
    r = build(paths)
    queries = ["red", Path(paths[3]), "blue", Path(paths[0]), "pink"]
    batch = r.search_batch(queries, k=4, rerank="float")
    for q, b in zip(queries, batch):
        assert hits_of(b) == hits_of(r.search(q, k=4, rerank="float"))


def test_add_later_and_ids(paths, tmp_path):
    r = build(paths[:6])
    assert len(r.galleries["image"]) == 6
    new = r.add_images(paths[6:], payloads=[{"name": n} for n in NAMES[6:]])
    assert new.tolist() == list(range(6, len(NAMES)))
    assert r.search("navy", k=1, rerank="float")[0].payload == {"name": "navy"}
    with pytest.raises(ValueError, match="payloads"):
        r.add_images(paths[:2], payloads=[{"x": 1}])
    with pytest.raises(TypeError, match=r"payloads\[0\]"):
        r.add_texts(["red"], payloads=[object()])
    with pytest.raises(ValueError, match="already in the index"):
        r.add_texts(["red"], ids=np.array([0]))
    assert len(r.galleries["text"]) == len(NAMES)  # failed adds changed nothing


def test_missing_inputs_are_clear_errors(paths):
    r = build(paths, store_vectors=False)
    with pytest.raises(ValueError, match="embeddings"):
        r.search("red", rerank="float")
    with pytest.raises(ValueError, match="unknown reranker"):
        r.search("red", rerank="nope")
    with pytest.raises(ValueError, match="fit_pairs"):
        Retriever.build(images=paths[:3], texts=["red"], encoder=ToyEncoder(), bits=16)
    unfitted = Retriever(ToyEncoder(), "itq", bits=16)
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.add_texts(["red"])
    assert build(paths).search("red", k=3, rerank=False)  # stage 1 needs no vectors


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_save_and_load_round_trip(paths, tmp_path, index):
    r = build(paths, index=index, reranker=FloatReranker(), vector_dtype="fp32")
    before = [hits_of(r.search(q, k=5)) for q in ("red", "cyan", Path(paths[2]))]
    saved = r.save_pretrained(tmp_path / "saved")
    config = json.loads((saved / "retriever.json").read_text())
    assert config["encoder"] == {"id": "toy", "class": "ToyEncoder", "dim": 16, "preprocess": {"size": 4},
                                 "weights": None}
    assert sorted(p.name for p in saved.iterdir()) == ["chunks", "hasher", "retriever.json", "store.sqlite"]
    assert config["reranker"] == {"method": "float"} and config["index"]["kind"] == index
    loaded = Retriever.from_pretrained(saved, encoder=ToyEncoder())
    assert [hits_of(loaded.search(q, k=5)) for q in ("red", "cyan", Path(paths[2]))] == before
    assert [loaded.get_item("image", i)[0] for i in range(len(paths))] == paths
    assert loaded.get_item("text", 2) == (f"a {NAMES[2]} square", {"caption": NAMES[2]})
    with pytest.raises(KeyError, match="no image with id 99"):
        loaded.get_item("image", 99)


def test_load_from_a_local_hub_cache_offline(paths, tmp_path, offline_hub):
    saved = build(paths).save_pretrained(tmp_path / "saved")
    add_to_hub_cache(offline_hub, "someone/toy-retriever", saved)
    loaded = Retriever.from_pretrained("someone/toy-retriever", encoder=ToyEncoder())
    assert loaded.search("red", k=1, rerank="float")[0].payload == {"name": "red"}
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE"):
        Retriever.from_pretrained("someone/not-cached", encoder=ToyEncoder())


def test_loading_refuses_an_encoder_with_other_preprocessing(paths, tmp_path):
    saved = build(paths).save_pretrained(tmp_path / "saved")

    class Other(ToyEncoder):
        @property
        def preprocess_config(self):
            return {"size": 8}

    with pytest.raises(ValueError, match="preprocesses images"):
        Retriever.from_pretrained(saved, encoder=Other())
    assert Retriever.from_pretrained(saved, encoder=Other(), check_preprocess=False).search("red", k=1)
    with pytest.raises(ValueError, match="16-d encoder"):
        Retriever.from_pretrained(saved, encoder=ToyEncoder(dim=8))


def test_loading_refuses_an_encoder_whose_weights_changed(paths, tmp_path):
    class Fingerprinted(ToyEncoder):
        def __init__(self, weights_id, seed=0):
            super().__init__(seed=seed)
            self._weights_id = weights_id

        @property
        def weights_id(self):
            return self._weights_id

    saved = build(paths, encoder=Fingerprinted("a" * 64)).save_pretrained(tmp_path / "saved")
    assert json.loads((saved / "retriever.json").read_text())["encoder"]["weights"] == "a" * 64
    assert Retriever.from_pretrained(saved, encoder=Fingerprinted("a" * 64)).search("red", k=1)[0].payload == {"name": "red"}
    with pytest.raises(ValueError, match="other weights than encoder 'toy'.*aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        Retriever.from_pretrained(saved, encoder=Fingerprinted("b" * 64, seed=1))
    assert Retriever.from_pretrained(saved, encoder=Fingerprinted("b" * 64), check_weights=False).search("red", k=1)
    assert Retriever.from_pretrained(saved, encoder=ToyEncoder()).search("red", k=1)  # an encoder without one: not checked
    config = json.loads((saved / "retriever.json").read_text())
    config["encoder"].pop("weights")  # as saved before fingerprints were recorded
    (saved / "retriever.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="records no weights fingerprint.*'lite:heads'"):
        assert Retriever.from_pretrained(saved, encoder=Fingerprinted("b" * 64)).search("red", k=1)


def test_a_failed_save_leaves_the_previous_save_intact(paths, tmp_path, monkeypatch):
    r = build(paths)
    saved = r.save_pretrained(tmp_path / "saved")
    snapshot = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    r.add_texts(["white noise"])

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Transaction, "append", broken)
    with pytest.raises(OSError, match="disk full"):
        r.save_pretrained(saved)
    after = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    assert after == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["saved", *[Path(x).name for x in paths]])


def test_concurrent_searches_equal_sequential_ones(paths):
    r = build(paths, reranker="float")
    queries = [NAMES[i % len(NAMES)] if i % 3 else Path(paths[i % len(paths)]) for i in range(60)]
    sequential = [hits_of(r.search(q, k=5)) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda q: hits_of(r.search(q, k=5)), queries))
    assert concurrent == sequential


def test_searches_during_adds_see_a_consistent_gallery(paths):
    r = build(paths[:4])
    extra = [f"{NAMES[i % len(NAMES)]} stripe" for i in range(40)]

    def add(i):
        return r.add_texts([extra[i]])

    def search(i):
        hits = r.search(Path(paths[i % 4]), k=3, rerank="float")
        return all(h.payload is None or "caption" in h.payload for h in hits)

    with ThreadPoolExecutor(max_workers=6) as pool:
        adds = [pool.submit(add, i) for i in range(40)]
        searches = [pool.submit(search, i) for i in range(40)]
        assert all(s.result() for s in searches)
        ids = sorted(int(a.result()[0]) for a in adds)
    assert ids == list(range(len(NAMES), len(NAMES) + 40))
    assert len(r.galleries["text"]) == len(NAMES) + 40


def test_every_index_kind_serves_a_retriever(paths):
    for kind in available_indexes():
        if kind == "gpu_flat":
            continue
        params = {"ivf": {"nlist": 2, "nprobe": 2}, "buckets": {"nbuckets": 2, "e": 2}}.get(kind, {})
        r = build(paths, index=kind, index_params=params)
        assert r.search("green", k=1, rerank="float")[0].payload == {"name": "green"}


def test_from_dataset_indexes_every_image_and_caption(paths):
    from eval.karpathy import CaptionDataset

    captions = [f"a {n} square" for n in NAMES] + [f"something {n}" for n in NAMES]
    ds = CaptionDataset("toy", "test", [Path(p) for p in paths], captions, np.tile(np.arange(len(NAMES)), 2))
    r = Retriever.from_dataset(ds, encoder=ToyEncoder(), bits=16)
    assert (len(r.galleries["image"]), len(r.galleries["text"])) == (len(NAMES), 2 * len(NAMES))
    assert r.search("magenta", k=1, rerank="float")[0].payload == {"path": paths[NAMES.index("magenta")]}
    owners = {h.payload["image_id"] for h in r.search(Path(paths[NAMES.index("cyan")]), k=2, rerank="float")}
    assert owners == {NAMES.index("cyan")}


def test_format_1_directories_still_load_and_save_as_format_2(paths, tmp_path):
    r = build(paths, reranker=FloatReranker(), vector_dtype="fp32")
    old = tmp_path / "v1"
    r.hasher.save_pretrained(old / "hasher")
    for modality, gallery in r.galleries.items():
        gallery.save(old / modality)
    config = {**r.config(), "format_version": 1, "galleries": {m: len(g) for m, g in r.galleries.items()}}
    del config["vector_dtype"]
    (old / "retriever.json").write_text(json.dumps(config))
    queries = ("red", "cyan", Path(paths[2]))
    expected = [hits_of(r.search(q, k=5)) for q in queries]
    loaded = Retriever.from_pretrained(old, encoder=ToyEncoder())
    assert [hits_of(loaded.search(q, k=5)) for q in queries] == expected
    loaded.vector_dtype = "fp32"
    upgraded = Retriever.from_pretrained(loaded.save_pretrained(tmp_path / "v2"), encoder=ToyEncoder())
    assert json.loads((tmp_path / "v2" / "retriever.json").read_text())["format_version"] == 2
    assert [hits_of(upgraded.search(q, k=5)) for q in queries] == expected


def test_fp16_storage_keeps_rankings_and_a_retriever_on_disk_commits_each_add(paths, tmp_path):
    r = build(paths, reranker=FloatReranker())
    queries = ["red", "cyan", "navy", Path(paths[2])]
    saved = Retriever.from_pretrained(r.save_pretrained(tmp_path / "saved"), encoder=ToyEncoder())
    for q in queries:
        a, b = r.search(q, k=5), saved.search(q, k=5)
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=2e-3)
    live = Retriever.create(tmp_path / "live", encoder=ToyEncoder(), hasher=r.hasher)
    live.add_images(paths[:3], payloads=[{"n": i} for i in range(3)])
    live.add_texts(["a red square"])
    live.close()
    reopened = Retriever.open(tmp_path / "live", encoder=ToyEncoder())
    assert len(reopened.galleries["image"]) == 3 and reopened.get_item("image", 1) == (paths[1], {"n": 1})
    assert reopened.search(Path(paths[0]), k=1)[0].item == "a red square"
    with pytest.raises(FileExistsError, match="already holds a retriever"):
        Retriever.create(tmp_path / "live", encoder=ToyEncoder(), hasher=r.hasher)
    with pytest.raises(ValueError, match="none ships with encoder 'toy'"):
        Retriever.create(tmp_path / "other", encoder=ToyEncoder())


def unit_vectors(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_store_searches_exactly_until_it_holds_enough_codes_to_train_its_ivf_index(paths, tmp_path):
    """A store is filled a chunk at a time: IVF cells trained on the first chunk alone would be few
    codes per cell, and a store smaller than nlist could not even be opened again."""
    rng = np.random.default_rng(0)
    live = Retriever.create(tmp_path / "ivf", encoder=ToyEncoder(), hasher=build(paths).hasher, index="ivf",
                            index_params={"nlist": 2, "nprobe": 1})  # trains at 39 x 2 = 78 codes
    first = unit_vectors(rng, 10)
    live.add_vectors("image", first, [f"first{i}" for i in range(10)])
    gallery = live.galleries["image"]
    assert gallery.is_standing_in and gallery.index.kind == "flat" and len(gallery) == 10
    live.close()
    reopened = Retriever.open(tmp_path / "ivf", encoder=ToyEncoder(), writable=True)
    assert reopened.galleries["image"].is_standing_in and len(reopened.galleries["image"]) == 10
    reopened.add_vectors("image", unit_vectors(rng, 70), [f"more{i}" for i in range(70)])
    gallery = reopened.galleries["image"]
    assert gallery.index.kind == "ivf" and not gallery.is_standing_in and len(gallery) == 80
    found = gallery.index.search(reopened.hasher.encode(first, "image"), 1)
    assert (found.distances[:, 0] == 0).all()  # every item still found by its own code
    assert reopened.get_item("image", 3)[0] == "first3"
    reopened.close()
    assert Retriever.open(tmp_path / "ivf", encoder=ToyEncoder()).galleries["image"].index.kind == "ivf"


def test_a_bucket_index_that_cannot_be_trained_yet_keeps_serving_exactly(paths, tmp_path):
    live = Retriever.create(tmp_path / "buckets", encoder=ToyEncoder(), hasher=build(paths).hasher, index="buckets",
                            index_params={"nbuckets": 2})
    same = np.repeat(unit_vectors(np.random.default_rng(1), 1), 80, axis=0)  # one distinct code: no 2 centres
    with pytest.warns(UserWarning, match="buckets index not trained on 80 codes"):
        live.add_vectors("image", same, [f"x{i}" for i in range(80)])
    gallery = live.galleries["image"]
    assert gallery.is_standing_in and len(gallery) == 80
    assert live.search_embeddings(same[:1], "image", k=3, rerank=False, target="image")[0][0].hamming == 0


def test_opening_a_store_hands_the_index_builds_temporaries_back(paths, tmp_path, monkeypatch):
    import platform

    from retrieval import stored_gallery

    assert stored_gallery.return_free_heap() is (platform.libc_ver()[0] == "glibc")
    live = Retriever.create(tmp_path / "live", encoder=ToyEncoder(), hasher=build(paths).hasher)
    live.add_images(paths[:4])
    live.close()
    calls = []
    monkeypatch.setattr(stored_gallery, "return_free_heap", lambda: calls.append(1) or True)
    reopened = Retriever.open(tmp_path / "live", encoder=ToyEncoder())
    assert calls == [1], "one trim per gallery that built an index"
    assert len(reopened.galleries["image"]) == 4


def test_images_only_builds_fit_on_the_images_or_fall_back_to_lsh(paths):
    with pytest.warns(UserWarning, match="only 12 images .* using LSH"):
        r = Retriever.build(images=paths, encoder=ToyEncoder(), bits=16)
    assert r.hasher.method == "lsh" and "text" not in r.galleries
    assert r.search("red", k=1, rerank="float")[0].item == paths[0]
    import retrieval.retriever as retriever_module

    many = np.repeat(r.encoder.encode_images(paths), 30, axis=0)
    many += np.random.default_rng(0).normal(0, 0.01, many.shape).astype(np.float32)
    r = Retriever.build(image_vectors=many, images=[None] * len(many), encoder=ToyEncoder(), bits=16)
    assert r.hasher.method == "itq" and len(many) >= retriever_module.MIN_IMAGES_TO_FIT


def test_the_cascade_hands_the_reranker_the_float_best_of_the_hamming_top_n(paths, tmp_path):
    captions = [f"a {a} and {b} square" for a in NAMES for b in NAMES]
    r = Retriever.build(images=paths, texts=captions, encoder=ToyEncoder(), bits=16,
                        fit_pairs=(np.repeat(np.arange(len(paths)), len(NAMES)), np.arange(len(captions))),
                        hamming_candidates={"image": None, "text": 60})
    query = r.encoder.encode_images([paths[3]])
    text_vectors = r.galleries["text"].vectors
    hamming = r.galleries["text"].index.search(r.hasher.encode(query, "image"), 60).ids[0]
    cosine = text_vectors[hamming] @ query[0]
    expected = set(hamming[np.argsort(-cosine, kind="stable")[:20]].tolist())
    hits = r.search_embeddings(query, "image", k=20, candidates=20, rerank=False)[0]
    assert {h.id for h in hits} == expected
    assert [h.score for h in hits] == sorted(h.score for h in hits)[::-1]  # ranked by the float cosine
    assert hits[0].score == pytest.approx(float(cosine.max()), abs=1e-6)
    plain = Retriever.build(images=paths, texts=captions, encoder=ToyEncoder(), bits=16, hamming_candidates=None,
                            fit_pairs=(np.repeat(np.arange(len(paths)), len(NAMES)), np.arange(len(captions))))
    plain_hits = plain.search_embeddings(query, "image", k=20, candidates=20, rerank=False)[0]
    assert {h.id for h in plain_hits} == set(hamming[:20].tolist())  # Hamming top-20 only
    assert r.search_embeddings(query, "image", k=5, candidates=20, rerank="float")[0][0].id == hits[0].id
    r.vector_dtype = "fp32"
    stored = Retriever.from_pretrained(r.save_pretrained(tmp_path / "saved"), encoder=ToyEncoder())
    assert hits_of(stored.search_embeddings(query, "image", k=20, candidates=20, rerank=False)[0]) == hits_of(hits)
    with pytest.raises(ValueError, match=r"hamming_candidates\['text'\] must be an int >= 1 or None"):
        Retriever(ToyEncoder(), "itq", hamming_candidates={"text": 0})


def test_bucket_index_retriever_answers_k_hits():
    """Issue 22: 3,000 items under index="buckets" (1,024 buckets, about 3 items each) answered 1-3 hits for k=5."""
    from hashing import create_hasher

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    r = Retriever(encoder="lite", hasher=create_hasher("itq", 64).fit(x, x), index="buckets")  # lite: lazy, unloaded
    r.add_vectors("image", x, [None] * len(x))
    q = rng.standard_normal((50, 256)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for rerank in (False, "float"):
        assert {len(hits) for hits in r.search_embeddings(q, "text", k=5, rerank=rerank)} == {5}
