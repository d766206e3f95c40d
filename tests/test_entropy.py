"""Normalised entropy and the default threshold (docs/spec.md §1.3)."""

import math

import pytest
import torch

from crossregion.trust import default_threshold, normalized_entropy, validate_threshold


def test_entropy_equals_h_over_k_ln_k():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(2, 19, 5, 7, generator=generator, dtype=torch.float64), dim=1)
    direct = -(probs * probs.log()).sum(dim=1) / (19 * math.log(19))
    torch.testing.assert_close(normalized_entropy(probs), direct, rtol=0, atol=1e-15)


def test_entropy_matches_official_log2_form():
    probs = torch.softmax(torch.randn(19, 4, 4, generator=torch.Generator().manual_seed(1)), dim=0)
    official = (-probs * torch.log2(probs + 1e-30) / math.log2(19)).mean(dim=0)
    torch.testing.assert_close(normalized_entropy(probs), official, rtol=1e-5, atol=1e-7)


def test_entropy_range_and_zero_probabilities():
    one_hot = torch.zeros(1, 19, 2, 2)
    one_hot[:, 3] = 1.0
    uniform = torch.full((1, 19, 2, 2), 1 / 19)
    assert torch.equal(normalized_entropy(one_hot), torch.zeros(1, 2, 2))
    torch.testing.assert_close(normalized_entropy(uniform), torch.full((1, 2, 2), 1 / 19))
    two_way = torch.zeros(19, 1, 1)
    two_way[:2] = 0.5
    assert normalized_entropy(two_way).item() == pytest.approx(default_threshold(19), rel=1e-6)


def test_default_threshold_values():
    assert default_threshold(19) == pytest.approx(0.0123899, abs=5e-8)
    assert default_threshold(16) == pytest.approx(0.015625, abs=1e-12)


@pytest.mark.parametrize("threshold", [0.0, -0.01, 1 / 19 + 1e-6, 0.2])
def test_threshold_outside_range_is_rejected(threshold):
    with pytest.raises(ValueError, match=r"outside \(0, 1/K\]"):
        validate_threshold(threshold, 19)


def test_threshold_inside_range_is_accepted():
    validate_threshold(0.01, 19)
    validate_threshold(1 / 19, 19)
