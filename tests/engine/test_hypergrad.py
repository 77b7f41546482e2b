"""Hypergradients: golden reference, finite differences, engine agreement, batching, memory."""

from __future__ import annotations

import pytest
import torch
from engine_problems import MODELS, DropoutMLP, load_golden, make_problem

from fastdistill.engine import FlatModel, hypergradient
from fastdistill.engine.hypergrad import default_checkpoint_every
from fastdistill.models import MLP, LeNet
from fastdistill.utils.memory import peak_memory


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("engine", ["unroll", "adjoint"])
@pytest.mark.parametrize("case", ["lenet_fixed_soft_s2e2", "lenet_2nets_hard_s1e3"])
def test_reproduces_original_code_hypergradients(golden_dir, case, engine, device):
    g = {k: v.to(device) for k, v in load_golden(golden_dir / f"{case}.npz").items()}
    tol = 1e-12 if device == "cpu" else 1e-10  # other summation orders on the GPU
    learn = "grad_labels" in g
    model = FlatModel(LeNet().double().to(device))
    hg = hypergradient(
        model,
        g["w0"],
        g["data"],
        g["labels"],
        g["raw_lrs"].reshape(-1),
        g["real_x"],
        g["real_y"],
        learn_labels=learn,
        engine=engine,
        checkpoint_every=2,
    )
    assert rel(hg.outer_loss, g["outer_loss"]) < tol
    assert rel(hg.grad_data, g["grad_data"]) < tol
    assert rel(hg.grad_raw_lrs, g["grad_raw_lrs"].reshape(-1)) < tol
    if learn:
        assert rel(hg.grad_labels, g["grad_labels"]) < tol
    else:
        assert hg.grad_labels is None


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_hypergradient_matches_central_finite_differences(name):
    model, w0, data, labels, raw, rx, ry = make_problem(name, nets=2, steps=2, epochs=2)
    raw = raw - 1.5  # small steps keep the unroll smooth enough for differences at eps
    hg = hypergradient(model, w0, data, labels, raw, rx, ry, engine="adjoint")

    def loss(d, y, r):
        return float(hypergradient(model, w0, d, y, r, rx, ry, engine="unroll").outer_loss.mean())

    eps = 1e-6
    gen = torch.Generator().manual_seed(1)
    for which, grad in (
        ("data", hg.grad_data),
        ("labels", hg.grad_labels),
        ("raw", hg.grad_raw_lrs),
    ):
        base = {"data": data, "labels": labels, "raw": raw}
        direction = torch.randn(base[which].shape, generator=gen, dtype=torch.float64)
        plus = dict(base, **{which: base[which] + eps * direction})
        minus = dict(base, **{which: base[which] - eps * direction})
        fd = (
            loss(plus["data"], plus["labels"], plus["raw"])
            - loss(minus["data"], minus["labels"], minus["raw"])
        ) / (2 * eps)
        analytic = float((grad * direction).sum())
        assert abs(fd - analytic) <= 1e-7 + 1e-5 * abs(analytic), (which, fd, analytic)


@pytest.mark.parametrize("checkpoint_every", [1, 3, None])
@pytest.mark.parametrize("init", ["fixed", "random"])
@pytest.mark.parametrize("name", list(MODELS))
def test_adjoint_equals_unroll(name, init, checkpoint_every):
    nets = 1 if init == "fixed" else 3
    model, w0, data, labels, raw, rx, ry = make_problem(name, nets=nets, steps=2, epochs=3)
    a = hypergradient(
        model, w0, data, labels, raw, rx, ry, engine="adjoint", checkpoint_every=checkpoint_every
    )
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll")
    assert rel(a.outer_loss, u.outer_loss) <= 1e-12
    assert rel(a.final_weights, u.final_weights) <= 1e-12
    for x, y in (
        (a.grad_data, u.grad_data),
        (a.grad_labels, u.grad_labels),
        (a.grad_raw_lrs, u.grad_raw_lrs),
    ):
        assert y.abs().sum() > 0
        assert rel(x, y) <= 1e-8


@pytest.mark.parametrize("label_kind", ["softmax", "binary"])
def test_engines_agree_for_softmax_targets_and_binary_labels(label_kind):
    model, w0, data, labels, raw, rx, ry = make_problem("mlp", nets=2)
    if label_kind == "binary":
        model = FlatModel(MLP(1, 1, 6, hidden=(12, 10)).double())
        w0 = torch.randn(2, model.num_params, dtype=torch.float64) * 0.3
        labels = torch.rand(labels.shape[:2], dtype=torch.float64)
        ry = ry % 2
    a = hypergradient(model, w0, data, labels, raw, rx, ry, label_kind=label_kind)
    u = hypergradient(model, w0, data, labels, raw, rx, ry, label_kind=label_kind, engine="unroll")
    assert a.grad_labels.shape == labels.shape
    for x, y in (
        (a.grad_data, u.grad_data),
        (a.grad_labels, u.grad_labels),
        (a.grad_raw_lrs, u.grad_raw_lrs),
    ):
        assert rel(x, y) <= 1e-8


def test_engines_replay_dropout_masks():
    torch.manual_seed(0)
    model = FlatModel(DropoutMLP().double())
    assert model.stochastic
    w0 = torch.randn(2, model.num_params, dtype=torch.float64) * 0.3
    data = torch.randn(2, 5, 1, 4, 4, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[torch.arange(5) % 3].expand(2, 5, 3).clone()
    raw = torch.full((6,), -1.0, dtype=torch.float64)
    rx, ry = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    kw = {"rng_seed": 123}
    a = hypergradient(
        model, w0, data, labels, raw, rx, ry, engine="adjoint", checkpoint_every=2, **kw
    )
    u = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll", **kw)
    assert rel(a.grad_data, u.grad_data) <= 1e-10
    assert rel(a.grad_raw_lrs, u.grad_raw_lrs) <= 1e-10
    other = hypergradient(model, w0, data, labels, raw, rx, ry, engine="unroll", rng_seed=7)
    assert rel(other.grad_data, u.grad_data) > 1e-3  # masks really differ with another seed


@pytest.mark.parametrize("engine", ["adjoint", "unroll"])
def test_seeded_steps_leave_the_callers_generator_alone(engine):
    model = FlatModel(DropoutMLP().double())
    w0 = torch.randn(1, model.num_params, dtype=torch.float64) * 0.3
    data = torch.randn(2, 5, 1, 4, 4, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[torch.arange(5) % 3].expand(2, 5, 3).clone()
    raw = torch.full((4,), -1.0, dtype=torch.float64)
    rx, ry = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    hypergradient(model, w0, data, labels, raw, rx, ry, engine=engine, rng_seed=11)
    assert torch.equal(torch.rand(3), expected)


def test_batched_nets_equal_nets_one_by_one():
    model, w0, data, labels, raw, rx, ry = make_problem("lenet", nets=3)
    batched = hypergradient(model, w0, data, labels, raw, rx, ry)
    singles = [hypergradient(model, w0[i : i + 1], data, labels, raw, rx, ry) for i in range(3)]
    assert rel(batched.outer_loss, torch.cat([s.outer_loss for s in singles])) <= 1e-12
    for field in ("grad_data", "grad_labels", "grad_raw_lrs"):
        mean = torch.stack([getattr(s, field) for s in singles]).mean(0)
        assert rel(getattr(batched, field), mean) <= 1e-10


def test_truncation_cuts_earlier_steps():
    model, w0, data, labels, raw, rx, ry = make_problem("mlp", steps=2, epochs=2)
    full = hypergradient(model, w0, data, labels, raw, rx, ry, truncate=4)
    exact = hypergradient(model, w0, data, labels, raw, rx, ry)
    assert rel(full.grad_data, exact.grad_data) <= 1e-12
    for engine in ("adjoint", "unroll"):
        cut = hypergradient(model, w0, data, labels, raw, rx, ry, truncate=1, engine=engine)
        assert torch.all(cut.grad_raw_lrs[:3] == 0) and cut.grad_raw_lrs[3] != 0
        assert rel(cut.grad_raw_lrs, exact.grad_raw_lrs) > 1e-6


def test_adjoint_peak_memory_grows_only_by_the_stored_weights():
    """The adjoint's graph memory is one step's whatever T is: its peak grows by the stored
    weight vectors only (all of them within the default budget; flat with a slot count), and by
    the replay tapes when the budget leaves room for them, while the unroll's graph grows with
    T."""
    torch.manual_seed(0)
    model = FlatModel(LeNet())
    w0 = torch.randn(1, model.num_params) * 0.05
    data = torch.randn(1, 10, 1, 28, 28)
    labels = torch.eye(10).unsqueeze(0)
    rx, ry = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def peak(T: int, engine: str, **kw) -> int:
        raw = torch.full((T,), -4.0)
        return peak_memory(
            lambda: hypergradient(model, w0, data, labels, raw, rx, ry, engine=engine, **kw)
        )[1]

    vector = w0.numel() * 4
    # a budget of exactly the T + 1 weight vectors: all stored, no room for tapes
    adj3 = peak(3, "adjoint", checkpoint_memory=4 * vector)
    adj60 = peak(60, "adjoint", checkpoint_memory=61 * vector)
    taped3, taped60 = peak(3, "adjoint"), peak(60, "adjoint")
    slot3, slot60 = peak(3, "adjoint", checkpoint_slots=8), peak(60, "adjoint", checkpoint_slots=8)
    unr3, unr60 = peak(3, "unroll"), peak(60, "unroll")
    assert adj60 - adj3 <= 58 * vector * 1.05 + 2**16, (adj3, adj60, vector)
    # a tape: the step's gradient (one vector) and ten images' activations (~half a vector)
    assert 58 * vector < taped60 - taped3 <= 58 * 3 * vector, (taped3, taped60, vector)
    assert slot60 <= 1.2 * slot3, (slot3, slot60)
    assert unr60 - unr3 >= 3 * (adj60 - adj3), (unr3, unr60, adj3, adj60)


@pytest.mark.parametrize("chunk", [1, 5, 16, 100])
@pytest.mark.parametrize("name", ["lenet", "alexcifarnet"])  # fused steps / autograd fallback
def test_chunked_outer_pass_gives_the_same_hypergradient(name, chunk):
    model, w0, data, labels, raw, rx, ry = make_problem(name, nets=2, real=16)
    whole = hypergradient(model, w0, data, labels, raw, rx, ry, engine="adjoint")
    part = hypergradient(model, w0, data, labels, raw, rx, ry, engine="adjoint", outer_chunk=chunk)
    assert rel(part.outer_loss, whole.outer_loss) < 1e-13
    for a, b in ((part.grad_data, whole.grad_data), (part.grad_labels, whole.grad_labels),
                 (part.grad_raw_lrs, whole.grad_raw_lrs)):  # fmt: skip
        assert rel(a, b) < 1e-12


def test_chunked_outer_pass_lowers_the_peak():
    torch.manual_seed(0)
    model = FlatModel(LeNet())
    w0 = torch.randn(1, model.num_params) * 0.05
    data, labels = torch.randn(1, 10, 1, 28, 28), torch.eye(10).unsqueeze(0)
    rx, ry = torch.randn(1024, 1, 28, 28), torch.randint(0, 10, (1024,))
    raw = torch.full((3,), -4.0)

    def peak(chunk):
        run = lambda: hypergradient(model, w0, data, labels, raw, rx, ry, outer_chunk=chunk)
        return peak_memory(run)[1]

    whole, chunked = peak(None), peak(128)
    assert chunked < 0.5 * whole, (whole, chunked)


def test_outer_chunk_must_be_positive():
    with pytest.raises(ValueError, match="outer_chunk"):
        hypergradient(*make_problem("mlp"), outer_chunk=0)


def test_default_checkpointing_is_sqrt():
    assert default_checkpoint_every(3) == 1
    assert default_checkpoint_every(300) == 18


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.__setitem__(1, p[1][:, :10]), "w0 must be"),
        (lambda p: p.__setitem__(4, p[4].reshape(2, -1)), "raw_lrs"),
        (lambda p: p.__setitem__(3, p[3][:, :2]), "disagree"),
        (lambda p: p.__setitem__(6, p[6][:3]), "real batch sizes"),
        (lambda p: p.__setitem__(2, p[2].float()), "dtype"),
    ],
)
def test_bad_inputs_name_the_problem(mutate, message):
    p = list(make_problem("mlp"))
    mutate(p)
    with pytest.raises(ValueError, match=message):
        hypergradient(*p)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_engine_runs_on_either_op_backend(golden_dir, backend):
    from fastdistill import ops

    g = load_golden(golden_dir / "lenet_fixed_soft_s2e2.npz")
    ops.set_backend(backend)
    try:
        hg = hypergradient(
            FlatModel(LeNet().double()),
            g["w0"],
            g["data"],
            g["labels"],
            g["raw_lrs"].reshape(-1),
            g["real_x"],
            g["real_y"],
        )
        used = ops.last_backend("inner_update")  # both sweeps (tapes skip adjoint_update)
    finally:
        ops.set_backend(None)
    assert rel(hg.grad_data, g["grad_data"]) < 1e-12
    assert used is not None
    if backend == "reference":
        assert used.backend == "reference"
    else:
        assert used.backend == ("kernel" if ops.use_kernels("cpu")[0] else "reference")
