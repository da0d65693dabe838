// Batch-invariant paged attention for CPU.
//
// Each query row attends to an explicit list of cache slots, in order: its sequence's cached
// positions (shared by the sequence's tokens), then the positions its mask lets it see among the
// step's own tokens. Every (token, head) is computed by the same loop in the same order, so a
// token's output does not depend on how many other tokens, sequences or padding share the step.
// That is what makes speculative verification give exactly the logits plain decoding gives.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int LANES = 16;

// Dot product with 16 partial sums, combined in a fixed order (vectorizes without -ffast-math).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[LANES] = {0};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] += a[i + l] * b[i + l];
  float s = 0.f;
  for (int l = 0; l < LANES; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// q [T, H, D]; k_cache, v_cache [num_slots, KVH, D]; token_seq [T]; base_offsets [S + 1] into
// base_slots (each sequence's cached positions); extra_offsets [T + 1] into extra_slots.
torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor token_seq,
                              torch::Tensor base_offsets, torch::Tensor base_slots, torch::Tensor extra_offsets,
                              torch::Tensor extra_slots, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32, "q must be fp32 [T, H, D]");
  TORCH_CHECK(k_cache.scalar_type() == torch::kFloat32 && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "caches must be contiguous fp32 [slots, KVH, D]");
  q = q.contiguous();
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), KVH = k_cache.size(1);
  TORCH_CHECK(H % KVH == 0 && k_cache.size(2) == D, "head shapes");
  const int64_t group = H / KVH;
  auto out = torch::empty({T, H, D}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* seq = token_seq.data_ptr<int64_t>();
  const int64_t* bo = base_offsets.data_ptr<int64_t>();
  const int64_t* bs = base_slots.data_ptr<int64_t>();
  const int64_t* eo = extra_offsets.data_ptr<int64_t>();
  const int64_t* es = extra_slots.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, T * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<int64_t> slots;
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / H, h = th % H, kvh = h / group, s = seq[t];
      slots.assign(bs + bo[s], bs + bo[s + 1]);
      slots.insert(slots.end(), es + eo[t], es + eo[t + 1]);
      const int64_t n = static_cast<int64_t>(slots.size());
      scores.resize(n);
      const float* qrow = qp + (t * H + h) * D;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = dot(qrow, kp + (slots[j] * KVH + kvh) * D, D) * fscale;
        m = std::max(m, scores[j]);
      }
      float total = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = std::exp(scores[j] - m);
        total += scores[j];
      }
      float* orow = op + (t * H + h) * D;
      for (int64_t d = 0; d < D; ++d) orow[d] = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        const float p = scores[j] / total;
        const float* vrow = vp + (slots[j] * KVH + kvh) * D;
        for (int64_t d = 0; d < D; ++d) orow[d] += p * vrow[d];
      }
    }
  });
  return out.view({T, H * D});
}

}  // namespace

void register_attention(pybind11::module& m) {
  m.def("paged_attention", &paged_attention, "batch-invariant attention over explicit key slot lists",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
