"""Tokenisation, vocabulary building and fixed-length encoding."""

from __future__ import annotations

import pytest
import torch

from fastdistill.data import Vocab, tokenize
from fastdistill.data.text_vocab import PAD, PAD_ID, UNK, UNK_ID


def test_tokenize_lowercases_and_splits_words_and_punctuation():
    assert tokenize("Great movie, REALLY great!") == ["great", "movie", ",", "really", "great", "!"]
    assert tokenize("Don't stop: it's 3.5 o'clock...") == [
        "do",
        "n't",
        "stop",
        ":",
        "it",
        "'s",
        "3.5",
        "o'clock",
        "...",
    ]
    # already PTB-tokenised text (TREC, SST) keeps its tokens
    assert tokenize("What 's the U.S. capital ? do n't") == [
        "what",
        "'s",
        "the",
        "u.s.",
        "capital",
        "?",
        "do",
        "n't",
    ]
    assert tokenize("well-known ``quoted'' -- 1,000") == [
        "well-known",
        "``",
        "quoted",
        "''",
        "--",
        "1,000",
    ]
    assert tokenize("") == []
    assert tokenize("   \n\t ") == []


def test_vocab_order_specials_caps_and_min_freq():
    docs = [["b", "a", "c", "a"], ["a", "b", "d"], ["c"]]
    v = Vocab.build(docs)
    assert v.itos == [PAD, UNK, "a", "b", "c", "d"]  # by frequency, ties alphabetical
    assert v[PAD] == PAD_ID == 0 and v[UNK] == UNK_ID == 1
    assert v["zzz"] == UNK_ID and "zzz" not in v and "a" in v
    assert v.counts == [0, 0, 3, 2, 2, 1] and v.total_tokens == 8
    capped = Vocab.build(docs, max_size=4)  # includes <pad> and <unk>
    assert capped.itos == [PAD, UNK, "a", "b"] and len(capped) == 4
    assert capped.counts[UNK_ID] == 3  # c, c, d fell to <unk>
    frequent = Vocab.build(docs, min_freq=2)
    assert frequent.itos[2:] == ["a", "b", "c"] and frequent.counts[UNK_ID] == 1
    with pytest.raises(ValueError, match="max_size"):
        Vocab.build(docs, max_size=1)
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build(docs, min_freq=0)
    assert Vocab.from_dict(v.to_dict()) == v


def test_literal_special_strings_in_text_are_ordinary_unknowns():
    v = Vocab.build([["<unk>", "<pad>", "x"]])
    assert v.itos == [PAD, UNK, "x"]


def test_encode_batch_truncates_pads_and_keeps_lengths():
    v = Vocab.build([["a", "b", "c"]])
    ids, lengths = v.encode_batch([["a", "b", "c", "a", "b"], ["c", "zzz"], []], seq_len=3)
    assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
    a, b, c = v["a"], v["b"], v["c"]
    assert ids.tolist() == [[a, b, c], [c, UNK_ID, PAD_ID], [PAD_ID, PAD_ID, PAD_ID]]
    assert lengths.tolist() == [3, 2, 1]  # longer than L: L; empty text: all padding, length 1
    assert v.decode(ids[1]) == ["c", UNK]
    assert v.decode(ids[2]) == []
    with pytest.raises(ValueError, match="seq_len"):
        v.encode_batch([["a"]], seq_len=0)


def test_duplicate_tokens_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["a", "a"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocab([PAD])
