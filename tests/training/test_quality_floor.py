"""Quality floor: the default detector still finds malignant tumours among benign ones.

scikit-learn's breast-cancer table (569 tumours, 30 features): benign = normal, malignant =
anomaly. The one-class protocol of the benchmark: fit on 60% of the benign rows, score the other
40% and every malignant row. Measured with the defaults (split seeds 0 / 1 / 2): VAE (three
members) `agg_elbo` 0.958 / 0.964 / 0.957 (its `elbo` 0.952 / 0.966 / 0.950), AE `recon` 0.959 /
0.952 / 0.927. The floors sit below the worst of those, so a regression in the defaults fails while
platform noise does not.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from training import Detector

# kind -> floor on the AUROC of its primary score.
FLOORS = {"vae": 0.93, "ae": 0.92}


@pytest.fixture(scope="module")
def split():
    X, target = load_breast_cancer(return_X_y=True)
    y = (target == 0).astype(int)  # 0 = malignant in scikit-learn's coding
    normals = np.random.default_rng(0).permutation(np.flatnonzero(y == 0))
    n_train = int(round(0.6 * len(normals)))
    test = np.concatenate([normals[n_train:], np.flatnonzero(y == 1)])
    return X[normals[:n_train]], X[test], y[test]


@pytest.mark.parametrize("kind", sorted(FLOORS))
def test_default_detector_auroc_floor(split, kind):
    X_train, X_test, y_test = split
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is fastest and deterministic
    try:
        det = Detector(kind=kind).fit(X_train)
    finally:
        torch.set_num_threads(threads)
    scores = det.raw_scores(X_test)[det.primary_score]
    auroc = roc_auc_score(y_test, scores)
    assert auroc > FLOORS[kind], f"{kind}: AUROC {auroc:.4f} fell below {FLOORS[kind]}"
