"""Rare-class scaling, region masks, soft domain labels and the soft-label cross-entropy.

Semantics: docs/spec.md §1.4, §1.5, §2.2.
"""

import pytest
import torch
import torch.nn.functional as F

from crossregion.methods.cra_losses import domain_targets, soft_domain_labels, soft_label_cross_entropy
from crossregion.methods.losses import SOURCE_DOMAIN, TARGET_DOMAIN
from crossregion.trust import ENTROPY_IGNORE_VALUE, rare_class_factors, region_masks, scaled_entropy


def test_rare_class_factors():
    counts = [500, 300, 5, 190, 5]  # shares 0.5, 0.3, 0.005, 0.19, 0.005
    factors = rare_class_factors(counts, share=0.01, factor=0.5)
    assert factors.dtype == torch.float32
    assert factors.tolist() == [1.0, 1.0, 0.5, 1.0, 0.5]


@pytest.mark.parametrize("counts", [[0, 0, 0], [[1, 2]], [3, -1]])
def test_rare_class_factors_rejects_bad_counts(counts):
    with pytest.raises(ValueError, match="class_pixel_counts"):
        rare_class_factors(counts)


def test_rare_factor_changes_exactly_the_rare_pixels():
    generator = torch.Generator().manual_seed(0)
    entropy = torch.rand(2, 16, 16, generator=generator) / 5
    pseudo_label = torch.randint(0, 5, (2, 16, 16), generator=generator)
    pseudo_label[0, 0, :4] = 255
    factors = torch.tensor([1.0, 0.5, 1.0, 0.5, 1.0])
    scaled = scaled_entropy(entropy, pseudo_label, factors)
    rare_pixels = (pseudo_label == 1) | (pseudo_label == 3)
    assert torch.equal(scaled != entropy, rare_pixels)
    assert torch.equal(scaled[rare_pixels], entropy[rare_pixels] * 0.5)


def test_scaling_keeps_the_ignore_value():
    entropy = torch.tensor([[ENTROPY_IGNORE_VALUE, 0.02]])
    pseudo_label = torch.tensor([[1, 1]])
    scaled = scaled_entropy(entropy, pseudo_label, torch.tensor([1.0, 0.5]))
    assert scaled[0, 0].item() == ENTROPY_IGNORE_VALUE
    assert scaled[0, 1].item() == pytest.approx(0.01)


def test_masks_agree_with_direct_computation():
    generator = torch.Generator().manual_seed(1)
    entropy = torch.rand(3, 8, 9, generator=generator) / 19
    entropy[0, 0, 0] = 0.01  # a tie is trusted (official ẽ ≤ λ)
    entropy[1, :2] = ENTROPY_IGNORE_VALUE
    trusted, untrusted = region_masks(entropy, 0.01)
    assert trusted.dtype == torch.bool and untrusted.dtype == torch.bool
    for index, value in enumerate(entropy.flatten().tolist()):
        expected_trusted = value != ENTROPY_IGNORE_VALUE and value <= 0.01
        expected_untrusted = value > 0.01
        assert trusted.flatten()[index].item() == expected_trusted
        assert untrusted.flatten()[index].item() == expected_untrusted
    assert bool(trusted[0, 0, 0])


def test_ignored_pixels_are_neither_trusted_nor_untrusted():
    entropy = torch.full((4, 4), ENTROPY_IGNORE_VALUE)
    entropy[0] = 0.001
    entropy[1] = 0.04
    trusted, untrusted = region_masks(entropy, 0.01)
    assert not bool((trusted & untrusted).any())
    assert torch.equal(trusted | untrusted, entropy != ENTROPY_IGNORE_VALUE)


def test_soft_domain_labels_are_clipped_not_renormalised():
    logits = torch.tensor([10.0, 0.0, 0.0]).view(1, 3, 1, 1)
    labels = soft_domain_labels(logits, temperature=1.8, clip=0.9)
    probs = torch.softmax(logits / 1.8, dim=1)
    assert labels[0, 0, 0, 0].item() == pytest.approx(0.9)
    torch.testing.assert_close(labels[:, 1:], probs[:, 1:])
    assert labels.sum().item() < 1.0
    assert not labels.requires_grad


def test_domain_targets_layout():
    soft = torch.rand(2, 3, 4, 4)
    source = domain_targets(soft, SOURCE_DOMAIN)
    target = domain_targets(soft, TARGET_DOMAIN)
    assert torch.equal(source[:, :3], soft) and not bool(source[:, 3:].any())
    assert torch.equal(target[:, 3:], soft) and not bool(target[:, :3].any())
    with pytest.raises(ValueError, match="domain"):
        domain_targets(soft, 2)


def test_soft_label_cross_entropy_normalises_by_all_pixels():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 5, 5, generator=generator, dtype=torch.float64)
    targets = torch.rand(2, 6, 5, 5, generator=generator, dtype=torch.float64)
    mask = torch.rand(2, 5, 5, generator=generator) > 0.5
    log_probs = F.log_softmax(logits, dim=1)
    pixel = -(targets * log_probs).sum(dim=1)
    expected_all = (pixel * mask).sum() / pixel.numel()
    expected_mask = (pixel * mask).sum() / mask.sum()
    torch.testing.assert_close(soft_label_cross_entropy(logits, targets, mask), expected_all)
    torch.testing.assert_close(soft_label_cross_entropy(logits, targets, mask, normalize="mask"), expected_mask)
    torch.testing.assert_close(soft_label_cross_entropy(logits, targets), pixel.mean())


def test_soft_label_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 4, (1, 3, 3), generator=torch.Generator().manual_seed(4))
    one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(soft_label_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


def test_empty_mask_is_finite_and_gradient_flows():
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    targets = torch.rand(1, 4, 3, 3)
    empty = torch.zeros(1, 3, 3, dtype=torch.bool)
    for normalize in ("all", "mask"):
        loss = soft_label_cross_entropy(logits, targets, empty, normalize=normalize)
        assert torch.isfinite(loss) and loss.item() == 0.0
    soft_label_cross_entropy(logits, targets).backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_bad_normalize_and_shapes():
    logits = torch.randn(1, 4, 3, 3)
    with pytest.raises(ValueError, match="normalize"):
        soft_label_cross_entropy(logits, logits, normalize="sum")
    with pytest.raises(ValueError, match="differ in shape"):
        soft_label_cross_entropy(logits, logits[:, :2])
    with pytest.raises(ValueError, match="mask"):
        soft_label_cross_entropy(logits, logits, torch.ones(1, 3, 4, dtype=torch.bool))
