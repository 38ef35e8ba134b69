"""GPT data: packing loses and duplicates nothing; prompt tokens carry no loss."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.recipes.gpt_finetune import (
    encode_prompt_response,
    pack_documents,
    read_prompt_response,
    shifted_loss_sum,
    train_bpe,
)


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["It is a truth universally acknowledged.", "In the beginning God created the heaven."] * 50
    tok = train_bpe(texts, vocab_size=300)
    tok.pad_token = tok.eos_token
    return tok


def test_packing_keeps_every_token_once_and_marks_boundaries():
    documents = [list(range(1, 8)), list(range(10, 13)), list(range(20, 31))]  # 7 + 3 + 11 tokens
    eos = 0
    packed = pack_documents(documents, eos, block=6)
    stream = [t for d in documents for t in (*d, eos)]  # 24 tokens: 4 full blocks
    assert packed["input_ids"].shape == (4, 6)
    assert packed["input_ids"].flatten().tolist() == stream
    assert packed["labels"].flatten().tolist() == stream
    # a partial last block is padded; its padding carries no loss and no attention
    packed = pack_documents(documents, eos, block=5)  # 24 tokens -> 5 blocks, 1 pad
    assert packed["input_ids"].flatten().tolist()[:24] == stream
    assert packed["labels"].flatten().tolist()[24:] == [-100]
    assert packed["attention_mask"].flatten().tolist() == [1] * 24 + [0]
    # each document is followed by EOS, so no document runs into the next one unmarked
    flat = packed["input_ids"].flatten().tolist()
    assert [i for i, t in enumerate(flat[:24]) if t == eos] == [7, 11, 23]


def test_prompt_tokens_carry_no_loss(tokenizer):
    ids, labels = encode_prompt_response(tokenizer, "Question: who?", " The heaven.", max_len=64)
    prompt_len = len(tokenizer("Question: who?", add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tokenizer.eos_token_id

    # The gradient reaching every logit that predicts a prompt token is exactly zero.
    logits = torch.randn(1, len(ids), 300, requires_grad=True)
    total, count = shifted_loss_sum(logits, torch.tensor([labels]))
    total.backward()
    per_position = logits.grad[0].abs().sum(dim=-1)
    predicts_prompt = per_position[: prompt_len - 1]  # logit t predicts token t+1
    assert torch.all(predicts_prompt == 0)
    assert torch.all(per_position[prompt_len - 1: len(ids) - 1] > 0)
    assert int(count) == len(ids) - prompt_len


def test_prompt_response_and_chat_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "response": "A"}) + "\n\n" + json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    assert read_prompt_response(str(path)) == [("Q", "A"), ("user: hi\nassistant: ", "hello")]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="assistant"):
        read_prompt_response(str(path))
