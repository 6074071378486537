// 3D RoPE on q and k of bf16 or fp32 tokens straight from the qkv projection (CPUs with AVX512-BF16).
//
//   rope_qk(qkv [B, N, 3, H, hd] bf16 or fp32, cos2 [Np, hd] fp32, sin2 [Np, hd] fp32, num_special)
//     -> qk [B, N, 2, H, hd] of qkv's dtype
//
// Tokens t >= num_special (patch p = t - num_special) rotate every channel pair (x0, x1) of every
// head of q and k: out = x · cos2[p] + swap(x) · sin2[p], with cos2 = (c, c) and sin2 = (-s, s) per
// pair (voxelfm.models.layers.rope._pair_tables); the first num_special tokens (CLS, registers)
// are copied. One pass in fp32 (bf16: with one rounding to bf16), instead of PyTorch's four passes
// (multiply, flip, addcmul, copy; in bf16 with bf16-rounded tables).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define VOXELFM_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace {

VOXELFM_AVX512BF16 inline __m512 load16(const uint16_t* p, __mmask16 mask) {  // bf16 → fp32
  const __m256i half = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

VOXELFM_AVX512BF16 inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }

VOXELFM_AVX512BF16 inline void store16(uint16_t* p, __mmask16 mask, __m512 x) {  // round to nearest even
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(x));
}

VOXELFM_AVX512BF16 inline void store16(float* p, __mmask16 mask, __m512 x) { _mm512_mask_storeu_ps(p, mask, x); }

// rows × hd channels of one token (q heads then k heads, contiguous), all with the same tables
template <typename T>
VOXELFM_AVX512BF16 void rotate_rows(const T* src, T* dst, int64_t rows, int64_t hd, const float* cos2,
                                    const float* sin2) {
  for (int64_t j = 0; j < hd; j += 16) {
    const int64_t left = hd - j;
    const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 c = _mm512_maskz_loadu_ps(mask, cos2 + j), s = _mm512_maskz_loadu_ps(mask, sin2 + j);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 x = load16(src + r * hd + j, mask);
      const __m512 swapped = _mm512_permute_ps(x, 0xB1);  // (x1, x0) in every pair
      store16(dst + r * hd + j, mask, _mm512_fmadd_ps(swapped, s, _mm512_mul_ps(x, c)));
    }
  }
}

template <typename T>
void rotate_tokens(const T* src, T* dst, int64_t B, int64_t N, int64_t H, int64_t hd, int64_t num_special,
                   const float* c, const float* s) {
  const int64_t width = H * hd;  // one of q, k or v of one token
  at::parallel_for(0, B * N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i % N;
      const T* from = src + i * 3 * width;
      T* to = dst + i * 2 * width;
      if (t < num_special) {
        std::memcpy(to, from, 2 * width * sizeof(T));
      } else {
        const int64_t p = t - num_special;
        rotate_rows(from, to, 2 * H, hd, c + p * hd, s + p * hd);
      }
    }
  });
}

at::Tensor rope_qk(at::Tensor qkv, at::Tensor cos2, at::Tensor sin2, int64_t num_special) {
  TORCH_CHECK(__builtin_cpu_supports("avx512bf16"), "rope_qk needs a CPU with AVX512-BF16");
  TORCH_CHECK(qkv.device().is_cpu() && (qkv.scalar_type() == at::kBFloat16 || qkv.scalar_type() == at::kFloat) &&
                  qkv.dim() == 5 && qkv.size(2) == 3 && qkv.is_contiguous(),
              "rope_qk takes a contiguous bf16 or fp32 CPU qkv [B, N, 3, H, hd], got ", qkv.scalar_type(), " ",
              qkv.sizes());
  const int64_t B = qkv.size(0), N = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  TORCH_CHECK(hd % 2 == 0, "rope_qk: head_dim must be even, got ", hd);
  TORCH_CHECK(num_special >= 0 && num_special <= N, "rope_qk: num_special ", num_special, " out of [0, ", N, "]");
  const int64_t patches = N - num_special;
  for (const at::Tensor* t : {&cos2, &sin2}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 && t->size(0) == patches &&
                    t->size(1) == hd,
                "rope_qk: tables must be contiguous fp32 [", patches, ", ", hd, "], got ", t->scalar_type(), " ",
                t->sizes());
  }
  at::Tensor out = at::empty({B, N, 2, H, hd}, qkv.options());
  if (qkv.scalar_type() == at::kBFloat16)
    rotate_tokens(reinterpret_cast<const uint16_t*>(qkv.data_ptr()), reinterpret_cast<uint16_t*>(out.data_ptr()), B,
                  N, H, hd, num_special, cos2.data_ptr<float>(), sin2.data_ptr<float>());
  else
    rotate_tokens(qkv.data_ptr<float>(), out.data_ptr<float>(), B, N, H, hd, num_special, cos2.data_ptr<float>(),
                  sin2.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(voxelfm_kernels, m) {
  m.def("rope_qk(Tensor qkv, Tensor cos2, Tensor sin2, int num_special) -> Tensor");
  m.impl("rope_qk", c10::DispatchKey::CPU, TORCH_FN(rope_qk));
}
