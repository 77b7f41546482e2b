"""Readers of the published layouts (IMDB, SST, TREC) and of CSV/TSV/JSONL, on small fixture
files, plus the real TREC copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastdistill.data.text_readers import (
    SST_CLASSES,
    parse_sst_tree,
    read_imdb,
    read_sst,
    read_table,
    read_trec,
)


def write_imdb(root: Path) -> Path:
    folder = root / "aclImdb"
    reviews = {
        ("train", "pos"): ["A great film.<br /><br />Loved it", "Good movie"],
        ("train", "neg"): ["Awful.", "Bad<br/>film", "the worst"],
        ("test", "pos"): ["great"],
        ("test", "neg"): ["bad"],
    }
    for (split, cls), texts in reviews.items():
        d = folder / split / cls
        d.mkdir(parents=True)
        for i, t in enumerate(texts):
            (d / f"{i}_{7 if cls == 'pos' else 2}.txt").write_text(t, encoding="utf-8")
    (folder / "train" / "unsup").mkdir()
    (folder / "train" / "unsup" / "0_0.txt").write_text("unlabelled", encoding="utf-8")
    return folder


SST_TREES = {
    "train": [
        (
            "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))) (3 (2 with) (4 great))))"
            " (2 .)))"
        ),
        "(1 (2 (2 A) (1 dull)) (1 (2 -LRB-) (1 movie) (2 -RRB-)))",
        "(2 (2 It) (2 exists))",
        "(0 (0 Awful))",
        "(4 (4 Brilliant) (2 !))",
    ],
    "dev": ["(2 (2 Fine))"],
    "test": ["(4 (4 Great))", "(2 (2 So-so))", "(0 (0 Terrible))"],
}


def write_sst(root: Path) -> Path:
    folder = root / "trees"
    folder.mkdir(parents=True)
    for split, lines in SST_TREES.items():
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


TREC_LINES = {
    "train_5500.label": [
        "DESC:manner How did serfdom develop in and then leave Russia ?",
        "ENTY:cremat What films featured the character Popeye Doyle ?",
        "HUM:ind Who killed Gandhi ?",
        "LOC:city Which city has the oldest sister\x92city ?",
    ],
    "TREC_10.label": ["HUM:ind Who was Galileo ?", "LOC:city What city is this ?"],
}


def write_trec(root: Path) -> Path:
    folder = root / "trec"
    folder.mkdir(parents=True)
    for fname, lines in TREC_LINES.items():
        raw = "\n".join(lines).encode("latin-1")  # \x92 is an invalid UTF-8 byte, as in TREC
        (folder / fname).write_bytes(raw + b"\n")
    return folder


def test_imdb_layout(tmp_path):
    write_imdb(tmp_path)
    for root in (tmp_path, tmp_path / "aclImdb"):  # the parent or the aclImdb folder itself
        splits = read_imdb(root)
        train = splits["train"]
        assert len(train) == 5 and len(splits["test"]) == 2
        assert train.labels == ["neg"] * 3 + ["pos"] * 2
        assert "<br" not in " ".join(train.texts)
        assert "A great film.  Loved it" in train.texts[3]


def test_imdb_errors_name_the_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="aclImdb") as err:
        read_imdb(tmp_path)
    assert str(tmp_path) in str(err.value)
    folder = write_imdb(tmp_path)
    for f in (folder / "test" / "neg").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"no \*\.txt files in .*test/neg"):
        read_imdb(tmp_path)


def test_sst_trees_fine_and_binary(tmp_path):
    write_sst(tmp_path)
    fine = read_sst(tmp_path)
    assert [len(fine[s]) for s in ("train", "dev", "test")] == [5, 1, 3]
    assert fine["train"].texts[0] == "It 's a lovely film with great ."
    assert fine["train"].texts[1] == "A dull ( movie )"  # PTB brackets restored
    assert fine["train"].labels == [SST_CLASSES[i] for i in (3, 1, 2, 0, 4)]
    binary = read_sst(tmp_path / "trees", binary=True)  # the trees folder itself works too
    assert binary["train"].labels == ["positive", "negative", "negative", "positive"]
    assert binary["test"].texts == ["Great", "Terrible"]  # neutral dropped


def test_sst_leaves_keep_nbsp_and_unescape_slashes(tmp_path):
    # tokens in the PTB trees can hold U+00A0 and escape "/" as "\\/"
    tree = "(3 (2 It) (3 (2 runs) (3 (2 2\u00a01\\/2) (2 hours))))"
    assert parse_sst_tree(tree) == ("It runs 2\u00a01/2 hours", 3)
    assert parse_sst_tree("(1 (2 and\\/or) (1 worse))") == ("and/or worse", 1)
    folder = write_sst(tmp_path)
    (folder / "test.txt").write_text(tree + "\n", encoding="utf-8")
    assert read_sst(tmp_path)["test"].texts == ["It runs 2\u00a01/2 hours"]


def test_sst_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.txt") as err:
        read_sst(tmp_path)
    assert str(tmp_path / "trees") in str(err.value)
    folder = write_sst(tmp_path)
    (folder / "dev.txt").write_text("not a tree\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev.txt:1"):
        read_sst(tmp_path)
    assert parse_sst_tree("(7 (7 x))") == ("x", 7)


def test_trec_coarse_fine_and_bad_bytes(tmp_path):
    write_trec(tmp_path)
    coarse = read_trec(tmp_path)
    assert coarse["train"].labels == ["DESC", "ENTY", "HUM", "LOC"]
    assert coarse["train"].texts[2] == "Who killed Gandhi ?"
    assert "\ufffd" in coarse["train"].texts[3]  # invalid byte replaced, not an error
    fine = read_trec(tmp_path / "trec", fine=True)
    assert fine["test"].labels == ["HUM:ind", "LOC:city"]


def test_trec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_5500.label") as err:
        read_trec(tmp_path)
    assert str(tmp_path / "trec") in str(err.value)
    folder = write_trec(tmp_path)
    (folder / "TREC_10.label").write_text("no label here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"TREC_10.label:1: expected 'COARSE:fine"):
        read_trec(tmp_path)


def test_real_trec(trec_root):
    coarse = read_trec(trec_root)
    assert len(coarse["train"]) == 5452 and len(coarse["test"]) == 500
    assert len(set(coarse["train"].labels)) == 6
    fine = read_trec(trec_root, fine=True)
    assert len(set(fine["train"].labels)) == 50
    assert set(fine["test"].labels) <= set(fine["train"].labels)
    assert sum("\ufffd" in t for t in coarse["train"].texts) == 1


def test_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text(
        'id,text,label\n1,"Hello, world",pos\n2,"say ""hi""",neg\n\n', encoding="utf-8"
    )
    t = read_table(tmp_path / "a.csv")
    assert t.texts == ["Hello, world", 'say "hi"'] and t.labels == ["pos", "neg"]
    (tmp_path / "b.tsv").write_text("sentence\ty\nfirst one\t0\nsecond\t1\n", encoding="utf-8")
    t = read_table(tmp_path / "b.tsv", text_column="sentence", label_column="y")
    assert t.texts == ["first one", "second"] and t.labels == ["0", "1"]
    (tmp_path / "c.txt").write_text("1\tno header\n0\tat all\n", encoding="utf-8")
    t = read_table(tmp_path / "c.txt", format="tsv", text_column=1, label_column=0)
    assert t.texts == ["no header", "at all"] and t.labels == ["1", "0"]
    rows = [{"text": "x y", "label": 2}, {"text": "z", "label": 0, "extra": True}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    t = read_table(tmp_path / "d.jsonl")
    assert t.texts == ["x y", "z"] and t.labels == ["2", "0"]


def test_table_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "a.csv").write_text("text,label\nx,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no column 'sentence'"):
        read_table(tmp_path / "a.csv", text_column="sentence")
    (tmp_path / "a.dat").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="format="):
        read_table(tmp_path / "a.dat")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"b.jsonl:1: expected keys"):
        read_table(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_table(tmp_path / "c.jsonl")
