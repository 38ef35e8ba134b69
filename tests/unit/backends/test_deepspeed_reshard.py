"""The joining's arithmetic: which weights each rank joins, and reading across sub-group buffers.
The joining itself, on real DeepSpeed checkpoints: tests/integration/test_reshard.py."""

from __future__ import annotations

import torch

from launcher.backends.deepspeed_reshard import _copy_span, _part_of


def test_every_weight_is_joined_by_exactly_one_rank_in_runs_of_about_equal_size():
    shapes = [(f"w{i}", torch.Size([size])) for i, size in enumerate([400, 100, 100, 100, 100, 100, 100])]
    parts = [_part_of(shapes, part, 2) for part in range(2)]
    assert parts[0] | parts[1] == {name for name, _ in shapes} and not parts[0] & parts[1]
    assert parts == [{"w0", "w1"}, {"w2", "w3", "w4", "w5", "w6"}]  # the halves begin at elements 0 and 500
    assert [_part_of(shapes, part, 1) for part in range(1)] == [{name for name, _ in shapes}]
    many = [_part_of(shapes, part, 16) for part in range(16)]  # more ranks than weights: some join none
    assert sorted(name for part in many for name in part) == sorted(name for name, _ in shapes)


def test_a_span_is_read_across_the_buffers_as_if_they_were_one():
    flats = [torch.arange(0, 5.0), torch.arange(5, 8.0), torch.arange(8, 12.0)]
    into = torch.zeros(6)
    _copy_span(flats, 3, into)
    assert into.tolist() == [3, 4, 5, 6, 7, 8]
    short = torch.zeros(4)
    try:
        _copy_span(flats, 10, short)
    except ValueError as error:
        assert "end 2 elements early" in str(error)
    else:
        raise AssertionError("a span past the buffers' end was read")
