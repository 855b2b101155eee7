"""Calibration bias smoothing (method §4 extension)."""

import pytest
import torch


def test_bias_smoothing_removes_per_distance_noise_and_keeps_the_trend():
    from homer.significance import smooth_bias

    torch.manual_seed(0)
    d = torch.arange(4096, dtype=torch.float32)
    trend = 6.0 - 1.5 * torch.log1p(d)  # a recency trend, smooth in log-distance
    noisy = torch.stack([trend + torch.randn(4096), trend + 0.5 * torch.randn(4096)])
    smoothed = smooth_bias(noisy, 0.1)
    assert smoothed.shape == noisy.shape and torch.equal(smooth_bias(noisy, 0.0), noisy)
    assert torch.equal(smoothed[:, :5], noisy[:, :5])  # the first distances stay as measured
    far = slice(1000, 4096)
    assert (smoothed[0, far] - trend[far]).std() < 0.1 * (noisy[0, far] - trend[far]).std()
    assert (smoothed[0, far] - trend[far]).abs().mean() < 0.05  # no bias from the window


def test_bias_smoothing_is_a_setting_that_leaves_old_cache_keys_alone():
    from homer import HomerConfig

    assert "bias_smoothing" not in HomerConfig().settings()
    assert HomerConfig(bias_smoothing=0.1).settings()["bias_smoothing"] == 0.1
    with pytest.raises(ValueError, match="bias_smoothing"):
        HomerConfig(bias_smoothing=-1)
