// softmax(scale · q kᵀ) v for bf16 CPU inference on CPUs with AVX512-BF16, in one pass over the keys.
//
//   attention_bf16(q, k, v [B, H, N, hd] bf16, scale) -> out [B, H, N, hd] bf16
//
// The algorithm is in flash_attention.h. Here: both products with vdpbf16ps (pairs of bf16 products
// summed into fp32), exp(x) as 2^x with the minimax cubic of bf16_softmax.cpp (relative error 7.5e-5,
// below bf16 rounding), the probabilities rounded to bf16 (as PyTorch's bf16 attention does), the row
// sums and the output accumulated in fp32.
#include <torch/library.h>

#define VOXELFM_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

#include "flash_attention.h"

namespace {

struct Bf16Ops {
  using T = uint16_t;
  static constexpr at::ScalarType dtype = at::kBFloat16;

  VOXELFM_TARGET static inline __m512 fma(__m512 acc, __m512i pair, __m512i pairs) {
    return _mm512_dpbf16_ps(acc, (__m512bh)pair, (__m512bh)pairs);
  }

  // 2^x for x <= 0: x = k + f, k integer, |f| <= 1/2; 2^f by a minimax cubic; clamped at -125.
  VOXELFM_TARGET static inline __m512 exp2(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.0f));
    const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, k);
    const __m512 c0 = _mm512_set1_ps(0.9999281764030457f), c1 = _mm512_set1_ps(0.6932609677314758f),
                 c2 = _mm512_set1_ps(0.24260951578617096f), c3 = _mm512_set1_ps(0.05517100915312767f);
    return _mm512_scalef_ps(_mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_fmadd_ps(c3, f, c2), f, c1), f, c0), k);
  }

  VOXELFM_TARGET static inline void store_p(T* dst, __m512 e, __mmask16 mask) {
    _mm256_mask_storeu_epi16(dst, mask, (__m256i)_mm512_cvtneps_pbh(e));  // round to nearest even
  }

  static inline T from_float(float x) {  // round to nearest even (finite x)
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    return static_cast<T>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
};

at::Tensor attention_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return voxelfm_cpu::flash_attention<Bf16Ops>(q, k, v, scale, "attention_bf16", __builtin_cpu_supports("avx512bf16"),
                                               "AVX512-BF16");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(voxelfm_kernels, m) {
  m.def("attention_bf16(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
  m.impl("attention_bf16", c10::DispatchKey::CPU, TORCH_FN(attention_bf16));
}
