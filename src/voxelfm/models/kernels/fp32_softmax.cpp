// Unnormalised row softmax of fp32 attention scores, in place, for CPUs with AVX-512.
//
//   exp_rows_f32_(scores [R, N] fp32, unit inner stride) -> row_sums [R] fp32
//   scores[r, j] <- exp(scores[r, j] - max_j scores[r, j]),  row_sums[r] = sum_j of them
//
// The fp32 counterpart of bf16_softmax.cpp, accurate to fp32: (s - max) · log2(e) = k + f with k an
// integer and |f| <= 1/2, 2^f by a degree-6 minimax polynomial (1e-7 relative in fp32 Horner), 2^k by
// scalef. Relative error about 3e-7 for the terms that matter (s - max > -5) and at most 5e-6 down to
// where exp underflows; PyTorch's softmax (Sleef) is closer to 1 ulp but 3-4x slower here. The
// caller divides the [R, head_dim] output of P v by the sums instead of normalising P.
#include <torch/library.h>

#include "row_softmax.h"

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#define VOXELFM_AVX512F __attribute__((target("avx512f")))

namespace {

VOXELFM_AVX512F inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

VOXELFM_AVX512F float exp_row(float* row, int64_t n) {
  __m512 max0 = _mm512_set1_ps(-INFINITY), max1 = max0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    max0 = _mm512_max_ps(max0, _mm512_loadu_ps(row + j));
    max1 = _mm512_max_ps(max1, _mm512_loadu_ps(row + j + 16));
  }
  for (; j < n; j += 16) {
    const __mmask16 mask = tail_mask(n - j);
    max0 = _mm512_mask_max_ps(max0, mask, max0, _mm512_maskz_loadu_ps(mask, row + j));
  }
  const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(max0, max1)));
  const __m512 log2e = _mm512_set1_ps(1.4426950408889634f), lowest = _mm512_set1_ps(-126.0f);
  const __m512 c0 = _mm512_set1_ps(1.0f), c1 = _mm512_set1_ps(0.6931471824645996f),
               c2 = _mm512_set1_ps(0.24022646248340607f), c3 = _mm512_set1_ps(0.05550328642129898f),
               c4 = _mm512_set1_ps(0.009618489071726799f), c5 = _mm512_set1_ps(0.0013399921590462327f),
               c6 = _mm512_set1_ps(0.00015345786232501268f);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
  auto step = [&](int64_t at, __mmask16 mask, __m512& sum) VOXELFM_AVX512F {
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + at), row_max);  // exact near the max
    const __m512 x = _mm512_max_ps(_mm512_mul_ps(d, log2e), lowest);
    const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, k);
    __m512 p = _mm512_fmadd_ps(c6, f, c5);
    p = _mm512_fmadd_ps(p, f, c4);
    p = _mm512_fmadd_ps(p, f, c3);
    p = _mm512_fmadd_ps(p, f, c2);
    p = _mm512_fmadd_ps(p, f, c1);
    p = _mm512_fmadd_ps(p, f, c0);
    const __m512 e = _mm512_scalef_ps(p, k);
    sum = _mm512_mask_add_ps(sum, mask, sum, e);
    _mm512_mask_storeu_ps(row + at, mask, e);
  };
  for (j = 0; j + 32 <= n; j += 32) {
    step(j, 0xFFFF, sum0);
    step(j + 16, 0xFFFF, sum1);
  }
  for (; j < n; j += 16) step(j, tail_mask(n - j), sum0);
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

at::Tensor exp_rows_f32_(at::Tensor scores) {
  return voxelfm_cpu::map_rows<float>(scores, at::kFloat, "exp_rows_f32_", __builtin_cpu_supports("avx512f"), "AVX-512",
                                     exp_row);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(voxelfm_kernels, m) {
  m.def("exp_rows_f32_(Tensor(a!) scores) -> Tensor");
  m.impl("exp_rows_f32_", c10::DispatchKey::CPU, TORCH_FN(exp_rows_f32_));
}
