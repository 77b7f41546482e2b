"""The drop-in for the original code's trainer: its golden hypergradients through its own
interface (a list of (data, label, lr) steps, the same tensors repeated per epoch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_problems import load_golden

from fastdistill.compat import steps_hypergradient
from fastdistill.models import MLP, LeNet


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def golden_steps(g):
    """Leaves as an original script holds them: data and label per distilled step, raw step
    sizes behind a softplus; steps repeat the same tensors every epoch."""
    S, T = g["data"].shape[0], g["raw_lrs"].numel()
    data = [g["data"][s].clone().requires_grad_() for s in range(S)]
    learn = "grad_labels" in g
    labels = [g["labels"][s].clone().requires_grad_(learn) for s in range(S)]
    raw = g["raw_lrs"].reshape(-1).clone().requires_grad_()
    lrs = F.softplus(raw).unbind()
    return [(data[t % S], labels[t % S], lrs[t]) for t in range(T)], data, labels, raw


@pytest.mark.parametrize("engine", ["adjoint", "unroll"])
@pytest.mark.parametrize("case", ["lenet_fixed_soft_s2e2", "lenet_2nets_hard_s1e3"])
def test_reproduces_the_golden_hypergradients_through_the_original_interface(
    golden_dir, case, engine
):
    g = load_golden(golden_dir / f"{case}.npz")
    steps, data, labels, raw = golden_steps(g)
    hg = steps_hypergradient(LeNet().double(), g["w0"], steps, g["real_x"], g["real_y"],
                             engine=engine)  # fmt: skip
    assert len(hg.datas) == len(steps) and hg.datas[0] is steps[-1][0]  # last step first
    assert rel(hg.loss, g["outer_loss"].mean()) < 1e-12
    hg.backward()  # what the original scripts do next
    assert rel(torch.stack([d.grad for d in data]), g["grad_data"]) < 1e-12
    assert rel(raw.grad, g["grad_raw_lrs"].reshape(-1)) < 1e-11
    if "grad_labels" in g:
        assert rel(torch.stack([lab.grad for lab in labels]), g["grad_labels"]) < 1e-12
    else:
        assert hg.labels == [] and all(lab.grad is None for lab in labels)


def test_class_index_labels_and_one_flat_net():
    torch.manual_seed(0)
    model = MLP(1, 3, 4, hidden=(5,)).double()
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    x = [torch.randn(6, 1, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    y = torch.arange(6) % 3
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    steps = [(x[0], y, lr), (x[1], y, lr), (x[0], y, lr)]
    rx, ry = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))

    def unrolled(xs, step):  # the original's forward, by plain autograd
        wt = w.clone().requires_grad_()
        cur = wt
        for xi in xs:
            out = torch.func.functional_call(model, _unflatten(model, cur), (xi,))
            (gw,) = torch.autograd.grad(F.cross_entropy(out, y), cur, create_graph=True)
            cur = cur - step * gw
        out = torch.func.functional_call(model, _unflatten(model, cur), (rx,))
        return F.cross_entropy(out, ry)

    loss = unrolled([x[0], x[1], x[0]], lr)
    want = torch.autograd.grad(loss, [x[0], x[1], lr])
    hg = steps_hypergradient(model, w, steps, rx, ry)
    hg.backward()
    assert rel(hg.loss, loss.detach()) < 1e-12
    for got, exp in zip((x[0].grad, x[1].grad, lr.grad), want):
        assert rel(got, exp) < 1e-10


def _unflatten(model, flat):
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def test_bad_steps_name_the_problem():
    model = MLP(1, 3, 4, hidden=(5,))
    w = torch.zeros(sum(p.numel() for p in model.parameters()))
    x, y = torch.randn(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="steps is empty"):
        steps_hypergradient(model, w, [], x, y)
    with pytest.raises(ValueError, match="positive"):
        steps_hypergradient(model, w, [(x, y, torch.tensor(0.0))], x, y)
    with pytest.raises(ValueError, match="one shape"):
        steps_hypergradient(
            model, w, [(x, y, torch.tensor(0.1)), (x[:1], y[:1], torch.tensor(0.1))], x, y
        )
