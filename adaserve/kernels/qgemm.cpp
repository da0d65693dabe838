// Quantized linear layers for CPU: int4 or int8 weights with a scale and an offset per group of 32
// input features, activations quantized to int8 per group of 32 on the fly (as llama.cpp's Q8 dot
// products do), integer dot products (AVX-512 VNNI, AVX2, or scalar), fp32 output.
//
// Every output row is computed by the same instructions in the same order whatever the number of
// rows in the call, so a token's logits do not depend on what else is in the batch: speculative
// verification of a 40-token tree gives the same target output as 40 one-token decodes.
//
// Layouts (adaserve/kernels/layout.py packs them), COLS = 16 output features per block, GROUP = 32:
//   weight  uint8 [N / 16, K / 32, BYTES]: for quad j (inputs 4j..4j+3 of the group), byte
//           (col * 4 + kk) of a 64-byte chunk holds input 4j + kk of column col.
//           int4 (BYTES = 256): chunk c holds quad 2c in the low nibbles, quad 2c + 1 in the high ones.
//           int8 (BYTES = 512): chunk j holds quad j as u = w + 128.
//   scales  fp16 [N / 16, K / 32, 2, 16]: d then z per column, so that w = d * u + z.
// Per group:  sum_k w_k x_k ~= s * (d * sum_k u_k q_k + z * sum_k q_k),  x_k ~= s * q_k.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t COLS = 16, GROUP = 32, MAX_ROWS = 8, PAIR_ROWS = 4;

// x [M, K] fp32 -> q int8 [M, K], scale [M, K/32], qsum = sum(q) and scaled_sum = scale * qsum [M, K/32].
void quantize_rows(const float* x, int64_t num_groups, int8_t* q, float* scale, int32_t* qsum, float* scaled_sum) {
  at::parallel_for(0, num_groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xs = x + i * GROUP;
      float amax = 0.f;
      for (int j = 0; j < GROUP; ++j) amax = std::max(amax, std::fabs(xs[j]));
      const float s = amax / 127.f;
      const float inv = s > 0.f ? 1.f / s : 0.f;
      int sum = 0;
      for (int j = 0; j < GROUP; ++j) {
        const int v = static_cast<int>(std::nearbyint(xs[j] * inv));
        q[i * GROUP + j] = static_cast<int8_t>(v);
        sum += v;
      }
      scale[i] = s;
      qsum[i] = sum;
      scaled_sum[i] = s * static_cast<float>(sum);
    }
  });
}

struct Acts {
  const int8_t* q;
  const float* scale;
  const float* scaled_sum;
  const int32_t* qsum;  // sum of q per group
  int64_t K, G;
};

// One block of 16 columns for `rows` rows; plain C++ with the same arithmetic as the SIMD paths.
template <bool INT4>
void block_scalar(const uint8_t* w, const at::Half* sc, const Acts& a, int64_t rows, float* out, int64_t ldo) {
  const int64_t bytes = INT4 ? 256 : 512;
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t col = 0; col < COLS; ++col) {
      float acc = 0.f;
      for (int64_t g = 0; g < a.G; ++g) {
        const uint8_t* wg = w + g * bytes;
        const int8_t* xq = a.q + m * a.K + g * GROUP;
        int32_t dot = 0;
        for (int j = 0; j < 8; ++j) {
          for (int kk = 0; kk < 4; ++kk) {
            int u;
            if (INT4) {
              const uint8_t byte = wg[(j / 2) * 64 + col * 4 + kk];
              u = (j % 2) ? (byte >> 4) : (byte & 15);
            } else {
              u = wg[j * 64 + col * 4 + kk];
            }
            dot += u * xq[4 * j + kk];
          }
        }
        const float d = static_cast<float>(sc[g * 32 + col]), z = static_cast<float>(sc[g * 32 + 16 + col]);
        acc = std::fmaf(static_cast<float>(dot), d * a.scale[m * a.G + g], acc);
        acc = std::fmaf(z, a.scaled_sum[m * a.G + g], acc);
      }
      out[m * ldo + col] = acc;
    }
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
constexpr const char* KERNEL_ISA = "avx512_vnni";
constexpr int64_t SIMD_ROWS_INT4 = MAX_ROWS, SIMD_ROWS_INT8 = MAX_ROWS;

// NB column blocks (16 columns each, `wstride` / `sstride` apart) at once, so that each broadcast
// activation quad feeds NB dot products; for each quad j: unpack it for every block, then every row.
template <int ROWS, int NB, bool INT4>
void blocks_avx512(const uint8_t* w, int64_t wstride, const at::Half* sc, int64_t sstride, const Acts& a, float* out,
                   int64_t ldo) {
  __m512 acc[NB][ROWS];
  for (int b = 0; b < NB; ++b)
    for (int m = 0; m < ROWS; ++m) acc[b][m] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t g = 0; g < a.G; ++g) {
    __m512i dot[NB][ROWS];
    for (int b = 0; b < NB; ++b)
      for (int m = 0; m < ROWS; ++m) dot[b][m] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      __m512i wq[NB];
      for (int b = 0; b < NB; ++b) {
        if constexpr (INT4) {  // chunk j / 2: quad j in the low nibbles when j is even, else the high ones
          const __m512i packed = _mm512_loadu_si512(w + b * wstride + g * 256 + 64 * (j / 2));
          wq[b] = _mm512_and_si512(j % 2 ? _mm512_srli_epi16(packed, 4) : packed, low);
        } else {
          wq[b] = _mm512_loadu_si512(w + b * wstride + g * 512 + 64 * j);
        }
      }
      for (int m = 0; m < ROWS; ++m) {
        int32_t quad;
        std::memcpy(&quad, a.q + m * a.K + g * GROUP + 4 * j, 4);
        const __m512i x = _mm512_set1_epi32(quad);
        for (int b = 0; b < NB; ++b) dot[b][m] = _mm512_dpbusd_epi32(dot[b][m], wq[b], x);
      }
    }
    for (int b = 0; b < NB; ++b) {
      const at::Half* sg = sc + b * sstride + g * 32;
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg)));
      const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sg + 16)));
      for (int m = 0; m < ROWS; ++m) {
        const __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(a.scale[m * a.G + g]));
        acc[b][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[b][m]), ds, acc[b][m]);
        acc[b][m] = _mm512_fmadd_ps(z, _mm512_set1_ps(a.scaled_sum[m * a.G + g]), acc[b][m]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int m = 0; m < ROWS; ++m) _mm512_storeu_ps(out + m * ldo + b * COLS, acc[b][m]);
}

template <int ROWS, bool INT4>
void block_simd(const uint8_t* w, const at::Half* sc, const Acts& a, float* out, int64_t ldo) {
  blocks_avx512<ROWS, 1, INT4>(w, 0, sc, 0, a, out, ldo);
}

constexpr bool PAIRED = true;  // two column blocks per call, up to PAIR_ROWS rows (registers: 4 x 2 x 2)

template <bool INT4>
void pair_rows(const uint8_t* w, int64_t wstride, const at::Half* sc, int64_t sstride, const Acts& a, int64_t rows,
               float* out, int64_t ldo) {
  switch (rows) {
    case 1: return blocks_avx512<1, 2, INT4>(w, wstride, sc, sstride, a, out, ldo);
    case 2: return blocks_avx512<2, 2, INT4>(w, wstride, sc, sstride, a, out, ldo);
    case 3: return blocks_avx512<3, 2, INT4>(w, wstride, sc, sstride, a, out, ldo);
    default: return blocks_avx512<4, 2, INT4>(w, wstride, sc, sstride, a, out, ldo);
  }
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr const char* KERNEL_ISA = "avx2";
constexpr bool PAIRED = false;
// Rows per call, measured on a Zen 3 (AVX2): int4 6 (its int16 sums spill a little, but each weight
// load serves more rows), int8 4 (4 x 2 x 2 accumulators, most of the 16 ymm registers).
constexpr int64_t SIMD_ROWS_INT4 = 6, SIMD_ROWS_INT8 = 4;

// acc[m][h] += d_h * scale[m] * dot_u[m][h] + z_h * scaled_sum[m] for group g (dot_u = sum u * q),
// the plain path's two fused multiply-adds per column.
template <int ROWS>
inline void add_group(const at::Half* sc, const Acts& a, int64_t g, __m256i (&dot_u)[ROWS][2], __m256 (&acc)[ROWS][2]) {
  for (int h = 0; h < 2; ++h) {
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + g * 32 + 8 * h)));
    const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + g * 32 + 16 + 8 * h)));
    for (int m = 0; m < ROWS; ++m) {
      const __m256 ds = _mm256_mul_ps(d, _mm256_set1_ps(a.scale[m * a.G + g]));
      acc[m][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u[m][h]), ds, acc[m][h]);
      acc[m][h] = _mm256_fmadd_ps(z, _mm256_set1_ps(a.scaled_sum[m * a.G + g]), acc[m][h]);
    }
  }
}

template <int ROWS>
inline void store_rows(__m256 (&acc)[ROWS][2], float* out, int64_t ldo) {
  for (int m = 0; m < ROWS; ++m) {
    _mm256_storeu_ps(out + m * ldo, acc[m][0]);
    _mm256_storeu_ps(out + m * ldo + 8, acc[m][1]);
  }
}

// Both halves of a block (8 columns each) per broadcast activation quad, for ROWS rows at a time.
// int4: u < 16, so maddubs cannot saturate and its int16 pair sums add up over a whole group
// (8 quads x 2 x 15 x 127 = 30480 < 32767): one madd to int32 per group, not per quad.
template <int ROWS>
void block_avx2_int4(const uint8_t* w, const at::Half* sc, const Acts& a, float* out, int64_t ldo) {
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[ROWS][2];
  for (int m = 0; m < ROWS; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    const uint8_t* wg = w + g * 256;
    __m256i dot[ROWS][2];
    for (int m = 0; m < ROWS; ++m) dot[m][0] = dot[m][1] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {  // chunk c: quad 2c in the low nibbles, 2c + 1 in the high ones
      const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + 64 * c));
      const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + 64 * c + 32));
      for (int hi = 0; hi < 2; ++hi) {
        const __m256i w0 = _mm256_and_si256(hi ? _mm256_srli_epi16(p0, 4) : p0, low);
        const __m256i w1 = _mm256_and_si256(hi ? _mm256_srli_epi16(p1, 4) : p1, low);
        for (int m = 0; m < ROWS; ++m) {
          int32_t quad;
          std::memcpy(&quad, a.q + m * a.K + g * GROUP + 4 * (2 * c + hi), 4);
          const __m256i x = _mm256_set1_epi32(quad);
          dot[m][0] = _mm256_add_epi16(dot[m][0], _mm256_maddubs_epi16(w0, x));
          dot[m][1] = _mm256_add_epi16(dot[m][1], _mm256_maddubs_epi16(w1, x));
        }
      }
    }
    for (int m = 0; m < ROWS; ++m)
      for (int h = 0; h < 2; ++h) dot[m][h] = _mm256_madd_epi16(dot[m][h], ones);  // int16 pairs -> int32
    add_group<ROWS>(sc, a, g, dot, acc);
  }
  store_rows<ROWS>(acc, out, ldo);
}

// int8: u = w + 128 would saturate maddubs, so the signed w = u - 128 goes through the sign trick,
// |w| * sign(q, w): |w| <= 128 fits an unsigned byte (w = -128 is u = 0, common in int4 weights
// promoted to int8), |q| <= 127 flips safely, and pairs stay under 2^15 (2 x 128 x 127). Summed in
// int32; sum u * q = sum w * q + 128 * sum q, with sum q from quantize_rows.
template <int ROWS>
void block_avx2_int8(const uint8_t* w, const at::Half* sc, const Acts& a, float* out, int64_t ldo) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256 acc[ROWS][2];
  for (int m = 0; m < ROWS; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    const uint8_t* wg = w + g * 512;
    __m256i dot[ROWS][2];
    for (int m = 0; m < ROWS; ++m) dot[m][0] = dot[m][1] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + 64 * j)), bias);
      const __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + 64 * j + 32)), bias);
      const __m256i abs0 = _mm256_abs_epi8(w0), abs1 = _mm256_abs_epi8(w1);  // -128 -> 0x80, read unsigned
      for (int m = 0; m < ROWS; ++m) {
        int32_t quad;
        std::memcpy(&quad, a.q + m * a.K + g * GROUP + 4 * j, 4);
        const __m256i x = _mm256_set1_epi32(quad);
        const __m256i p0 = _mm256_maddubs_epi16(abs0, _mm256_sign_epi8(x, w0));
        const __m256i p1 = _mm256_maddubs_epi16(abs1, _mm256_sign_epi8(x, w1));
        dot[m][0] = _mm256_add_epi32(dot[m][0], _mm256_madd_epi16(p0, ones));
        dot[m][1] = _mm256_add_epi32(dot[m][1], _mm256_madd_epi16(p1, ones));
      }
    }
    for (int m = 0; m < ROWS; ++m)
      for (int h = 0; h < 2; ++h) dot[m][h] = _mm256_add_epi32(dot[m][h], _mm256_set1_epi32(128 * a.qsum[m * a.G + g]));
    add_group<ROWS>(sc, a, g, dot, acc);
  }
  store_rows<ROWS>(acc, out, ldo);
}

template <int ROWS, bool INT4>
void block_simd(const uint8_t* w, const at::Half* sc, const Acts& a, float* out, int64_t ldo) {
  if constexpr (INT4) {
    block_avx2_int4<ROWS>(w, sc, a, out, ldo);
  } else {
    block_avx2_int8<ROWS>(w, sc, a, out, ldo);
  }
}

#else
constexpr const char* KERNEL_ISA = "scalar";
constexpr bool PAIRED = false;
constexpr int64_t SIMD_ROWS_INT4 = MAX_ROWS, SIMD_ROWS_INT8 = MAX_ROWS;

template <int ROWS, bool INT4>
void block_simd(const uint8_t* w, const at::Half* sc, const Acts& a, float* out, int64_t ldo) {
  block_scalar<INT4>(w, sc, a, ROWS, out, ldo);
}
#endif

#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__))
template <bool INT4>
void pair_rows(const uint8_t*, int64_t, const at::Half*, int64_t, const Acts&, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "no paired kernel on this ISA");
}
#endif

template <bool INT4>
void block_rows(const uint8_t* w, const at::Half* sc, const Acts& a, int64_t rows, float* out, int64_t ldo) {
  switch (rows) {
    case 1: return block_simd<1, INT4>(w, sc, a, out, ldo);
    case 2: return block_simd<2, INT4>(w, sc, a, out, ldo);
    case 3: return block_simd<3, INT4>(w, sc, a, out, ldo);
    case 4: return block_simd<4, INT4>(w, sc, a, out, ldo);
    case 5: return block_simd<5, INT4>(w, sc, a, out, ldo);
    case 6: return block_simd<6, INT4>(w, sc, a, out, ldo);
    case 7: return block_simd<7, INT4>(w, sc, a, out, ldo);
    default: return block_simd<8, INT4>(w, sc, a, out, ldo);
  }
}

torch::Tensor linear(torch::Tensor x, torch::Tensor weight, torch::Tensor scales, bool int4, bool scalar) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be fp32 [M, K]");
  TORCH_CHECK(weight.dim() == 3 && weight.scalar_type() == torch::kUInt8, "weight must be uint8 [N/16, K/32, B]");
  TORCH_CHECK(scales.scalar_type() == torch::kHalf, "scales must be fp16");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), G = K / GROUP, N = weight.size(0) * COLS;
  TORCH_CHECK(K % GROUP == 0 && weight.size(1) == G && weight.size(2) == (int4 ? 256 : 512), "weight shape");
  TORCH_CHECK(scales.numel() == weight.size(0) * G * 2 * COLS, "scales shape");
  auto q = torch::empty({M, K}, x.options().dtype(torch::kInt8));
  auto act_scale = torch::empty({M, G}, x.options());
  auto act_qsum = torch::empty({M, G}, x.options().dtype(torch::kInt32));
  auto act_sum = torch::empty({M, G}, x.options());
  quantize_rows(x.data_ptr<float>(), M * G, q.data_ptr<int8_t>(), act_scale.data_ptr<float>(),
                act_qsum.data_ptr<int32_t>(), act_sum.data_ptr<float>());
  auto out = torch::empty({M, N}, x.options());
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const at::Half* sc = scales.data_ptr<at::Half>();
  const int64_t wbytes = G * weight.size(2), sbytes = G * 2 * COLS;
  float* o = out.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = act_scale.data_ptr<float>();
  const float* ssp = act_sum.data_ptr<float>();
  const int32_t* qsp = act_qsum.data_ptr<int32_t>();
  // Work units of one column block, or two where the ISA has the paired kernel; rows in tiles.
  const int64_t num_blocks = weight.size(0), unit = (PAIRED && !scalar) ? 2 : 1;
  const int64_t tile = unit == 2 ? PAIR_ROWS : (scalar ? MAX_ROWS : int4 ? SIMD_ROWS_INT4 : SIMD_ROWS_INT8);
  at::parallel_for(0, (num_blocks + unit - 1) / unit, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t cb0 = u * unit, blocks = std::min(unit, num_blocks - cb0);
      for (int64_t m0 = 0; m0 < M; m0 += tile) {
        const int64_t rows = std::min(tile, M - m0);
        const Acts a{qp + m0 * K, sp + m0 * G, ssp + m0 * G, qsp + m0 * G, K, G};
        float* dst = o + m0 * N + cb0 * COLS;
        if (blocks == 2) {
          int4 ? pair_rows<true>(w + cb0 * wbytes, wbytes, sc + cb0 * sbytes, sbytes, a, rows, dst, N)
               : pair_rows<false>(w + cb0 * wbytes, wbytes, sc + cb0 * sbytes, sbytes, a, rows, dst, N);
        } else if (scalar) {
          int4 ? block_scalar<true>(w + cb0 * wbytes, sc + cb0 * sbytes, a, rows, dst, N)
               : block_scalar<false>(w + cb0 * wbytes, sc + cb0 * sbytes, a, rows, dst, N);
        } else {
          int4 ? block_rows<true>(w + cb0 * wbytes, sc + cb0 * sbytes, a, rows, dst, N)
               : block_rows<false>(w + cb0 * wbytes, sc + cb0 * sbytes, a, rows, dst, N);
        }
      }
    }
  });
  return out;
}

std::string isa() { return KERNEL_ISA; }

}  // namespace

void register_attention(pybind11::module& m);  // attention.cpp
void register_ops(pybind11::module& m);        // ops.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_attention(m);
  register_ops(m);
  // Without the GIL: the server's event loop (streaming, new requests) runs while a step computes.
  m.def("linear", &linear, "x [M, K] fp32 @ quantized weight^T -> [M, N] fp32",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("isa", &isa, "the instruction set this build uses");
}
