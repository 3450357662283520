"""MGSGH's fine-grained branch (hashing/mgsgh_fine.py and its seam in hashing/mgsgh.py): the per-item
relational GCN, fitting and encoding with region grids and word sequences, alone vs batched,
persistence, and the errors for missing or misshaped fine inputs. Tiny random graphs: seconds."""

from __future__ import annotations

import numpy as np
import pytest

from hashing.base import Hasher
from hashing.mgsgh import MGSGHConfig, MGSGHHasher
from hashing.mgsgh_fine import FineInput, as_fine, build_fine_net

FAST = {"epochs": 25, "hidden_dim": 32, "fine_dim": 16, "progress": False}
CLUSTERS = 6


def fine_pairs(n: int, seed: int = 0, d_global: int = 12, d_node: int = 8):
    """Pairs whose *global* features are noise, independent across modalities, while each item's
    region grid (3 x 4) and word sequence (1-6 words) carry its cluster: only the fine branch can
    tell which image goes with which text."""
    rng = np.random.default_rng(seed)
    proto_img = rng.normal(size=(CLUSTERS, d_node)) * 2  # drawn first: the same clusters for any n
    proto_txt = rng.normal(size=(CLUSTERS, d_node)) * 2
    labels = rng.integers(0, CLUSTERS, n)
    img = rng.normal(size=(n, d_global)).astype(np.float32)
    txt = rng.normal(size=(n, d_global)).astype(np.float32)
    grid = (proto_img[labels][:, None, None, :] + rng.normal(size=(n, 3, 4, d_node))).astype(np.float16)
    lengths = rng.integers(1, 7, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    owner = np.repeat(np.arange(n), lengths)
    words = (proto_txt[labels][owner] + rng.normal(size=(len(owner), d_node))).astype(np.float32)
    return img, txt, labels, grid, (words, offsets)


@pytest.fixture(scope="module")
def fitted():
    img, txt, labels, grid, seq = fine_pairs(150)
    hasher = MGSGHHasher(bits=16, seed=0, k=3, fine=True, **FAST)
    return hasher.fit(img, txt, labels, image_fine=grid, text_fine=seq), (img, txt, labels, grid, seq)


def one_text(seq, i):
    words, offsets = seq
    return words[offsets[i]:offsets[i + 1]], np.array([0, offsets[i + 1] - offsets[i]])


def test_grid_gcn_sees_only_its_four_neighbours_and_tells_directions_apart():
    import torch

    torch.manual_seed(0)
    net = build_fine_net("grid", 4, 5, 1)
    x = torch.randn(1, 3, 3, 4)

    def node(z):  # the centre cell's output after one layer
        own, rel = net.own[0], net.rel[0]
        h = torch.relu(own(z) + net.messages(rel(z)))
        return h[0, 1, 1]

    base = node(x)
    corner = x.clone()
    corner[0, 0, 0] += 5.0  # a diagonal cell is no neighbour
    assert torch.allclose(node(corner), base)
    left = x.clone()
    left[0, 1, 0] += 5.0
    assert not torch.allclose(node(left), base)
    swapped = x.clone()  # exchange the left and right neighbours: different relation weights see it
    swapped[0, 1, 0], swapped[0, 1, 2] = x[0, 1, 2], x[0, 1, 0]
    assert not torch.allclose(node(swapped), base, atol=1e-4)


def test_sequence_gcn_ignores_padding_and_word_order_matters():
    import torch

    torch.manual_seed(0)
    net = build_fine_net("sequence", 4, 6, 2)
    words = torch.randn(1, 3, 4)
    alone = net(words, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([words, torch.randn(1, 2, 4)], dim=1)  # garbage in the padding is masked out
    mask = torch.tensor([[True, True, True, False, False]])
    assert torch.allclose(net(padded, mask), alone, atol=1e-6)
    reversed_ = net(words.flip(1), torch.ones(1, 3, dtype=torch.bool))
    assert not torch.allclose(reversed_, alone, atol=1e-4)


def test_fine_branch_learns_what_the_global_features_lack(fitted):
    """Held-out pairs of the same draw: the fine hasher finds same-cluster items, the global one
    (whose inputs carry nothing about the pairing) stays near chance."""
    hasher, (img, txt, labels, grid, seq) = fitted
    h_img, h_txt, h_lab, h_grid, h_seq = fine_pairs(210)
    rows = np.arange(150, 210)
    seq_rows = FineInput("sequence", *h_seq).batch(rows)  # re-ragged below
    lengths = seq_rows[1].sum(1)
    held_seq = (seq_rows[0][seq_rows[1]], np.concatenate([[0], np.cumsum(lengths)]))
    global_only = MGSGHHasher(bits=16, seed=0, k=3, **{k: v for k, v in FAST.items() if k != "fine_dim"})
    global_only.fit(img, txt, labels)

    def precision(ci, ct):
        from hashing.base import unpack_codes

        d = -(unpack_codes(ci, 16) @ unpack_codes(ct, 16).T)
        same = h_lab[rows][:, None] == h_lab[rows][None, :]
        return float((same * (d == d.min(1, keepdims=True))).sum() / (d == d.min(1, keepdims=True)).sum())

    fine_p = precision(hasher.encode(h_img[rows], "image", fine=h_grid[rows]),
                       hasher.encode(h_txt[rows], "text", fine=held_seq))
    global_p = precision(global_only.encode(h_img[rows], "image"), global_only.encode(h_txt[rows], "text"))
    assert fine_p > 0.35 and global_p < 0.3, (fine_p, global_p)  # chance: 1 / 6


def test_an_item_encoded_alone_gets_its_batch_code(fitted):
    hasher, (img, txt, labels, grid, seq) = fitted
    rng = np.random.default_rng(5)
    new_img = rng.normal(size=(9, img.shape[1])).astype(np.float32)
    new_grid = rng.normal(size=(9, 3, 4, grid.shape[-1])).astype(np.float32)
    batch = hasher._project(new_img, "image", as_fine(new_grid, "image", 9))
    for i in range(9):
        alone = hasher._project(new_img[i:i + 1], "image", as_fine(new_grid[i:i + 1], "image", 1))
        assert np.allclose(alone, batch[i:i + 1], atol=1e-5)
    codes = hasher.encode(txt[:20], "text", fine=(seq[0][:seq[1][20]], seq[1][:21]))
    for i in range(20):  # texts of 1 to 6 words: padding to the batch's longest changes nothing
        assert (hasher.encode(txt[i:i + 1], "text", fine=one_text(seq, i)) == codes[i:i + 1]).all()


def test_save_and_load_keep_the_codes(fitted, tmp_path):
    hasher, (img, txt, labels, grid, seq) = fitted
    hasher.save_pretrained(tmp_path / "m")
    loaded = Hasher.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, MGSGHHasher) and loaded.config.fine and loaded.fine_dims == {"image": 8, "text": 8}
    assert (loaded.encode(img, "image", fine=grid) == hasher.encode(img, "image", fine=grid)).all()
    assert (loaded.encode(txt, "text", fine=seq) == hasher.encode(txt, "text", fine=seq)).all()
    with pytest.raises(ValueError, match="needs text_fine"):
        loaded.encode(txt, "text")


def test_missing_and_unwanted_fine_inputs_are_clear_errors(fitted):
    hasher, (img, txt, labels, grid, seq) = fitted
    with pytest.raises(ValueError, match="needs image_fine and text_fine.*Wiki"):
        MGSGHHasher(bits=16, fine=True, **FAST).fit(img, txt, labels)
    with pytest.raises(ValueError, match="needs text_fine"):
        MGSGHHasher(bits=16, fine=True, **FAST).fit(img, txt, labels, image_fine=grid)
    with pytest.raises(ValueError, match="image_fine given, but .* fine=False"):
        MGSGHHasher(bits=16, **FAST).fit(img, txt, labels, image_fine=grid)
    with pytest.raises(ValueError, match="needs image_fine"):
        hasher.encode(img, "image")


@pytest.mark.parametrize("modality, value, error, message", [
    ("image", np.zeros((150, 12, 8), np.float32), ValueError, r"\(n, h, w, d\), got shape \(150, 12, 8\)"),
    ("image", np.zeros((150, 3, 4, 5), np.float32), ValueError, "dimension 5, expected 8"),
    ("image", np.zeros((149, 3, 4, 8), np.float32), ValueError, "149 items, expected 150"),
    ("image", np.zeros((150, 3, 4, 8), np.int64), TypeError, "floating point"),
    ("image", (np.zeros((150, 8)), np.arange(151)), TypeError, "region features, got a tuple"),
    ("text", np.zeros((150, 8), np.float32), TypeError, r"\(words \(total, d\), offsets"),
    ("text", (np.zeros((149, 8), np.float32), np.arange(150)), ValueError, "149 items, expected 150"),
    ("text", (np.zeros((150, 8), np.float32), np.r_[0, np.zeros(149, int), 150]), ValueError, "every text has a word"),
    ("text", (np.full((150, 8), np.nan, np.float32), np.arange(151)), ValueError, "NaN"),
])
def test_misshaped_fine_inputs_are_named(fitted, modality, value, error, message):
    hasher, (img, txt, *_rest) = fitted
    features = img if modality == "image" else txt
    with pytest.raises(error, match=message):
        hasher.encode(features, modality, fine=value)


def test_config_checks_the_fine_settings():
    with pytest.raises(TypeError, match="fine must be a bool"):
        MGSGHConfig(fine=1)
    with pytest.raises(ValueError, match="fine_dim"):
        MGSGHConfig(fine_dim=0)
    with pytest.raises(ValueError, match="fine_layers"):
        MGSGHConfig(fine_layers=0)


def test_fine_branch_with_the_tuned_training_settings_saves_and_loads(tmp_path):
    """The fine branch and the global branch's training options (AdamW, hardest negative, shortcut)
    were built side by side: together they fit, keep codes through save/load, and code one item alone
    as in its batch."""
    img, txt, labels, grid, seq = fine_pairs(60)
    hasher = MGSGHHasher(bits=16, seed=0, k=0, fine=True, shortcut=True, optimizer="adam", lr=1e-3,
                         triplet_mining="hardest", **FAST)
    hasher.fit(img, txt, labels, image_fine=grid, text_fine=seq)
    assert hasher.branches["image"].shortcut is not None and hasher.branches["image"].fine is not None
    hasher.save_pretrained(tmp_path / "m")
    loaded = Hasher.from_pretrained(tmp_path / "m")
    codes = hasher.encode(txt, "text", fine=seq)
    assert (loaded.encode(txt, "text", fine=seq) == codes).all()
    assert (loaded.encode(txt[3:4], "text", fine=one_text(seq, 3)) == codes[3:4]).all()
