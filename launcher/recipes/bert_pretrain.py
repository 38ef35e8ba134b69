"""BERT pretraining: masked language modelling + next sentence prediction (BertForPreTraining).

    launcher run recipes/bert-pretrain-tiny.yaml --nproc 2        # CPU, minutes, Jane Austen
    launcher run recipes/bert-base-pretrain.yaml --nproc 8        # one 8-GPU node, seq 128
    launcher submit recipes/bert-base-pretrain.yaml --nodes 4     # Slurm (see the multi-node docs)

Data follows the BERT paper (Devlin et al., 2019, and google-research/bert's
create_pretraining_data): documents are split into sentences; each training pair packs sentences
up to max_seq_len (shorter with probability short_seq_prob), cut into segment A and B, where B is
the actual continuation half of the time and a span of another document otherwise:
`[CLS] A [SEP] B [SEP]` with token type ids 0/1. Pairs are built once and cached; masking is
dynamic: 15% of non-special tokens (optionally whole words), of which 80% become [MASK], 10% a
random token, 10% stay, drawn from a seed derived from the sample's position in the global data
stream, so every epoch masks differently and a resumed run masks exactly as before.

The MLM head runs only on masked positions (about 15% of tokens): the same loss as computing all
logits, for a fraction of the vocabulary projection's FLOPs and memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from launcher.data.paths import path_problems

# Bump when pair construction or the cache layout changes: old caches are then never reused.
PREPROCESS_VERSION = 4  # 3: NSP negatives from the corpus itself; 4: the fill-mask probe
DESCRIPTION = "BERT pretraining, masked LM + next sentence prediction (transformers BertForPreTraining)"

# (layers, hidden, heads): Google's BERT miniatures (Turc et al., 2019) and the paper's sizes.
SIZES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
         "base": (12, 768, 12), "large": (24, 1024, 16)}


# Keys that change no checkpoint's meaning: a run may continue with other values (run.json).
IDENTITY_EXEMPT = frozenset({"model.attention", "data.cache_dir", "data.workers"})

@dataclass(frozen=True)
class ModelConfig:
    size: Literal["tiny", "mini", "small", "medium", "base", "large"] = "tiny"
    pretrained: str = ""  # a local checkpoint directory (or a hub name when online): continue pretraining
    layers: int = 0  # 0: from size
    hidden: int = 0
    heads: int = 0
    intermediate: int = 0  # 0: 4 x hidden
    dropout: float = 0.1
    attention: Literal["sdpa", "eager"] = "sdpa"

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        layers, hidden, heads = self.dims()
        if min(layers, hidden, heads) <= 0:
            out.append(("layers", "layers, hidden and heads must be > 0", "or leave them 0 to use `size`"))
        elif hidden % heads:
            out.append(("heads", f"hidden ({hidden}) must be divisible by heads ({heads})", "e.g. hidden 256, heads 4"))
        if not 0 <= self.dropout < 1:
            out.append(("dropout", "must be in [0, 1)", "BERT uses 0.1"))
        return out

    def dims(self) -> tuple[int, int, int]:
        layers, hidden, heads = SIZES[self.size]
        return self.layers or layers, self.hidden or hidden, self.heads or heads


@dataclass(frozen=True)
class DataConfig:
    # file, directory, hf:DIR, json:FILE, package:austen|kjv. NSP's "random next sentence" comes
    # from another document of this same corpus, as in the paper (a second corpus would make NSP a
    # test of which corpus a span is from, not of what follows what).
    corpus: str = "package:austen"
    text_field: str = "text"
    tokenizer: str = ""  # local tokenizer directory (AutoTokenizer); "" trains WordPiece on the corpus
    vocab_size: int = 8192
    lowercase: bool = True
    max_seq_len: int = 128
    short_seq_prob: float = 0.1
    mask_prob: float = 0.15
    max_predictions: int = 20  # per sequence (the paper: 20 at 128, 80 at 512)
    whole_word_mask: bool = False
    dupe_factor: int = 2  # pair sets built per document, each with different splits
    # Draw each global batch from pairs of about one length (windows of 50 batches sorted by length,
    # the batches in a random order): less padding where pairs end early (short_seq_prob, the ends
    # of documents), at the price of batches less mixed in length.
    group_by_length: bool = False
    eval_fraction: float = 0.02  # documents held out for evaluation
    cache_dir: str = ""  # preprocessing cache; default $LAUNCHER_CACHE_DIR or ~/.cache/launcher
    seed: int = 12345
    # DataLoader worker processes per rank: masking, pairing and collating off the training thread
    # (68 us a sample: 17 ms a step at 256 samples, a GPU's whole step at 5,000 seq/s).
    workers: int = 0

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.workers < 0:
            out.append(("workers", f"must be >= 0, got {self.workers}", "0 prepares batches in the training thread"))
        if not 16 <= self.max_seq_len <= 4096:
            out.append(("max_seq_len", f"must be in 16..4096, got {self.max_seq_len}", "128 or 512 as in the paper"))
        for key in ("short_seq_prob", "mask_prob"):
            if not 0 <= getattr(self, key) < 1:
                out.append((key, "must be in [0, 1)", "the paper uses 0.1 and 0.15"))
        if not 0 < self.eval_fraction < 0.5:
            out.append(("eval_fraction", "must be in (0, 0.5)", "e.g. 0.02"))
        if self.vocab_size < 200:
            out.append(("vocab_size", "must be >= 200", "e.g. 8192 for a small corpus, 30522 as BERT"))
        if self.max_predictions <= 0 or self.dupe_factor <= 0:
            out.append(("max_predictions", "max_predictions and dupe_factor must be > 0", "20 and 2"))
        # Found before launch, not in the ranks:
        out += path_problems(corpus=self.corpus, tokenizer=self.tokenizer)
        return out


def hidden_size(recipe) -> int | None:
    """The model's width (DeepSpeed's "auto" bucket sizes derive from it): a local checkpoint's
    config.json, else the size preset; None for a hub name, which is not read before start."""
    if recipe.model.pretrained:
        return _checkpoint_width(recipe.model.pretrained)
    return recipe.model.dims()[1]


def _checkpoint_width(location: str) -> int | None:
    config = Path(location) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    width = data.get("hidden_size", data.get("n_embd")) if isinstance(data, dict) else None
    return width if isinstance(width, int) else None


def tokens_per_sample(recipe) -> int:
    return recipe.data.max_seq_len


# ---------------------------------------------------------------------------------------------
# Build: tokenizer, cached pairs, model, loss


def build(recipe, ctx):
    import torch

    from launcher.recipe_module import Task

    data_cfg: DataConfig = recipe.data
    cache = _cache_directory(data_cfg)
    if ctx.local_rank == 0:  # one process per node preprocesses; the others wait at the barrier
        _preprocess(data_cfg, cache)
    ctx.barrier()
    tokenizer = _load_tokenizer(cache / "tokenizer")
    if ctx.is_main:
        tokenizer.save_pretrained(os.path.join(ctx.run_dir, "tokenizer"))
    train_pairs = torch.load(cache / "train.pt", weights_only=True)
    eval_pairs = torch.load(cache / "eval.pt", weights_only=True)
    masker = Masker(tokenizer, data_cfg)
    bert = _build_model(recipe.model, tokenizer, data_cfg.max_seq_len)
    model = _pretraining_module(bert, nsp_weight=data_cfg.mask_prob * data_cfg.max_seq_len,
                                compile_loss=recipe.train.compile and ctx.device.type == "cuda")
    probe = _probe_batch(torch.load(cache / "probe.pt", weights_only=True), ctx.rank, ctx.world_size,
                         data_cfg.max_predictions)
    seq = data_cfg.max_seq_len
    return Task(
        model=model,
        train_data=PairData(train_pairs, masker, data_cfg.seed),
        # [CLS] A [SEP] B [SEP]: the pair's tokens and three specials
        lengths=(train_pairs["offsets"].diff() + 3).tolist() if data_cfg.group_by_length else None,
        eval_data=PairData(eval_pairs, masker, data_cfg.seed + 1),
        collate=lambda samples: collate(samples, tokenizer.pad_token_id, data_cfg.max_predictions),
        loss=_loss,
        count_targets=lambda batch: int((batch["mlm_labels"] != -100).sum()),
        evaluate=_evaluator(tokenizer, train_pairs, eval_pairs, probe),
        flops_per_sample=_flops_per_sample(bert, seq),
        tokens_per_sample=seq,
        export=_exporter(tokenizer),
        loader_workers=data_cfg.workers,
    )


def _loss(model, batch):
    out = model(**batch)
    return out["loss_sum"], out["masked"]


def _evaluator(tokenizer, train_pairs: dict, eval_pairs: dict, probe: dict):
    """evaluate(model, batches): MLM and NSP on the held-out pairs, each beside its baseline (always
    guessing the training text's most frequent token; always the held-out majority label, on the
    same positions and pairs), and this rank's share of the fill-mask probe."""
    import torch

    special = torch.tensor(tokenizer.all_special_ids)
    counts = torch.bincount(train_pairs["tokens"].long())
    counts[special[special < len(counts)]] = 0
    most_frequent = int(counts.argmax())
    majority = int(eval_pairs["labels"].float().mean() >= 0.5)

    def evaluate(model, batches):
        totals = torch.zeros(7, dtype=torch.float64, device=batches[0]["input_ids"].device)
        for batch in batches:
            out = model(**batch)
            totals += torch.stack([*(out[k].double() for k in ("mlm_sum", "masked", "mlm_correct", "nsp_correct",
                                                               "pairs")),
                                   (batch["mlm_labels"] == most_frequent).sum().double(),
                                   (batch["next_sentence_label"] == majority).sum().double()])
        device = totals.device
        if probe["count"]:  # this rank's share of the fill-mask probe
            out = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in probe["batch"].items()})
            hits = out["mlm_top5"].double()
        else:
            hits = torch.zeros((), dtype=torch.float64, device=device)
        metrics = {"mlm_loss": (totals[0], totals[1]), "mlm_accuracy": (totals[2], totals[1]),
                   "mlm_baseline_accuracy": (totals[5], totals[1]),
                   "nsp_accuracy": (totals[3], totals[4]), "nsp_baseline_accuracy": (totals[6], totals[4])}
        if probe["total"]:
            metrics["fill_mask_top5"] = (hits, torch.tensor(float(probe["total"]), dtype=torch.float64, device=device))
        return metrics

    return evaluate


def _exporter(tokenizer):
    def export(model, state, directory):
        prefix = "bert."  # the wrapper's attribute holding BertForPreTraining
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        model.bert.save_pretrained(directory, state_dict=inner)
        tokenizer.save_pretrained(directory)

    return export


def _flops_per_sample(bert, seq: int) -> float:
    """Forward and backward: 6 x the non-embedding parameters per token, and attention's scores."""
    config = bert.config
    non_embedding = sum(p.numel() for n, p in bert.named_parameters() if "embeddings" not in n)
    return seq * (6 * non_embedding + 12 * config.num_hidden_layers * config.hidden_size * seq)


def _pretraining_module(bert, nsp_weight: float, compile_loss: bool = False):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from launcher.runtime.cross_entropy import cross_entropy_sum

    class BertPretraining(nn.Module):
        """BertForPreTraining with the MLM head on masked positions only; returns loss sums.

        The masked positions come from the collate function as a fixed B x max_predictions index
        (padded with -100 labels), so picking them is a gather of static shape: no host sync for
        a data-dependent size (boolean indexing would wait for the GPU every step).
        Engines (DDP, FSDP, DeepSpeed) wrap this module, so its forward is the one they hook.
        """

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def gradient_checkpointing_enable(self, **kwargs) -> None:
            self.bert.gradient_checkpointing_enable(**kwargs)

        def forward(self, input_ids, attention_mask, token_type_ids, next_sentence_label, mlm_positions,
                    mlm_labels, count_top5: bool = False, **_):
            if self.bert.config._attn_implementation == "sdpa":
                # Given as SDPA's own broadcastable boolean mask (batch, 1, 1, keys): transformers
                # then uses it as it is, where from the 2D mask it would first test on the host
                # whether any token is padding (a sync every micro-step).
                attention_mask = attention_mask[:, None, None, :].bool()
            sequence, pooled = self.bert.bert(input_ids=input_ids, attention_mask=attention_mask,
                                              token_type_ids=token_type_ids, return_dict=False)[:2]
            index = mlm_positions[:, :, None].expand(-1, -1, sequence.size(-1))
            picked = sequence.gather(1, index).reshape(-1, sequence.size(-1))
            targets = mlm_labels.reshape(-1)
            masked = targets != -100
            logits = self.bert.cls.predictions(picked)
            mlm_sum = cross_entropy_sum(logits, targets, compile_loss)
            nsp_logits = self.bert.cls.seq_relationship(pooled)
            nsp_sum = F.cross_entropy(nsp_logits.float(), next_sentence_label, reduction="sum")
            with torch.no_grad():
                mlm_correct = ((logits.argmax(-1) == targets) & masked).sum()
                nsp_correct = (nsp_logits.argmax(-1) == next_sentence_label).sum()
                top5 = ((logits.topk(5, dim=-1).indices == targets[:, None]).any(-1) & masked).sum() \
                    if count_top5 else mlm_correct.new_zeros(())
            # One normaliser for the global batch: masked tokens. NSP is weighted as if each pair
            # carried mask_prob x max_seq_len masked tokens, so loss ~ mean MLM + mean NSP.
            return {"loss_sum": mlm_sum + nsp_weight * nsp_sum, "mlm_sum": mlm_sum, "masked": masked.sum(),
                    "mlm_correct": mlm_correct, "nsp_correct": nsp_correct, "mlm_top5": top5,
                    "pairs": torch.ones_like(next_sentence_label).sum()}  # a kernel, not a host copy

    return BertPretraining()


def memory_probe(recipe):
    """The pretraining model (a pretrained source gives its config only) and a full-length batch,
    for the plan's memory estimate. The vocabulary is data.vocab_size (a trained WordPiece has at
    most that)."""
    import torch

    from launcher.recipe_module import MemoryProbe

    data: DataConfig = recipe.data
    if recipe.model.pretrained:
        from transformers import BertConfig, BertForPreTraining

        bert = BertForPreTraining(BertConfig.from_pretrained(recipe.model.pretrained))
    else:
        bert = _build_model(recipe.model, _VocabOnly(data.vocab_size), data.max_seq_len)
    model = _pretraining_module(bert, nsp_weight=data.mask_prob * data.max_seq_len)

    def batch(micro: int) -> dict:
        def zeros(*shape):
            return torch.zeros(*shape, dtype=torch.long)

        return {"mlm_positions": zeros(micro, data.max_predictions), "mlm_labels": zeros(micro, data.max_predictions),
                "input_ids": zeros(micro, data.max_seq_len), "token_type_ids": zeros(micro, data.max_seq_len),
                "attention_mask": torch.ones(micro, data.max_seq_len, dtype=torch.long),
                "next_sentence_label": zeros(micro)}

    return MemoryProbe(model=model, batch=batch, loss=_loss)


class _VocabOnly:
    """Stands in for a tokenizer where only its size matters."""

    pad_token_id = 0

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _build_model(cfg: ModelConfig, tokenizer, max_seq_len: int):
    from transformers import BertConfig, BertForPreTraining

    if cfg.pretrained:
        model = BertForPreTraining.from_pretrained(cfg.pretrained, attn_implementation=cfg.attention)
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(f"model.pretrained has vocab {model.config.vocab_size}, the tokenizer "
                             f"{len(tokenizer)}: set data.tokenizer to the checkpoint's own tokenizer")
        return model
    layers, hidden, heads = cfg.dims()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=cfg.intermediate or 4 * hidden,
                        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                        max_position_embeddings=max(512, max_seq_len), type_vocab_size=2,
                        pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = cfg.attention
    return BertForPreTraining(config)


# ---------------------------------------------------------------------------------------------
# Preprocessing (once per data + settings, cached on disk)


def _cache_directory(cfg: DataConfig) -> Path:
    from launcher.data.cache import cache_root
    from launcher.data.corpora import load_documents

    digest = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k != "cache_dir"}
    settings["format_version"] = PREPROCESS_VERSION
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for document in load_documents(cfg.corpus, cfg.text_field):  # the data itself, not only its name
        digest.update("\n".join(document).encode())
    if cfg.tokenizer:
        for path in sorted(p for p in Path(cfg.tokenizer).rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(cfg.tokenizer)).encode() + path.read_bytes())
    return cache_root(cfg.cache_dir) / f"bert-pretrain-{digest.hexdigest()[:16]}"


def _preprocess(cfg: DataConfig, cache: Path) -> None:
    from launcher.data.cache import build_once

    build_once(cache, "bert_pretrain", lambda tmp: _build_pairs(cfg, tmp))


def _build_pairs(cfg: DataConfig, tmp: Path) -> dict:
    """Tokenizer + train/eval pairs into `tmp`."""
    import torch

    from launcher.data.corpora import load_documents

    documents = load_documents(cfg.corpus, cfg.text_field)
    rng = random.Random(cfg.seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    n_eval = max(2, round(len(documents) * cfg.eval_fraction))  # 2: a held-out pair's random B needs another
    eval_docs = [documents[i] for i in order[:n_eval]]
    train_docs = [documents[i] for i in order[n_eval:]]
    _check_documents(cfg.corpus, train_docs, eval_docs)

    if cfg.tokenizer:
        tokenizer = _load_tokenizer(cfg.tokenizer)
    else:
        texts = [s for doc in train_docs for s in doc]
        tokenizer = train_wordpiece(texts, cfg.vocab_size, cfg.lowercase)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))

    def encode(docs):
        flat = [s for doc in docs for s in doc]
        ids = tokenizer(flat, add_special_tokens=False)["input_ids"]
        out, start = [], 0
        for doc in docs:
            out.append([s for s in ids[start:start + len(doc)] if s])
            start += len(doc)
        return [d for d in out if d]

    train_tok, eval_tok = encode(train_docs), encode(eval_docs)
    _check_documents(cfg.corpus, train_tok, eval_tok)
    torch.save(fill_mask_probe(train_tok, eval_tok, tokenizer, cfg.max_seq_len, random.Random(cfg.seed + 2)),
               tmp / "probe.pt")
    splits = (("train", train_tok, cfg.seed, cfg.dupe_factor), ("eval", eval_tok, cfg.seed + 1, 1))
    for name, docs, seed, dupes in splits:
        pairs = []
        pair_rng = random.Random(seed)
        for _ in range(dupes):
            for index in range(len(docs)):
                pairs += create_pairs(docs, index, pair_rng, cfg.max_seq_len, cfg.short_seq_prob)
        pair_rng.shuffle(pairs)
        torch.save(pack_pairs(pairs), tmp / f"{name}.pt")
    return {"train_documents": len(train_tok), "eval_documents": len(eval_tok)}


PROBE_SENTENCES = 100
PROBE_SKIP_FREQUENT = 100


def fill_mask_probe(train_docs, eval_docs, tokenizer, max_seq_len: int, rng: random.Random) -> dict:
    """The fill-mask probe (`fill_mask_top5`): up to 100 held-out sentences, one word each masked,
    a whole word (one WordPiece) outside the training text's 100 most frequent tokens, so that
    guessing frequent words scores nothing and context must name it."""
    import collections

    import torch

    counts = collections.Counter(t for doc in train_docs for sentence in doc for t in sentence)
    frequent = {t for t, _ in counts.most_common(PROBE_SKIP_FREQUENT)} | set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    sentences = [s for doc in eval_docs for s in doc if 8 <= len(s) <= max_seq_len - 2]
    rng.shuffle(sentences)
    rows, positions, targets = [], [], []
    for sentence in sentences:
        whole_words = [i for i, t in enumerate(sentence) if t not in frequent and not pieces[t].startswith("##")
                       and (i + 1 == len(sentence) or not pieces[sentence[i + 1]].startswith("##"))
                       and pieces[t].isalpha()]
        if not whole_words:
            continue
        position = rng.choice(whole_words)
        rows.append([tokenizer.cls_token_id, *sentence, tokenizer.sep_token_id])
        positions.append(position + 1)
        targets.append(sentence[position])
        rows[-1][position + 1] = tokenizer.mask_token_id
        if len(rows) == PROBE_SENTENCES:
            break
    if not rows:  # a corpus without such words (generated text, say): no probe, no fill_mask_top5
        empty = torch.zeros((0, 2), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty, "positions": empty[:, 0], "targets": empty[:, 0]}
    width = max(map(len, rows))
    return {"input_ids": torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "positions": torch.tensor(positions), "targets": torch.tensor(targets)}


def _check_documents(corpus: str, train: list, held_out: list) -> None:
    for name, docs in (("training", train), ("held-out", held_out)):
        if len(docs) < 2:
            from launcher.data.corpora import CorpusError

            raise CorpusError(f"{corpus}: {len(docs)} {name} document(s) with text; NSP's random next sentence "
                              "comes from another document of the corpus, so each split needs at least 2 "
                              "(documents are files, chapters, or records of a JSON corpus)")


def train_wordpiece(texts: list[str], vocab_size: int, lowercase: bool):
    """A BERT WordPiece tokenizer trained on the corpus, as a transformers fast tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
    return BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=lowercase,
                             unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                             mask_token="[MASK]")


def _load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def create_pairs(docs: list[list[list[int]]], index: int, rng: random.Random, max_seq_len: int,
                 short_seq_prob: float) -> list[tuple[list[int], list[int], int]]:
    """NSP pairs (A, B, is_random) from document `index`, as in google-research/bert: B is A's
    continuation, or (is_random) a span of another document of the same corpus."""
    max_tokens = max_seq_len - 3  # [CLS] A [SEP] B [SEP]
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    document = docs[index]
    pairs, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            is_random = rng.random() < 0.5
            if not is_random and len(chunk) == 1:
                # The paper forces a random B for one-segment chunks, which skews NSP towards
                # "random" (~63% measured). Borrow the next sentence, or at a document's end split
                # the sentence itself: B is still the actual continuation of A.
                if i + 1 < len(document):
                    i += 1
                    chunk.append(document[i])
                elif len(chunk[0]) >= 2:
                    cut = rng.randint(1, len(chunk[0]) - 1)
                    chunk = [chunk[0][:cut], chunk[0][cut:]]
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for seg in chunk[:a_end] for t in seg]
            if is_random or len(chunk) == 1:
                is_random = True
                b = _random_span(docs, index, rng, max(1, target - len(a)))
                i -= len(chunk) - a_end  # the unused segments start the next pair
            else:
                b = [t for seg in chunk[a_end:] for t in seg]
            _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                pairs.append((a, b, int(is_random)))
            chunk, length = [], 0
            target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        i += 1
    return pairs


def _random_span(docs, exclude: int, rng: random.Random, target: int) -> list[int]:
    """A span of any document but `exclude` (the split has at least 2: _build_pairs checks)."""
    pick = rng.randrange(len(docs) - 1)
    document = docs[pick + (pick >= exclude)]
    start = rng.randrange(len(document))
    span: list[int] = []
    for segment in document[start:]:
        span += segment
        if len(span) >= target:
            break
    return span


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:  # cut from the front or the back, so neither end is favoured
            del longer[0]
        else:
            longer.pop()


def _probe_batch(probe: dict, rank: int, world_size: int, max_predictions: int) -> dict:
    """This rank's share of the probe sentences as one model batch (the ranks' hits are summed);
    the total is over all ranks, so each rank reports its hits out of every probe."""
    import torch

    rows = list(range(rank, len(probe["targets"]), world_size))
    batch = {"input_ids": probe["input_ids"][rows], "attention_mask": probe["attention_mask"][rows],
             "token_type_ids": torch.zeros_like(probe["input_ids"][rows]),
             "next_sentence_label": torch.zeros(len(rows), dtype=torch.long),
             "mlm_positions": torch.zeros(len(rows), max_predictions, dtype=torch.long),
             "mlm_labels": torch.full((len(rows), max_predictions), -100, dtype=torch.long), "count_top5": True}
    batch["mlm_positions"][:, 0] = probe["positions"][rows]
    batch["mlm_labels"][:, 0] = probe["targets"][rows]
    return {"batch": batch, "count": len(rows), "total": len(probe["targets"]) / world_size}


def pack_pairs(pairs) -> dict:
    """Pairs as three flat tensors (cheap to save, load and share)."""
    import torch

    tokens, offsets, a_lengths, labels = [], [0], [], []
    for a, b, is_random in pairs:
        tokens += a + b
        offsets.append(len(tokens))
        a_lengths.append(len(a))
        labels.append(is_random)
    return {"tokens": torch.tensor(tokens, dtype=torch.int32), "offsets": torch.tensor(offsets, dtype=torch.int64),
            "a_lengths": torch.tensor(a_lengths, dtype=torch.int32), "labels": torch.tensor(labels, dtype=torch.int64)}


# ---------------------------------------------------------------------------------------------
# Samples: dynamic masking keyed by the stream position


class Masker:
    def __init__(self, tokenizer, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.cls, self.sep, self.mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        self.special = set(tokenizer.all_special_ids)
        self.vocab_size = len(tokenizer)
        vocab = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        self.continuation = [t.startswith("##") for t in vocab]
        self.random_ids = [i for i in range(self.vocab_size) if i not in self.special]

    def __call__(self, ids: list[int], rng: random.Random) -> tuple[list[int], list[int]]:
        """(masked input ids, labels with -100 where nothing is predicted)."""
        cfg = self.cfg
        candidates: list[list[int]] = []
        for position, token in enumerate(ids):
            if token in self.special:
                continue
            if cfg.whole_word_mask and candidates and self.continuation[token]:
                candidates[-1].append(position)  # a ## piece joins its word
            else:
                candidates.append([position])
        n_tokens = sum(len(c) for c in candidates)
        budget = min(cfg.max_predictions, max(1, round(n_tokens * cfg.mask_prob)))
        rng.shuffle(candidates)
        chosen: list[int] = []
        for word in candidates:
            if len(chosen) + len(word) > budget:
                continue
            chosen += word
            if len(chosen) >= budget:
                break
        inputs, labels = list(ids), [-100] * len(ids)
        for position in chosen:
            labels[position] = ids[position]
            draw = rng.random()
            if draw < 0.8:
                inputs[position] = self.mask
            elif draw >= 0.9:
                inputs[position] = rng.choice(self.random_ids)
            # else: 10% keep the original token
        return inputs, labels


class PairData:
    """Map-style data whose items are masked with an RNG keyed by the global stream position."""

    def __init__(self, packed: dict, masker: Masker, seed: int) -> None:
        self.tokens = packed["tokens"].tolist()
        self.offsets = packed["offsets"].tolist()
        self.a_lengths = packed["a_lengths"].tolist()
        self.labels = packed["labels"].tolist()
        self.masker, self.seed = masker, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return self.at(index, index)  # evaluation: fixed masks

    def at(self, index: int, position: int) -> dict:
        start, end = self.offsets[index], self.offsets[index + 1]
        a_end = start + self.a_lengths[index]
        a, b = self.tokens[start:a_end], self.tokens[a_end:end]
        masker = self.masker
        ids = [masker.cls, *a, masker.sep, *b, masker.sep]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        inputs, labels = masker(ids, random.Random(self.seed * 1_000_003 + position))
        return {"input_ids": inputs, "token_type_ids": types, "labels": labels,
                "next_sentence_label": self.labels[index]}


def collate(samples: list[dict], pad_id: int, max_predictions: int) -> dict:
    """Pad to the longest sequence of the batch, rounded up to a multiple of 8 (tensor cores).
    `mlm_positions`/`mlm_labels`: each sequence's predicted positions, padded to max_predictions
    (position 0 with label -100), for the model's static-shape gather."""
    import torch

    length = max(len(s["input_ids"]) for s in samples)
    length = (length + 7) // 8 * 8
    def pad(key, value):
        return [s[key] + [value] * (length - len(s[key])) for s in samples]
    lengths = torch.tensor([len(s["input_ids"]) for s in samples])
    positions = [[i for i, label in enumerate(s["labels"]) if label != -100] for s in samples]
    if max(map(len, positions)) > max_predictions:
        raise ValueError(f"a sequence has {max(map(len, positions))} predictions, more than "
                         f"data.max_predictions={max_predictions}")
    return {
        "mlm_positions": torch.tensor([p + [0] * (max_predictions - len(p)) for p in positions]),
        "mlm_labels": torch.tensor([[s["labels"][i] for i in p] + [-100] * (max_predictions - len(p))
                                    for s, p in zip(samples, positions, strict=True)]),
        "input_ids": torch.tensor(pad("input_ids", pad_id)),
        "token_type_ids": torch.tensor(pad("token_type_ids", 0)),
        "attention_mask": (torch.arange(length)[None, :] < lengths[:, None]).long(),
        "next_sentence_label": torch.tensor([s["next_sentence_label"] for s in samples]),
    }
