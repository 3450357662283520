"""MIRFlickr-25K / NUS-WIDE TC-10 / MS-COCO loaders on small synthetic files in the released layouts:
same file names, variable names, dtypes and orientation (MATLAB v5, MATLAB v7.3, Python HDF5),
fewer rows and columns."""

import numpy as np
import pytest
from scipy.io import savemat

from eval import hashing as cli
from eval.datasets_hashing import (
    ALL_LAYOUTS, array_file_format, list_arrays, load_all_layout, read_arrays,
)

h5py = pytest.importorskip("h5py")


def collection(n, n_labels, dim_x=12, dim_y=9, seed=0):
    """XAll's first column is the row number, so tests can tell which rows landed where."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < 0.2).astype(np.uint8)
    labels[labels.sum(1) == 0, rng.integers(0, n_labels)] = 1  # every item has a label, as released
    x = rng.standard_normal((n, dim_x)).astype(np.float32)
    x[:, 0] = np.arange(n)
    y = (rng.random((n, dim_y)) < 0.3).astype(np.float64)  # binary tag vectors, stored as double
    return x, y, labels


def write_mat73(path, arrays):
    """What MATLAB's save -v7.3 writes: HDF5 behind a 512-byte text header, matrices column-major
    (so HDF5 holds the transpose)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=np.ascontiguousarray(np.asarray(v).T))
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2015 HDF5 schema 1.00 .")


@pytest.fixture
def mirflickr(tmp_path):
    """UCCH's MIRFlickr files: XAll (n, d) single VGG features, YAll (n, tags) double, LAll (n, 24) uint8."""
    x, y, labels = collection(2100, 24)
    savemat(tmp_path / "mirflickr25k-iall-vgg.mat", {"XAll": x})
    savemat(tmp_path / "mirflickr25k-yall.mat", {"YAll": y})
    savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": labels})
    return tmp_path, x, y, labels


def test_file_formats_are_told_apart(tmp_path, mirflickr):
    folder, x, _, _ = mirflickr
    write_mat73(tmp_path / "v73.mat", {"YAll": x})
    with h5py.File(tmp_path / "py.h5py", "w") as f:
        f["XAll"] = x
    assert array_file_format(folder / "mirflickr25k-iall-vgg.mat") == "mat5"
    assert array_file_format(tmp_path / "v73.mat") == "mat73"
    assert array_file_format(tmp_path / "py.h5py") == "hdf5"
    np.testing.assert_array_equal(read_arrays(tmp_path / "v73.mat", ["YAll"])["YAll"], x)  # transposed back
    np.testing.assert_array_equal(read_arrays(tmp_path / "py.h5py")["XAll"], x)  # as stored
    assert list_arrays(tmp_path / "v73.mat") == ["YAll"]
    with pytest.raises(ValueError, match=r"v73.mat has no variable 'XAll'; it has: YAll"):
        read_arrays(tmp_path / "v73.mat", ["XAll"])


def test_mirflickr_ucch_split(mirflickr):
    folder, x, y, labels = mirflickr
    data = load_all_layout(folder, "mirflickr")
    assert (len(data.query.image), len(data.retrieval.image)) == (2000, 100)
    assert data.train is data.retrieval  # UCCH trains on the whole retrieval set
    np.testing.assert_array_equal(data.query.image[:, 0], np.arange(100, 2100))  # the last 2000 rows
    np.testing.assert_array_equal(data.retrieval.text, y[:100].astype(np.float32))
    assert data.query.image.dtype == np.float32 and data.query.image_labels.shape == (2000, 24)
    assert "ucch" in data.split_protocol and "2000 query / 100 retrieval / 100 train" in data.split_protocol
    # multi-label relevance: relevant iff the two items share at least one of the 24 labels
    rel = data.relevance_for("t2i").block(0, 2000)
    np.testing.assert_array_equal(rel, (labels[100:].astype(int) @ labels[:100].T.astype(int)) > 0)
    assert rel.any(1).mean() > 0.5 and not rel.all()


def test_mirflickr_dcmh_split(mirflickr):
    folder, x, _, _ = mirflickr
    with pytest.raises(ValueError, match="2100 rows are too few"):
        load_all_layout(folder, "mirflickr", "dcmh")


def test_mirflickr_djsrh_per_label_split(tmp_path):
    x, y, labels = collection(9000, 24, seed=1)
    savemat(tmp_path / "mirflickr25k-iall-vgg.mat", {"XAll": x})
    savemat(tmp_path / "mirflickr25k-yall.mat", {"YAll": y})
    savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": labels})
    data = load_all_layout(tmp_path, "mirflickr", "djsrh", seed=3)
    q = data.query.image[:, 0].astype(int)
    r = data.retrieval.image[:, 0].astype(int)
    t = data.train.image[:, 0].astype(int)
    assert (len(q), len(t), len(r)) == (2000, 5000, 7000)  # 160 + 23 * 80; 400 + 23 * 200; the rest
    assert not set(q) & set(r) and set(t) <= set(r) and len(set(q)) == 2000
    assert labels[q[:160], 0].all()  # the first 160 queries carry label 1
    assert labels[q[160:240], 1].all() and labels[t[:400], 0].all()
    again = load_all_layout(tmp_path, "mirflickr", "djsrh", seed=3)
    np.testing.assert_array_equal(again.query.image, data.query.image)
    other = load_all_layout(tmp_path, "mirflickr", "djsrh", seed=4)
    assert not np.array_equal(other.query.image, data.query.image)
    assert "seed 3" in data.split_protocol


def test_nuswide_tc10_with_a_matlab_v73_tag_file(tmp_path):
    """DJSRH ships nus-wide-tc10-yall.mat as MATLAB v7.3; the loader must transpose it."""
    x, y, labels = collection(2200, 10, dim_y=15, seed=2)
    savemat(tmp_path / "nus-wide-tc10-xall-vgg.mat", {"XAll": x})
    write_mat73(tmp_path / "nus-wide-tc10-yall.mat", {"YAll": y})
    savemat(tmp_path / "nus-wide-tc10-lall.mat", {"LAll": labels.astype(np.float64)})
    data = load_all_layout(tmp_path, "nuswide-tc10")
    assert (len(data.query.text), len(data.retrieval.text)) == (2100, 100)
    np.testing.assert_array_equal(data.query.text, y[100:].astype(np.float32))
    assert data.query.text_labels.shape == (2100, 10) and data.query.text_labels.dtype == np.uint8
    # the same matrix written without MATLAB's header reads as (d, n) and is refused with a hint
    with h5py.File(tmp_path / "nus-wide-tc10-yall.mat", "w") as f:
        f["YAll"] = y.T
    with pytest.raises(ValueError, match=r"one row per item.*YAll \(15, 2200\).*v7.3"):
        load_all_layout(tmp_path, "nuswide-tc10")


def test_mscoco_single_python_hdf5_file(tmp_path):
    x, y, labels = collection(5050, 80, seed=3)
    path = tmp_path / "MSCOCO_deep_doc2vec_data_rand.h5py"
    with h5py.File(path, "w") as f:  # UCCH reads data['XAll'][()] with no transpose
        f["XAll"], f["YAll"], f["LAll"] = x, y, labels
    for where in (path, tmp_path):
        data = load_all_layout(where, "mscoco")
        assert (len(data.query.image), len(data.retrieval.image)) == (5000, 50)
        np.testing.assert_array_equal(data.retrieval.image[:, 0], np.arange(50))


def test_wrong_layouts_name_the_file_and_variable(mirflickr):
    folder, x, y, labels = mirflickr
    savemat(folder / "mirflickr25k-lall.mat", {"L": labels})
    with pytest.raises(ValueError, match=r"mirflickr25k-lall.mat has no variable 'LAll'; it has: L"):
        load_all_layout(folder, "mirflickr")
    savemat(folder / "mirflickr25k-lall.mat", {"LAll": labels[:-1]})
    with pytest.raises(ValueError, match=r"one row per item.*mirflickr25k-lall.mat:LAll \(2099, 24\)"):
        load_all_layout(folder, "mirflickr")
    savemat(folder / "mirflickr25k-lall.mat", {"LAll": labels * 2})
    with pytest.raises(ValueError, match=r"LAll.*multi-hot"):
        load_all_layout(folder, "mirflickr")
    (folder / "mirflickr25k-iall-vgg.mat").rename(folder / "mirflickr25k-iall.mat")
    with pytest.raises(FileNotFoundError, match=r"mirflickr25k-iall-vgg.mat not found.*raw pixels"):
        load_all_layout(folder, "mirflickr")
    with pytest.raises(ValueError, match="no split protocol 'djsrh'"):
        load_all_layout(folder, "mscoco", "djsrh")
    with pytest.raises(ValueError, match="spread over"):
        load_all_layout(folder / "mirflickr25k-yall.mat", "mirflickr")


def test_image_features_can_come_from_another_file(mirflickr, tmp_path):
    folder, x, _, _ = mirflickr
    clip_like = np.random.default_rng(5).standard_normal((2100, 6)).astype(np.float32)
    savemat(tmp_path / "clip.mat", {"XAll": clip_like})
    data = load_all_layout(folder, "mirflickr", image_file=tmp_path / "clip.mat")
    np.testing.assert_array_equal(data.query.image, clip_like[100:])


def test_cli_runs_every_layout_dataset_name(mirflickr, tmp_path, capsys):
    folder, _, _, _ = mirflickr
    assert set(ALL_LAYOUTS) <= set(cli.DATASETS)
    report = cli.main(["--dataset", "mirflickr", "--data", str(folder), "--method", "lsh", "--bits", "16", "32",
                       "--no-progress", "--output", str(tmp_path / "r.json")])
    assert report["dataset"]["query"] == {"image": 2000, "text": 2000}
    assert "ucch" in report["dataset"]["split_protocol"]
    for bits in ("16", "32"):
        assert 0.0 < report["results"]["lsh"][bits]["i2t"]["map@all"] <= 1.0
    out = capsys.readouterr().out
    assert "split ucch: last 2000 rows query" in out
    assert "| lsh | 16 / 32 |" in out  # the README layout: one row per method
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "mirflickr", "--data", str(folder), "--method", "lsh", "--protocol", "nope"])
    assert "no split protocol 'nope'" in capsys.readouterr().err
