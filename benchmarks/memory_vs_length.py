"""Peak tensor memory and time of one outer iteration against the unroll length T, for `unroll`
and the adjoint's checkpoint schedules, side by side in one process (LeNet, 10 distilled images,
real batch 256). Run: ``OMP_NUM_THREADS=1 python benchmarks/memory_vs_length.py``."""

from __future__ import annotations

import math
import time

import torch

from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.models import LeNet
from fastdistill.utils.memory import peak_memory


def main(lengths: tuple[int, ...] = (3, 30, 100, 300)) -> None:
    gen = torch.Generator().manual_seed(0)
    model = FlatModel(LeNet(1, 10, 28))
    w0 = sample_weights(model, 1, generator=gen)
    data = torch.randn(1, 10, 1, 28, 28, generator=gen)
    labels = torch.eye(10).unsqueeze(0)
    real_x = torch.randn(256, 1, 28, 28, generator=gen)
    real_y = torch.randint(0, 10, (256,), generator=gen)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for T in lengths:
        raw = torch.full((T,), -3.9)
        variants = {
            "unroll": {"engine": "unroll"},
            "sqrt(T)": {"checkpoint_every": 1 if T <= 16 else math.ceil(math.sqrt(T))},
            "store-all": {"checkpoint_every": 1},
            "slots-2": {"checkpoint_slots": 2},
            "default": {},
        }
        cells = []
        for name, kwargs in variants.items():

            def run(kwargs=kwargs, raw=raw):
                return hypergradient(model, w0, data, labels, raw, real_x, real_y, **kwargs)

            _, peak = peak_memory(run)
            start = time.perf_counter()
            run()
            cells.append(
                f"{name} {peak / 2**20:.2f} MB {1e3 * (time.perf_counter() - start):.0f} ms"
            )
        print(f"T={T}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
