"""``fastdistill.ops.seq_step``: the C++ one-call step against its autograd reference (float64),
spec validation on both paths, and the fake kernel (opcheck)."""

from __future__ import annotations

import pytest
import torch
from fd_op_utils import make

from fastdistill import ops
from fastdistill.ops import reference

# LeNet-like on 1x12x12: conv(1->3, 3x3, pad 1) + pool + relu -> 3x6x6, conv(3->4, 3x3) + pool
# -> 4x2x2, flatten (16), linear 16->8, tanh, linear 8->K.
K = 5


def _lenet_spec(k=K):
    spec, off = [], 0

    def take(n):
        nonlocal off
        off += n
        return off - n

    w1, b1 = take(3 * 1 * 9), take(3)
    w2, b2 = take(4 * 3 * 9), take(4)
    spec += [1, w1, b1, 3, 1, 3, 3, 1, 1, 1]
    spec += [1, w2, b2, 4, 3, 3, 3, 0, 0, 0, 4]
    spec += [2]
    w3, b3 = take(8 * 16), take(8)
    spec += [3, w3, b3, 8, 16, 5]
    w4 = take(k * 8)
    spec += [3, w4, -1, k, 8]
    return spec, off, (1, 12, 12)


def _mlp_spec(k=K):
    # flatten, linear 12->4, relu, linear 4->k (no bias)
    return [2, 3, 0, 48, 4, 12, 4, 3, 52, -1, k, 4], 52 + k * 4, (3, 2, 2)


SPECS = {"lenet": _lenet_spec, "mlp": _mlp_spec}
INNER = ["soft", "softmax", "binary"]


def _problem(name, loss, nets=2, n=6):
    k = 1 if loss in ("binary", "bce") else K
    spec, P, shape = SPECS[name](k)  # every column of w used (the engine's plans are)
    w = make((nets, P), torch.float64, seed=1, scale=0.3)
    v = make((nets, P), torch.float64, seed=2)
    x = make((n, *shape), torch.float64, seed=3)
    if loss == "ce":
        y = torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(4))
    elif loss in ("binary", "bce"):
        y = (make((n,), torch.float64, seed=4) > 0).double()
    else:
        y = make((n, k), torch.float64, seed=4)
    return w, v, x, y, spec


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("loss", INNER)
@pytest.mark.parametrize("hvp", [False, True])
def test_inner_step_matches_reference(kernels, name, loss, hvp):
    w, v, x, y, spec = _problem(name, loss)
    v = v if hvp else None
    got = kernels.seq_step(w, v, x, y, spec, loss, True, True)
    want = reference.seq_step(w, v, x, y, spec, loss, True, True)
    for g, e, what in zip(got, want, ("value", "g", "hv", "dx", "dy"), strict=True):
        assert g.shape == e.shape, what
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=what)
    if hvp:
        assert got[2].abs().sum() > 0 and got[3].abs().sum() > 0


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_outer_value_and_grad_matches_reference(kernels, name, loss):
    w, _, x, y, spec = _problem(name, loss, nets=3)
    got = kernels.seq_step(w, None, x, y, spec, loss, False, False)
    want = reference.seq_step(w, None, x, y, spec, loss, False, False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


def test_wrapper_uses_reference_when_forced():
    w, v, x, y, spec = _problem("mlp", "soft")
    ops.set_backend("reference")
    try:
        out = ops.seq_step(w, v, x, y, spec, "soft", True, True)
        assert ops.last_backend("seq_step").backend == "reference"
    finally:
        ops.set_backend("auto")
    torch.testing.assert_close(out[1], reference.seq_step(w, v, x, y, spec, "soft", True, True)[1])


BAD_SPECS = [
    ([9], "unknown layer type"),
    ([3, 0, -1], "truncated"),
    ([2, 4], "no weighted layer"),
    ([3, 10_000, -1, 5, 12], "outside"),
    ([3, 0, 10_000, 5, 12], "outside"),
    ([3, 0, -1, -5, 12], "non-positive"),
]


@pytest.mark.parametrize(("spec", "match"), BAD_SPECS)
def test_reference_rejects_bad_spec(spec, match):
    w, _, x, y, _ = _problem("mlp", "soft")
    with pytest.raises(ValueError, match=match):
        reference.seq_step(w, None, x.flatten(1), y, spec, "soft", False, False)


@pytest.mark.parametrize(("spec", "match"), BAD_SPECS)
def test_kernel_rejects_bad_spec(kernels, spec, match):
    """An offset outside ``w`` must be an error, never an out-of-bounds read."""
    w, _, x, y, _ = _problem("mlp", "soft")
    with pytest.raises(ValueError):
        kernels.seq_step(w, None, x.flatten(1), y, spec, "soft", False, False)


def test_opcheck(kernels):
    w, v, x, y, spec = _problem("lenet", "soft")
    torch.library.opcheck(
        kernels.seq_step.default,
        (w, v, x, y, spec, "soft", True, True),
        test_utils=("test_schema", "test_faketensor"),
    )


# -- seq_step_record / seq_step_replay: the tape between the adjoint's two sweeps ------------
def _lenet_first_flat_spec(k=K):
    """A net whose first layers carry no weights (flatten, tanh) before the first linear."""
    spec, P, shape = _mlp_spec(k)
    return [2, 5] + spec[1:], P, shape


TAPE_SPECS = {**SPECS, "flat-tanh": _lenet_first_flat_spec}


@pytest.mark.parametrize("name", list(TAPE_SPECS))
@pytest.mark.parametrize("loss", INNER)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("nets", [1, 3])
def test_replay_is_seq_step_bit_for_bit(kernels, name, loss, dtype, nets):
    """The recorded gradient is seq_step's, and the replayed products are seq_step's with v,
    exactly: the replay skips work, not arithmetic."""
    k = 1 if loss == "binary" else K
    spec, P, shape = TAPE_SPECS[name](k)
    w = make((nets, P), dtype, seed=1, scale=0.3)
    v = make((nets, P), dtype, seed=2)
    x = make((6, *shape), dtype, seed=3)
    y = (
        (make((6,), dtype, seed=4) > 0).to(dtype)
        if loss == "binary"
        else make((6, k), dtype, seed=4)
    )
    value, g, tape = kernels.seq_step_record(w, x, y, spec, loss)
    want = kernels.seq_step(w, None, x, y, spec, loss, False, False)
    assert torch.equal(value, want[0]) and torch.equal(g, want[1])
    for need_dx, need_dy in ((True, True), (False, False), (True, False)):
        got = kernels.seq_step_replay(w, v, x, y, spec, loss, tape, need_dx, need_dy)
        full = kernels.seq_step(w, v, x, y, spec, loss, need_dx, need_dy)
        for a, b, what in zip(got[:3], full[2:], ("hv", "dx", "dy"), strict=True):
            assert a.shape == b.shape and torch.equal(a, b), what
        # <g, v> read off the logits: the same number to rounding
        gv = (g.double() * v.double()).sum()
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        assert got[3].shape == () and abs(got[3].double() - gv) <= tol * (g.abs() * v.abs()).sum()
    assert got[0].abs().sum() > 0


def test_replay_matches_the_autograd_reference(kernels):
    w, v, x, y, spec = _problem("lenet", "soft")
    _, _, tape = kernels.seq_step_record(w, x, y, spec, "soft")
    got = kernels.seq_step_replay(w, v, x, y, spec, "soft", tape, True, True)
    want = reference.seq_step(w, v, x, y, spec, "soft", True, True)
    for a, b in zip(got, (*want[2:], (want[1] * v).sum()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_replay_rejects_a_tape_that_does_not_fit(kernels):
    w, v, x, y, spec = _problem("lenet", "soft")
    _, _, tape = kernels.seq_step_record(w, x, y, spec, "soft")
    replay = kernels.seq_step_replay
    with pytest.raises(ValueError, match="the tape has 3 entries"):
        replay(w, v, x, y, spec, "soft", tape[:3], True, True)
    _, _, other = kernels.seq_step_record(w, x[:4], y[:4], spec, "soft")
    with pytest.raises(ValueError, match="tape entry `output` of layer 0 does not fit"):
        replay(w, v, x, y, spec, "soft", other, True, True)
    bad = list(tape)
    bad[1] = bad[1].clone()
    bad[1].view(-1)[2] = 7  # a window code outside 0-3: never an out-of-bounds read
    with pytest.raises(ValueError, match="invalid value 7"):
        replay(w, v, x, y, spec, "soft", bad, True, True)
    bad = list(tape)
    bad[2] = bad[2].float()
    with pytest.raises(ValueError, match="`cotangent` of layer 0"):
        replay(w, v, x, y, spec, "soft", bad, True, True)
    with pytest.raises(ValueError, match="must be an inner loss"):
        kernels.seq_step_record(w, x, y.argmax(1), spec, "ce")


def test_replay_wrapper_falls_back_without_a_tape(kernels):
    """A tape recorded on the reference is empty; replaying it computes the whole step."""
    w, v, x, y, spec = _problem("mlp", "softmax")
    ops.set_backend("reference")
    try:
        value, g, tape = ops.seq_step_record(w, x, y, spec, "softmax")
    finally:
        ops.set_backend("auto")
    assert tape == []
    got = ops.seq_step_replay(w, v, x, y, spec, "softmax", tape, True, True)
    want = reference.seq_step(w, v, x, y, spec, "softmax", True, True)
    for a, b in zip((value, g, *got), (*want, (want[1] * v).sum()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(TAPE_SPECS))
def test_record_replay_opcheck(kernels, name):
    spec, P, shape = TAPE_SPECS[name](K)
    w = make((2, P), torch.float64, seed=1, scale=0.3)
    v = make((2, P), torch.float64, seed=2)
    x = make((6, *shape), torch.float64, seed=3)
    y = make((6, K), torch.float64, seed=4)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        kernels.seq_step_record.default, (w, x, y, spec, "soft"), test_utils=utils
    )
    _, _, tape = kernels.seq_step_record(w, x, y, spec, "soft")
    torch.library.opcheck(
        kernels.seq_step_replay.default,
        (w, v, x, y, spec, "soft", tape, True, True),
        test_utils=utils,
    )
