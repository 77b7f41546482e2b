"""Baselines of the paper (docs/algorithm.md §5): real data at the same number of samples and GD steps.

* ``random_real``: a per-class random sample of real training examples;
* ``optimized_real``: the best ``keep_fraction`` (20%) of many random draws, each scored by the
  training-set accuracy of nets trained on it, measured on a random subsample of the training
  set (default 1,024 examples and 20 nets, as the original code's one 1,024-example training
  batch and ``test_optimize_n_nets``), the same examples and nets for every draw;
* ``kmeans``: per-class k-means centroids (k-means++ init, Lloyd iterations);
* ``average_real``: the class means;
* ``knn_random_real`` / ``knn_kmeans``: k-NN classifiers (1-NN by default) on the random real
  samples / the k-means centroids, over flattened model inputs.

A baseline that trains nets is a hard-label :class:`DistilledSet` (``S`` steps of ``N`` examples
in the class-interleaved order of ``DistilledSet.initialize``, one-hot labels in that same order,
scalar labels for binary tasks with class 1 = 1.0), so :func:`evaluate_distilled` trains and
tests it exactly like a distilled set. Everything works on model inputs (``data.model_inputs``:
images as stored, text embedded chunk by chunk), so images and text share one code path.

Step sizes: the original code trained baselines with one constant step size given on its
command line (``--test_distilled_lrs fix LR``; its docs use 0.3 for MNIST optimized real) or with
the learned step sizes of a distilled set (``loaded``). Here ``lr`` may be either (a float, or a
``[T]`` tensor such as ``distilled.lrs``); by default (``lr=None``) :func:`run_baselines` picks one
constant from :data:`LR_GRID` per baseline by training-set accuracy (the test set is never used),
so no baseline loses for a step size tuned to another.

Modules: ``_common`` (set layout, class members, streamed rows, building a set), ``real``
(random real, class means), ``kmeans``, ``knn``, ``optimized`` (training-set scores, step-size
choice, optimized real), ``run`` (``run_baselines``).
"""

from fastdistill.baselines._common import (
    BASELINES,
    DEFAULT_LR,
    KNN_BASELINES,
    LR_GRID,
    TRAINED_BASELINES,
    BaselineAccuracy,
    class_layout,
    with_lr,
)
from fastdistill.baselines.kmeans import kmeans, kmeans_centroids
from fastdistill.baselines.knn import knn_accuracy, knn_predict
from fastdistill.baselines.optimized import choose_lr, optimized_real, train_accuracy
from fastdistill.baselines.real import average_real, random_real
from fastdistill.baselines.run import run_baselines

__all__ = [
    "BASELINES",
    "DEFAULT_LR",
    "KNN_BASELINES",
    "LR_GRID",
    "TRAINED_BASELINES",
    "BaselineAccuracy",
    "average_real",
    "choose_lr",
    "class_layout",
    "kmeans",
    "kmeans_centroids",
    "knn_accuracy",
    "knn_predict",
    "optimized_real",
    "random_real",
    "run_baselines",
    "train_accuracy",
    "with_lr",
]
