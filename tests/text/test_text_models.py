"""Text models: shapes, agreement with torch's RNN/LSTM, double backward (gradgradcheck and
Hessian-vector products against finite differences), and functional_call + vmap over nets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fastdistill.data import from_texts
from fastdistill.engine import FlatModel, hypergradient, sample_weights
from fastdistill.models import (
    TEXT_MODEL_NAMES,
    BiLSTM,
    BiRNN,
    TextConvNet,
    build_model,
    build_model_for,
    is_text_model,
)

D, L = 3, 5


def tiny(name: str, k: int = 3, **kw) -> nn.Module:
    """Small float64 instances, so double backward checks stay fast."""
    if name == "textconvnet":
        return TextConvNet(D, k, L, filters=2, widths=(2, 3), **kw).double()
    cls = BiLSTM if name == "bilstm" else BiRNN
    return cls(D, k, L, hidden=2, **kw).double()


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
@pytest.mark.parametrize("k", [1, 4])
def test_registry_builds_paper_sized_models(name, k):
    model = build_model(name, embed_dim=50, seq_len=30, num_outputs=k)
    assert is_text_model(name) and not is_text_model("lenet")
    assert model(torch.randn(2, 30, 50)).shape == (2, k)
    assert model(torch.randn(1, 30, 50)).shape == (1, k)  # a batch of one works
    # image sizes are ignored for text models, and vice versa
    build_model(name, embed_dim=4, seq_len=6, num_outputs=2, in_channels=1, image_size=28)
    build_model("mlp", in_channels=1, image_size=4, num_outputs=2, embed_dim=4, seq_len=6)


def test_paper_shapes_and_errors():
    conv = TextConvNet(50, 2, 30)
    assert [tuple(c.weight.shape) for c in conv.convs] == [(100, 1, w, 50) for w in (3, 4, 5)]
    assert conv.fc.in_features == 300 and conv.dropout.p == 0.5
    lstm = BiLSTM(50, 6, 30)
    assert lstm.rnn.hidden_size == 100 and lstm.rnn.num_layers == 2 and lstm.fc.in_features == 200
    assert isinstance(BiRNN(50, 5, 30).rnn, nn.RNN) and BiRNN(50, 5, 30).rnn.nonlinearity == "tanh"
    with pytest.raises(ValueError, match="seq_len >= its widest filter"):
        TextConvNet(50, 2, 4)
    with pytest.raises(ValueError, match=r"\[N, L, 50\]"):
        lstm(torch.zeros(2, 30, 49))
    with pytest.raises(ValueError, match="needs embed_dim and seq_len"):
        build_model("bilstm", num_outputs=2, in_channels=1, image_size=28)
    with pytest.raises(ValueError, match="needs in_channels and image_size"):
        build_model("lenet", num_outputs=2, embed_dim=3, seq_len=4)
    with pytest.raises(ValueError, match="known models: .*bilstm"):
        build_model("transformer", num_outputs=2)


def test_build_model_for_text_data(tiny_vectors):
    data = from_texts(
        ["good movie", "bad film", "what is"],
        [0, 1, 2],
        ["good"],
        [0],
        class_names=["a", "b", "c"],
        seq_len=4,
        vectors=tiny_vectors,
    )
    model = build_model_for("bilstm", data, hidden=3)
    assert model(data.model_inputs(data.train_x)).shape == (3, 3)


def test_textconvnet_equals_the_conv2d_formulation():
    torch.manual_seed(0)
    m = TextConvNet(D, 3, 9, filters=4).double().eval()
    x = torch.randn(5, 9, D, dtype=torch.float64)
    pooled = [conv(x.unsqueeze(1)).flatten(2).amax(-1).relu() for conv in m.convs]
    assert torch.allclose(m(x), m.fc(torch.cat(pooled, dim=1)), atol=1e-12)


@pytest.mark.parametrize("cls", [BiRNN, BiLSTM])
def test_recurrence_equals_torch_rnn(cls):
    torch.manual_seed(0)
    m = cls(D, 3, 7, hidden=4).double()
    x = torch.randn(4, 7, D, dtype=torch.float64)

    def reference(inp):
        _, h = m.rnn(inp)
        h = h[0] if isinstance(h, tuple) else h
        return m.fc(torch.cat([h[-2], h[-1]], dim=-1))

    assert torch.allclose(m(x), reference(x), atol=1e-12)
    lengths = torch.tensor([7, 3, 1, 5])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    assert torch.allclose(m(x, lengths), reference(packed), atol=1e-12)
    padded = x * (torch.arange(7)[None, :, None] < lengths[:, None, None])
    m.use_lengths = True  # lengths inferred from the trailing zero (padding) vectors
    assert torch.allclose(m(padded), reference(packed), atol=1e-12)
    assert not torch.allclose(m(padded), reference(padded))


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
def test_gradgradcheck(name):
    torch.manual_seed(0)
    model = tiny(name, k=2).eval()  # dropout off: finite differences need a deterministic f
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    x = torch.randn(2, L - 1, D, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(model, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradgradcheck(f, (x, *params), atol=1e-5, rtol=1e-4, fast_mode=True)


def _inner_grad(model: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    logits = model.forward(w, x, train=False)
    loss = -(y * torch.log_softmax(logits, -1)).sum(-1).mean(-1).sum()
    return torch.autograd.grad(loss, w, create_graph=True)[0]


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
def test_hessian_vector_products_under_vmap_match_finite_differences(name):
    torch.manual_seed(1)
    model = FlatModel(tiny(name))
    w = sample_weights(model, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w.requires_grad_()
    x = torch.randn(3, L, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 3, dtype=torch.float64)
    v = torch.randn_like(w)
    g = _inner_grad(model, w, x, y)
    hvp, mixed = torch.autograd.grad((g * v).sum(), (w, x))
    eps = 1e-6
    with torch.enable_grad():
        gp = _inner_grad(model, (w + eps * v).detach().requires_grad_(), x.detach(), y)
        gm = _inner_grad(model, (w - eps * v).detach().requires_grad_(), x.detach(), y)
    fd = (gp - gm) / (2 * eps)
    assert torch.allclose(hvp, fd, atol=1e-6, rtol=1e-5)
    # d/dx <grad_w l, v>, the term the data hypergradient needs
    u = torch.randn_like(x)

    def gv(xx):
        return float((_inner_grad(model, w, xx, y) * v).sum().detach())

    fd_x = (gv(x.detach() + eps * u) - gv(x.detach() - eps * u)) / (2 * eps)
    assert math.isclose(float((mixed * u).sum()), fd_x, rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
@pytest.mark.parametrize("use_lengths", [False, True])
def test_vmap_over_nets_equals_per_net_calls(name, use_lengths):
    torch.manual_seed(2)
    kw = {} if name == "textconvnet" else {"use_lengths": use_lengths}
    module = tiny(name, **kw).eval()
    model = FlatModel(module)
    w = sample_weights(model, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.randn(4, L, D, dtype=torch.float64)
    x[1, 3:] = 0  # padding at the end of one sequence
    batched = model.forward(w, x, train=False)
    assert batched.shape == (2, 4, 3)
    for b in range(2):
        per_net = model.forward(w[b : b + 1], x, train=False)[0]
        assert torch.allclose(batched[b], per_net, atol=1e-12)
        params = model.unflatten(w[b])
        assert torch.allclose(batched[b], functional_call(module, params, (x,)), atol=1e-12)
    xs = torch.randn(2, 4, L, D, dtype=torch.float64)
    out = model.forward(w, xs, train=False, batched_input=True)
    assert torch.allclose(out[1], model.forward(w[1:], xs[1], train=False)[0], atol=1e-12)


def test_textconvnet_dropout_is_active_in_training_and_differs_per_net():
    model = FlatModel(TextConvNet(D, 2, L, filters=8))
    assert model.stochastic
    w = sample_weights(model, 1).expand(2, -1)
    x = torch.randn(4, L, D)
    train = model.forward(w, x, train=True)
    assert not torch.allclose(train[0], train[1])  # same weights, different masks
    ev = model.forward(w, x, train=False)
    assert torch.allclose(ev[0], ev[1])


def test_xavier_init_uses_the_original_layouts():
    model = FlatModel(TextConvNet(50, 2, 30))
    w = sample_weights(model, 1, generator=torch.Generator().manual_seed(0))[0]
    params = model.unflatten(w)
    conv = params["convs.0.weight"]  # [100, 1, 3, 50]: fan_in 150, fan_out 15000
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (150 + 15000)), rel=0.05)
    assert params["convs.0.bias"].abs().sum() == 0
    rnn = FlatModel(BiLSTM(50, 6, 30))
    p = rnn.unflatten(sample_weights(rnn, 1, generator=torch.Generator().manual_seed(0))[0])
    assert p["rnn.weight_ih_l0"].std().item() == pytest.approx(math.sqrt(2 / 450), rel=0.05)
    assert p["rnn.bias_hh_l1_reverse"].abs().sum() == 0


@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
def test_engines_agree_on_text_models(name):
    """The exact hypergradient through T=2 inner steps, unroll vs adjoint (dropout replayed)."""
    torch.manual_seed(4)
    model = FlatModel(tiny(name))
    w0 = sample_weights(model, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    data = torch.randn(2, 3, L, D, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[torch.arange(3)].expand(2, 3, 3).clone()
    raw = torch.full((2,), -2.0, dtype=torch.float64)
    rx = torch.randn(6, L, D, dtype=torch.float64)
    ry = torch.randint(0, 3, (6,))
    out = {
        engine: hypergradient(
            model, w0, data, labels, raw, rx, ry, engine=engine, rng_seed=7, checkpoint_every=1
        )
        for engine in ("unroll", "adjoint")
    }
    a, b = out["unroll"], out["adjoint"]
    assert torch.allclose(a.grad_data, b.grad_data, atol=1e-10)
    assert torch.allclose(a.grad_labels, b.grad_labels, atol=1e-10)
    assert torch.allclose(a.grad_raw_lrs, b.grad_raw_lrs, atol=1e-10)
    assert a.grad_data.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.parametrize("name", TEXT_MODEL_NAMES)
def test_double_backward_on_cuda(name):
    """cuDNN RNNs have no double backward; ours must work (and match CPU) on the GPU."""
    torch.manual_seed(6)
    cpu = FlatModel(tiny(name))
    gpu = FlatModel(tiny(name).cuda())
    w = sample_weights(cpu, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(3, L, D, dtype=torch.float64)
    y = torch.randn(3, 3, dtype=torch.float64)
    v = torch.randn_like(w)
    results = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        wd = w.to(dev).requires_grad_()
        xd = x.to(dev).requires_grad_()
        g = _inner_grad(model, wd, xd, y.to(dev))
        hvp, mixed = torch.autograd.grad((g * v.to(dev)).sum(), (wd, xd))
        results.append((hvp.cpu(), mixed.cpu()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-10)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("cls", [BiRNN, BiLSTM])
def test_first_order_passes_run_torch_rnn_with_the_same_function(cls, device):
    """Inside first_order() one net runs nn.LSTM/nn.RNN itself (cuDNN on a GPU): same logits
    and first derivatives w.r.t. the flat weights as the step-by-step recurrence."""
    from fastdistill.models.text import first_order

    torch.manual_seed(3)
    model = FlatModel(cls(D, 3, 7, hidden=5).double().to(device))
    w = sample_weights(model, 1, dtype=torch.float64).to(device).requires_grad_()
    x = torch.randn(4, 7, D, dtype=torch.float64, device=device)
    calls = []
    hook = model.module.rnn.register_forward_hook(lambda *a: calls.append(1))
    loop = model.forward(w, x, train=False)
    (g_loop,) = torch.autograd.grad(loop.square().sum(), w)
    assert not calls  # the recurrence ran step by step
    with first_order():
        fused = model.forward(w, x, train=False)
        (g_fused,) = torch.autograd.grad(fused.square().sum(), w)
    hook.remove()
    assert calls  # torch's RNN ran
    assert torch.allclose(fused, loop, atol=1e-12)
    assert torch.allclose(g_fused, g_loop, atol=1e-12, rtol=1e-10)


def test_first_order_keeps_the_recurrence_where_torch_rnn_differs():
    """Several vmap-ed nets, lengths masks, and dropout between layers in training mode are
    not what nn.LSTM computes here: those keep the step-by-step path."""
    from fastdistill.models.text import first_order

    torch.manual_seed(4)
    m = BiLSTM(D, 3, 7, hidden=5, dropout=0.5)
    calls = []
    m.rnn.register_forward_hook(lambda *a: calls.append(1))
    model = FlatModel(m)
    x = torch.randn(4, 7, D)
    with first_order():
        model.forward(sample_weights(model, 3), x, train=False)  # vmap over 3 nets
        m(x, torch.tensor([7, 3, 1, 5]))  # lengths
        m.train()(x)  # inter-layer dropout
        assert not calls
        m.eval()(x)
        assert calls
