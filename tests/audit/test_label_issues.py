"""Confident learning (`audit.label_issues`): what it flags on hand-made cases, and that it flags and
ranks exactly what cleanlab's `find_label_issues` does on the same probabilities (cleanlab is
AGPL-3.0: a test-only dependency, in the `[dev]` extra; the test is skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

from cifarkit.audit.label_issues import confident_joint, label_issue_mask, rank_label_issues, round_keeping_sum


def noisy_probs(seed: int, n: int = 2000, k: int = 10, noise: float = 0.05, sharp: float = 4.0, low: float = 0.0):
    """(given labels, probabilities, flipped mask) of a simulated classifier on noisy labels."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    given = true.copy()
    flip = rng.random(n) < noise
    given[flip] = (true[flip] + rng.integers(1, k, flip.sum())) % k
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(low, sharp, n)
    p = np.exp(logits)
    return given, p / p.sum(1, keepdims=True), flip


def test_obvious_errors_are_found_and_ranked_first():
    # three classes, confident model; images 0 and 1 are labelled 0 but the model is sure of 2 / 1
    p = np.full((30, 3), 0.02)
    labels = np.repeat([0, 1, 2], 10)
    p[np.arange(30), labels] = 0.96
    p[0] = [0.01, 0.01, 0.98]
    p[1] = [0.02, 0.97, 0.01]  # at least class 1's threshold (its mean self-confidence, 0.96)
    ranked = rank_label_issues(labels, p)
    assert ranked.tolist() == [0, 1]  # lowest p(given) first
    assert not label_issue_mask(labels, p)[2:].any()


def test_an_image_the_model_agrees_with_is_never_flagged():
    given, p, _ = noisy_probs(1)
    mask = label_issue_mask(given, p)
    assert not (p.argmax(1) == given)[mask].any()


def test_confident_joint_rows_sum_to_the_label_counts():
    given, p, _ = noisy_probs(2)
    cj = confident_joint(given, p)
    assert (cj.sum(1) == np.bincount(given, minlength=10)).all()


def test_rounding_keeps_the_sum():
    r = np.array([0.4, 0.4, 0.4, 1.8])
    out = round_keeping_sum(r)
    assert out.sum() == 3 and (np.abs(out - r) < 1).all()


def test_recovers_simulated_noise():
    given, p, flip = noisy_probs(3, n=4000, sharp=8.0, low=3.0)  # a decent classifier
    found = label_issue_mask(given, p)
    assert (found & flip).sum() / flip.sum() > 0.8  # recall
    assert (found & flip).sum() / found.sum() > 0.8  # precision


@pytest.mark.parametrize("seed,k,noise", [(0, 10, 0.05), (1, 4, 0.2), (2, 100, 0.02), (3, 10, 0.0)])
def test_agrees_with_cleanlab(seed, k, noise):
    filt = pytest.importorskip("cleanlab.filter")
    given, p, _ = noisy_probs(seed, n=3000, k=k, noise=noise)
    theirs = filt.find_label_issues(given, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    ours = rank_label_issues(given, p)
    assert len(ours) > 0
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(label_issue_mask(given, p), filt.find_label_issues(given, p, n_jobs=1))
