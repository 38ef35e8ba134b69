"""The live-tensor counter the memory estimate is traced and measured with."""

from __future__ import annotations

import torch

from launcher.runtime.live_bytes import LiveBytes

MiB = 1024**2


def test_new_storage_counts_views_and_in_place_ops_do_not_and_frees_are_seen():
    counter = LiveBytes()
    with counter:
        a = torch.zeros(MiB // 4)  # 1 MiB of float32
        view = a[: MiB // 8]
        view.add_(1.0)
        b = a * 2  # a new 1 MiB
        assert counter.live == 2 * MiB
        del b
        assert counter.live == MiB
        c = torch.ones(MiB // 2)  # 2 MiB
    assert counter.peak == 3 * MiB and counter.live == 3 * MiB
    del a, view, c


def test_a_dataset_indexed_inside_the_count_is_not_counted_whole():
    data = torch.zeros(1024, 256)  # made before the count: a loader's dataset
    counter = LiveBytes()
    with counter:
        sample = data[3]
        batch = torch.stack([sample, data[4]])
    assert counter.peak == batch.numel() * 4


def test_storages_resized_in_place_are_followed_with_rescan():
    counter = LiveBytes(rescan=True)
    with counter:
        flat = torch.zeros(MiB // 4)
        flat.untyped_storage().resize_(0)  # what FSDP and ZeRO-3 do to a parameter they shard
        torch.zeros(1)  # any op: the sum is taken again after it
        assert counter.live == 4
        flat.untyped_storage().resize_(MiB)
        torch.zeros(1)
    assert counter.peak == MiB + 4


def test_on_the_meta_device_nothing_is_allocated_and_every_byte_is_counted():
    counter = LiveBytes()
    with torch.device("meta"):
        layer = torch.nn.Linear(512, 512)
    for parameter in layer.parameters():
        counter.hold(parameter)
    counter.watch_grads(layer.parameters())
    held = counter.live
    assert held == (512 * 512 + 512) * 4
    with counter:
        out = layer(torch.zeros(64, 512, device="meta"))
        out.sum().backward()
    assert counter.grads == held  # every parameter's gradient, told apart from activations
    assert counter.peak - held >= 64 * 512 * 4  # the output, at least
