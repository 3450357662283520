"""How well Wiki's shipped image features (128-d SIFT BoVW) predict the class: the cap on image->text.

    HF_HUB_OFFLINE=1 python scripts/wiki_image_ceiling.py --data ../shared/data/wiki/wikiData.mat

A label-supervised hasher ranks texts for an image query by what the image code says about the
class; with same-class relevance, image->text MAP@50 can only be high where the image side
classifies well. This fits multinomial logistic regression (scikit-learn, the ``dev`` extra) on the
2,173 training images (Hellinger-mapped, standardised; C chosen by 5-fold CV on training rows) and
reports test accuracy on the 693 query images, and the same for the 10-d LDA texts. An "oracle"
ranking that returns every text of the predicted class first has MAP equal to that accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.datasets_hashing import load_wiki  # noqa: E402
from hashing.lsh import apply_transform, resolve_transform  # noqa: E402


def accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> tuple[float, float]:
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    how = resolve_transform("auto", train_x)
    tr, te = apply_transform(train_x, how, "train"), apply_transform(test_x, how, "test")
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1, 10], cv=5, max_iter=2000))
    with warnings.catch_warnings():  # scikit-learn 1.9 announces changed defaults; accuracy is what we score
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(tr, train_y)
    return float(model.score(te, test_y)), float(model[-1].C_[0])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    args = p.parse_args(argv)
    data = load_wiki(args.data)
    y_train = np.asarray(data.train.image_labels).reshape(-1)
    y_test = np.asarray(data.query.image_labels).reshape(-1)
    out = {}
    for modality in ("image", "text"):
        acc, c = accuracy(getattr(data.train, modality), y_train, getattr(data.query, modality), y_test)
        out[modality] = acc
        print(f"{modality}: test accuracy {acc:.3f} (logistic regression, C={c:g} by 5-fold CV on train; "
              f"chance {np.bincount(y_test).max() / len(y_test):.3f} for the majority class)")
    return out


if __name__ == "__main__":
    main()
