"""Method §2–§4 arithmetic: chunking, positions, layer schedule, targets."""

import pytest

from homer.plan import ChunkPlan


def plan(c, m=2048, p=30, s=20, t=None, layers=32, w=12):
    return ChunkPlan(
        prefix_len=p,
        context_len=c,
        suffix_len=s,
        max_chunk_len=m,
        target_len=t or m,
        num_layers=layers,
        warmup_layers=w,
    )


@pytest.mark.parametrize("context", [1, 100, 1998, 1999, 5000, 20_000, 100_000, 131_072])
def test_leaves_are_a_power_of_two_and_slices_are_even(context):
    pl = plan(context)
    n = pl.num_leaves
    assert n & (n - 1) == 0
    sizes = [pl.slice_bounds(i)[1] - pl.slice_bounds(i)[0] for i in range(n)]
    assert sum(sizes) == context
    assert all(size == pl.slice_len for size in sizes[:-1])
    assert sizes[-1] <= pl.slice_len
    if n > 1:  # every slice but the last holds more than E/2 tokens
        assert all(size > pl.usable_len / 2 for size in sizes[:-1])
        assert (n // 2) * pl.usable_len < context <= n * pl.usable_len


@pytest.mark.parametrize("context", [100, 5000, 100_000])
def test_positions_are_reused_and_below_the_chunk_length(context):
    pl = plan(context)
    for leaf in (0, pl.num_leaves - 1):
        pos = pl.leaf_positions(leaf)
        start, end = pl.slice_bounds(leaf)
        assert len(pos) == pl.prefix_len + (end - start) + pl.suffix_len
        assert pos[: pl.prefix_len] == list(range(pl.prefix_len))
        assert pos[-1] == pl.last_position
        assert max(pos) < pl.max_chunk_len


def test_layer_schedule_matches_the_paper_example():
    pl = plan(12_000)  # L = 32, W = 12, N = 8
    assert pl.height == 3
    assert (pl.block_layers, pl.leftover_layers) == (5, 0)
    assert pl.layers_at(0) == range(0, 17)
    assert [pl.layers_at(k) for k in (1, 2, 3)] == [range(17, 22), range(22, 27), range(27, 32)]


def test_single_chunk_runs_every_layer():
    pl = plan(500)
    assert pl.height == 0 and pl.layers_at(0) == range(0, 32)
    assert pl.root_target == 550


def test_short_last_leaf_gives_its_room_to_the_left_sibling():
    pl = plan(2 * 1998 // 2 + 1998 + 10, m=2048)  # last slice tiny
    n = pl.num_leaves
    last_start, last_end = pl.slice_bounds(n - 1)
    r = pl.prefix_len + (last_end - last_start) + pl.suffix_len
    if r < pl.node_target:
        left, right = pl.child_targets(n - 2, 1)
        assert right == r
        assert left + right - pl.prefix_len - pl.suffix_len == pl.max_chunk_len


def test_clear_errors():
    with pytest.raises(ValueError, match="suffix"):
        plan(100, s=0)
    with pytest.raises(ValueError, match="no room"):
        plan(100, m=50)
    with pytest.raises(ValueError, match="layers"):
        plan(1_000_000, m=64, p=2, s=2, layers=4, w=2)
