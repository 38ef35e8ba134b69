"""Causal LM fine-tuning (GPT-2 family first; any AutoModelForCausalLM from a local path).

    launcher run recipes/gpt-pretrain-tiny.yaml --nproc 2     # a tiny GPT from scratch on the KJV
    launcher run recipes/gpt-finetune-tiny.yaml --nproc 2     # ... fine-tuned on Jane Austen
    launcher run recipes/gpt2-finetune.yaml --nproc 8         # GPT-2 124M on a GPU node

Starting points (`model.init`): `pretrained` loads `model.pretrained`, which is a local directory
(save_pretrained format), a run directory of this project (its export/ is used), or a hub name
when the machine is online; `scratch` builds a GPT-2 of `model.size` (pretraining-style runs).

Data: plain text is tokenised, each document ends with EOS, and the stream is cut into blocks of
max_seq_len tokens: every token lands in exactly one block (the last block is padded, padding
carries no loss). JSONL with prompt/response (or chat `messages`) trains only on the response:
prompt tokens get label -100. Evaluation reports held-out loss and perplexity, and generates from
fixed prompts (greedy and sampled), logged as text and as a tracker table.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from launcher.data.paths import path_problems
from launcher.rundir.layout import RunDir

# Bump when packing or the cache layout changes: old caches are then never reused.
PREPROCESS_VERSION = 1
DESCRIPTION = "causal LM fine-tuning (AutoModelForCausalLM: GPT-2 family), packing or prompt/response, samples"

# (layers, hidden, heads)
SIZES = {"tiny": (2, 128, 4), "small": (6, 384, 6), "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16),
         "gpt2-large": (36, 1280, 20)}


# Keys that change no checkpoint's meaning: a run may continue with other values (run.json).
IDENTITY_EXEMPT = frozenset({"model.attention", "data.cache_dir", "data.sample_prompts", "data.max_new_tokens",
                             "data.temperature", "data.top_k", "data.top_p", "data.workers"})

@dataclass(frozen=True)
class ModelConfig:
    init: Literal["pretrained", "scratch"] = "pretrained"
    pretrained: str = ""  # local dir, a launcher run dir, or a hub name (online only)
    size: Literal["tiny", "small", "gpt2", "gpt2-medium", "gpt2-large"] = "tiny"  # init: scratch
    dropout: float = 0.0
    attention: Literal["sdpa", "eager"] = "sdpa"
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the first N transformer blocks
    lora_rank: int = 0  # > 0: train LoRA adapters (peft) instead of the full model
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj"])

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.init == "pretrained" and not self.pretrained:
            out.append(("pretrained", "is required when init is `pretrained`",
                        "a local model directory, a run directory, or `init: scratch`"))
        if self.freeze_layers < 0 or self.lora_rank < 0:
            out.append(("freeze_layers", "freeze_layers and lora_rank must be >= 0", "0 disables them"))
        if self.lora_rank and (self.freeze_layers or self.freeze_embeddings):
            out.append(("lora_rank", "LoRA already freezes the base model", "drop freeze_* when lora_rank > 0"))
        return out


@dataclass(frozen=True)
class DataConfig:
    format: Literal["text", "prompt_response"] = "text"
    corpus: str = "package:austen"  # text: file/dir/hf:/json:/package:; prompt_response: a .jsonl file
    eval_corpus: str = ""  # "" holds out eval_fraction of the documents
    eval_fraction: float = 0.02
    text_field: str = "text"
    tokenizer: str = ""  # "" uses the model's; with init: scratch and none, a byte-level BPE is trained
    vocab_size: int = 4096  # for a trained tokenizer
    max_seq_len: int = 128
    cache_dir: str = ""
    seed: int = 12345
    workers: int = 0  # DataLoader worker processes per rank: batches built off the training thread
    # generation samples at every evaluation
    sample_prompts: list[str] = field(default_factory=lambda: ["It was", "She said"])
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if not 8 <= self.max_seq_len <= 32768:
            out.append(("max_seq_len", f"must be in 8..32768, got {self.max_seq_len}", "e.g. 1024 for GPT-2"))
        if not 0 < self.eval_fraction < 0.5:
            out.append(("eval_fraction", "must be in (0, 0.5)", "e.g. 0.02"))
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            out.append(("temperature", "temperature > 0, top_p in (0, 1], top_k >= 0", "0.8, 0.95, 50"))
        if self.workers < 0:
            out.append(("workers", f"must be >= 0, got {self.workers}", "0 builds batches in the training thread"))
        if not 0 <= self.seed < 2**63:  # seeds torch's generator for the samples
            out.append(("seed", f"must be in 0..2**63-1, got {self.seed}", "any whole number like 12345"))
        out += path_problems(corpus=self.corpus, eval_corpus=self.eval_corpus)  # found before launch
        return out


def hidden_size(recipe) -> int | None:
    """The model's width (DeepSpeed's "auto" bucket sizes derive from it): the size preset from
    scratch, a local checkpoint's config.json, None for a hub name (not read before start)."""
    if recipe.model.init == "scratch":
        return SIZES[recipe.model.size][1]
    found = [Path(recipe.model.pretrained) / sub / "config.json" for sub in ("", "export")]  # or a launcher run
    config = next((path for path in found if path.is_file()), found[0])
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    width = data.get("n_embd", data.get("hidden_size")) if isinstance(data, dict) else None
    return width if isinstance(width, int) else None


def tokens_per_sample(recipe) -> int:
    return recipe.data.max_seq_len


def build(recipe, ctx):
    import torch

    from launcher.recipe_module import Task

    data_cfg: DataConfig = recipe.data
    source = _resolve_model_path(recipe.model.pretrained) if recipe.model.init == "pretrained" else ""
    cache = _cache_directory(data_cfg, source)
    if ctx.local_rank == 0:  # one process per node preprocesses; the others wait
        _preprocess(data_cfg, source, cache)
    ctx.barrier()
    tokenizer = _load_tokenizer(cache / "tokenizer")
    if ctx.is_main:
        tokenizer.save_pretrained(os.path.join(ctx.run_dir, "tokenizer"))
    train = torch.load(cache / "train.pt", weights_only=True)
    evaluation = torch.load(cache / "eval.pt", weights_only=True)
    model = _build_model(recipe.model, source, tokenizer, data_cfg.max_seq_len)
    # The loss reads the vocabulary-wide logits in chunks (runtime/cross_entropy.py); compiled
    # per chunk when the model is compiled on a GPU.
    compile_loss = recipe.train.compile and ctx.device.type == "cuda"

    def loss(model, batch):
        return causal_lm_loss(model, batch, compile_loss)

    def generate_samples(model):
        return generate(_unwrap(model), tokenizer, data_cfg, ctx.device)

    def export(model, state, directory):
        inner = _unwrap(model)
        if hasattr(inner, "merge_and_unload"):  # LoRA: export a plain model with merged weights
            inner.load_state_dict(state)
            inner = inner.merge_and_unload()
            state = inner.state_dict()
        inner.save_pretrained(directory, state_dict=state)
        tokenizer.save_pretrained(directory)

    config = _base_config(model)
    n_params = sum(p.numel() for p in model.parameters())
    seq = data_cfg.max_seq_len
    return Task(
        model=model,
        train_data=Blocks(train),
        eval_data=Blocks(evaluation),
        collate=collate,
        loss=loss,
        count_targets=lambda batch: int((batch["labels"][:, 1:] != -100).sum()),
        generate_samples=generate_samples,
        report_perplexity=True,
        flops_per_sample=seq * (6 * n_params + 12 * config.n_layer * config.n_embd * seq),
        tokens_per_sample=seq,
        export=export,
        loader_workers=data_cfg.workers,
    )


def causal_lm_loss(model, batch: dict, compile_chunks: bool = False):
    import torch

    """(sum of the next-token losses, their count). No attention mask: every row is packed text or
    right-padded, so the causal mask alone is exact for every token that carries a label (padding
    comes after them and has none), and SDPA runs with is_causal=True (see causal_sdpa). No KV
    cache is built in training. The mask of ones (made on the device: no copy) only keeps
    transformers from looking for padding on the host to warn about; causal_sdpa reads no mask."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    return shifted_loss_sum(logits, batch["labels"], compile_chunks)


def shifted_loss_sum(logits, labels, compile_chunks: bool = False):
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    from launcher.runtime.cross_entropy import next_token_loss_sum

    return next_token_loss_sum(logits, labels, compile_chunks)


def _unwrap(model):
    return getattr(model, "module", model)


def _base_config(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.config


# ---------------------------------------------------------------------------------------------
# Model


def _resolve_model_path(pretrained: str) -> str:
    path = Path(pretrained)
    if (RunDir(path).export / "config.json").is_file():  # a launcher run directory
        return str(RunDir(path).export)
    return pretrained  # a local save_pretrained directory, or a hub name when online


CAUSAL_SDPA = "launcher_causal_sdpa"


def causal_sdpa() -> str:
    """transformers' own SDPA attention under a name of ours. transformers builds no mask for an
    attention it does not know (and so reads no mask on the host, and detects no packing), so
    SDPA gets attn_mask=None and is_causal=True whenever query and keys have the same length:
    training and prefill run the causal kernels (flash attention on GPUs), eager and compiled
    alike; decoding one token attends to the whole cache. Exact wherever any padding comes after
    the tokens that are scored, as in our packed blocks and right-padded rows, and generation
    here runs one unpadded prompt at a time."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
    return CAUSAL_SDPA


def memory_probe(recipe):
    """The model (a pretrained source gives its config only) and a block batch, for the plan's
    memory estimate. The vocabulary is data.vocab_size when a tokenizer is trained (at most that)."""
    import torch

    from launcher.recipe_module import MemoryProbe

    cfg, data = recipe.model, recipe.data
    source = _resolve_model_path(cfg.pretrained) if cfg.init == "pretrained" else ""
    vocab = _VocabOnly(data.vocab_size)
    model = _build_model(cfg, source, vocab, data.max_seq_len, weights=False)

    def batch(micro: int) -> dict:
        ids = torch.zeros(micro, data.max_seq_len, dtype=torch.long)
        return {"input_ids": ids, "labels": ids}

    return MemoryProbe(model=model, batch=batch, loss=causal_lm_loss)


class _VocabOnly:
    """Stands in for a tokenizer where only its size matters."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _build_model(cfg: ModelConfig, source: str, tokenizer, max_seq_len: int, weights: bool = True):
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if cfg.init == "pretrained" and not weights:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), attn_implementation=cfg.attention)
    elif cfg.init == "pretrained":
        model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=cfg.attention)
        if weights and model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    else:
        layers, hidden, heads = SIZES[cfg.size]
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(1024, max_seq_len), n_embd=hidden,
                            n_layer=layers, n_head=heads, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                            attn_pdrop=cfg.dropout, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        config._attn_implementation = cfg.attention
        model = GPT2LMHeadModel(config)
    if cfg.attention == "sdpa" and not getattr(model.config, "sliding_window", None):
        model.set_attn_implementation(causal_sdpa())
    if cfg.freeze_embeddings:
        for parameter in model.get_input_embeddings().parameters():
            parameter.requires_grad_(False)
        for parameter in getattr(model.base_model, "wpe", model.get_input_embeddings()).parameters():
            parameter.requires_grad_(False)
    if cfg.freeze_layers:
        blocks = getattr(model.base_model, "h", None) or getattr(model.base_model, "layers", None)
        if blocks is None:
            raise ValueError("model.freeze_layers: this architecture has no `h` or `layers` blocks")
        for block in list(blocks)[: cfg.freeze_layers]:
            for parameter in block.parameters():
                parameter.requires_grad_(False)
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM",
                          fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")
        model = get_peft_model(model, lora)
    return model


# ---------------------------------------------------------------------------------------------
# Data


def _cache_directory(cfg: DataConfig, source: str) -> Path:
    from launcher.data.cache import cache_root

    settings = {**asdict(cfg), "cache_dir": "", "model": source, "format_version": PREPROCESS_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for spec in filter(None, (cfg.corpus, cfg.eval_corpus)):
        digest.update(_fingerprint(spec).encode())
    for directory in filter(None, (cfg.tokenizer, source)):
        for path in sorted(p for p in Path(directory).glob("*token*") if p.is_file()):
            digest.update(path.read_bytes())
    return cache_root(cfg.cache_dir) / f"gpt-finetune-{digest.hexdigest()[:16]}"


def _fingerprint(spec: str) -> str:
    path = Path(spec.split(":", 1)[1] if spec.startswith(("hf:", "json:")) else spec)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return spec  # packaged corpora are versioned by their Debian package


def _preprocess(cfg: DataConfig, source: str, cache: Path) -> None:
    from launcher.data.cache import build_once

    build_once(cache, "gpt_finetune", lambda tmp: _build_blocks(cfg, source, tmp))


def _build_blocks(cfg: DataConfig, source: str, tmp: Path) -> dict:
    """Tokenizer + train/eval blocks into `tmp`."""
    import random

    import torch

    from launcher.data.corpora import load_documents

    if cfg.format == "text":
        documents = [" ".join(d) for d in load_documents(cfg.corpus, cfg.text_field)]
        if cfg.eval_corpus:
            train_docs, eval_docs = documents, [" ".join(d) for d in load_documents(cfg.eval_corpus, cfg.text_field)]
        else:
            order = list(range(len(documents)))
            random.Random(cfg.seed).shuffle(order)
            n_eval = max(1, round(len(documents) * cfg.eval_fraction))
            eval_docs = [documents[i] for i in order[:n_eval]]
            train_docs = [documents[i] for i in order[n_eval:]]
        tokenizer = _tokenizer_for(cfg, source, train_docs)
        train = pack_documents(tokenizer(train_docs)["input_ids"], tokenizer.eos_token_id, cfg.max_seq_len)
        evaluation = pack_documents(tokenizer(eval_docs)["input_ids"], tokenizer.eos_token_id, cfg.max_seq_len)
    else:
        examples = read_prompt_response(cfg.corpus)
        random.Random(cfg.seed).shuffle(examples)
        n_eval = max(1, round(len(examples) * cfg.eval_fraction))
        tokenizer = _tokenizer_for(cfg, source, [p + r for p, r in examples])
        encoded = [encode_prompt_response(tokenizer, p, r, cfg.max_seq_len) for p, r in examples]
        evaluation, train = _stack(encoded[:n_eval], cfg.max_seq_len), _stack(encoded[n_eval:], cfg.max_seq_len)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    torch.save(train, tmp / "train.pt")
    torch.save(evaluation, tmp / "eval.pt")
    return {"train_blocks": len(train["input_ids"])}


def _tokenizer_for(cfg: DataConfig, source: str, texts: list[str]):
    if cfg.tokenizer or source:
        tokenizer = _load_tokenizer(cfg.tokenizer or source)
    else:
        tokenizer = train_bpe(texts, cfg.vocab_size)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padding never carries loss
    return tokenizer


def train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme) trained on the corpus, with <|endoftext|> as BOS/EOS/PAD."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def _load_tokenizer(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pack_documents(documents: list[list[int]], eos_id: int, block: int) -> dict:
    """Concatenate documents, each followed by EOS, and cut the stream into blocks of `block`.

    Every token is in exactly one block; the last block is padded and its padding has label -100.
    """
    import torch

    stream = [t for document in documents for t in (*document, eos_id)]
    n_blocks = max(1, -(-len(stream) // block))
    ids = torch.full((n_blocks, block), eos_id, dtype=torch.int32)
    labels = torch.full((n_blocks, block), -100, dtype=torch.int32)
    flat = torch.tensor(stream, dtype=torch.int32)
    ids.view(-1)[: len(stream)] = flat
    labels.view(-1)[: len(stream)] = flat
    mask = torch.zeros((n_blocks, block), dtype=torch.int8)
    mask.view(-1)[: len(stream)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def read_prompt_response(path: str) -> list[tuple[str, str]]:
    """JSONL lines with {"prompt", "response"} or {"messages": [{"role", "content"}, ...]}."""
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if "messages" in record:
            *history, last = record["messages"]
            if last.get("role") != "assistant":
                raise ValueError(f"{path}:{number}: the last message must be the assistant's (the response)")
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant: "
            examples.append((prompt, last["content"]))
        elif "prompt" in record and "response" in record:
            examples.append((record["prompt"], record["response"]))
        else:
            raise ValueError(f"{path}:{number}: expected prompt/response or messages")
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def encode_prompt_response(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """(ids, labels): the prompt's labels are -100, so only the response (and its EOS) is learned."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_len]
    labels = ([-100] * len(prompt_ids) + response_ids)[:max_len]
    return ids, labels


def _stack(encoded: list[tuple[list[int], list[int]]], block: int) -> dict:
    import torch

    ids = torch.zeros((len(encoded), block), dtype=torch.int32)
    labels = torch.full((len(encoded), block), -100, dtype=torch.int32)
    mask = torch.zeros((len(encoded), block), dtype=torch.int8)
    for row, (token_ids, token_labels) in enumerate(encoded):
        ids[row, : len(token_ids)] = torch.tensor(token_ids)
        labels[row, : len(token_labels)] = torch.tensor(token_labels)
        mask[row, : len(token_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class Blocks:
    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["input_ids"])

    def __getitem__(self, index: int) -> dict:
        return {key: value[index] for key, value in self.tensors.items()}


def collate(samples: list[dict]) -> dict:
    """Token ids and labels; the attention mask stays behind (the loss needs none, see causal_sdpa)."""
    import torch

    return {key: torch.stack([s[key] for s in samples]).long() for key in ("input_ids", "labels")}


# ---------------------------------------------------------------------------------------------
# Generation samples


def generate(model, tokenizer, cfg: DataConfig, device) -> list[dict]:
    """Greedy and sampled continuations of the fixed prompts (same seed on every rank)."""
    import torch

    rows = []
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # samples comparable across evaluations; training RNG restored below
    with torch.no_grad():
        for prompt in cfg.sample_prompts:
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            for mode, options in (("greedy", {"do_sample": False}),
                                  ("sampled", {"do_sample": True, "temperature": cfg.temperature,
                                               "top_k": cfg.top_k, "top_p": cfg.top_p})):
                output = model.generate(**inputs, max_new_tokens=cfg.max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id, **options)
                text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                rows.append({"prompt": prompt, "mode": mode, "text": text})
    torch.random.set_rng_state(generator_state)
    model.train(was_training)
    return rows
