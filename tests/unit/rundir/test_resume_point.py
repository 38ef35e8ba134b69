"""What the plan says about the checkpoint a run resumes, and the world sizes it resumes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.rundir.checkpoints import MANIFEST, ResumePoint, resumable_world_sizes


def _point(tmp_path: Path, **meta) -> ResumePoint:
    directory = tmp_path / "checkpoints" / "step-00001200"
    directory.mkdir(parents=True)
    return ResumePoint.of(directory, {"step": 1200, **meta})


def test_a_zero3_checkpoint_on_fewer_ranks_is_resharded_and_says_where_the_joined_form_goes(tmp_path):
    point = _point(tmp_path, world_size=4, backend="deepspeed", zero_stage=3)
    assert point.sentence(2) == (f"resumes the 4-rank ZeRO-3 checkpoint of step 1200 on 2 ranks (resharded) from "
                                 f"{point.directory}; its shards joined once into step-00001200.full, kept for "
                                 "later resumes")
    whole = point.directory.with_name("step-00001200.full")
    whole.mkdir()
    (whole / MANIFEST).write_text("{}")
    assert point.sentence(1).endswith("on 1 rank (resharded) from "
                                      f"{point.directory}; its shards joined in step-00001200.full")


@pytest.mark.parametrize(("meta", "how"), [
    ({"backend": "deepspeed", "zero_stage": 0}, "ZeRO-0 checkpoint of step 1200 on 8 ranks (its whole state on "
                                                "every rank)"),
    ({"backend": "accelerate", "strategy": "ddp"}, "DDP checkpoint of step 1200 on 8 ranks (its whole state on every "
                                                   "rank)"),
    ({"backend": "accelerate", "strategy": "fsdp"}, "FSDP checkpoint of step 1200 on 8 ranks (resharded)"),
])
def test_whole_state_checkpoints_load_on_any_size_and_say_so(tmp_path, meta, how):
    point = _point(tmp_path, world_size=4, **meta)
    assert point.sentence(8) == f"resumes the 4-rank {how} from {point.directory}"
    assert not point.sharded


def test_the_same_size_and_an_old_checkpoint_without_its_layout_say_only_where(tmp_path):
    point = _point(tmp_path, world_size=2, backend="deepspeed", zero_stage=2)
    assert point.sentence(2) == f"resumes the 2-rank ZeRO-2 checkpoint of step 1200 from {point.directory}"
    old = ResumePoint.of(point.directory, {"step": 7})  # meta of a checkpoint from before the layout was recorded
    assert old.sentence(3) == f"resumes the checkpoint of step 7 from {point.directory}"


def test_resumable_world_sizes_are_those_the_kept_global_batch_divides_into():
    assert resumable_world_sizes(8, 1) == [1, 2, 4, 8]
    assert resumable_world_sizes(96, 4) == [1, 2, 3, 4, 6, 8, 12, 24]
    assert resumable_world_sizes(10, 4) == []  # not even one micro-batch split
