// fastdistill::seq_step: the fused inner step (gradient, Hessian-vector products) or the outer
// value-and-gradient of a sequential net, one C++ call per step instead of ~150 Python-level op
// calls. Same math as fastdistill/engine/fused/run.py (which documents it and is the fallback):
// a primal forward, the forward tangent along v, the loss gradient and its tangent, and one
// backward sweep carrying the cotangent and its tangent. Layers: conv + 2x2 max pool (+ ReLU)
// on the conv_pool kernels, flatten, linear, ReLU, tanh; B nets at once.
//
// Composite (ATen and dispatcher calls only), registered for the CPU and CUDA keys: the same code
// runs on both. Not differentiable (callers run it without a graph).
//
// spec: layer records, concatenated:
//   1 w_off b_off Cout Cin KH KW ph pw relu   conv2d (stride 1) + maxpool 2x2/2 (+ ReLU)
//   2                                         flatten
//   3 w_off b_off out in                      linear
//   4                                         ReLU
//   5                                         tanh
// (b_off = -1: no bias). loss: "soft", "softmax", "binary" (inner losses, y the labels; the
// outputs are gradients of the SUM over nets) or "ce", "bce" (outer losses, y the targets; the
// gradients of the MEAN over nets). Outputs not asked for come back empty.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "fastdistill/layer_kinds.h"
#include "fastdistill/small_gemm.h"

namespace fastdistill {
namespace {

using at::Tensor;

enum class Layout { kShared, kGrouped, kDense };

struct Layer {
  LayerKind type = LayerKind::Flatten;
  int64_t w_off = -1, b_off = -1;
  std::vector<int64_t> wshape;  // without the nets dimension
  std::vector<int64_t> pad;     // conv: (ph, pw)
  bool relu = false;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : wshape) n *= s;
    return n;
  }
};

struct Ctx {
  Tensor a, out, code, W, b, V, vb, ad, a3;
  Layout layout_in = Layout::kShared;
  std::vector<int64_t> shape_in;
};

// The layer records of `spec`, each checked to be complete, of a known kind, and (weights and
// biases) to lie inside the `num_params` columns of w: a bad record is an error, never an
// out-of-bounds read.
std::vector<Layer> parse(c10::IntArrayRef spec, int64_t num_params) {
  constexpr const char* op = "fastdistill::seq_step";
  std::vector<Layer> layers;
  size_t i = 0;
  auto need = [&](size_t n) {
    TORCH_CHECK_VALUE(i + n <= spec.size(), op, ": truncated layer record in `spec`");
  };
  auto inside = [&](const char* what, int64_t off, int64_t size) {
    const bool ok = off >= 0 && size > 0 && off <= num_params - size;
    TORCH_CHECK_VALUE(ok, op, ": ", std::string(what), " at offset ", std::to_string(off),
                      " (size ", std::to_string(size), ") is outside w's ",
                      std::to_string(num_params), " columns");
  };
  while (i < spec.size()) {
    Layer l;
    const int64_t code = spec[i];
    if (code == static_cast<int64_t>(LayerKind::ConvPool)) {
      need(10);
      l.type = LayerKind::ConvPool;
      l.w_off = spec[i + 1];
      l.b_off = spec[i + 2];
      l.wshape = {spec[i + 3], spec[i + 4], spec[i + 5], spec[i + 6]};
      l.pad = {spec[i + 7], spec[i + 8]};
      l.relu = spec[i + 9] != 0;
      TORCH_CHECK_VALUE(l.pad[0] >= 0 && l.pad[1] >= 0, op, ": negative padding in `spec`");
      i += 10;
    } else if (code == static_cast<int64_t>(LayerKind::Linear)) {
      need(5);
      l.type = LayerKind::Linear;
      l.w_off = spec[i + 1];
      l.b_off = spec[i + 2];
      l.wshape = {spec[i + 3], spec[i + 4]};
      i += 5;
    } else {
      TORCH_CHECK_VALUE(code == static_cast<int64_t>(LayerKind::Flatten) ||
                            code == static_cast<int64_t>(LayerKind::ReLU) ||
                            code == static_cast<int64_t>(LayerKind::Tanh),
                        op, ": unknown layer type ", std::to_string(code), " in `spec`");
      l.type = static_cast<LayerKind>(code);
      i += 1;
    }
    if (l.type == LayerKind::ConvPool || l.type == LayerKind::Linear) {
      for (int64_t s : l.wshape) {
        TORCH_CHECK_VALUE(s > 0, op, ": non-positive weight shape in `spec`");
      }
      inside("weight", l.w_off, l.numel());
      if (l.b_off != -1) inside("bias", l.b_off, l.wshape[0]);
    }
    layers.push_back(std::move(l));
  }
  return layers;
}

// [B, *shape] view of a parameter inside a [B, P] buffer: one as_strided (narrow + view are
// four dispatcher calls, dozens of them per step). parse() checked the range is inside P.
Tensor pview(const Tensor& flat, int64_t off, const std::vector<int64_t>& shape) {
  const size_t n = shape.size();
  std::vector<int64_t> sizes(n + 1), strides(n + 1);
  sizes[0] = flat.size(0);
  strides[0] = flat.stride(0);
  int64_t step = flat.stride(1);
  for (size_t k = n; k > 0; --k) {
    sizes[k] = shape[k - 1];
    strides[k] = step;
    step *= shape[k - 1];
  }
  return flat.as_strided(sizes, strides, flat.storage_offset() + off * flat.stride(1));
}

using FwdFn = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                         c10::IntArrayRef, bool);
using GatherFn = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&,
                        c10::IntArrayRef);
using BwdFn = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                 const Tensor&, c10::IntArrayRef,
                                                 std::array<bool, 3>);

const c10::TypedOperatorHandle<FwdFn>& cp_forward() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("fastdistill::conv_pool_forward", "")
                            .typed<FwdFn>();
  return h;
}
const c10::TypedOperatorHandle<GatherFn>& cp_gather() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("fastdistill::conv_pool_gather", "")
                            .typed<GatherFn>();
  return h;
}
const c10::TypedOperatorHandle<BwdFn>& cp_backward() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("fastdistill::conv_pool_backward", "")
                            .typed<BwdFn>();
  return h;
}

using BwdTanFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&,
    const Tensor&, const Tensor&, c10::IntArrayRef, std::array<bool, 4>);
const c10::TypedOperatorHandle<BwdTanFn>& cp_backward_tangent() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("fastdistill::conv_pool_backward_tangent", "")
                            .typed<BwdTanFn>();
  return h;
}

std::optional<Tensor> opt(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// The linear layers' batched products: small_bmm_new / small_bmm_out (small_gemm.h), the
// register-blocked CPU kernels for the per-step sizes (a library GEMM call costs several times
// their arithmetic), ATen otherwise.

// out = d summed over its rows (the bias gradient), out a [B, N] view.
void row_sum_into(Tensor out, const Tensor& d) { at::sum_out(out, d, 1); }

struct Run {
  int64_t B;
  Tensor w, v;
  bool hvp;
  Tensor g, hv;  // [B, P] outputs: the gradient and the Hessian-vector product
  // Replay: the primal values (activations, window codes, cotangents) come from the tape of
  // this step's gradient call; only the tangent streams are computed.
  bool replay = false;
};

// ------------------------------------------------------------------------------- layers
// One layer's forward; `saved` (replay) holds its recorded output and window codes, which are
// used instead of computing them.
void forward(const Run& r, const Layer& l, Ctx& c, Tensor& a, Layout& layout,
             const Tensor* saved = nullptr) {
  constexpr const char* op = "fastdistill::seq_step";
  c.a = a;
  c.layout_in = layout;
  c.shape_in = a.sizes().vec();
  switch (l.type) {
    case LayerKind::ConvPool: {
      TORCH_CHECK_VALUE(layout != Layout::kDense && a.dim() == 4, op,
                        ": conv layer on a flat activation");
      c.W = pview(r.w, l.w_off, l.wshape);
      if (l.b_off >= 0) c.b = pview(r.w, l.b_off, {l.wshape[0]});
      if (saved != nullptr) {
        a = saved[0];
        c.code = saved[1];
      } else {
        auto [out, code] = cp_forward().call(a, c.W, opt(c.b), l.pad, l.relu);
        c.code = code;
        a = out;
      }
      layout = Layout::kGrouped;
      break;
    }
    case LayerKind::Flatten: {
      if (layout == Layout::kShared) {
        a = a.flatten(1);
      } else if (layout == Layout::kGrouped) {
        a = a.reshape({a.size(0), r.B, -1}).transpose(0, 1);
        layout = Layout::kDense;
      }
      break;
    }
    case LayerKind::Linear: {
      TORCH_CHECK_VALUE(layout != Layout::kGrouped &&
                            a.dim() == (layout == Layout::kShared ? 2 : 3),
                        op, ": linear layer on a non-flat activation");
      c.W = pview(r.w, l.w_off, l.wshape);
      c.a3 = layout == Layout::kShared ? a.expand({r.B, a.size(0), a.size(1)}) : a;
      if (l.b_off >= 0) c.b = pview(r.w, l.b_off, {l.wshape[0]});
      a = saved != nullptr ? saved[0] : small_bmm_new(c.a3, c.W.transpose(1, 2), c.b);
      layout = Layout::kDense;
      break;
    }
    case LayerKind::ReLU:
      a = saved != nullptr ? saved[0] : at::relu(a);
      break;
    case LayerKind::Tanh:
      a = saved != nullptr ? saved[0] : at::tanh(a);
      break;
  }
  c.out = a;
}

Tensor tangent(const Run& r, const Layer& l, Ctx& c, const Tensor& ad) {
  c.ad = ad;
  switch (l.type) {
    case LayerKind::ConvPool: {
      c.V = pview(r.v, l.w_off, l.wshape);
      if (l.b_off >= 0) c.vb = pview(r.v, l.b_off, {l.wshape[0]});
      Tensor t = cp_gather().call(c.a, c.V, opt(c.vb), c.code, l.pad);
      if (ad.defined()) t.add_(cp_gather().call(ad, c.W, std::nullopt, c.code, l.pad));
      return t;
    }
    case LayerKind::Flatten:
      if (!ad.defined()) return ad;
      if (c.layout_in == Layout::kGrouped)
        return ad.reshape({ad.size(0), r.B, -1}).transpose(0, 1);
      return c.layout_in == Layout::kShared ? ad.flatten(1) : ad;
    case LayerKind::Linear: {
      c.V = pview(r.v, l.w_off, l.wshape);
      if (l.b_off >= 0) c.vb = pview(r.v, l.b_off, {l.wshape[0]});
      Tensor t = small_bmm_new(c.a3, c.V.transpose(1, 2), c.vb);
      if (ad.defined()) small_bmm_out(t, ad, c.W.transpose(1, 2), true);
      return t;
    }
    case LayerKind::ReLU:
      return ad.defined() ? at::threshold_backward(ad, c.out, 0) : ad;
    case LayerKind::Tanh:
      return ad.defined() ? at::tanh_backward(ad, c.out) : ad;
  }
  return ad;
}

struct Grads {
  Tensor d_in, dd_in;
  std::vector<std::pair<int64_t, Tensor>> g, hv;  // (offset in w, gradient)
};

Grads backward(const Run& r, const Layer& l, Ctx& c, const Tensor& d, const Tensor& dd,
               bool need_in, bool need_tin) {
  Grads out;
  const int64_t B = r.B;
  const bool tan = dd.defined();
  const bool primal = !r.replay;  // replay: g and the primal cotangents are on the tape
  switch (l.type) {
    case LayerKind::ConvPool: {
      const bool has_b = l.b_off >= 0;
      if (!tan) {
        auto [d_in, gw, gb] =
            cp_backward().call(d, c.a, c.W, c.code, l.pad, {need_in, true, has_b});
        out.g.emplace_back(l.w_off, gw);
        if (has_b) out.g.emplace_back(l.b_off, gb);
        if (need_in) out.d_in = d_in;
        break;
      }
      auto [d_in, gw, gb, t_in, tgw, tgb] =
          cp_backward_tangent().call(d, dd, c.a, opt(c.ad), c.W, c.V, c.code, l.pad,
                                     {need_in && primal, need_tin, has_b, primal});
      if (primal) out.g.emplace_back(l.w_off, gw);
      out.hv.emplace_back(l.w_off, tgw);
      if (has_b) {
        if (primal) out.g.emplace_back(l.b_off, gb);
        out.hv.emplace_back(l.b_off, tgb);
      }
      if (need_in && primal) out.d_in = d_in;
      if (need_tin) out.dd_in = t_in;
      break;
    }
    case LayerKind::Flatten: {
      auto back = [&](const Tensor& t) {
        if (c.layout_in == Layout::kGrouped) return t.transpose(0, 1).reshape(c.shape_in);
        return t.reshape(c.shape_in);
      };
      if (need_in && primal) out.d_in = back(d);
      if (tan && need_tin) out.dd_in = back(dd);
      break;
    }
    case LayerKind::Linear: {  // weight and bias gradients written straight into g and hv
      const bool has_b = l.b_off >= 0;
      const Tensor dT = d.transpose(1, 2);
      if (primal) {
        small_bmm_out(pview(r.g, l.w_off, l.wshape), dT, c.a3, false);
        if (has_b) row_sum_into(pview(r.g, l.b_off, {l.wshape[0]}), d);
        if (need_in) out.d_in = small_bmm_new(d, c.W, Tensor());
      }
      if (tan) {
        const Tensor hw = pview(r.hv, l.w_off, l.wshape);
        small_bmm_out(hw, dd.transpose(1, 2), c.a3, false);
        if (c.ad.defined()) small_bmm_out(hw, dT, c.ad, true);
        if (has_b) row_sum_into(pview(r.hv, l.b_off, {l.wshape[0]}), dd);
        if (need_tin) {
          if (c.layout_in == Layout::kShared) {  // the shared input: sum over nets
            const int64_t N = d.size(1), K = d.size(2);
            const Tensor both = at::cat({dd, d}, 2).transpose(0, 1).reshape({N, B * 2 * K});
            const Tensor wv = at::cat({c.W, c.V}, 1).reshape({B * 2 * K, c.W.size(2)});
            out.dd_in = at::mm(both, wv);
          } else {
            out.dd_in = small_bmm_new(dd, c.W, Tensor());
            small_bmm_out(out.dd_in, d, c.V, true);
          }
        }
      }
      break;
    }
    case LayerKind::ReLU:
      if (need_in && primal) out.d_in = at::threshold_backward(d, c.out, 0);
      if (tan && need_tin) out.dd_in = at::threshold_backward(dd, c.out, 0);
      break;
    case LayerKind::Tanh:
      if (need_in && primal) out.d_in = at::tanh_backward(d, c.out);
      if (tan && need_tin) {
        Tensor t = at::tanh_backward(dd, c.out);
        if (c.ad.defined()) t = t.sub_(2 * c.out * at::tanh_backward(c.ad, c.out) * d);
        out.dd_in = t;
      }
      break;
  }
  return out;
}

// --------------------------------------------------------------------------------- losses
struct LossOut {
  Tensor value, d, dd, dy;
};

LossOut loss_grads(const Tensor& z, const Tensor& y, const std::string& kind, const Tensor& zd,
                   bool need_dy) {
  constexpr const char* op = "fastdistill::seq_step";
  LossOut o;
  const int64_t B = z.size(0), N = z.size(1);
  const double n = static_cast<double>(N);
  if (kind == "binary" || kind == "bce") {
    TORCH_CHECK_VALUE(z.size(2) == 1, op, ": binary losses need one logit");
    const Tensor zz = z.squeeze(-1);
    const Tensor yy = y.to(zz.scalar_type()).expand_as(zz);
    o.value = at::binary_cross_entropy_with_logits(zz, yy, {}, {}, at::Reduction::None).mean(-1);
    const Tensor sig = at::sigmoid(zz);
    const double scale = kind == "bce" ? n * static_cast<double>(B) : n;
    o.d = ((sig - yy) / scale).unsqueeze(-1);
    if (zd.defined()) {
      const Tensor zds = zd.squeeze(-1);
      o.dd = (sig * (1 - sig) * zds / n).unsqueeze(-1);
      if (need_dy) o.dy = zds.sum(0).div_(-n);
    }
    return o;
  }
  const Tensor logp = at::log_softmax(z, -1);
  if (kind == "ce") {
    const Tensor idx = y.view({1, N, 1}).expand({B, N, 1});
    o.value = -logp.gather(-1, idx).squeeze(-1).mean(-1);
    o.d = logp.exp().scatter_add_(-1, idx, at::full_like(idx, -1, z.options()))
              .div_(n * static_cast<double>(B));
    return o;
  }
  TORCH_CHECK_VALUE(kind == "soft" || kind == "softmax", op, ": unknown loss");
  const Tensor p = logp.exp();
  const Tensor target = kind == "softmax" ? at::softmax(y, -1) : y;
  o.value = -(target * logp).sum(-1).mean(-1);
  const Tensor s = target.sum(-1, true);
  o.d = (p * s - target) / n;
  if (zd.defined()) {
    const Tensor zc = zd - (p * zd).sum(-1, true);
    o.dd = p * zc * (s / n);
    if (need_dy) {
      Tensor u = zc.sum(0).div_(-n);
      if (kind == "softmax") u = target * (u - (target * u).sum(-1, true));
      o.dy = u;
    }
  }
  return o;
}

// ----------------------------------------------------------------------------------- tape
// A gradient call can record what the Hessian-vector call of the same step (same w, x, y) needs
// from its primal pass, so that the reverse sweep computes only the tangent streams: per layer
// three entries (empty where not needed, and for the layers before the first weighted one):
//   0  the layer's output (not for flatten, whose output is a view rebuilt on replay)
//   1  the window codes (conv + pool)
//   2  the cotangent of the layer's output (conv + pool, linear, tanh)
constexpr size_t kTapeEntries = 3;

bool tape_out_needed(const Layer& l) { return l.type != LayerKind::Flatten; }
bool tape_d_needed(const Layer& l) {
  return l.type == LayerKind::ConvPool || l.type == LayerKind::Linear ||
         l.type == LayerKind::Tanh;
}

// The output shape of layer l on input a (B nets), for checking a replayed tape.
std::vector<int64_t> out_shape(const Layer& l, const Tensor& a, Layout layout, int64_t B) {
  switch (l.type) {
    case LayerKind::ConvPool:
      if (a.dim() != 4) return {};
      return {a.size(0), B * l.wshape[0], (a.size(2) + 2 * l.pad[0] - l.wshape[2] + 1) / 2,
              (a.size(3) + 2 * l.pad[1] - l.wshape[3] + 1) / 2};
    case LayerKind::Linear:
      return {B, a.size(layout == Layout::kShared ? 0 : 1), l.wshape[0]};
    default:
      return a.sizes().vec();
  }
}

void check_entry(const Tensor& t, const std::vector<int64_t>& shape, const Tensor& like,
                 at::ScalarType dtype, size_t layer, const char* what) {
  const bool ok = t.defined() && t.sizes() == c10::IntArrayRef(shape) &&
                  t.scalar_type() == dtype && t.device() == like.device();
  TORCH_CHECK_VALUE(ok, "fastdistill::seq_step_replay: tape entry `", std::string(what),
                    "` of layer ", std::to_string(layer),
                    " does not fit this step (shape, dtype or device); pass the tape that "
                    "seq_step_record returned for the same w, x and y");
}

// ----------------------------------------------------------------------------------- step
struct StepOut {
  Tensor value, g, hv, dx, dy;
  Tensor gv;  // replay: sum over nets of <g, v>, as <dl/dz, the logits' tangent along v>
  std::vector<Tensor> tape;
};

// The step, the recording gradient call (record) and the tangent-only replay (tape given).
StepOut run_step(const Tensor& w, const Tensor& v, const Tensor& x, const Tensor& y,
                 c10::IntArrayRef spec, const std::string& kind, bool need_dx, bool need_dy,
                 bool record, const std::vector<Tensor>* tape) {
  constexpr const char* op = "fastdistill::seq_step";
  TORCH_CHECK_VALUE(w.dim() == 2, op, ": `w` must be [B, P]");
  const std::vector<Layer> layers = parse(spec, w.size(1));
  Run r{w.size(0), w, v, v.defined()};
  r.replay = tape != nullptr;
  if (r.hvp) TORCH_CHECK_VALUE(r.v.sizes() == w.sizes(), op, ": `v` must match `w`");
  int64_t first = -1;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].w_off >= 0) {
      first = static_cast<int64_t>(i);
      break;
    }
  }
  TORCH_CHECK_VALUE(first >= 0, op, ": `spec` has no weighted layer");
  if (r.replay) {
    TORCH_CHECK_VALUE(tape->size() == kTapeEntries * layers.size(),
                      "fastdistill::seq_step_replay: the tape has ", std::to_string(tape->size()),
                      " entries, this net's records ", std::to_string(kTapeEntries * layers.size()),
                      "; pass the tape that seq_step_record returned for the same w, x and y");
  }
  StepOut o;
  if (record) o.tape.assign(kTapeEntries * layers.size(), w.new_empty({0}));
  auto entry = [&](size_t i, size_t k) -> Tensor& { return o.tape[kTapeEntries * i + k]; };

  std::vector<Ctx> ctx(layers.size());
  Tensor a = x, ad;
  Layout layout = Layout::kShared;
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    const bool weighted_part = static_cast<int64_t>(i) >= first;
    const Tensor* saved = nullptr;
    if (r.replay && weighted_part && tape_out_needed(l)) {
      saved = tape->data() + kTapeEntries * i;
      check_entry(saved[0], out_shape(l, a, layout, r.B), w, w.scalar_type(), i, "output");
      if (l.type == LayerKind::ConvPool) {
        check_entry(saved[1], saved[0].sizes().vec(), w, at::kByte, i, "code");
      }
    }
    forward(r, l, ctx[i], a, layout, saved);
    if (r.hvp && weighted_part) ad = tangent(r, l, ctx[i], ad);
    if (record && weighted_part && tape_out_needed(l)) {
      entry(i, 0) = a.contiguous();
      if (l.type == LayerKind::ConvPool) entry(i, 1) = ctx[i].code;
    }
  }
  TORCH_CHECK_VALUE(layout == Layout::kDense, op, ": the net must end in flat [N, K] logits");
  LossOut lo = loss_grads(a, y, kind, ad, need_dy);
  // <g, v> is the loss's derivative along v: no need to keep g for the step-size gradient.
  if (r.replay) o.gv = at::sum(lo.d * ad);

  r.g = r.replay ? w.new_empty({0}) : at::empty(w.sizes(), w.options());
  r.hv = r.hvp ? at::empty(w.sizes(), w.options()) : w.new_empty({0});
  const int64_t B = r.B;
  Tensor d = lo.d, dd = lo.dd;
  for (int64_t i = static_cast<int64_t>(layers.size()) - 1; i >= 0; --i) {
    const Layer& l = layers[i];
    const bool need_in = i > first;
    const bool need_tin = r.hvp && (need_in || need_dx);
    if (r.replay) {
      d = Tensor();  // layers before the first weighted one need no primal cotangent
      if (i >= first && tape_d_needed(l)) {
        d = (*tape)[kTapeEntries * i + 2];
        check_entry(d, ctx[i].out.sizes().vec(), w, w.scalar_type(), i, "cotangent");
      }
    } else if (record && tape_d_needed(l)) {
      entry(i, 2) = d.contiguous();
    }
    Grads gr = backward(r, l, ctx[i], d, dd, need_in, need_tin);
    for (auto& [off, t] : gr.g) pview(r.g, off, {t.numel() / B}).copy_(t.reshape({B, -1}));
    for (auto& [off, t] : gr.hv) pview(r.hv, off, {t.numel() / B}).copy_(t.reshape({B, -1}));
    d = gr.d_in;
    dd = gr.dd_in;
    if (r.replay ? !dd.defined() : (!d.defined() && !dd.defined())) break;
  }
  o.value = lo.value;
  o.g = r.g;
  o.hv = r.hv;
  o.dx = (need_dx && dd.defined()) ? dd : x.new_empty({0});
  o.dy = lo.dy.defined() ? lo.dy : y.new_empty({0});
  return o;
}

// ----------------------------------------------------------------------------------- ops
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> seq_step(
    const Tensor& w, const std::optional<Tensor>& v, const Tensor& x, const Tensor& y,
    c10::IntArrayRef spec, c10::string_view loss, bool need_dx, bool need_dy) {
  StepOut o = run_step(w, v.has_value() ? *v : Tensor(), x, y, spec, std::string(loss), need_dx,
                       need_dy, false, nullptr);
  return std::make_tuple(o.value, o.g, o.hv, o.dx, o.dy);
}

bool inner_loss(const std::string& kind) {
  return kind == "soft" || kind == "softmax" || kind == "binary";
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> seq_step_record(const Tensor& w, const Tensor& x,
                                                                const Tensor& y,
                                                                c10::IntArrayRef spec,
                                                                c10::string_view loss) {
  const std::string kind(loss);
  TORCH_CHECK_VALUE(inner_loss(kind), "fastdistill::seq_step_record: `loss` must be an inner ",
                    "loss (soft, softmax or binary), got ", std::string(kind));
  StepOut o = run_step(w, Tensor(), x, y, spec, kind, false, false, true, nullptr);
  return std::make_tuple(o.value, o.g, std::move(o.tape));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> seq_step_replay(const Tensor& w, const Tensor& v,
                                                   const Tensor& x, const Tensor& y,
                                                   c10::IntArrayRef spec, c10::string_view loss,
                                                   at::TensorList tape, bool need_dx,
                                                   bool need_dy) {
  const std::string kind(loss);
  TORCH_CHECK_VALUE(inner_loss(kind), "fastdistill::seq_step_replay: `loss` must be an inner ",
                    "loss (soft, softmax or binary), got ", std::string(kind));
  TORCH_CHECK_VALUE(v.defined(), "fastdistill::seq_step_replay: `v` is undefined");
  const std::vector<Tensor> entries = tape.vec();
  StepOut o = run_step(w, v, x, y, spec, kind, need_dx, need_dy, false, &entries);
  return std::make_tuple(o.hv, o.dx, o.dy, o.gv);
}

}  // namespace

// The same device-generic code for both backends (explicit keys, so that the extension's
// kernel discovery sees them).
TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("seq_step", &seq_step);
  m.impl("seq_step_record", &seq_step_record);
  m.impl("seq_step_replay", &seq_step_replay);
}
TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("seq_step", &seq_step);
  m.impl("seq_step_record", &seq_step_record);
  m.impl("seq_step_replay", &seq_step_replay);
}

}  // namespace fastdistill
