// Unnormalised row softmax of bf16 attention scores, in place, for CPUs with AVX512-BF16.
//
//   exp_rows_(scores [R, N] bf16, unit inner stride) -> row_sums [R] fp32
//   scores[r, j] <- bf16(exp(scores[r, j] - max_j scores[r, j])),  row_sums[r] = sum_j of the fp32 values
//
// PyTorch's CPU softmax evaluates exp to fp32 accuracy (Sleef, ~3.7 G elements/s on 2 cores) and
// normalises in a third pass; the result is rounded to bf16 (relative error 2^-9) anyway. Here exp
// is 2^x with a degree-3 polynomial on [-1/2, 1/2] (relative error 7.5e-5, far below bf16's
// rounding) and the normalisation is left to the caller, who divides the [R, head_dim] output of
// P v instead of the [R, N] matrix P. Two passes over each row: the maximum, then exp and sum.
// Rows run in parallel on ATen's intra-op thread pool.
#include <torch/library.h>

#include "row_softmax.h"

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#define VOXELFM_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace {

// 16 bf16 values (masked) -> 16 fp32 lanes: bf16 is the upper half of an fp32.
VOXELFM_AVX512BF16 inline __m512 load_bf16(const uint16_t* p, __mmask16 mask) {
  const __m256i half = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

VOXELFM_AVX512BF16 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

VOXELFM_AVX512BF16 float exp_row(uint16_t* row, int64_t n) {
  __m512 max0 = _mm512_set1_ps(-INFINITY), max1 = max0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    max0 = _mm512_max_ps(max0, load_bf16(row + j, 0xFFFF));
    max1 = _mm512_max_ps(max1, load_bf16(row + j + 16, 0xFFFF));
  }
  for (; j < n; j += 16) {
    const __mmask16 mask = tail_mask(n - j);
    max0 = _mm512_mask_max_ps(max0, mask, max0, load_bf16(row + j, mask));
  }
  const float row_max = _mm512_reduce_max_ps(_mm512_max_ps(max0, max1));

  // exp(s - max) = 2^x with x = s·log2(e) - max·log2(e) (one FMA); x = k + f, k integer, |f| <= 1/2;
  // 2^f by a minimax cubic (fitted to relative error on [-1/2, 1/2]); 2^k by scalef. x is clamped
  // at -125 so that no result is subnormal (exp(-86.6) ≈ 2.4e-38 instead of 0: invisible in a sum).
  const __m512 log2e = _mm512_set1_ps(1.4426950408889634f);
  const __m512 shift = _mm512_set1_ps(-row_max * 1.4426950408889634f);
  const __m512 lowest = _mm512_set1_ps(-125.0f);
  const __m512 c0 = _mm512_set1_ps(0.9999281764030457f), c1 = _mm512_set1_ps(0.6932609677314758f),
               c2 = _mm512_set1_ps(0.24260951578617096f), c3 = _mm512_set1_ps(0.05517100915312767f);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
  auto step = [&](int64_t at, __mmask16 mask, __m512& sum) VOXELFM_AVX512BF16 {
    const __m512 x = _mm512_max_ps(_mm512_fmadd_ps(load_bf16(row + at, mask), log2e, shift), lowest);
    const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, k);
    const __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_fmadd_ps(c3, f, c2), f, c1), f, c0);
    const __m512 e = _mm512_scalef_ps(p, k);
    sum = _mm512_mask_add_ps(sum, mask, sum, e);
    _mm256_mask_storeu_epi16(row + at, mask, (__m256i)_mm512_cvtneps_pbh(e));  // round to nearest even
  };
  for (j = 0; j + 32 <= n; j += 32) {
    step(j, 0xFFFF, sum0);
    step(j + 16, 0xFFFF, sum1);
  }
  for (; j < n; j += 16) step(j, tail_mask(n - j), sum0);
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

at::Tensor exp_rows_(at::Tensor scores) {
  return voxelfm_cpu::map_rows<uint16_t>(scores, at::kBFloat16, "exp_rows_", __builtin_cpu_supports("avx512bf16"),
                                        "AVX512-BF16", exp_row);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(voxelfm_kernels, m) {
  m.def("exp_rows_(Tensor(a!) scores) -> Tensor");
  m.impl("exp_rows_", c10::DispatchKey::CPU, TORCH_FN(exp_rows_));
}
