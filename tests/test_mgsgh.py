"""MGSGH (hashing/mgsgh.py): the mutual-kNN graphs, the encoding rule for new and training rows,
labels kept as ids, training, persistence, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hashing.base import Hasher, hasher_class, unpack_codes
from hashing.mgsgh import Graph, MGSGHHasher, positive_groups, unique_rows
from test_uddh import K, clustered_pairs  # the same K-cluster paired data UDDH is tested on

FAST = {"epochs": 30, "hidden_dim": 64, "progress": False}


@pytest.fixture(scope="module")
def fitted() -> tuple[MGSGHHasher, np.ndarray, np.ndarray, np.ndarray]:
    img, txt, labels = (a[:160] for a in clustered_pairs(240))
    return MGSGHHasher(bits=16, seed=0, k=5, **FAST).fit(img, txt, labels), img, txt, labels


def held_out() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the fixture's draw (same clusters, same projections) that it was not fitted on."""
    img, txt, labels = clustered_pairs(240)
    return img[160:], txt[160:], labels[160:]


def test_graph_is_the_mutual_knn_graph_of_euclidean_distance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    g = Graph.build(x, 4)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    knn = np.argsort(d2, axis=1)[:, :4]
    in_knn = np.zeros((40, 40), bool)
    in_knn[np.arange(40)[:, None], knn] = True
    expected = in_knn & in_knn.T  # eqs. 2-3: each in the other's k nearest
    got = np.zeros((40, 40), bool)
    rows = np.repeat(np.arange(40), np.diff(g.indptr))
    got[rows, g.indices] = True
    assert (got == expected).all() and not got.diagonal().any()
    w = np.zeros((40, 40))
    w[rows, g.indices] = g.weights
    assert np.allclose(w, w.T) and np.allclose(g.degree, 1 + w.sum(1))
    # weights fall with distance (closer neighbours weigh more)
    assert np.allclose(g.weights, np.exp(-d2[rows, g.indices] / g.sigma2), rtol=1e-4)
    assert np.allclose(g.radius2, np.sort(d2, axis=1)[:, 3], rtol=1e-4)


def test_propagation_is_the_normalised_adjacency_with_self_loops():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 6)).astype(np.float32)
    g = Graph.build(x, 3)
    a = np.eye(30)
    rows = np.repeat(np.arange(30), np.diff(g.indptr))
    a[rows, g.indices] = g.weights
    dinv = 1 / np.sqrt(a.sum(1))
    assert np.allclose(g.propagate(x), (dinv[:, None] * a * dinv[None]) @ x, atol=1e-5)


def test_a_new_item_neighbours_training_nodes_only_by_the_stated_rule():
    rng = np.random.default_rng(3)
    nodes = rng.standard_normal((50, 4)).astype(np.float32)
    g = Graph.build(nodes, 5)
    q = rng.standard_normal((3, 4)).astype(np.float32)
    d2 = ((q[:, None] - nodes[None]) ** 2).sum(-1)
    for mutual in (False, True):
        expected = []
        for i in range(3):
            nb = np.argsort(d2[i])[:5]
            if mutual:
                nb = nb[d2[i, nb] <= g.radius2[nb] * (1 + 1e-5)]
            w = np.exp(-d2[i, nb] / g.sigma2)
            deg = 1 + w.sum()
            expected.append(q[i] / deg + (w / np.sqrt(deg * g.degree[nb])) @ nodes[nb])
        assert np.allclose(g.propagate_new(q, nodes, 5, mutual=mutual), np.array(expected), atol=1e-4)


def test_identical_rows_are_one_node():
    x = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]], np.float32)
    first, node = unique_rows(x)
    assert list(first) == [0, 1, 3] and list(node) == [0, 1, 0, 2, 1]


def test_labels_stay_ids_and_pairs_sharing_an_image_are_positives_without_labels():
    ids, hot = positive_groups(np.array([5, 9, 5]), 3, np.zeros(3))
    assert hot is None and list(ids) == [5, 9, 5] and ids.ndim == 1  # never expanded to one-hot
    ids, hot = positive_groups(np.array([[2], [3], [2]]), 3, np.zeros(3))
    assert list(ids) == [2, 3, 2]
    ids, hot = positive_groups(None, 3, np.array([0, 0, 1]))
    assert list(ids) == [0, 0, 1]
    ids, hot = positive_groups(np.array([[1, 0], [1, 1], [0, 1]]), 3, np.zeros(3))
    assert ids is None and hot.shape == (3, 2)
    with pytest.raises(ValueError, match="one row per pair"):
        positive_groups(np.arange(4), 3, np.zeros(3))
    with pytest.raises(ValueError, match="multi-hot"):
        positive_groups(np.array([[0, 2], [1, 0], [0, 1]]), 3, np.zeros(3))
    with pytest.raises(TypeError, match="integer ids"):
        positive_groups(np.array([0.5, 1, 2]), 3, np.zeros(3))


def test_fitted_codes_put_same_class_pairs_closer_across_modalities(fitted):
    h, img, txt, labels = fitted
    test_img, test_txt, test_labels = held_out()
    ci = unpack_codes(h.encode(test_img, "image"), 16)
    ct = unpack_codes(h.encode(test_txt, "text"), 16)
    dist = (16 - ci @ ct.T) / 2
    same = test_labels[:, None] == test_labels[None, :]
    assert dist[same].mean() + 2 < dist[~same].mean()
    assert h.loss_history_[-1] < h.loss_history_[0]


def test_a_new_item_gets_the_same_code_alone_and_in_any_batch(fitted):
    h, img, txt, _ = fitted
    new_img, new_txt, _ = held_out()
    for x, m in ((new_img, "image"), (new_txt, "text")):
        batch = h.encode(x, m)
        alone = np.concatenate([h.encode(x[i:i + 1], m) for i in range(len(x))])
        shuffled = h.encode(np.concatenate([x[::-1], x[:5]]), m)[: len(x)][::-1]
        assert (batch == alone).all() and (batch == shuffled).all()
    # new items never neighbour each other: a near-copy of a new item in the batch changes nothing
    x = new_img[:1]
    assert (h.encode(np.concatenate([x, x + 1e-3]), "image")[:1] == h.encode(x, "image")).all()


def test_a_training_row_gets_its_trained_code(fitted):
    import torch

    h, img, txt, labels = fitted
    for x, m in ((img, "image"), (txt, "text")):
        first, node = unique_rows(x)
        aggregated = h.graphs[m].propagate(h.nodes[m])[node]
        trained_input = np.concatenate([h.nodes[m][node], aggregated], 1)  # what the network saw in training
        assert np.allclose(h.propagated(x, m), trained_input, atol=1e-5)
        with torch.no_grad():
            trained = h.branches[m](torch.from_numpy(trained_input))[0].numpy()
        assert (unpack_codes(h.encode(x, m), 16) == np.where(trained >= 0, 1, -1)).mean() > 0.999
        # the new-item rule would not give it: the row would be its own neighbour
        g = h.graphs[m]
        new_rule = g.propagate_new(h.nodes[m][node], h.nodes[m], h.config.k)
        assert not np.allclose(new_rule, aggregated, atol=1e-4)
    # the same row out of another encoder run (last bits differ) is still that training row
    nudged = np.nextafter(img, np.float32(np.inf))
    assert not (nudged == img).all() and (h.encode(nudged, "image") == h.encode(img, "image")).all()
    # in a batch with new rows, alone, or one at a time: the same
    mixed = np.concatenate([img[:3], held_out()[0][:4]])
    assert (h.encode(mixed, "image")[:3] == h.encode(img[:3], "image")).all()


def test_fit_is_seeded_and_leaves_the_global_rng_alone():
    import torch

    img, txt, labels = clustered_pairs(80)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = MGSGHHasher(bits=16, seed=4, k=5, **FAST).fit(img, txt, labels).encode(img, "image")
    after = torch.rand(1)
    b = MGSGHHasher(bits=16, seed=4, k=5, **FAST).fit(img, txt, labels).encode(img, "image")
    c = MGSGHHasher(bits=16, seed=5, k=5, **FAST).fit(img, txt, labels).encode(img, "image")
    assert before == after and (a == b).all() and not (a == c).all()


def test_unlabelled_fit_uses_rows_sharing_an_image_as_positives():
    """Flickr8K's layout: each image repeated for its captions; the image is one graph node."""
    img, txt, _ = clustered_pairs(40)
    rows = np.repeat(np.arange(40), 3)
    txt3 = np.concatenate([txt + 0.05 * i for i in range(3)])[np.argsort(np.tile(np.arange(40), 3), kind="stable")]
    h = MGSGHHasher(bits=16, k=3, **FAST).fit(img[rows], txt3)
    assert len(h.nodes["image"]) == 40 and len(h.nodes["text"]) == 120
    ids_only = MGSGHHasher(bits=16, k=3, **FAST).fit(img[rows], txt3, labels=rows)
    assert (h.encode(img, "image") == ids_only.encode(img, "image")).all()


def test_nothing_ablation_has_no_graph_and_is_an_mlp_of_the_same_width():
    img, txt, labels = clustered_pairs(60)
    h = MGSGHHasher(bits=16, graph=False, **FAST).fit(img, txt, labels)
    assert len(h.graphs["image"].indices) == 0
    assert np.allclose(h.propagated(img[:5] + 1, "image"), h.propagated(img[:5] + 1, "image"))
    full = MGSGHHasher(bits=16, k=10, **FAST).fit(img, txt, labels)
    widths = lambda b: [p.shape for name, p in b.named_parameters() if name != "gcn.weight"]  # noqa: E731
    assert widths(h.branches["image"]) == widths(full.branches["image"])
    # with the graph, the GCN layer sees [own | neighbourhood]; without, the own features alone
    assert full.branches["image"].gcn.weight.shape[1] == 2 * h.branches["image"].gcn.weight.shape[1]
    kipf = MGSGHHasher(bits=16, k=10, self_features=False, **FAST).fit(img, txt, labels)
    assert kipf.branches["image"].gcn.weight.shape == h.branches["image"].gcn.weight.shape


@pytest.mark.parametrize("settings", [
    {"k": 5},
    {"k": 0, "shortcut": True, "optimizer": "adam", "lr": 1e-3, "lr_schedule": "cosine", "triplet_mining": "hardest"},
])
def test_the_numpy_encoding_path_is_the_trained_network(settings, tmp_path):
    """Encoding skips autograd and folds the standardisation into the GCN layer: the same network."""
    import torch

    img, txt, labels = clustered_pairs(120)
    h = MGSGHHasher(bits=16, **{**FAST, "epochs": 10}, **settings).fit(img, txt, labels)
    assert h.loss_history_[-1] < h.loss_history_[0]
    for x, m in ((img, "image"), (txt, "text")):
        p = h.propagated(x, m)
        with torch.no_grad():
            relaxed = h.branches[m](torch.from_numpy(p))[0].numpy()
        assert np.allclose(np.tanh(h._forward(m, p)), relaxed, atol=1e-5)
        assert (unpack_codes(h.encode(x, m), 16) == np.where(relaxed >= 0, 1, -1)).mean() > 0.999
    if settings.get("shortcut"):
        assert h.branches["image"].shortcut.weight.abs().sum() > 0  # the shortcut was trained
    loaded = Hasher.from_pretrained(h.save_pretrained(tmp_path / "m"))
    assert (loaded.encode(img, "image") == h.encode(img, "image")).all()


def test_save_and_load_give_the_same_codes_and_bad_files_fail_clearly(fitted, tmp_path):
    h, img, txt, _ = fitted
    new = held_out()[0]
    loaded = Hasher.from_pretrained(h.save_pretrained(tmp_path / "m"))
    assert isinstance(loaded, MGSGHHasher) and loaded.get_config() == h.get_config()
    for x, m in ((img, "image"), (new, "image"), (txt, "text")):
        assert (loaded.encode(x, m) == h.encode(x, m)).all()
    from safetensors.numpy import load_file, save_file

    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["text.graph.radius2"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="text.graph.radius2"):
        Hasher.from_pretrained(tmp_path / "m")
    assert hasher_class("mgsgh") is MGSGHHasher


@pytest.mark.parametrize("bad, match", [
    ({"k": True}, "k must be"), ({"batch_size": 1}, "batch_size"), ({"lr": 0}, "lr"),
    ({"momentum": 1.0}, "momentum"), ({"margin": -1}, "margin"), ({"graph": 1}, "graph must be a bool"),
    ({"self_features": "yes"}, "self_features must be a bool"), ({"new_item_neighbors": "all"}, "new_item_neighbors"),
    ({"image_transform": "pca"}, "image_transform"), ({"kk": 3}, "kk"), ({"optimizer": "lbfgs"}, "optimizer"),
    ({"lr_schedule": "step"}, "lr_schedule"), ({"triplet_mining": "semi"}, "triplet_mining"),
    ({"shortcut": 1}, "shortcut must be a bool"), ({"triplet_negatives": "intra"}, "triplet_negatives"),
    ({"class_triplet_weight": -1}, "class_triplet_weight"), ({"triplet_activation": "relu"}, "triplet_activation"),
    ({"class_softmax_weight": -0.5}, "class_softmax_weight"),
    ({"class_softmax_temperature": 0}, "class_softmax_temperature"), ({"shortcut_init": "ones"}, "shortcut_init"),
    ({"shortcut_init": "ridge"}, "needs shortcut=True"),
])
def test_bad_settings_are_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MGSGHHasher(bits=16, **bad)


def test_bad_inputs_are_named(fitted):
    h, img, txt, _ = fitted
    with pytest.raises(ValueError, match="rows"):
        MGSGHHasher(bits=16, **FAST).fit(img, txt[:-1])
    with pytest.raises(ValueError, match="dimension 23, expected 24"):
        h.encode(img[:, :-1], "image")
    with pytest.raises(RuntimeError, match="not fitted"):
        MGSGHHasher(bits=16).encode(img, "image")


def test_retriever_builds_with_mgsgh_saves_reopens_adds_one_at_a_time_and_searches(tmp_path):
    """The product path: Retriever(hasher="mgsgh") fitted from pairs, like any other hasher."""
    import faiss
    from toy_encoder import COLORS, ToyEncoder, solid_images

    from retrieval import Retriever

    faiss.omp_set_num_threads(1)
    names = list(COLORS)
    paths = solid_images(tmp_path)
    r = Retriever.build(images=paths, texts=[f"a {n} square" for n in names], encoder=ToyEncoder(), bits=16,
                        hasher=MGSGHHasher(bits=16, k=3, **FAST), fit_pairs=(np.arange(len(paths)), np.arange(len(paths))),
                        image_payloads=[{"name": n} for n in names[:len(paths)]])
    assert r.hasher.method == "mgsgh"
    saved = r.save_pretrained(tmp_path / "saved")
    reopened = Retriever.from_pretrained(saved, encoder=ToyEncoder())
    assert reopened.hasher.method == "mgsgh"
    for q in ("red", "navy", Path(paths[1])):
        assert [h.id for h in reopened.search(q, k=5)] == [h.id for h in r.search(q, k=5)]
    live = Retriever.create(tmp_path / "live", encoder=ToyEncoder(), hasher=r.hasher)
    for i, p in enumerate(paths[:4]):  # one at a time: each new item's code is the one a batch gives it
        live.add_images([p], payloads=[{"n": i}])
    query = r.hasher.encode(r.encoder.encode_texts(["red"]), "text")
    batch = r.hasher.encode(r.encoder.encode_images(paths[:4]), "image")
    expected = (unpack_codes(query, 16) != unpack_codes(batch, 16)).sum(1)
    for hit in live.search("red", k=4, rerank=False):
        assert hit.hamming == expected[hit.id]
    live.close()
    again = Retriever.open(tmp_path / "live", encoder=ToyEncoder())
    assert len(again.galleries["image"]) == 4
    assert again.search(names[2], k=1)[0].payload == {"n": 2}


def test_images_only_fit_of_the_index_command_works_and_each_image_is_its_own_positive():
    """`crossmodal index --hasher mgsgh` without captions fits on the images as both modalities
    (retrieval.retriever.fit_on_images): every row is then its own group."""
    from retrieval.retriever import fit_on_images

    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    h = fit_on_images(MGSGHHasher(bits=16, k=5, **FAST), x)
    assert h.method == "mgsgh" and len(h.nodes["image"]) == 300
    # an image's own code is nearest to its own "text" code more often than chance
    ci, ct = unpack_codes(h.encode(x, "image"), 16), unpack_codes(h.encode(x, "text"), 16)
    assert (np.argmax(ci @ ct.T, axis=1) == np.arange(300)).mean() > 0.2


def _relaxed(rows: list[list[float]], bits: int = 8):
    import torch

    out = torch.zeros(len(rows), bits)
    out[:, :len(rows[0])] = torch.tensor(rows)
    return out


def test_intra_modal_negatives_penalise_an_anchor_close_to_other_classes_of_its_own_modality():
    """triplet_negatives="both": the paper's <A_I, P_I, N_I> also take negatives from the anchor's
    own modality. Four pairs, classes 0 0 1 1; every image code at the origin, text codes at +-e1:
    cross-modal hinges are margin everywhere, the images' own negatives add (d_pos - 0 + margin),
    the texts' (1/8 - 4/8 + 1/4) is below zero."""
    import torch

    hi = _relaxed([[0.0]] * 4)
    ht = _relaxed([[1.0], [1.0], [-1.0], [-1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    same = labels[:, None] == labels[None, :]
    zero = torch.tensor(0.0)
    settings = {"margin": 0.25, "quantization_weight": 0.0, "balance_weight": 0.0, "reconstruction_weight": 0.0}
    cross = MGSGHHasher(bits=8, **settings)._loss(hi, ht, same, zero)
    both = MGSGHHasher(bits=8, triplet_negatives="both", **settings)._loss(hi, ht, same, zero)
    assert float(cross) == pytest.approx(0.25 + 0.25)
    # image anchors: (16 x 0.25 + 16 x (1/8 + 1/4)) / 32; text anchors: (16 x 0.25 + 16 x 0) / 32
    assert float(both) == pytest.approx(0.3125 + 0.125)


def test_class_triplet_scores_anchors_against_the_other_modalitys_class_centres():
    """class_triplet_weight: positive = the anchor's class centre in the other modality, negatives =
    every other class's; zero once the anchor sits at its own centre, margin when equidistant."""
    import torch

    centres = {"text": _relaxed([[1.0, 1.0], [-1.0, -1.0]]), "image": _relaxed([[1.0, 1.0], [-1.0, -1.0]])}
    h = MGSGHHasher(bits=8)
    groups = torch.tensor([0, 1])
    at_centre = _relaxed([[1.0, 1.0], [-1.0, -1.0]])
    equidistant = _relaxed([[0.0, 0.0], [0.0, 0.0]])
    assert float(h._class_triplet(at_centre, at_centre, groups, centres)) == pytest.approx(0.0, abs=1e-6)
    assert float(h._class_triplet(equidistant, at_centre, groups, centres)) == pytest.approx(1.0)  # images only


def test_class_triplet_fits_on_class_ids_and_refuses_multi_hot_labels():
    img, txt, labels = (a[:160] for a in clustered_pairs(240))
    h = MGSGHHasher(bits=16, seed=0, class_triplet_weight=1.0, **FAST).fit(img, txt, labels)
    test_img, test_txt, test_labels = held_out()
    ci, ct = unpack_codes(h.encode(test_img, "image"), 16), unpack_codes(h.encode(test_txt, "text"), 16)
    dist = (16 - ci @ ct.T) / 2
    same = test_labels[:, None] == test_labels[None, :]
    assert dist[same].mean() + 2 < dist[~same].mean()
    multi_hot = np.eye(K, dtype=np.float32)[labels]
    with pytest.raises(ValueError, match="class_triplet_weight"):
        MGSGHHasher(bits=16, class_triplet_weight=1.0, **FAST).fit(img, txt, multi_hot)


def test_softplus_triplet_keeps_pulling_where_the_hinge_has_stopped():
    """triplet_activation="softplus": a triplet whose margin is met costs nothing and moves nothing
    under eqs. 5-7's hinge; its smooth form log(1 + e^x) still has a loss and a gradient there."""
    import torch

    labels = torch.tensor([0, 1])
    same = labels[:, None] == labels[None, :]
    zero = torch.tensor(0.0)
    settings = {"margin": 0.25, "quantization_weight": 0.0, "balance_weight": 0.0, "reconstruction_weight": 0.0}
    losses, grads = {}, {}
    for activation in ("hinge", "softplus"):
        hi = _relaxed([[1.0], [-1.0]]).requires_grad_(True)  # each image on its own text, 4 from the other
        ht = _relaxed([[1.0], [-1.0]])
        loss = MGSGHHasher(bits=8, triplet_activation=activation, **settings)._loss(hi, ht, same, zero)
        loss.backward()
        losses[activation], grads[activation] = float(loss.detach()), hi.grad.abs().sum()
    assert losses["hinge"] == 0.0 and float(grads["hinge"]) == 0.0
    # d_pos = 0, d_neg = 4/8: x = 0 - 0.5 + 0.25 = -0.25 in each of the two directions
    assert losses["softplus"] == pytest.approx(2 * float(np.log1p(np.exp(-0.25))), rel=1e-5)
    assert float(grads["softplus"]) > 0


def test_class_softmax_is_the_cross_entropy_over_the_other_modalitys_class_centres():
    """class_softmax_weight: logits -d / temperature against the other modality's class centres,
    target the anchor's class; lower at the own centre than at the other, and never zero."""
    import torch

    centres = {"text": _relaxed([[1.0, 1.0], [-1.0, -1.0]]), "image": _relaxed([[1.0, 1.0], [-1.0, -1.0]])}
    h = MGSGHHasher(bits=8, class_softmax_temperature=0.5)
    groups = torch.tensor([0, 1])
    at_centre = _relaxed([[1.0, 1.0], [-1.0, -1.0]])
    swapped = _relaxed([[-1.0, -1.0], [1.0, 1.0]])
    # at the own centre d = 0, at the other 8/8 = 1: cross-entropy log(1 + e^(-1 / 0.5)) per anchor
    expected = float(np.log1p(np.exp(-2.0)))
    assert float(h._class_softmax(at_centre, at_centre, groups, centres)) == pytest.approx(expected, rel=1e-5)
    assert float(h._class_softmax(swapped, swapped, groups, centres)) == pytest.approx(expected + 2.0, rel=1e-5)


def test_ridge_shortcut_starts_as_a_linear_hash_that_puts_classes_on_shared_codes():
    """shortcut_init="ridge": before any training step, the shortcut alone already maps images and
    texts of one class near one code (the zero shortcut maps everything to 0)."""
    import torch

    img, txt, labels = (a[:160] for a in clustered_pairs(240))
    h = MGSGHHasher(bits=16, seed=0, shortcut=True, shortcut_init="ridge", **{**FAST, "epochs": 0}).fit(img, txt, labels)
    lin = {}
    for x, m in ((img, "image"), (txt, "text")):
        b = h.branches[m]
        with torch.no_grad():
            xs = (torch.from_numpy(h.propagated(x, m)) - b.mean) / b.std
            lin[m] = np.sign(b.shortcut(xs).numpy())
    agree = (lin["image"] @ lin["text"].T) / 16
    same = labels[:, None] == labels[None, :]
    assert agree[same].mean() > 0.6 > 0.2 > agree[~same].mean()
    zero = MGSGHHasher(bits=16, seed=0, shortcut=True, **{**FAST, "epochs": 0}).fit(img, txt, labels)
    assert float(zero.branches["image"].shortcut.weight.detach().abs().sum()) == 0.0
    with pytest.raises(ValueError, match="class id"):
        MGSGHHasher(bits=16, shortcut=True, shortcut_init="ridge", **FAST).fit(img, txt, np.eye(K, dtype=np.float32)[labels])


@pytest.mark.parametrize("settings", [{"triplet_activation": "softplus"}, {"class_softmax_weight": 1.0},
                                      {"shortcut": True, "shortcut_init": "ridge"}])
def test_the_session_11_settings_change_training_and_survive_save_and_load(settings, tmp_path):
    img, txt, labels = (a[:160] for a in clustered_pairs(240))
    base = MGSGHHasher(bits=16, seed=0, **{**FAST, "epochs": 5}).fit(img, txt, labels)
    h = MGSGHHasher(bits=16, seed=0, **{**FAST, "epochs": 5}, **settings).fit(img, txt, labels)
    assert h.loss_history_ != base.loss_history_
    assert not (h.encode(img, "image") == base.encode(img, "image")).all()
    loaded = Hasher.from_pretrained(h.save_pretrained(tmp_path / "m"))
    assert loaded.get_config() == h.get_config()
    assert all(loaded.get_config()[k] == v for k, v in settings.items())
    for x, m in ((img, "image"), (txt, "text")):
        assert (loaded.encode(x, m) == h.encode(x, m)).all()
    if "class_softmax_weight" in settings:
        with pytest.raises(ValueError, match="class_softmax_weight"):
            MGSGHHasher(bits=16, **FAST, **settings).fit(img, txt, np.eye(K, dtype=np.float32)[labels])
