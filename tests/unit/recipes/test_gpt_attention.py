"""GPT training attention: no mask reaches SDPA for packed or right-padded blocks, so the causal
kernels run (flash attention on GPUs), with the loss of the masked path; no KV cache, no host read."""

from __future__ import annotations

import pytest
import torch

from launcher.recipes.gpt_finetune import ModelConfig, _build_model, causal_lm_loss, collate, pack_documents


class _Vocabulary:
    """What _build_model reads of a tokenizer."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __len__(self) -> int:
        return 97


def _model_and_batch(attention: str = "sdpa"):
    torch.manual_seed(0)
    model = _build_model(ModelConfig(init="scratch", size="tiny", attention=attention), "", _Vocabulary(), 32)
    documents = [torch.randint(1, 97, (n,)).tolist() for n in (40, 13, 71, 5)]
    blocks = pack_documents(documents, eos_id=0, block=32)  # the last block is right-padded
    batch = collate([{k: v[i] for k, v in blocks.items()} for i in range(len(blocks["input_ids"]))])
    return model, batch, blocks


class _Recorder:
    def __init__(self, monkeypatch) -> None:
        self.calls: list[dict] = []
        original = torch.nn.functional.scaled_dot_product_attention

        def record(*args, **kwargs):
            self.calls.append({"mask": kwargs.get("attn_mask"), "is_causal": kwargs.get("is_causal")})
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)


def test_packed_blocks_reach_sdpa_without_a_mask_and_score_as_the_masked_path(monkeypatch):
    model, batch, blocks = _model_and_batch()
    assert "attention_mask" not in batch  # nothing to copy to the device either
    recorder = _Recorder(monkeypatch)
    total, count = causal_lm_loss(model, batch)
    assert len(recorder.calls) == model.config.n_layer
    assert all(call["mask"] is None and call["is_causal"] is True for call in recorder.calls), recorder.calls
    # The same loss as transformers' own path with the padding mask (and an explicit mask).
    model.set_attn_implementation("sdpa")
    masked = model(input_ids=batch["input_ids"], attention_mask=blocks["attention_mask"].long()).logits
    from launcher.recipes.gpt_finetune import shifted_loss_sum

    reference, reference_count = shifted_loss_sum(masked, batch["labels"])
    assert int(count) == int(reference_count)
    assert torch.allclose(total, reference, rtol=1e-5), (total, reference)


def test_the_training_forward_builds_no_kv_cache_and_reads_nothing_on_the_host(monkeypatch):
    model, batch, _ = _model_and_batch()
    ids = batch["input_ids"]
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).past_key_values is None
    reads = []
    for name in ("item", "tolist", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    causal_lm_loss(model, batch)
    assert reads == []  # transformers' mask checks (an all-ones test, packing detection) would read


@pytest.mark.heavy  # inductor compiles the model on the CPU: half a minute
def test_compiled_training_attention_is_causal_without_a_mask(monkeypatch):
    model, batch, _ = _model_and_batch()
    recorder = _Recorder(monkeypatch)
    compiled = torch.compile(model)
    causal_lm_loss(compiled, batch)
    assert recorder.calls and all(c["mask"] is None and c["is_causal"] is True for c in recorder.calls)


def test_eager_attention_keeps_its_own_masks():
    model, batch, _ = _model_and_batch(attention="eager")
    assert model.config._attn_implementation == "eager"
    total, count = causal_lm_loss(model, batch)
    assert torch.isfinite(total) and int(count) > 0
