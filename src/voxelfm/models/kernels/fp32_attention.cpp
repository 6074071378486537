// softmax(scale · q kᵀ) v for fp32 CPU inference on CPUs with AVX-512, in one pass over the keys.
//
//   attention_f32(q, k, v [B, H, N, hd] fp32, scale) -> out [B, H, N, hd] fp32
//
// The algorithm is in flash_attention.h. Here: both products with fp32 FMAs, exp(x) as 2^x with the
// degree-6 minimax polynomial of fp32_softmax.cpp (about 3e-7 relative), fp32 throughout.
#include <torch/library.h>

#define VOXELFM_TARGET __attribute__((target("avx512f")))

#include "flash_attention.h"

namespace {

struct Fp32Ops {
  using T = float;
  static constexpr at::ScalarType dtype = at::kFloat;

  VOXELFM_TARGET static inline __m512 fma(__m512 acc, __m512i value, __m512i values) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(value), _mm512_castsi512_ps(values), acc);
  }

  // 2^x for x <= 0: x = k + f, k integer, |f| <= 1/2; 2^f by a degree-6 minimax polynomial; clamped at -126.
  VOXELFM_TARGET static inline __m512 exp2(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, k);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.00015345786232501268f), f, _mm512_set1_ps(0.0013399921590462327f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.009618489071726799f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550328642129898f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022646248340607f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471824645996f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
  }

  VOXELFM_TARGET static inline void store_p(T* dst, __m512 e, __mmask16 mask) { _mm512_mask_storeu_ps(dst, mask, e); }

  static inline T from_float(float x) { return x; }
};

at::Tensor attention_f32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return voxelfm_cpu::flash_attention<Fp32Ops>(q, k, v, scale, "attention_f32", __builtin_cpu_supports("avx512f"),
                                               "AVX-512");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(voxelfm_kernels, m) {
  m.def("attention_f32(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
  m.impl("attention_f32", c10::DispatchKey::CPU, TORCH_FN(attention_f32));
}
