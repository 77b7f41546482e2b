"""The demo preset end to end on real digits: distill, evaluate, reach the bar."""

from __future__ import annotations

import pytest

from fastdistill import Distiller, get_preset


@pytest.mark.slow
def test_digits_demo_reaches_90_percent():
    distiller = Distiller(get_preset("digits-lenet-fixed-10").config)
    distiller.fit(progress=False)
    accuracy = distiller.evaluate()
    assert distiller.distilled.num_samples == 10
    assert accuracy.mean >= 0.90, f"digits demo reached only {accuracy}"
