// Fused select-reduce on the CPU (contract: emofast/kernels/reference.py).
//
// For hidden states x [B, T, D] (fp32/fp16/bf16, any element strides) and R rows (b_r, t_r) with labels l_r
// and weights w_r, in one pass over the gathered rows:
//   out[l_r, :] += w_r * x[b_r, t_r, :]                       (fp32 [C, D], overwritten unless accumulate)
//   proj[r, k]   = w_r * x[b_r, t_r, :] . dirs[k, :]           (fp32 [R, K], when dirs is given)
#pragma once

#include <cstdint>

namespace emofast {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

struct SelectReduceArgs {
  const void* x = nullptr;  // [B, T, D] of x_dtype, element strides sb, st, sd
  DType x_dtype = DType::F32;
  int64_t B = 0, T = 0, D = 0;
  int64_t sb = 0, st = 0, sd = 0;
  const int64_t* batch_index = nullptr;  // [R], contiguous
  const int64_t* token_index = nullptr;  // [R], contiguous
  const int64_t* labels = nullptr;       // [R], contiguous, in [0, C)
  int64_t R = 0, C = 0;
  const float* weights = nullptr;  // [R] contiguous fp32, or null for 1
  const float* dirs = nullptr;     // [K, D] contiguous fp32, or null
  int64_t K = 0;
  float* out = nullptr;  // [C, D] fp32, element strides soc, sod
  int64_t soc = 0, sod = 0;
  bool accumulate = false;  // add the sums into out instead of overwriting it
  float* proj = nullptr;    // [R, K] fp32, element strides spr, spk; required when dirs is given
  int64_t spr = 0, spk = 0;
  int64_t threads = 1;  // OpenMP threads (at most one per slice of D is used)
};

// Runs the op on args.threads OpenMP threads. Bit-reproducible whatever the thread count: every sum and dot
// product is taken in an order fixed by the shapes alone. Throws std::out_of_range (before writing anything) for an index
// or label out of range, std::invalid_argument for inconsistent arguments.
void select_reduce(const SelectReduceArgs& args);

}  // namespace emofast
