// Shared by bf16_softmax.cpp and fp32_softmax.cpp: the operator around a row kernel.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

namespace voxelfm_cpu {

inline const char* dtype_label(at::ScalarType dtype) { return dtype == at::kBFloat16 ? "bf16" : "fp32"; }

// scores [R, N] of `dtype`, unit inner stride -> fp32 sums [R], sums[r] = row(&scores[r, 0], N) (0 if N = 0),
// rows in parallel on ATen's intra-op pool. `cpu_ok`: the CPU runs the row kernel's instructions.
template <typename T, typename Row>
at::Tensor map_rows(const at::Tensor& scores, at::ScalarType dtype, const char* op, bool cpu_ok,
                    const char* cpu_needed, Row row) {
  TORCH_CHECK(cpu_ok, op, " needs a CPU with ", cpu_needed);
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == dtype && scores.dim() == 2, op, " takes a 2-D ",
              dtype_label(dtype), " CPU tensor, got ", scores.scalar_type(), " ", scores.sizes());
  TORCH_CHECK(scores.size(1) <= 1 || scores.stride(1) == 1, op, " needs contiguous rows");
  const int64_t rows = scores.size(0), n = scores.size(1), ld = scores.stride(0);
  at::Tensor sums = at::empty({rows}, scores.options().dtype(at::kFloat));
  T* base = reinterpret_cast<T*>(scores.data_ptr());
  float* out = sums.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) out[r] = n ? row(base + r * ld, n) : 0.0f;
  });
  return sums;
}

}  // namespace voxelfm_cpu
