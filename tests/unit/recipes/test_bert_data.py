"""BERT data: masking proportions, NSP balance, pair lengths, resume-stable masks."""

from __future__ import annotations

import random

import pytest

from launcher.data.corpora import split_sentences, text_documents
from launcher.recipes.bert_pretrain import DataConfig, Masker, PairData, create_pairs, pack_pairs, train_wordpiece

TEXT = """It is a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife. However little known the feelings or views of such a man may be on his
first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families,
that he is considered the rightful property of some one or other of their daughters. My dear Mr.
Bennet, said his lady to him one day, have you heard that Netherfield Park is let at last? Mr.
Bennet replied that he had not. But it is, returned she; for Mrs. Long has just been here, and she
told me all about it. Mr. Bennet made no answer. Do you not want to know who has taken it? cried his
wife impatiently. You want to tell me, and I have no objection to hearing it."""


@pytest.fixture(scope="module")
def tokenizer():
    sentences = split_sentences(TEXT) * 20
    return train_wordpiece(sentences, vocab_size=300, lowercase=True)


def _documents(tokenizer, n_docs=40, seed=0):
    rng = random.Random(seed)
    sentences = split_sentences(TEXT)
    docs = []
    for _ in range(n_docs):
        chosen = [sentences[rng.randrange(len(sentences))] for _ in range(rng.randint(3, 12))]
        docs.append([ids for ids in tokenizer(chosen, add_special_tokens=False)["input_ids"] if ids])
    return docs


def test_sentence_and_document_splitting():
    assert split_sentences('He said "No." Then she left! Was it? yes.') == ['He said "No."', "Then she left!",
                                                                          "Was it? yes."]
    assert len(text_documents("A b. C d.\n\nE f.\n")) == 2


def test_masking_proportions_and_specials(tokenizer):
    cfg = DataConfig(max_predictions=1000, mask_prob=0.15)
    masker = Masker(tokenizer, cfg)
    ids = tokenizer(TEXT)["input_ids"]  # with [CLS] ... [SEP]; long, so rounding per sequence is small
    assert len(ids) > 150
    counts = {"mask": 0, "random": 0, "same": 0}
    chosen = total = 0
    for seed in range(3000):
        inputs, labels = masker(ids, random.Random(seed))
        for position, (token, label) in enumerate(zip(inputs, labels, strict=True)):
            if ids[position] in masker.special:
                assert label == -100 and token == ids[position]  # specials are never touched
                continue
            total += 1
            if label == -100:
                assert token == ids[position]
                continue
            chosen += 1
            counts["mask" if token == masker.mask else "same" if token == ids[position] else "random"] += 1
    assert chosen / total == pytest.approx(0.15, abs=0.01)
    assert counts["mask"] / chosen == pytest.approx(0.8, abs=0.02)
    # "random" may draw the original token itself, which counts as "same": both stay near 10%.
    assert counts["random"] / chosen == pytest.approx(0.1, abs=0.02)
    assert counts["same"] / chosen == pytest.approx(0.1, abs=0.02)


def test_whole_word_masking_masks_all_pieces(tokenizer):
    masker = Masker(tokenizer, DataConfig(whole_word_mask=True, max_predictions=1000, mask_prob=0.3))
    ids = tokenizer("universally acknowledged neighbourhood impatiently")["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert any(p.startswith("##") for p in pieces)  # the test needs split words
    for seed in range(200):
        _, labels = masker(ids, random.Random(seed))
        for position in range(1, len(ids)):
            if pieces[position].startswith("##"):
                # a continuation piece is predicted exactly when its word's previous piece is
                assert (labels[position] == -100) == (labels[position - 1] == -100)


def test_pairs_fit_max_length_and_nsp_is_balanced(tokenizer):
    docs = _documents(tokenizer)
    rng = random.Random(1)
    pairs = []
    for _ in range(5):
        for index in range(len(docs)):
            pairs += create_pairs(docs, index, rng, max_seq_len=48, short_seq_prob=0.1)
    assert len(pairs) > 300
    assert max(len(a) + len(b) + 3 for a, b, _ in pairs) <= 48
    assert all(a and b for a, b, _ in pairs)
    random_share = sum(label for _, _, label in pairs) / len(pairs)
    assert 0.4 <= random_share <= 0.6, random_share


def test_actual_next_pairs_are_contiguous_text(tokenizer):
    docs = _documents(tokenizer, n_docs=5)
    for index, doc in enumerate(docs):
        flat = [t for s in doc for t in s]
        for a, b, is_random in create_pairs(docs, index, random.Random(index), 512, 0.0):
            if not is_random:
                joined = a + b
                assert any(flat[i:i + len(joined)] == joined for i in range(len(flat)))


def test_nsp_pairs_straddle_documents_exactly_when_the_label_is_random():
    """Each token names its document (doc * 1000 + position): a pair's B comes from A's document,
    right after A, when the label says "next", and from another document of the same corpus when
    it says "random". Nothing comes from outside the corpus given."""
    docs = [[[d * 1000 + s * 10 + t for t in range(7)] for s in range(12)] for d in range(6)]
    labels = []
    for index in range(len(docs)):
        for a, b, is_random in create_pairs(docs, index, random.Random(index), 48, 0.1):
            a_docs, b_docs = {t // 1000 for t in a}, {t // 1000 for t in b}
            assert a_docs == {index}
            assert b_docs <= set(range(len(docs)))  # the same corpus, always
            assert (b_docs != {index}) == bool(is_random), (a, b, is_random)
            if not is_random:
                assert b[0] > a[-1]  # B continues A
            labels.append(is_random)
    assert 0.3 < sum(labels) / len(labels) < 0.7


def test_nsp_negatives_cannot_come_from_another_corpus():
    """The tiny recipe drew its "random next sentence" from the KJV while the text was Austen: NSP
    became telling the two apart. There is no such setting any more, and the shipped recipe plans."""
    from click.testing import CliRunner

    from launcher.cli import main
    from tests.helpers import ROOT

    tiny = str(ROOT / "recipes" / "bert-pretrain-tiny.yaml")
    refused = CliRunner().invoke(main, ["plan", tiny, "data.negatives=package:kjv"])
    assert refused.exit_code == 2 and "`data.negatives`: unknown key" in refused.output
    assert CliRunner().invoke(main, ["plan", tiny]).exit_code == 0


def test_a_corpus_needs_two_documents_per_split_for_nsp(tmp_path):
    import pytest

    from launcher.data.corpora import CorpusError
    from launcher.recipes.bert_pretrain import _build_pairs

    corpus = tmp_path / "one.txt"
    corpus.write_text("One sentence here. Another one there. " * 50)
    with pytest.raises(CorpusError, match="at least 2"):
        _build_pairs(DataConfig(corpus=str(corpus), vocab_size=200), tmp_path)


def test_masks_are_a_function_of_the_stream_position(tokenizer):
    docs = _documents(tokenizer)
    pairs = [p for i in range(len(docs)) for p in create_pairs(docs, i, random.Random(i), 48, 0.1)]
    data = PairData(pack_pairs(pairs), Masker(tokenizer, DataConfig()), seed=5)
    first = [data.at(3, position) for position in (3, 3 + len(data), 3 + 2 * len(data))]
    again = [data.at(3, position) for position in (3, 3 + len(data), 3 + 2 * len(data))]
    assert first == again  # a resumed run recomputes the same masks
    assert len({tuple(sample["labels"]) for sample in first}) > 1  # each epoch masks anew
    assert first[0]["token_type_ids"].count(0) == pairs[3][0].__len__() + 2


def test_static_gather_of_masked_positions_equals_boolean_indexing(tokenizer):
    """The MLM head reads masked positions through a fixed-shape gather (no host sync); the loss,
    its gradient and the accuracy counts equal the data-dependent boolean-index version."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForPreTraining

    from launcher.recipes.bert_pretrain import _pretraining_module, collate

    docs = _documents(tokenizer)
    pairs = [p for i in range(len(docs)) for p in create_pairs(docs, i, random.Random(i), 48, 0.1)]
    cfg = DataConfig(max_predictions=8)
    data = PairData(pack_pairs(pairs), Masker(tokenizer, cfg), seed=1)
    samples = [data.at(i, i) for i in range(6)]
    batch = collate(samples, tokenizer.pad_token_id, cfg.max_predictions)
    assert batch["mlm_positions"].shape == (6, 8)
    torch.manual_seed(0)
    bert = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64)).eval()  # no dropout
    out = _pretraining_module(bert, nsp_weight=1.0)(**batch)
    (grad_ours,) = torch.autograd.grad(out["loss_sum"], bert.cls.predictions.transform.dense.weight)

    length = batch["input_ids"].size(1)
    labels = torch.tensor([s["labels"] + [-100] * (length - len(s["labels"])) for s in samples])
    sequence, pooled = bert.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 token_type_ids=batch["token_type_ids"], return_dict=False)[:2]
    logits = bert.cls.predictions(sequence[labels != -100])
    mlm = F.cross_entropy(logits, labels[labels != -100], reduction="sum")
    nsp = F.cross_entropy(bert.cls.seq_relationship(pooled), batch["next_sentence_label"], reduction="sum")
    (grad_reference,) = torch.autograd.grad(mlm + nsp, bert.cls.predictions.transform.dense.weight)
    assert int(out["masked"]) == int((labels != -100).sum()) > 6
    assert out["mlm_sum"].item() == pytest.approx(mlm.item(), rel=1e-5)
    assert out["loss_sum"].item() == pytest.approx((mlm + nsp).item(), rel=1e-5)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-5)
    assert int(out["mlm_correct"]) == int((logits.argmax(-1) == labels[labels != -100]).sum())


def test_collate_refuses_more_predictions_than_max_predictions(tokenizer):
    from launcher.recipes.bert_pretrain import collate

    docs = _documents(tokenizer)
    pairs = [p for i in range(len(docs)) for p in create_pairs(docs, i, random.Random(i), 48, 0.1)]
    data = PairData(pack_pairs(pairs), Masker(tokenizer, DataConfig(max_predictions=8)), seed=1)
    with pytest.raises(ValueError, match="max_predictions=2"):
        collate([data.at(i, i) for i in range(4)], tokenizer.pad_token_id, 2)
