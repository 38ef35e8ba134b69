"""GPT: pretrain a tiny GPT on the KJV, fine-tune it on Jane Austen, both through `launcher run`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch, launcher_env, metrics, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # ~4.5 min of real training: `pytest -m heavy`; CI runs it

PROMPTS = ["It was", "She said", "He was", "The", "And", "I am"]
# Words that tell the corpora apart (by far more frequent in one than in the other).
AUSTEN_WORDS = {"mr", "mrs", "miss", "lady", "sir", "sure", "very", "much", "she", "her", "dear", "could",
                "would", "elizabeth", "emma", "anne", "fanny", "marianne", "catherine", "room", "family"}
KJV_WORDS = {"lord", "unto", "thee", "thou", "thy", "shall", "hath", "israel", "god", "ye", "saith", "king",
             "children", "behold", "land"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpt")
    env = launcher_env(LAUNCHER_CACHE_DIR=str(base / "cache"))
    pre = base / "pretrain"
    result = launch(ROOT / "recipes" / "gpt-pretrain-tiny.yaml", pre, nproc=2, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    fine = base / "finetune"
    prompts = json.dumps(PROMPTS)
    result = launch(ROOT / "recipes" / "gpt-finetune-tiny.yaml", fine, f"model.pretrained={pre}",
                    "train.eval_at_start=true", f"data.sample_prompts={prompts}", "data.max_new_tokens=40",
                    nproc=2, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return pre, fine, env


def _share(texts: list[str], vocabulary: set[str]) -> float:
    words = [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]
    return sum(w in vocabulary for w in words) / max(1, len(words))


def test_finetuning_lowers_heldout_perplexity(runs):
    _, fine, _ = runs
    evals = {r["step"]: r["eval_perplexity"] for r in metrics(fine) if "eval_perplexity" in r}
    assert sorted(evals) == [0, 100, 200]
    # Measured (2 processes, 2 CPU cores): the KJV model scores 462 on held-out Austen before,
    # 95 after 100 steps and 79 after 200.
    assert evals[200] < 0.35 * evals[0], evals


def test_samples_move_towards_the_finetuning_corpus(runs):
    _, fine, _ = runs
    rows = [json.loads(line) for line in (fine / "samples.jsonl").read_text().splitlines()]
    before = [r["text"] for r in rows if r["step"] == 0]
    after = [r["text"] for r in rows if r["step"] == 200]
    assert len(before) == len(after) == 2 * len(PROMPTS)  # greedy + sampled per prompt
    austen_gain = _share(after, AUSTEN_WORDS) - _share(before, AUSTEN_WORDS)
    kjv_drop = _share(before, KJV_WORDS) - _share(after, KJV_WORDS)
    # Measured: Austen words 0.000 -> 0.224 of all generated words; KJV words 0.177 -> 0.000.
    assert austen_gain > 0.10, (before, after)
    assert kjv_drop > 0.08, (before, after)


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
