"""A run saved on 4 ranks resumes on 1, 2 and 8 with every backend (docs/faults.md 22): the same
command with another --nproc, nothing else. After the resume, every step's loss equals an
uninterrupted run's at the new size (fp32; only the reduction order differs), the LR is the same,
and the ledger of sample ids shows each step trained on exactly the samples the uninterrupted run
trained on: none skipped, none repeated.

The fixture model has no dropout: with it, a sample's mask depends on the rank that draws it, and
4 ranks draw other masks than 2 before the resume. The 8-rank runs oversubscribe the 2 cores.
The default set runs the whole form's making, reuse and repair (ZeRO-3, 4 -> 2 and 1) and the
refusal; the matrix runs in the opt-in heavy set, which CI runs too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, launch, metrics, train_records, write_recipe

RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 16, dropout: 0.0}}
data: {{samples: 96}}
optimizer: {{lr: 1e-2}}
batch: {{global: 8, micro: 1}}
train: {{steps: 34, log_every: 1}}
checkpoint: {{every_steps: 4}}
"""
SAVED_AT = 4  # steps trained on 4 ranks before the resume: 30 after it
BACKENDS = {
    "zero1": ["backend.name=deepspeed", "backend.zero_stage=1"],
    "zero2": ["backend.name=deepspeed", "backend.zero_stage=2"],
    "zero3": ["backend.name=deepspeed", "backend.zero_stage=3"],
    "zero3-offload": ["backend.name=deepspeed", "backend.zero_stage=3", "backend.offload_optimizer=true"],
    "zero0": ["backend.name=deepspeed", "backend.zero_stage=0"],
    "fsdp": ["backend.name=accelerate", "backend.strategy=fsdp"],
    "ddp": ["backend.name=accelerate", "backend.strategy=ddp"],
}
# The default set reshards in test_the_whole_form_is_reused_and_a_damaged_one_rebuilt (ZeRO-3,
# 4 -> 2 and 4 -> 1); the matrix runs in the opt-in heavy set, which CI runs too.
CASES = [pytest.param(backend, world, id=f"{backend}-4to{world}", marks=pytest.mark.heavy)
         for backend in BACKENDS if backend != "zero0" for world in (1, 2, 8)]
CASES.append(pytest.param("zero0", 2, id="zero0-4to2", marks=pytest.mark.heavy))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The 4-rank run of each backend, stopped after SAVED_AT steps (made once per backend)."""
    made: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in made:
            root = tmp_path_factory.mktemp(f"saved-{backend}")
            recipe = write_recipe(root / "r.yaml", RECIPE)
            result = launch(recipe, root / "run", *BACKENDS[backend], f"train.stop_after_steps={SAVED_AT}", nproc=4)
            assert result.returncode == 0, result.stderr[-3000:]
            made[backend] = root / "run"
        return made[backend]

    return get


def _moved_copy(saved_run: Path, where: Path) -> Path:
    shutil.copytree(saved_run, where, symlinks=True)
    for ledger in where.glob("ids-rank*.txt"):  # the ledger as the 4 ranks wrote it
        assert len(ledger.read_text().splitlines()) == SAVED_AT * 2  # 2 micro-batches per step on 4 ranks
    return where


def _ledger(run_dir: Path, world: int, steps: int, accumulation: int, before: int = 0) -> list[list[int]]:
    """The sorted sample ids each of the last `steps` optimizer steps trained on, across the ranks;
    `before`: the lines ranks 0-3 wrote ahead of them (the 4-rank steps before the resume)."""
    lines = [(run_dir / f"ids-rank{rank}.txt").read_text().splitlines()[before if rank < 4 else 0:]
             for rank in range(world)]
    return [sorted(int(i) for rank_lines in lines for line in rank_lines[s * accumulation:(s + 1) * accumulation]
                   for i in line.split()) for s in range(steps)]


def _check_resumed_equals_uninterrupted(tmp_path: Path, moved: Path, backend: str, world: int) -> None:
    recipe = tmp_path / "r.yaml"
    whole = tmp_path / "whole"
    reference = launch(recipe, whole, *BACKENDS[backend], nproc=world)
    assert reference.returncode == 0, reference.stderr[-3000:]

    resumed_steps = [r["step"] for r in train_records(moved)]
    assert resumed_steps == list(range(1, 35))  # 4 on 4 ranks, 30 after the resume: none twice, none lost
    expected = {r["step"]: r for r in train_records(whole)}
    for record in train_records(moved)[SAVED_AT:]:
        assert record["lr"] == pytest.approx(expected[record["step"]]["lr"], rel=1e-12)
        assert record["loss"] == pytest.approx(expected[record["step"]]["loss"], rel=1e-5), record["step"]

    # The ledger: steps 5-34 trained on exactly the samples of the uninterrupted run's steps 5-34,
    # with accumulation derived again (8 samples per step = 1 x 8/world x world); each epoch whole.
    accumulation = 8 // world
    uninterrupted = _ledger(whole, world, 34, accumulation)
    assert _ledger(moved, world, 34 - SAVED_AT, accumulation, before=2 * SAVED_AT) == uninterrupted[SAVED_AT:]
    samples = [i for step in uninterrupted for i in step]
    assert sorted(samples[:96]) == list(range(96)) and sorted(samples[96:192]) == list(range(96))


@pytest.mark.parametrize(("backend", "world"), CASES)
def test_a_4_rank_checkpoint_resumes_on_another_size_as_if_it_had_run_there(tmp_path, saved, backend, world):
    write_recipe(tmp_path / "r.yaml", RECIPE)
    moved = _moved_copy(saved(backend), tmp_path / "moved")
    plan = launch(tmp_path / "r.yaml", moved, *BACKENDS[backend], nproc=world, command="plan")
    resume_line = next(line for line in plan.stdout.splitlines() if line.startswith("# resume: "))
    label = {"zero3-offload": "ZeRO-3", "fsdp": "FSDP", "ddp": "DDP"}.get(backend, f"ZeRO-{backend[-1]}")
    assert resume_line.startswith(f"# resume: resumes the 4-rank {label} checkpoint of step {SAVED_AT} on {world} "
                                  f"rank{'s' if world > 1 else ''} (")

    result = launch(tmp_path / "r.yaml", moved, *BACKENDS[backend], nproc=world)
    assert result.returncode == 0, result.stderr[-3000:]
    assert resume_line.removeprefix("# resume: ") in result.stdout + result.stderr  # the run says what the plan said
    sharded = backend.startswith(("zero1", "zero2", "zero3"))
    warnings = [r["warning"] for r in metrics(moved) if "warning" in r]
    assert warnings == [f"resumed a 4-rank checkpoint on {world} rank{'s' if world > 1 else ''}"
                        f"{' (resharded)' if sharded else ''}: the data position, the LR schedule and the "
                        "random streams follow the global step"]
    assert bool([r for r in metrics(moved) if "reshard_s" in r]) == sharded
    # The whole form goes with its checkpoint when keep_last prunes it.
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == [".commits", "latest",
                                                                          "step-00000032", "step-00000034"]
    _check_resumed_equals_uninterrupted(tmp_path, moved, backend, world)


def _full_form_of(saved_run: Path, tmp_path: Path) -> Path:
    """step-4.full as a 2-rank resume writes it (the resumed run stops after one step)."""
    first = _moved_copy(saved_run, tmp_path / "first")
    result = launch(tmp_path / "r.yaml", first, *BACKENDS["zero3"], "train.stop_after_steps=1", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    full = first / "checkpoints" / f"step-{SAVED_AT:08d}.full"
    manifest = json.loads((full / "manifest.json").read_text())
    assert set(manifest["files"]) == {"rest.pt"} | {f"{kind}-{part:05d}-of-00002.pt" for part in (0, 1)
                                              for kind in ("model", "state-exp_avg", "state-exp_avg_sq")}
    return full


def test_the_whole_form_is_reused_and_a_damaged_one_rebuilt(tmp_path, saved):
    """The joined form of a sharded checkpoint is written once and reused by the next resume on
    another size; a byte changed in it is found by its checksums, and it is rebuilt, not trusted."""
    write_recipe(tmp_path / "r.yaml", RECIPE)
    full = _full_form_of(saved("zero3"), tmp_path)

    reused = _moved_copy(saved("zero3"), tmp_path / "reused")
    shutil.copytree(full, reused / "checkpoints" / full.name)
    result = launch(tmp_path / "r.yaml", reused, *BACKENDS["zero3"], "train.stop_after_steps=1", nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "its shards joined in step-00000004.full" in result.stdout + result.stderr
    assert "joined the shards" not in result.stdout + result.stderr
    assert not [r for r in metrics(reused) if "reshard_s" in r]

    damaged = _moved_copy(saved("zero3"), tmp_path / "damaged")
    shutil.copytree(full, damaged / "checkpoints" / full.name)
    target = damaged / "checkpoints" / full.name / "state-exp_avg-00001-of-00002.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    result = launch(tmp_path / "r.yaml", damaged, *BACKENDS["zero3"], "train.stop_after_steps=1", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [r["warning"] for r in metrics(damaged) if "warning" in r]
    assert any(w.startswith("step-00000004.full was damaged (") and "state-exp_avg-00001-of-00002.pt" in w and
               w.endswith("rebuilt from step-00000004") for w in warnings), warnings
    assert (damaged / "checkpoints" / full.name / "state-exp_avg-00001-of-00002.pt").read_bytes() == \
        (full / "state-exp_avg-00001-of-00002.pt").read_bytes()  # rebuilt as it was first written
    step5 = [r["loss"] for r in train_records(damaged) if r["step"] == SAVED_AT + 1]
    assert step5 == [r["loss"] for r in train_records(tmp_path / "first") if r["step"] == SAVED_AT + 1]


def test_a_world_size_the_batch_does_not_divide_is_refused_with_the_sizes_that_work(tmp_path, saved):
    write_recipe(tmp_path / "r.yaml", RECIPE)
    moved = _moved_copy(saved("zero3"), tmp_path / "moved")
    before = sorted(str(p.relative_to(moved)) for p in moved.rglob("*"))
    result = launch(tmp_path / "r.yaml", moved, *BACKENDS["zero3"], nproc=3)
    assert result.returncode == 2
    assert "`batch.global`: 8 is not divisible by batch.micro x world size = 1 x (1 node x 3 processes) = 3" \
        in result.stderr
    assert (f"HINT: {moved}/checkpoints/step-{SAVED_AT:08d} (step {SAVED_AT}, 4 ranks) keeps batch.global=8: "
            "with batch.micro=1 it resumes on 1, 2, 4, 8 processes in all") in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(str(p.relative_to(moved)) for p in moved.rglob("*")) == before  # nothing written
