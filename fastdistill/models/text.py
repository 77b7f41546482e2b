"""Text classifiers of the TDD experiments (docs/algorithm.md §7), on embedded sequences ``[N, L, D]``.

Real sentences are embedded beforehand (``TextData.encode``) and distilled sentences are learned
directly in embedding space, so the models have no embedding layer and return logits
``[N, K]`` (``K = 1`` for binary tasks).

The engine differentiates every model twice (Hessian-vector products) under
``torch.func.functional_call`` and ``vmap``. cuDNN's fused RNN kernels have no double backward,
so the recurrent models run their recurrence step by step in plain PyTorch ops; their parameters
live in an ``nn.RNN``/``nn.LSTM`` so the names, shapes and Xavier init are those of the original
code's layers. Inside :func:`first_order` (passes that need first derivatives only: the engine's
real-batch outer pass, evaluation, full-data training) that layer itself runs, i.e. torch's own
RNN kernels (cuDNN on a GPU): the same function, 1.4x faster on a CPU and far fewer launches on
a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdistill.engine.functional import first_order, first_order_active

__all__ = ["BiLSTM", "BiRNN", "TextConvNet", "first_order"]


class TextConvNet(nn.Module):
    """Kim-style CNN: one convolution per width (3, 4, 5) spanning the full embedding width,
    100 filters each, ReLU, max over time, concat (300), dropout 0.5, linear.

    The filters are stored as ``Conv2d(1, filters, (width, D))`` weights, the original code's
    layout, so Xavier init uses its fan-in/fan-out (a ``Conv1d(D, filters, width)`` layout
    computes the same function but would get a ~6x larger Xavier std at D=50). Padding
    positions are not masked (as in the original): they are zero vectors. Dropout stays
    active in training mode, i.e. in the inner steps (docs/algorithm.md §2).
    """

    def __init__(
        self,
        embed_dim: int,
        num_outputs: int,
        seq_len: int,
        *,
        filters: int = 100,
        widths: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive, got {widths}")
        if seq_len < max(widths):
            raise ValueError(
                f"TextConvNet needs seq_len >= its widest filter ({max(widths)}), got {seq_len}"
            )
        self.embed_dim = embed_dim
        self.convs = nn.ModuleList(nn.Conv2d(1, filters, (w, embed_dim)) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(filters * len(widths), num_outputs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits ``[N, K]`` of embedded sequences ``x`` ``[N, L, D]`` (``lengths`` unused)."""
        _check_input(x, self.embed_dim)
        # [N, D, L], made contiguous once: each convolution (and its backward) would copy it.
        xt = x.transpose(1, 2).contiguous()
        pooled = []
        for conv in self.convs:
            # The same function as conv(x.unsqueeze(1)) with the [F, 1, w, D] weight, computed
            # as a 1-d convolution over D channels: ~2x faster (forward and backward) on CPU.
            weight = conv.weight.squeeze(1).transpose(1, 2)  # [F, D, w]
            z = F.conv1d(xt, weight, conv.bias)  # [N, F, L - w + 1]
            # relu(max_t z) == max_t relu(z): the max first runs the ReLU on 1/L of the values.
            # Passes differentiated once (the real-batch outer pass) take max with indices: its
            # backward scatters into the argmax, where amax's compares the whole [N, F, L] map
            # (the two differ only in how tied maxima share the gradient).
            peak = z.max(-1).values if first_order_active() else z.amax(-1)
            pooled.append(torch.relu(peak))
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))


class _BiRecurrent(nn.Module):
    """Stacked bidirectional RNN/LSTM run step by step; logits from the last hidden states of
    both directions of the top layer (the original's ``cat(h_n[-2], h_n[-1])``).

    Both directions advance together in one batched matmul per time step. With
    ``use_lengths=True`` (or an explicit ``lengths``) each sequence is read up to its last real
    token, like a packed sequence: the forward state freezes after it and the backward
    direction starts there. Without explicit lengths they are inferred as "up to the last
    non-zero vector" (padding embeds to zeros; so do trailing unknown words). The default
    reads the full padded length, as the original code did.
    """

    _mode = "RNN_TANH"

    def __init__(
        self,
        embed_dim: int,
        num_outputs: int,
        seq_len: int,
        *,
        hidden: int = 100,
        layers: int = 2,
        dropout: float = 0.0,
        use_lengths: bool = False,
    ) -> None:
        super().__init__()
        if seq_len < 1 or layers < 1 or hidden < 1:
            raise ValueError(
                f"need seq_len, layers, hidden >= 1, got {seq_len}, {layers}, {hidden}"
            )
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.layers = layers
        self.use_lengths = use_lengths
        cls = nn.LSTM if self._mode == "LSTM" else nn.RNN
        # Parameter holder; run itself only inside first_order() (cuDNN has no double backward).
        self.rnn = cls(embed_dim, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, num_outputs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits ``[N, K]`` of embedded sequences ``x`` ``[N, L, D]``; ``lengths`` ``[N]``
        optional (see the class docstring)."""
        _check_input(x, self.embed_dim)
        steps = x.shape[1]
        mask = None
        if lengths is not None or self.use_lengths:
            if lengths is None:
                lengths = _trailing_nonzero_length(x)
            pos = torch.arange(steps, device=x.device)
            valid = pos < lengths.to(x.device).unsqueeze(-1)  # [N, L]
            # step t reads position t forwards and position L-1-t backwards
            mask = torch.stack([valid, valid.flip(-1)]).unsqueeze(-1)  # [2, N, L, 1]
        if mask is None and first_order_active() and self._fused_rnn_allowed(x):
            return self._forward_fused_rnn(x)
        h = self.dropout(x)
        final = h
        for layer in range(self.layers):
            top = layer == self.layers - 1
            h, final = self._layer(h, layer, mask, keep_outputs=not top)
            if not top:
                h = self.dropout(h)
        return self.fc(self.dropout(final))

    def _fused_rnn_allowed(self, x: Tensor) -> bool:
        """torch's RNN computes this function unless dropout acts between layers (ours drops
        between layers in training mode; nn.LSTM here has none) or nets are vmap-batched."""
        if self.training and self.dropout.p > 0 and self.layers > 1:
            return False
        batched = torch._C._functorch.is_batchedtensor
        return not (batched(x) or batched(self.rnn.weight_ih_l0))

    def _forward_fused_rnn(self, x: Tensor) -> Tensor:
        # cuDNN refuses a backward through an RNN run in eval mode; this nn.LSTM/nn.RNN has no
        # dropout of its own, so its training mode computes the same function.
        rnn_mode = self.rnn.training
        self.rnn.train(rnn_mode or torch.is_grad_enabled())
        try:
            with warnings.catch_warnings():  # functional_call's weights are not one cuDNN buffer
                warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
                _, state = self.rnn(self.dropout(x))
        finally:
            self.rnn.train(rnn_mode)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n)
        final = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # last layer, both directions
        return self.fc(self.dropout(final))

    def _weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """Both directions stacked: W_ih ``[2, G, Din]``, W_hh^T ``[2, H, G]``, bias ``[2, G]``."""
        r = self.rnn
        names = (f"l{layer}", f"l{layer}_reverse")
        w_ih = torch.stack([getattr(r, f"weight_ih_{s}") for s in names])
        w_hh = torch.stack([getattr(r, f"weight_hh_{s}") for s in names])
        bias = torch.stack([getattr(r, f"bias_ih_{s}") + getattr(r, f"bias_hh_{s}") for s in names])
        return w_ih, w_hh.transpose(1, 2), bias

    def _layer(
        self, inp: Tensor, layer: int, mask: Tensor | None, keep_outputs: bool
    ) -> tuple[Tensor, Tensor]:
        w_ih, w_hh_t, bias = self._weights(layer)
        n, steps, din = inp.shape
        # Input projections of all steps in one matmul per direction; the backward direction
        # reads the sequence reversed. [2, N*L, Din] @ [2, Din, G] (a broadcast matmul would
        # run N small ones).
        seqs = torch.stack([inp, inp.flip(1)]).reshape(2, n * steps, din)
        pre = torch.baddbmm(bias.unsqueeze(1), seqs, w_ih.transpose(1, 2))
        # unbind, not pre[:, :, t]: one backward op instead of L zero-filled full-size grads
        pre_steps = pre.view(2, n, steps, -1).unbind(2)
        h = inp.new_zeros(2, n, self.hidden)
        c = h
        outs: list[Tensor] = []
        lstm = self._mode == "LSTM"
        for t, pre_t in enumerate(pre_steps):
            gates = torch.baddbmm(pre_t, h, w_hh_t)  # [2, N, G]
            if lstm:
                # one sigmoid over all four gates (the cell gate's share is discarded) and
                # addcmul: fewer kernels per step, which is what bounds small-batch speed
                i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
                g = torch.tanh(gates[..., 2 * self.hidden : 3 * self.hidden])
                c_new = torch.addcmul(f * c, i, g)
                h_new = o * torch.tanh(c_new)
            else:
                c_new, h_new = c, torch.tanh(gates)
            if mask is not None:
                m = mask[:, :, t]
                h_new = torch.where(m, h_new, h)
                c_new = torch.where(m, c_new, c) if lstm else c_new
            h, c = h_new, c_new
            if keep_outputs:
                outs.append(h)
        final = torch.cat([h[0], h[1]], dim=-1)  # [N, 2H]
        if not keep_outputs:
            return final, final
        seq = torch.stack(outs, dim=2)  # [2, N, L, H]
        return torch.cat([seq[0], seq[1].flip(1)], dim=-1), final


class BiRNN(_BiRecurrent):
    """2-layer bidirectional tanh RNN, hidden 100 (SST-5 in the paper)."""

    _mode = "RNN_TANH"


class BiLSTM(_BiRecurrent):
    """2-layer bidirectional LSTM, hidden 100 (TREC-6 in the paper)."""

    _mode = "LSTM"


def _check_input(x: Tensor, embed_dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != embed_dim:
        raise ValueError(
            f"expected embedded sequences [N, L, {embed_dim}], got shape {tuple(x.shape)}; "
            "embed token ids first (TextData.encode)"
        )


def _trailing_nonzero_length(x: Tensor) -> Tensor:
    """Per sequence, 1 + position of the last non-zero vector (at least 1); no control flow
    on values, so it works under vmap."""
    nonzero = x.detach().ne(0).any(-1)  # [N, L]
    pos = torch.arange(1, x.shape[1] + 1, device=x.device)
    return (nonzero * pos).amax(-1).clamp_min(1)
