// Batch-invariant paged attention for CPU.
//
// Each query row attends to an explicit list of cache slots, in order: its sequence's cached
// positions (shared by the sequence's tokens), then the positions its mask lets it see among the
// step's own tokens. Every (token, head) is computed by the same loop in the same order, so a
// token's output does not depend on how many other tokens, sequences or padding share the step.
// That is what makes speculative verification give exactly the logits plain decoding gives.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int LANES = 16;

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// Dot products keep 16 partial sums (lane l takes elements l, l + 16, ...), folded in a fixed tree
// (lanes l += l + 8, then l += l + 4, l + 2, l + 1), then the tail in order. dots_avx512 and the
// portable dot below run the same additions in the same order, so both builds give the same bits.
inline float fold(__m512 acc) {
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
#else
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[LANES] = {0};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] = std::fma(a[i + l], b[i + l], acc[l]);
  for (int width = LANES / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  float s = acc[0];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define ADASERVE_ATTN_AVX2 1
// The 16 lanes as two halves (lo: 0-7, hi: 8-15); the first fold step, l += l + 8, is lo + hi,
// then the same tree as the AVX-512 fold.
inline float fold(__m256 lo, __m256 hi) {
  __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
#endif

constexpr int64_t MAX_HEADS = 8;

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// The portable dot(q + g * D, k, D) for NH heads at once, with its additions (the same bits), the
// key chunk loaded once for all of them.
template <int NH>
void dots_avx512(const float* q, const float* k, int64_t D, float scale, float* out, int64_t out_stride) {
  __m512 acc[NH];
  for (int g = 0; g < NH; ++g) acc[g] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + LANES <= D; i += LANES) {
    const __m512 ki = _mm512_loadu_ps(k + i);
    for (int g = 0; g < NH; ++g) acc[g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + i), ki, acc[g]);
  }
  for (int g = 0; g < NH; ++g) {
    float s = fold(acc[g]);
    for (int64_t r = i; r < D; ++r) s += q[g * D + r] * k[r];
    out[g * out_stride] = s * scale;
  }
}
#endif

#ifdef ADASERVE_ATTN_AVX2
// dots_avx512 on two 8-lane halves: the same lanes, fused multiply-adds and fold, so the same bits.
template <int NH>
void dots_avx2(const float* q, const float* k, int64_t D, float scale, float* out, int64_t out_stride) {
  __m256 lo[NH], hi[NH];
  for (int g = 0; g < NH; ++g) lo[g] = hi[g] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + LANES <= D; i += LANES) {
    const __m256 k0 = _mm256_loadu_ps(k + i), k1 = _mm256_loadu_ps(k + i + 8);
    for (int g = 0; g < NH; ++g) {
      lo[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + i), k0, lo[g]);
      hi[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + i + 8), k1, hi[g]);
    }
  }
  for (int g = 0; g < NH; ++g) {
    float s = fold(lo[g], hi[g]);
    for (int64_t r = i; r < D; ++r) s += q[g * D + r] * k[r];
    out[g * out_stride] = s * scale;
  }
}
#endif

// out[g * out_stride] = dot(q + g * D, k, D) * scale for num_heads consecutive query heads.
inline void dots(const float* q, int64_t num_heads, const float* k, int64_t D, float scale, float* out,
                 int64_t out_stride) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  using Kernel = void (*)(const float*, const float*, int64_t, float, float*, int64_t);
  static constexpr Kernel kernels[MAX_HEADS] = {dots_avx512<1>, dots_avx512<2>, dots_avx512<3>, dots_avx512<4>,
                                                dots_avx512<5>, dots_avx512<6>, dots_avx512<7>, dots_avx512<8>};
  kernels[num_heads - 1](q, k, D, scale, out, out_stride);
#elif defined(ADASERVE_ATTN_AVX2)
  using Kernel = void (*)(const float*, const float*, int64_t, float, float*, int64_t);
  static constexpr Kernel kernels[MAX_HEADS] = {dots_avx2<1>, dots_avx2<2>, dots_avx2<3>, dots_avx2<4>,
                                                dots_avx2<5>, dots_avx2<6>, dots_avx2<7>, dots_avx2<8>};
  kernels[num_heads - 1](q, k, D, scale, out, out_stride);
#else
  for (int64_t g = 0; g < num_heads; ++g) out[g * out_stride] = dot(q + g * D, k, D) * scale;
#endif
}

// out[g] = sum over j in order of probs[g][j] * v[slots[j]], for num_heads heads that share one key
// list. Each output lane accumulates its own fused multiply-adds in key order whatever the tiling;
// the AVX-512 path keeps a 16-lane chunk of every head in registers across the whole key list.
#if defined(__AVX512F__)
template <int NH>  // heads as a constant, so the accumulators live in registers
void weighted_sum_avx512(const float* probs, int64_t probs_stride, const int64_t* slots, int64_t n, const float* v,
                         int64_t v_stride, int64_t D, float* out) {
  for (int64_t c = 0; c + LANES <= D; c += LANES) {
    __m512 acc[NH];
    for (int g = 0; g < NH; ++g) acc[g] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m512 vj = _mm512_loadu_ps(v + slots[j] * v_stride + c);
      for (int g = 0; g < NH; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(probs[g * probs_stride + j]), vj, acc[g]);
    }
    for (int g = 0; g < NH; ++g) _mm512_storeu_ps(out + g * D + c, acc[g]);
  }
}
#endif

#ifdef ADASERVE_ATTN_AVX2
constexpr int64_t AVX2_LANES = 8;
template <int NH>  // as weighted_sum_avx512, in 8-lane chunks
void weighted_sum_avx2(const float* probs, int64_t probs_stride, const int64_t* slots, int64_t n, const float* v,
                       int64_t v_stride, int64_t D, float* out) {
  for (int64_t c = 0; c + AVX2_LANES <= D; c += AVX2_LANES) {
    __m256 acc[NH];
    for (int g = 0; g < NH; ++g) acc[g] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 vj = _mm256_loadu_ps(v + slots[j] * v_stride + c);
      for (int g = 0; g < NH; ++g) acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(probs[g * probs_stride + j]), vj, acc[g]);
    }
    for (int g = 0; g < NH; ++g) _mm256_storeu_ps(out + g * D + c, acc[g]);
  }
}
#endif

inline void weighted_sum(const float* probs, int64_t probs_stride, int64_t num_heads, const int64_t* slots, int64_t n,
                         const float* v, int64_t v_stride, int64_t D, float* out) {
  int64_t c = 0;
#if defined(__AVX512F__)
  using Kernel = void (*)(const float*, int64_t, const int64_t*, int64_t, const float*, int64_t, int64_t, float*);
  static constexpr Kernel kernels[MAX_HEADS] = {
      weighted_sum_avx512<1>, weighted_sum_avx512<2>, weighted_sum_avx512<3>, weighted_sum_avx512<4>,
      weighted_sum_avx512<5>, weighted_sum_avx512<6>, weighted_sum_avx512<7>, weighted_sum_avx512<8>};
  kernels[num_heads - 1](probs, probs_stride, slots, n, v, v_stride, D, out);
  c = D / LANES * LANES;
#elif defined(ADASERVE_ATTN_AVX2)
  using Kernel = void (*)(const float*, int64_t, const int64_t*, int64_t, const float*, int64_t, int64_t, float*);
  static constexpr Kernel kernels[MAX_HEADS] = {weighted_sum_avx2<1>, weighted_sum_avx2<2>, weighted_sum_avx2<3>,
                                                weighted_sum_avx2<4>, weighted_sum_avx2<5>, weighted_sum_avx2<6>,
                                                weighted_sum_avx2<7>, weighted_sum_avx2<8>};
  kernels[num_heads - 1](probs, probs_stride, slots, n, v, v_stride, D, out);
  c = D / AVX2_LANES * AVX2_LANES;
#endif
  for (; c < D; ++c)
    for (int64_t g = 0; g < num_heads; ++g) {
      float acc = 0.f;
      for (int64_t j = 0; j < n; ++j) acc = std::fma(probs[g * probs_stride + j], v[slots[j] * v_stride + c], acc);
      out[g * D + c] = acc;
    }
}

// One work item: up to TILE consecutive tokens of one sequence x the `group` query heads that share
// one KV head. The tile walks each token's key list in order, so a key row shared by several of
// its queries (the sequence's cached prefix, a causal chunk) is loaded once for all of them.
// Every query row still runs exactly the untiled loop: the same dot products, max, sum and
// accumulation in the same key order, so its bits do not depend on its tile mates.
constexpr int64_t TILE = 16;

struct Tile {
  int64_t first, count, kvh;  // tokens [first, first + count), all of one sequence
};

// Worked example, T = 20 tokens of sequences [0 x 18, 1 x 2], KVH = 2:
// tiles (0, 16), (16, 2), (18, 2), each once per KV head -> 6 work items.
std::vector<Tile> make_tiles(const int64_t* seq, int64_t T, int64_t KVH) {
  std::vector<Tile> tiles;
  for (int64_t t = 0; t < T;) {
    int64_t n = 1;
    while (t + n < T && n < TILE && seq[t + n] == seq[t]) ++n;
    for (int64_t kvh = 0; kvh < KVH; ++kvh) tiles.push_back({t, n, kvh});
    t += n;
  }
  return tiles;
}

// The step's tensors as raw pointers: q [T, H, D]; k, v [num_slots, KVH, D]; seq [T] (each token's
// sequence); base_offsets [S + 1] into base_slots (each sequence's cached positions);
// extra_offsets [T + 1] into extra_slots (each token's visible positions of this step).
struct Step {
  const float *q, *k, *v;
  const int64_t *seq, *base_offsets, *base_slots, *extra_offsets, *extra_slots;
  int64_t H, KVH, D, group;
  float scale;
  float* out;  // [T, H, D]

  int64_t num_base(int64_t t) const { return base_offsets[seq[t] + 1] - base_offsets[seq[t]]; }
  int64_t num_keys(int64_t t) const { return num_base(t) + extra_offsets[t + 1] - extra_offsets[t]; }
  // The slot of token t's j-th key (-1 past the end of its list).
  int64_t slot(int64_t t, int64_t j) const {
    const int64_t nb = num_base(t);
    if (j < nb) return base_slots[base_offsets[seq[t]] + j];
    j -= nb;
    return j < extra_offsets[t + 1] - extra_offsets[t] ? extra_slots[extra_offsets[t] + j] : -1;
  }
};

// scores [count * group, max_len], row r = (token first + r / group, head r % group of the KV
// head): q . k * scale, walking key index j outermost so the tile's tokens share each key row.
void tile_scores(const Step& st, const Tile& tile, int64_t max_len, float* scores) {
  const int64_t h0 = tile.kvh * st.group;
  for (int64_t j = 0; j < max_len; ++j)
    for (int64_t i = 0; i < tile.count; ++i) {
      const int64_t t = tile.first + i, slot = st.slot(t, j);
      if (slot < 0) continue;
      const float* krow = st.k + (slot * st.KVH + tile.kvh) * st.D;
      for (int64_t g0 = 0; g0 < st.group; g0 += MAX_HEADS)
        dots(st.q + (t * st.H + h0 + g0) * st.D, std::min(MAX_HEADS, st.group - g0), krow, st.D, st.scale,
             scores + (i * st.group + g0) * max_len + j, max_len);
    }
}

// Each row's first n scores -> probabilities, in key order.
void softmax_rows(const Step& st, const Tile& tile, int64_t max_len, float* scores) {
  for (int64_t r = 0; r < tile.count * st.group; ++r) {
    const int64_t n = st.num_keys(tile.first + r / st.group);
    float* row = scores + r * max_len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
    float total = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      row[j] = std::exp(row[j] - m);
      total += row[j];
    }
    for (int64_t j = 0; j < n; ++j) row[j] = row[j] / total;
  }
}

void attend_tile(const Step& st, const Tile& tile, std::vector<float>& scores, std::vector<int64_t>& slots) {
  int64_t max_len = 0;
  for (int64_t i = 0; i < tile.count; ++i) max_len = std::max(max_len, st.num_keys(tile.first + i));
  scores.assign(tile.count * st.group * max_len, 0.f);
  tile_scores(st, tile, max_len, scores.data());
  softmax_rows(st, tile, max_len, scores.data());
  const int64_t h0 = tile.kvh * st.group;
  for (int64_t i = 0; i < tile.count; ++i) {
    const int64_t t = tile.first + i, n = st.num_keys(t);
    slots.resize(n);
    for (int64_t j = 0; j < n; ++j) slots[j] = st.slot(t, j);
    for (int64_t g0 = 0; g0 < st.group; g0 += MAX_HEADS)
      weighted_sum(scores.data() + (i * st.group + g0) * max_len, max_len, std::min(MAX_HEADS, st.group - g0),
                   slots.data(), n, st.v + tile.kvh * st.D, st.KVH * st.D, st.D, st.out + (t * st.H + h0 + g0) * st.D);
  }
}

torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor token_seq,
                              torch::Tensor base_offsets, torch::Tensor base_slots, torch::Tensor extra_offsets,
                              torch::Tensor extra_slots, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32, "q must be fp32 [T, H, D]");
  TORCH_CHECK(k_cache.scalar_type() == torch::kFloat32 && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "caches must be contiguous fp32 [slots, KVH, D]");
  q = q.contiguous();
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), KVH = k_cache.size(1);
  TORCH_CHECK(H % KVH == 0 && k_cache.size(2) == D, "head shapes");
  auto out = torch::empty({T, H, D}, q.options());
  const Step st{q.data_ptr<float>(),          k_cache.data_ptr<float>(),       v_cache.data_ptr<float>(),
                token_seq.data_ptr<int64_t>(), base_offsets.data_ptr<int64_t>(), base_slots.data_ptr<int64_t>(),
                extra_offsets.data_ptr<int64_t>(), extra_slots.data_ptr<int64_t>(), H, KVH, D, H / KVH,
                static_cast<float>(scale), out.data_ptr<float>()};
  const std::vector<Tile> tiles = make_tiles(st.seq, T, KVH);
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<int64_t> slots;
    for (int64_t w = begin; w < end; ++w) attend_tile(st, tiles[w], scores, slots);
  });
  return out.view({T, H * D});
}

}  // namespace

void register_attention(pybind11::module& m) {
  m.def("paged_attention", &paged_attention, "batch-invariant attention over explicit key slot lists",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
