"""Which given labels are probably wrong: confident learning (Northcutt, Jiang & Chuang, JAIR 2021).

Input: out-of-sample predicted probabilities (N, K) (every row from a model that never trained on
that image: the audit's K-fold cross-validation) and the given labels (N,). Steps, as published:

1. per-class threshold t_j = mean p_j over the images labelled j (the model's average
   self-confidence on class j; a class the model is unsure of gets a lower bar);
2. the confident joint C[i, j]: images labelled i whose "confident" class is j (p_j >= t_j; of
   several such classes the argmax), calibrated so row i sums to the count of label i;
3. prune by noise rate: from the images labelled i, flag the C[i, j] (j != i) with the largest
   margin p_j - p_i, keeping at least one image per class;
4. an image whose argmax is its given label is never flagged; the flagged ones are ranked by
   self-confidence p_given, lowest (most likely wrong) first.

Why our own code and not cleanlab: cleanlab is AGPL-3.0 and cifarkit Apache-2.0; the method is
small and published. tests/audit/test_label_issues.py checks that we flag and rank exactly what
cleanlab 2.9's `find_label_issues` (its default filter, ranked by self-confidence) does on the
same probabilities; cleanlab is a test-only dependency (the `[dev]` extra) there.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6  # the float tolerance of the threshold test (p_j >= t_j - EPS) and of the argmax tie-break


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K,) mean p_j over the images labelled j; 2 (never reached) for a class with no image."""
    k = probs.shape[1]
    t = np.array([probs[labels == j, j].mean() if (labels == j).any() else 2.0 for j in range(k)])
    return np.clip(t, 2 * EPS, None)


def round_keeping_sum(row: np.ndarray) -> np.ndarray:
    """Integers closest to `row` whose sum is round(sum(row)): the largest remainders win the ties."""
    ints = row.round()
    target = np.round(row.sum())
    while abs(ints.sum() - target) > EPS:
        diff = np.round(target - ints.sum())
        step = -1 if diff < 0 else 1
        idx = np.argsort(row - ints)[::-step][:min(int(abs(diff)), len(row))]
        ints[idx] += step
    return ints.astype(int)


def confident_joint(labels: np.ndarray, probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """(K, K) counts: row = given label, column = the confidently predicted class (module docstring)."""
    k = probs.shape[1]
    above = probs >= confident_thresholds(labels, probs) - EPS  # (N, K)
    n_above = above.sum(1)
    guess = np.where(n_above > 1, probs.argmax(1), above.argmax(1))
    sure = n_above > 0
    cj = np.zeros((k, k), dtype=np.int64)
    np.add.at(cj, (labels[sure], guess[sure]), 1)
    np.fill_diagonal(cj, np.maximum(cj.diagonal(), 1))
    if not calibrate:
        return cj
    counts = np.bincount(labels, minlength=k).astype(float)
    cal = cj / np.clip(cj.sum(1, keepdims=True), 1e-100, None) * counts[:, None]
    cal = cal / np.clip(cal.sum(), 1e-100, None) * counts.sum()
    return np.stack([round_keeping_sum(r) for r in cal])


def _prune_counts(cj: np.ndarray, keep: int = 1) -> np.ndarray:
    """The confident joint transposed (column = given label), each class keeping >= `keep` images:
    a raised diagonal is paid for by the other non-zero entries of its column."""
    m = cj.T.astype(float)
    diag = m.diagonal().copy()
    new_diag = np.maximum(diag, keep)
    per = (new_diag - diag) / np.maximum(np.count_nonzero(m, axis=0) - 1.0, 1.0)
    m = np.clip(m - per, 0, None)
    np.fill_diagonal(m, new_diag)
    m = m.astype(int).astype(float)
    return np.stack([round_keeping_sum(r) for r in m])


def label_issue_mask(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) True where the given label is probably wrong (prune by noise rate, steps 1-4 above)."""
    labels = np.asarray(labels, dtype=np.int64)
    prune = _prune_counts(confident_joint(labels, probs))  # (true j, given i)
    mask = np.zeros(len(labels), dtype=bool)
    for i in range(probs.shape[1]):
        rows = np.flatnonzero(labels == i)
        if len(rows) <= 1:
            continue
        p = probs[rows]
        for j in range(probs.shape[1]):
            n = int(prune[j, i])
            if j != i and n > 0:
                mask[rows[np.argsort(-(p[:, j] - p[:, i]))[:n]]] = True
    nudged = probs.copy()
    nudged[np.arange(len(labels)), labels] += EPS
    mask[nudged.argmax(1) == labels] = False  # the model agrees with the given label
    return mask


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the probable label errors, most likely first (lowest p of the given label)."""
    labels = np.asarray(labels, dtype=np.int64)
    idx = np.flatnonzero(label_issue_mask(labels, probs))
    return idx[np.argsort(probs[idx, labels[idx]])]
