"""Calibration (method §4): the bias table, its file, and its use by the build."""

import warnings

import pytest
import torch
from conftest import random_ids, tiny_model

from homer import HomerConfig, build_cache
from homer.calibration import calibrate, find_bias, save_bias
from homer.fingerprint import model_fingerprint
from homer.layers import DecoderStack
from homer.significance import Calibrated, Uncalibrated, keep_indices, last_query_logits


def test_bias_table_shape_and_recency_statistic(llama):
    chunks = [random_ids(32, s) for s in range(4)]
    bias = calibrate(llama, chunks, 32)
    assert bias.shape == (6, 32) and torch.isfinite(bias).all()
    # d = 0 is the last token's own key: check one entry against a direct computation
    stack = DecoderStack(llama)
    total = 0.0
    with torch.no_grad():
        for ids in chunks:
            hidden = stack.embed(ids)
            rope = stack.rope(hidden, torch.arange(32))
            _, q, k, _ = stack.attention_half(0, hidden, rope)
            total += float(last_query_logits(q[0, :, -1], k[0], stack.scaling)[-1])
    assert bias[0, 0].item() == pytest.approx(total / 4, rel=1e-5)


def test_bias_is_saved_with_the_fingerprint_and_found_by_the_build(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("HOMER_HOME", str(tmp_path))
    bias = calibrate(llama, [random_ids(32, 1), random_ids(32, 2)], 32)
    path = save_bias(bias, llama, 32)
    assert model_fingerprint(llama) in path.name
    assert torch.equal(find_bias(model_fingerprint(llama), 32), bias)
    assert find_bias(model_fingerprint(tiny_model("llama", seed=3)), 32) is None
    cache = build_cache(llama, random_ids(3, 1), random_ids(200, 2), random_ids(2, 3), HomerConfig())
    assert cache.metadata["significance_used"] == "calibrated"


def test_build_without_bias_works_uncalibrated_and_says_so(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("HOMER_HOME", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = build_cache(llama, random_ids(3, 1), random_ids(200, 2), random_ids(2, 3), HomerConfig())
    assert cache.metadata["significance_used"] == "uncalibrated"
    assert sum("No calibration bias" in str(w.message) for w in caught) == 1


def test_calibrated_score_subtracts_the_bias_by_relative_position():
    q = torch.randn(4, 8)
    keys = torch.randn(2, 5, 8)
    positions = torch.tensor([0, 1, 7, 8, 9])
    bias = torch.arange(12, dtype=torch.float).repeat(3, 1)  # bias[ℓ][d] = d
    raw = Uncalibrated().score(1, q, keys, positions, 0.5, None)
    calibrated = Calibrated(bias).score(1, q, keys, positions, 0.5, None)
    torch.testing.assert_close(raw - calibrated, (9 - positions).float())
    # GQA: same as repeating the kv heads onto the query heads
    repeated = keys.repeat_interleave(2, dim=0)
    torch.testing.assert_close(raw, (torch.einsum("hd,hnd->hn", q, repeated) * 0.5).amax(0))


def test_keep_indices_keeps_affixes_and_the_best_context():
    scores = torch.tensor([0.0, 0.0, 5.0, 1.0, 9.0, 2.0, 0.0])
    keep = keep_indices(scores, prefix_len=2, suffix_len=1, target=5)
    assert keep.tolist() == [0, 1, 2, 4, 6]


def test_several_query_rows_score_each_token_by_its_best_row():
    torch.manual_seed(0)
    q, keys = torch.randn(4, 3, 8), torch.randn(2, 6, 8)  # 4 query heads on 2 kv heads, 3 rows
    positions = torch.tensor([0, 1, 2, 7, 8, 9])  # the rows are the last three tokens
    bias = torch.rand(3, 12)
    for scorer in (Uncalibrated(), Calibrated(bias)):
        one_row = scorer.score(1, q[:, 2], keys, positions, 0.5, None)
        torch.testing.assert_close(scorer.score(1, q[:, 2:], keys, positions, 0.5, None), one_row)
        per_row = torch.stack(
            [scorer.score(1, q[:, r], keys[:, : 4 + r], positions[: 4 + r], 0.5, None)[:4] for r in range(3)]
        )
        torch.testing.assert_close(scorer.score(1, q, keys, positions, 0.5, None)[:4], per_row.amax(0))


def test_query_rows_build_runs_and_is_validated(llama):
    cache = build_cache(
        llama,
        random_ids(3, 1),
        random_ids(200, 2),
        random_ids(4, 3),
        HomerConfig(significance="uncalibrated", query_rows=4),
    )
    assert cache.keys.shape[2] <= 32
    with pytest.raises(ValueError, match="query_rows"):
        HomerConfig(query_rows=0)


def test_build_layout_and_median_statistic(llama):
    prefix, suffix = random_ids(3, 7), random_ids(4, 8)
    chunks = [random_ids(40, s) for s in range(5)]  # longer than the 25 context tokens a chunk holds
    bias = calibrate(llama, chunks, 32, prefix_ids=prefix, suffix_ids=suffix, statistic="median")
    stack = DecoderStack(llama)
    direct = []
    with torch.no_grad():
        for c in chunks:
            ids = torch.cat([prefix, c[:25], suffix])
            hidden = stack.embed(ids)
            _, q, k, _ = stack.attention_half(0, hidden, stack.rope(hidden, torch.arange(32)))
            direct.append(last_query_logits(q[0, :, -1], k[0], stack.scaling).flip(0))
    torch.testing.assert_close(bias[0], torch.stack(direct).median(0).values)
    with pytest.raises(ValueError, match="statistic"):
        calibrate(llama, chunks, 32, statistic="mode")
    with pytest.raises(ValueError, match="room"):
        calibrate(llama, chunks, 8, prefix_ids=random_ids(4, 1), suffix_ids=random_ids(4, 2))


def test_a_table_for_a_larger_chunk_serves_a_smaller_one(llama, tmp_path):
    bias = calibrate(llama, [random_ids(32, 1)], 32)
    save_bias(bias, llama, 32, folder=tmp_path)
    found = find_bias(model_fingerprint(llama), 16, folders=[tmp_path])
    assert torch.equal(found, bias[:, :16])
    assert find_bias(model_fingerprint(llama), 64, folders=[tmp_path]) is None
