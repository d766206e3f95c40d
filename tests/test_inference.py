"""predict_probs: upsampling, flip and multi-scale averaging, sliding windows."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossregion.eval.inference import predict_probs, sliding_window_logits


class PixelModel(nn.Module):
    """A stride-1 "segmenter": logits are a per-pixel linear map of the input (no context)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return {"logits": self.conv(images)}


class StrideModel(nn.Module):
    """Logits at stride 2 that depend on the horizontal position, so flipping matters."""

    def forward(self, images):
        pooled = F.avg_pool2d(images, 2)
        ramp = torch.linspace(0, 1, pooled.shape[-1]).expand_as(pooled[:, :1])
        return {"logits": torch.cat([pooled[:, :2], ramp], dim=1)}


def test_single_scale_is_upsampled_softmax_of_the_logits():
    model = StrideModel()
    images = torch.randn(2, 3, 8, 12)
    probs = predict_probs(model, images, output_size=(16, 24))
    expected = F.interpolate(model(images)["logits"], size=(16, 24), mode="bilinear", align_corners=True).softmax(1)
    assert probs.shape == (2, 3, 16, 24)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 16, 24))


def test_flip_averages_the_prediction_of_the_mirrored_image():
    model = StrideModel()
    images = torch.randn(1, 3, 8, 12)
    plain = predict_probs(model, images, output_size=(8, 12))
    mirrored = predict_probs(model, images.flip(-1), output_size=(8, 12)).flip(-1)
    both = predict_probs(model, images, output_size=(8, 12), flip=True)
    torch.testing.assert_close(both, (plain + mirrored) / 2)
    assert not torch.allclose(plain, mirrored)


def test_multi_scale_and_flip_average_every_map():
    model = PixelModel()
    images = torch.randn(1, 3, 8, 8)
    probs = predict_probs(model, images, output_size=(8, 8), flip=True, scales=(0.5, 1.0, 1.5))
    assert model.calls == 6
    maps = []
    for scale in (0.5, 1.0, 1.5):
        size = (round(8 * scale), round(8 * scale))
        scaled = images if size == (8, 8) else F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        for flipped in (False, True):
            inputs = scaled.flip(-1) if flipped else scaled
            logits = F.interpolate(model.conv(inputs), size=(8, 8), mode="bilinear", align_corners=True)
            probs_one = logits.softmax(1)
            maps.append(probs_one.flip(-1) if flipped else probs_one)
    torch.testing.assert_close(probs, torch.stack(maps).mean(0))


def test_sliding_window_of_a_context_free_model_equals_the_whole_image():
    model = PixelModel()
    images = torch.randn(1, 3, 10, 13)
    whole = model(images)["logits"]
    windowed = sliding_window_logits(model, images, window=(4, 5), stride=(3, 3))
    torch.testing.assert_close(windowed, whole)
    probs = predict_probs(model, images, output_size=(10, 13), window=(4, 5))
    torch.testing.assert_close(probs, whole.softmax(1))


def test_sliding_window_averages_overlaps_and_covers_borders():
    class ConstantPerCall(nn.Module):
        """Each call returns logits equal to the call number, so averaging is visible."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, images):
            self.calls += 1
            return {"logits": torch.full((1, 1, *images.shape[-2:]), float(self.calls))}

    model = ConstantPerCall()
    logits = sliding_window_logits(model, torch.zeros(1, 3, 4, 10), window=(4, 6), stride=(4, 3))
    # crops cover columns 0..5, 3..8 and (shifted back to end at the border) 4..9
    assert model.calls == 3
    assert logits[0, 0, 0].tolist() == pytest.approx([1, 1, 1, 1.5, 2, 2, 2.5, 2.5, 2.5, 3])


def test_bad_options_are_rejected():
    model = PixelModel()
    images = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="stride needs a window"):
        predict_probs(model, images, output_size=(4, 4), stride=(2, 2))
    with pytest.raises(ValueError, match="positive"):
        predict_probs(model, images, output_size=(4, 4), scales=(0.0,))
