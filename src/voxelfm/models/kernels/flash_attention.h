// Shared by bf16_attention.cpp and fp32_attention.cpp: softmax(scale · q kᵀ) v for CPU inference in
// one pass over the keys (flash-attention style), never holding more than a tile of scores.
//
// Per task (one head, a block of kQueryBlock query rows) the keys are walked in tiles of kKeyTile:
//   S = q_blk · k_tileᵀ                    (micro-kernel, fp32 accumulators, into an L2-resident buffer)
//   m' = max(m, rowmax S); O, l *= e^(m - m')   (online softmax, the running max m and sum l per row)
//   P = e^(scale (S - m')), l += rowsum P    (P in the input type: bf16-rounded or fp32)
//   O += P · v_tile                          (micro-kernel, fp32 accumulators)
// and at the end out = O / l. k and v are repacked once per head so that each micro-kernel step is one
// 64-byte vector load and one 4-byte broadcast: for bf16 a pair of values (vdpbf16ps multiplies pairs),
// for fp32 one value (vfmadd). The two kernels differ only in the Ops traits below.
//
// The includer defines VOXELFM_TARGET (the function attribute that enables its instructions) and an Ops
// struct with: T (uint16_t for bf16, float), dtype, fma(acc, broadcast, vector), exp2(x), store_p(dst, e,
// mask), to_float(value).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace voxelfm_cpu {

constexpr int kKeyBlock = 64;     // keys per score micro-tile (4 vectors of 16)
constexpr int kKeyTile = 256;     // keys per online-softmax step (multiple of kKeyBlock)
constexpr int kQueryBlock = 48;   // query rows per task
constexpr int kScoreRows = 6;     // rows per score micro-tile: 6 × 4 accumulators

template <class Ops>
struct FlashAttention {
  using T = typename Ops::T;
  static constexpr int kPair = 4 / static_cast<int>(sizeof(T));  // values per 4-byte broadcast

  // s[r, 0:64] = Σ_p q[r, p·kPair : (p+1)·kPair] · kp[p, 0:64, :] for r < R (kp: [steps, 64, kPair]).
  template <int R>
  VOXELFM_TARGET static void score_tile(const T* q, int64_t ldq, const T* kp, int steps, float* s, int64_t lds) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int p = 0; p < steps; ++p) {
      const T* kk = kp + static_cast<int64_t>(p) * kKeyBlock * kPair;
      const __m512i k0 = _mm512_loadu_si512(kk), k1 = _mm512_loadu_si512(kk + 16 * kPair),
                    k2 = _mm512_loadu_si512(kk + 32 * kPair), k3 = _mm512_loadu_si512(kk + 48 * kPair);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t bits;
        std::memcpy(&bits, q + r * ldq + p * kPair, 4);
        const __m512i b = _mm512_set1_epi32(bits);
        acc[r][0] = Ops::fma(acc[r][0], b, k0);
        acc[r][1] = Ops::fma(acc[r][1], b, k1);
        acc[r][2] = Ops::fma(acc[r][2], b, k2);
        acc[r][3] = Ops::fma(acc[r][3], b, k3);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * lds + c * 16, acc[r][c]);
  }

  // o[r, 0:16·NV] += Σ_j p[r, j·kPair : (j+1)·kPair] · vp[j, 0:16·NV, :] for r < R (vp: [pairs, 16·NV, kPair]).
  template <int R, int NV>
  VOXELFM_TARGET static void value_tile(const T* p, int64_t ldp, const T* vp, int pairs, float* o, int64_t ldo) {
    __m512 acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_loadu_ps(o + r * ldo + c * 16);
    for (int j = 0; j < pairs; ++j) {
      const T* vv = vp + static_cast<int64_t>(j) * 16 * NV * kPair;
      __m512i v[NV];
#pragma GCC unroll 8
      for (int c = 0; c < NV; ++c) v[c] = _mm512_loadu_si512(vv + c * 16 * kPair);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t bits;
        std::memcpy(&bits, p + r * ldp + j * kPair, 4);
        const __m512i b = _mm512_set1_epi32(bits);
#pragma GCC unroll 8
        for (int c = 0; c < NV; ++c) acc[r][c] = Ops::fma(acc[r][c], b, v[c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NV; ++c) _mm512_storeu_ps(o + r * ldo + c * 16, acc[r][c]);
  }

  static constexpr int value_rows(int nv) { return nv <= 4 ? 6 : (nv <= 6 ? 4 : 3); }

  template <int R>
  static void score_rows(int rows, const T* q, int64_t ldq, const T* kp, int steps, float* s, int64_t lds) {
    if constexpr (R > 0) {
      if (rows == R) return score_tile<R>(q, ldq, kp, steps, s, lds);
      score_rows<R - 1>(rows, q, ldq, kp, steps, s, lds);
    }
  }

  template <int R, int NV>
  static void value_rows_n(int rows, const T* p, int64_t ldp, const T* vp, int pairs, float* o, int64_t ldo) {
    if constexpr (R > 0) {
      if (rows == R) return value_tile<R, NV>(p, ldp, vp, pairs, o, ldo);
      value_rows_n<R - 1, NV>(rows, p, ldp, vp, pairs, o, ldo);
    }
  }

  // One row of a score tile: online-softmax update of (m, l, o) and p = exp(scale (s - m)) for the first
  // `valid` scores; p is zero from `valid` to `width`.
  VOXELFM_TARGET static void softmax_row(const float* s, int valid, int width, float scale_log2e, float& m, float& l,
                                         float* o, int ocols, T* p) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= valid; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    const __mmask16 tail = static_cast<__mmask16>((1u << (valid - j)) - 1u);
    if (tail) mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_maskz_loadu_ps(tail, s + j));
    const float tile_max = _mm512_reduce_max_ps(mx);
    if (tile_max > m) {
      const float alpha = std::exp2((m - tile_max) * scale_log2e);  // 0 on the first tile (m = -inf)
      const __m512 a = _mm512_set1_ps(alpha);
      for (int c = 0; c < ocols; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(a, _mm512_loadu_ps(o + c)));
      l *= alpha;
      m = tile_max;
    }
    const __m512 row_max = _mm512_set1_ps(m), factor = _mm512_set1_ps(scale_log2e);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
    j = 0;
    for (; j + 32 <= valid; j += 32) {
      const __m512 e0 = Ops::exp2(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), row_max), factor));
      const __m512 e1 = Ops::exp2(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j + 16), row_max), factor));
      sum0 = _mm512_add_ps(sum0, e0);
      sum1 = _mm512_add_ps(sum1, e1);
      Ops::store_p(p + j, e0, 0xFFFF);
      Ops::store_p(p + j + 16, e1, 0xFFFF);
    }
    for (; j < width; j += 16) {
      const int left = valid - j;
      const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>(left > 0 ? (1u << left) - 1u : 0u);
      const __m512 e = _mm512_maskz_mov_ps(
          mask, Ops::exp2(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + j), row_max), factor)));
      sum0 = _mm512_add_ps(sum0, e);
      Ops::store_p(p + j, e, 0xFFFF);  // zeros past `valid`
    }
    l += _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
  }

  // k [N, hd] (row stride ldk) → kp [ceil(N/64), hd/kPair, 64, kPair], zero past N: a transpose of 4-byte words.
  // Key blocks [first, last).
  static void pack_keys(const T* k, int64_t ldk, int64_t n, int hd, T* kp, int64_t first, int64_t last) {
    const int steps = hd / kPair;
    for (int64_t kb = first; kb < last; ++kb) {
      uint32_t* dst = reinterpret_cast<uint32_t*>(kp + kb * steps * kKeyBlock * kPair);
      for (int j = 0; j < kKeyBlock; ++j) {
        const int64_t key = kb * kKeyBlock + j;
        if (key < n) {
          const T* src = k + key * ldk;
          for (int p = 0; p < steps; ++p) std::memcpy(dst + p * kKeyBlock + j, src + p * kPair, 4);
        } else {
          for (int p = 0; p < steps; ++p) dst[p * kKeyBlock + j] = 0;
        }
      }
    }
  }

  // v [N, hd] (row stride ldv) → vp [n_pad/kPair, 16·NV, kPair] (kPair consecutive keys interleaved per
  // column), zero past N and hd.
  // Key groups [first, last) of kPair keys.
  static void pack_values(const T* v, int64_t ldv, int64_t n, int hd, int ocols, T* vp, int64_t first, int64_t last) {
    static const T zeros[128] = {};
    for (int64_t jp = first; jp < last; ++jp) {
      const T* src[kPair];
      for (int e = 0; e < kPair; ++e) src[e] = jp * kPair + e < n ? v + (jp * kPair + e) * ldv : zeros;
      T* dst = vp + jp * ocols * kPair;
      for (int c = 0; c < hd; ++c)
        for (int e = 0; e < kPair; ++e) dst[c * kPair + e] = src[e][c];
      std::memset(dst + hd * kPair, 0, sizeof(T) * (ocols - hd) * kPair);
    }
  }

  template <int NV>
  static void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, at::Tensor& out) {
    const int64_t B = q.size(0), H = q.size(1), N = q.size(2);
    const int hd = static_cast<int>(q.size(3)), steps = hd / kPair, ocols = 16 * NV;
    const int64_t blocks = (N + kKeyBlock - 1) / kKeyBlock, n_pad = blocks * kKeyBlock;
    const int64_t kp_head = blocks * steps * kKeyBlock * kPair, vp_head = n_pad * ocols;
    // one head's packed keys and values at a time, reused (no fresh pages per head)
    at::Tensor packed = at::empty({kp_head + vp_head}, q.options());
    T* kp = reinterpret_cast<T*>(packed.data_ptr());
    T* vp = kp + kp_head;
    const T* qd = reinterpret_cast<const T*>(q.data_ptr());
    const T* kd = reinterpret_cast<const T*>(k.data_ptr());
    const T* vd = reinterpret_cast<const T*>(v.data_ptr());
    T* od = reinterpret_cast<T*>(out.data_ptr());  // [B, N, H, hd] contiguous
    const int64_t qblocks = (N + kQueryBlock - 1) / kQueryBlock;
    const float scale_log2e = static_cast<float>(scale * 1.4426950408889634);
    constexpr int RV = value_rows(NV);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const T* kh = kd + b * k.stride(0) + h * k.stride(1);
        const T* vh = vd + b * v.stride(0) + h * v.stride(1);
        at::parallel_for(0, blocks, 8, [&](int64_t first, int64_t last) {
          pack_keys(kh, k.stride(2), N, hd, kp, first, last);
          pack_values(vh, v.stride(2), N, hd, ocols, vp, first * kKeyBlock / kPair, last * kKeyBlock / kPair);
        });
        const T* qh = qd + b * q.stride(0) + h * q.stride(1);
        at::parallel_for(0, qblocks, 1, [&](int64_t begin, int64_t end) {
          std::vector<float> s(kQueryBlock * kKeyTile), o(kQueryBlock * ocols), m(kQueryBlock), l(kQueryBlock);
          std::vector<T> p(kQueryBlock * kKeyTile);
          for (int64_t qblock = begin; qblock < end; ++qblock) {
            const int64_t row0 = qblock * kQueryBlock;
        const int rows = static_cast<int>(std::min<int64_t>(kQueryBlock, N - row0));
        const T* qb = qh + row0 * q.stride(2);
        const T* kph = kp;
        const T* vph = vp;
        std::fill(o.begin(), o.end(), 0.0f);
        std::fill(m.begin(), m.end(), -INFINITY);
        std::fill(l.begin(), l.end(), 0.0f);
        for (int64_t key0 = 0; key0 < N; key0 += kKeyTile) {
          const int valid = static_cast<int>(std::min<int64_t>(kKeyTile, N - key0));
          const int width = (valid + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
          for (int jb = 0; jb < width / kKeyBlock; ++jb) {
            const T* kt = kph + (key0 / kKeyBlock + jb) * steps * kKeyBlock * kPair;
            for (int r = 0; r < rows; r += kScoreRows)
              score_rows<kScoreRows>(std::min(kScoreRows, rows - r), qb + r * q.stride(2), q.stride(2), kt, steps,
                                     s.data() + r * kKeyTile + jb * kKeyBlock, kKeyTile);
          }
          for (int r = 0; r < rows; ++r)
            softmax_row(s.data() + r * kKeyTile, valid, width, scale_log2e, m[r], l[r], o.data() + r * ocols, ocols,
                        p.data() + r * kKeyTile);
          const T* vt = vph + key0 * ocols;
          for (int r = 0; r < rows; r += RV)
            value_rows_n<RV, NV>(std::min(RV, rows - r), p.data() + r * kKeyTile, kKeyTile, vt, width / kPair,
                                 o.data() + r * ocols, ocols);
        }
        for (int r = 0; r < rows; ++r) {
          const float inv = 1.0f / l[r];
          T* dst = od + ((b * N + row0 + r) * H + h) * hd;
          for (int c = 0; c < hd; ++c) dst[c] = Ops::from_float(o[r * ocols + c] * inv);
        }
      }
    });
      }
  }
};

// The operator: q, k, v [B, H, N, hd] of Ops::dtype with unit inner stride → out [B, H, N, hd], a view of a
// contiguous [B, N, H, hd] tensor (so that out.transpose(1, 2).reshape(B, N, H·hd) costs nothing).
template <class Ops>
at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const char* op, bool cpu_ok, const char* cpu_needed) {
  using FA = FlashAttention<Ops>;
  TORCH_CHECK(cpu_ok, op, " needs a CPU with ", cpu_needed);
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == Ops::dtype && t->dim() == 4, op,
                " takes 4-D [B, heads, N, head_dim] CPU tensors of ", Ops::dtype, ", got ", t->scalar_type(), " ",
                t->sizes());
    TORCH_CHECK(t->sizes() == q.sizes(), op, ": q, k and v must have the same shape, got ", q.sizes(), " and ",
                t->sizes());
    TORCH_CHECK(t->stride(3) == 1, op, " needs a unit stride along head_dim");
  }
  const int64_t hd = q.size(3);
  TORCH_CHECK(hd > 0 && hd <= 128 && hd % FA::kPair == 0, op, ": head_dim must be in [1, 128] and a multiple of ",
              FA::kPair, ", got ", hd);
  at::Tensor out = at::empty({q.size(0), q.size(2), q.size(1), hd}, q.options());
  if (q.numel() > 0) {
    switch ((hd + 15) / 16) {
      case 1: FA::template run<1>(q, k, v, scale, out); break;
      case 2: FA::template run<2>(q, k, v, scale, out); break;
      case 3: FA::template run<3>(q, k, v, scale, out); break;
      case 4: FA::template run<4>(q, k, v, scale, out); break;
      case 5: FA::template run<5>(q, k, v, scale, out); break;
      case 6: FA::template run<6>(q, k, v, scale, out); break;
      case 7: FA::template run<7>(q, k, v, scale, out); break;
      default: FA::template run<8>(q, k, v, scale, out); break;
    }
  }
  return out.transpose(1, 2);
}

}  // namespace voxelfm_cpu
