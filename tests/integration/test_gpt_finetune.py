"""GPT: pretrain a tiny GPT on the KJV, fine-tune it on Jane Austen, both through `launcher run`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch, launcher_env, metrics, write_recipe

# Real training of a tiny GPT, shortened: the opt-in heavy set, which CI runs. The shipped two-step
# example's own figures (perplexity 462 -> 79, the samples' drift to Austen's words) are figure runs:
# python bench/figures.py --cases gpt-finetune-tiny.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

PROMPTS = ["It was", "She said", "He was"]
PRETRAIN_STEPS, FINETUNE_STEPS = 60, 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpt")
    env = launcher_env(LAUNCHER_CACHE_DIR=str(base / "cache"))
    pre = base / "pretrain"
    result = launch(ROOT / "recipes" / "gpt-pretrain-tiny.yaml", pre, f"train.steps={PRETRAIN_STEPS}",
                    f"train.eval_every={PRETRAIN_STEPS}", f"checkpoint.every_steps={PRETRAIN_STEPS}",
                    "scheduler.warmup_steps=10", "train.log_every=10", nproc=2, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    fine = base / "finetune"
    prompts = json.dumps(PROMPTS)
    result = launch(ROOT / "recipes" / "gpt-finetune-tiny.yaml", fine, f"model.pretrained={pre}",
                    f"train.steps={FINETUNE_STEPS}", f"train.eval_every={FINETUNE_STEPS}",
                    f"checkpoint.every_steps={FINETUNE_STEPS}", "scheduler.warmup_steps=5", "train.log_every=10",
                    "train.eval_at_start=true", f"data.sample_prompts={prompts}", "data.max_new_tokens=12",
                    nproc=2, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return pre, fine, env


def test_finetuning_from_a_pretrained_run_lowers_heldout_perplexity(runs):
    pre, fine, _ = runs
    assert [r["step"] for r in metrics(pre) if "eval_perplexity" in r] == [PRETRAIN_STEPS]
    evals = {r["step"]: r["eval_perplexity"] for r in metrics(fine) if "eval_perplexity" in r}
    assert sorted(evals) == [0, FINETUNE_STEPS]
    # The KJV model starts far from Austen; 30 steps on her novels must move it (the whole example's
    # figures, 462 -> 79, are bench/figures.py's).
    assert evals[FINETUNE_STEPS] < 0.8 * evals[0], evals


def test_samples_are_drawn_at_each_evaluation_for_every_prompt(runs):
    _, fine, _ = runs
    rows = [json.loads(line) for line in (fine / "samples.jsonl").read_text().splitlines()]
    for step in (0, FINETUNE_STEPS):
        texts = [r["text"] for r in rows if r["step"] == step]
        assert len(texts) == 2 * len(PROMPTS)  # greedy + sampled per prompt
        assert all(re.search(r"[a-z]", t.lower()) for t in texts), texts


def test_export_generates_with_transformers(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, fine, _ = runs
    model = AutoModelForCausalLM.from_pretrained(fine / "export")
    tokenizer = AutoTokenizer.from_pretrained(fine / "export")
    inputs = tokenizer("It was", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 8


def test_lora_on_prompt_response_data_exports_a_merged_model(runs, tmp_path):
    pre, _, env = runs
    data = tmp_path / "chat.jsonl"
    lines = [{"prompt": f"Question {i}: who wrote Emma?\nAnswer:", "response": " Jane Austen."} for i in range(40)]
    lines += [{"messages": [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello."}]}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recipe = write_recipe(tmp_path / "lora.yaml", f"""\
recipe: gpt_finetune
model: {{init: pretrained, pretrained: {pre}, lora_rank: 4}}
data: {{format: prompt_response, corpus: {data}, max_seq_len: 32, eval_fraction: 0.1, sample_prompts: ["Question 1:"]}}
optimizer: {{lr: 1e-2}}
batch: {{global: 8, micro: 4}}
train: {{steps: 6, log_every: 1}}
""")
    result = launch(recipe, tmp_path / "run", nproc=1, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    losses = [r["loss"] for r in metrics(tmp_path / "run") if "loss" in r]
    assert losses[-1] < losses[0]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "export")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert Path(tmp_path / "run" / "export" / "tokenizer.json").exists()
