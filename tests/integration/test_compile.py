"""`train.compile=true` through `launcher run`, as the GPU recipes use it, on inductor's CPU backend:
the compiled model trains with both engines and follows the eager run. This is the path the GPU
benchmark takes (GPT-2 under DeepSpeed ZeRO-2, BERT-base), checked before any GPU sees it."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT, launch, launcher_env, train_records

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # ~2 min: inductor compiles C++ on a cold cache

STEPS = 4
CASES = {
    # recipe, its overrides (no dropout: inductor draws its own random numbers, eager uses torch's)
    "gpt-deepspeed-zero2": ("gpt-pretrain-tiny.yaml", ["backend.name=deepspeed", "backend.zero_stage=2",
                                                       "batch.global=8", "batch.micro=8"]),
    "bert-accelerate-ddp": ("bert-pretrain-tiny.yaml", ["backend.name=accelerate", "model.dropout=0.0",
                                                        "batch.global=16", "batch.micro=16"]),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real text, small enough that preprocessing takes seconds: the first 60 chapters of Austen."""
    from launcher.data.corpora import austen_documents

    path = tmp_path_factory.mktemp("corpus") / "austen-60.txt"
    path.write_text("\n\n".join(" ".join(sentences) for sentences in austen_documents()[:60]), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_recipe_trains_and_follows_the_eager_run(tmp_path, corpus, case):
    recipe, overrides = CASES[case]
    common = [f"data.corpus={corpus}", "data.vocab_size=1000", f"train.steps={STEPS}", "scheduler.warmup_steps=1",
              "train.eval_every=0", "train.log_every=1", "tracking.mode=disabled", "checkpoint.every_steps=0",
              *overrides]
    inductor = tmp_path / "inductor"
    env = launcher_env(LAUNCHER_CACHE_DIR=str(tmp_path / "cache"), TORCHINDUCTOR_CACHE_DIR=str(inductor))
    eager = launch(ROOT / "recipes" / recipe, tmp_path / "eager", *common, nproc=1, env=env, timeout=900)
    assert eager.returncode == 0, eager.stdout[-2000:] + eager.stderr[-3000:]
    assert not list(inductor.rglob("*.py"))  # the eager run compiled nothing
    compiled = launch(ROOT / "recipes" / recipe, tmp_path / "compiled", *common, "train.compile=true", nproc=1,
                      env=env, timeout=900)
    assert compiled.returncode == 0, compiled.stdout[-2000:] + compiled.stderr[-3000:]
    assert list(inductor.rglob("*.py")), "inductor generated no kernels: the model was not compiled"
    eager_losses = [r["loss"] for r in train_records(tmp_path / "eager")]
    compiled_losses = [r["loss"] for r in train_records(tmp_path / "compiled")]
    assert len(compiled_losses) == STEPS
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-3)  # same model, same batches, fused kernels
    assert compiled_losses[-1] < compiled_losses[0]
