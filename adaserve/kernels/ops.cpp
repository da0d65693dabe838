// The small per-layer ops of a decoder pass, fused: RMSNorm with its residual add, rotary embedding
// applied in place, and SiLU gating. In a batch-1 decode step of a 1.5B model these ops were ~200
// tiny torch calls (allocations, dispatch, casts; 14 ms of aten time by torch's profiler); here each
// is one call. fp32, CPU; every row is computed alone, so results do not depend on the batch.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>

namespace {

constexpr int LANES = 16;         // partial sums, so the compiler can vectorize the reduction
constexpr int64_t ROW_GRAIN = 8;  // rows per thread at least: one row is far below a thread's wake-up

float sum_of_squares(const float* x, int64_t n) {
  float part[LANES] = {0.0f};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    for (int l = 0; l < LANES; ++l) part[l] += x[i + l] * x[i + l];
  }
  float total = 0.0f;
  for (int l = 0; l < LANES; ++l) total += part[l];
  for (; i < n; ++i) total += x[i] * x[i];
  return total;
}

// out = x / sqrt(mean(x^2) + eps) * w, in HF's order (normalize, then scale by the weight)
void norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
  const float inv = 1.0f / std::sqrt(sum_of_squares(x, n) / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * inv) * w[i];
}

void check_rows(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x must be contiguous fp32 [n, h]");
  TORCH_CHECK(w.dim() == 1 && w.scalar_type() == torch::kFloat32 && w.is_contiguous() && w.size(0) == x.size(1),
              "weight must be fp32 [h]");
}

}  // namespace

// x [n, h] -> rms_norm(x) * w, a new tensor.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  check_rows(x, w);
  auto out = torch::empty_like(x);
  const int64_t h = x.size(1);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, x.size(0), ROW_GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) norm_row(xp + r * h, wp, op + r * h, h, static_cast<float>(eps));
  });
  return out;
}

// In place, both [n, h]: residual += x, then x = rms_norm(residual) * w.
// The decoder's "x = x + sublayer(x); norm(x)" as one pass over the rows (vLLM's fused_add_rms_norm).
void add_rms_norm_(torch::Tensor x, torch::Tensor residual, torch::Tensor w, double eps) {
  check_rows(x, w);
  check_rows(residual, w);
  TORCH_CHECK(residual.size(0) == x.size(0), "x and residual differ in rows");
  const int64_t h = x.size(1);
  float *xp = x.data_ptr<float>(), *rp = residual.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  at::parallel_for(0, x.size(0), ROW_GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float *xr = xp + r * h, *rr = rp + r * h;
      for (int64_t i = 0; i < h; ++i) rr[i] += xr[i];
      norm_row(rr, wp, xr, h, static_cast<float>(eps));
    }
  });
}

// Rotate the first num_heads heads of each row of qkv [n, width] in place (q's and k's heads; v
// follows them untouched). cos and signed_sin are [n, head_dim], the row's position already looked
// up; signed_sin holds -sin in its first half, so with half = head_dim / 2, for i < half:
//   x[i]        <- x[i] * cos[i]               + x[i + half] * signed_sin[i]
//   x[i + half] <- x[i + half] * cos[i + half] + x[i] * signed_sin[i + half]
// which is HF's x * cos + rotate_half(x) * sin.
void rotary_(torch::Tensor qkv, int64_t num_heads, int64_t head_dim, torch::Tensor cos, torch::Tensor signed_sin) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == torch::kFloat32 && qkv.stride(1) == 1, "qkv must be fp32 [n, width]");
  TORCH_CHECK(num_heads * head_dim <= qkv.size(1) && head_dim % 2 == 0, "heads do not fit in qkv");
  for (const auto& t : {cos, signed_sin}) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.numel() == qkv.size(0) * head_dim,
                "cos and signed_sin must be contiguous fp32 [n, head_dim]");
  }
  const int64_t half = head_dim / 2, row_stride = qkv.stride(0);
  float* base = qkv.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = signed_sin.data_ptr<float>();
  at::parallel_for(0, qkv.size(0), ROW_GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *c = cp + r * head_dim, *s = sp + r * head_dim;
      for (int64_t head = 0; head < num_heads; ++head) {
        float* x = base + r * row_stride + head * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = x[i], b = x[i + half];
          x[i] = a * c[i] + b * s[i];
          x[i + half] = b * c[i + half] + a * s[i + half];
        }
      }
    }
  });
}

// gate_up [n, 2 * inter] -> silu(gate) * up [n, inter]: torch's own (vectorized) silu and mul, in one
// call from Python instead of four (chunk, silu, mul and their views), bitwise the torch path's result.
torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "gate_up must be [n, 2 * inter]");
  const int64_t inter = gate_up.size(1) / 2;
  return at::silu(gate_up.narrow(1, 0, inter)).mul_(gate_up.narrow(1, inter, inter));
}

void register_ops(pybind11::module& m) {
  m.def("silu_mul", &silu_mul, "gate_up [n, 2 * inter] -> silu(gate) * up", pybind11::arg("gate_up"));
  m.def("rms_norm", &rms_norm, "x [n, h] fp32 -> rms_norm(x) * w", pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("eps"));
  m.def("add_rms_norm_", &add_rms_norm_, "in place: residual += x; x = rms_norm(residual) * w", pybind11::arg("x"),
        pybind11::arg("residual"), pybind11::arg("w"), pybind11::arg("eps"));
  m.def("rotary_", &rotary_, "rotate the first num_heads heads of qkv [n, width] in place", pybind11::arg("qkv"),
        pybind11::arg("num_heads"), pybind11::arg("head_dim"), pybind11::arg("cos"), pybind11::arg("signed_sin"));
}
