// Fused select-reduce on the CPU; see select_reduce.h for the op.
//
// D is cut into fixed slices (chosen from D alone) and each thread owns a contiguous run of slices: it alone
// writes their sums (no races, no atomics). A thread walks all R rows, block by block; for each row and slice
// it converts the gathered piece to fp32, scales it by the row's weight, adds it to its label's sum (in row
// order) and dots it with the K direction slices into a per-slice partial; the partials are then added in
// slice order. Nothing depends on the thread count or schedule, so the result is bit-identical run to run
// and one code path serves deterministic and default calls.
#include "select_reduce.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

// x86-64 Linux builds target only SSE2 (setup.py passes no -march), so the hot loop is also compiled for
// AVX+FMA and picked at load time on CPUs that have them (GCC/Clang function multiversioning via ifunc).
// Its helpers must be inlined into it to be compiled for AVX+FMA too, hence EMOFAST_INLINE.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define EMOFAST_MULTIVERSION __attribute__((target_clones("fma", "default")))
#else
#define EMOFAST_MULTIVERSION
#endif
#if defined(__GNUC__)
#define EMOFAST_INLINE inline __attribute__((always_inline))
#else
#define EMOFAST_INLINE inline
#endif

namespace emofast {
namespace {

EMOFAST_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

EMOFAST_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// bfloat16 is the top half of a binary32.
EMOFAST_INLINE float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// IEEE binary16 -> binary32, exact for every input (F. Giesen, "half to float done quick"), written with
// selects instead of branches so that the loops calling it vectorise. Moving the 15 exponent+mantissa bits
// into place and rebiasing the exponent by 127 - 15 is right for normal numbers; infinities and NaNs (exponent
// all ones) get a further +128 - 16 so that their exponent is all ones again, payload kept; zeros and
// subnormals are renormalised with one exact float subtraction of 2^-14 (no subnormal float is ever formed,
// so flush-to-zero modes cannot change the result).
EMOFAST_INLINE float half_to_float(uint16_t h) {
  constexpr uint32_t kShiftedExp = 0x7c00u << 13;
  const uint32_t bits = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exp = bits & kShiftedExp;
  const uint32_t normal = bits + ((127u - 15u) << 23);
  const uint32_t special = normal + ((128u - 16u) << 23);
  const float subnormal = bits_to_float(normal + (1u << 23)) - bits_to_float(113u << 23);
  const uint32_t mag = exp == kShiftedExp ? special : (exp == 0 ? float_to_bits(subnormal) : normal);
  return bits_to_float(mag | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}

struct LoadF32 {
  using T = float;
  static EMOFAST_INLINE float cvt(float v) { return v; }
};
struct LoadF16 {
  using T = uint16_t;
  static EMOFAST_INLINE float cvt(uint16_t v) { return half_to_float(v); }
};
struct LoadBF16 {
  using T = uint16_t;
  static EMOFAST_INLINE float cvt(uint16_t v) { return bf16_to_float(v); }
};

// dst[i] = w * float(src[i * sd]) for i < n; the contiguous case is the vectorised fast path.
template <class L>
EMOFAST_INLINE void load_scaled(const typename L::T* src, int64_t sd, int64_t n, float w, float* dst) {
  if (sd == 1) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = w * L::cvt(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = w * L::cvt(src[i * sd]);
  }
}

// res[k] = row . dirs[k] over n values, for k < K (dirs rows ldd apart). Four directions per sweep, over the
// two halves of the row at once: eight independent accumulator chains, and each loaded value feeds four.
EMOFAST_INLINE void project(const float* row, const float* dirs, int64_t ldd, int64_t K, int64_t n, float* res) {
  const int64_t h = n / 2;
  const float* hi = row + h;
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const float* d0 = dirs + k * ldd;
    const float* d1 = d0 + ldd;
    const float* d2 = d1 + ldd;
    const float* d3 = d2 + ldd;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, b0 = 0.f, b1 = 0.f, b2 = 0.f, b3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
    for (int64_t i = 0; i < h; ++i) {
      const float u = row[i], v = hi[i];
      a0 += u * d0[i];
      a1 += u * d1[i];
      a2 += u * d2[i];
      a3 += u * d3[i];
      b0 += v * d0[h + i];
      b1 += v * d1[h + i];
      b2 += v * d2[h + i];
      b3 += v * d3[h + i];
    }
    if (n % 2) {  // the odd last value
      const float u = row[n - 1];
      a0 += u * d0[n - 1];
      a1 += u * d1[n - 1];
      a2 += u * d2[n - 1];
      a3 += u * d3[n - 1];
    }
    res[k] = a0 + b0;
    res[k + 1] = a1 + b1;
    res[k + 2] = a2 + b2;
    res[k + 3] = a3 + b3;
  }
  for (; k < K; ++k) {
    const float* dk = dirs + k * ldd;
    float a = 0.f, b = 0.f;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < h; ++i) {
      a += row[i] * dk[i];
      b += hi[i] * dk[h + i];
    }
    if (n % 2) a += row[n - 1] * dk[n - 1];
    res[k] = a + b;
  }
}

// The D slices: about 256 columns each, at most 16 of them, a multiple of 16 columns wide. A function of D
// only, so the projection partials (one per slice) and their sum are too.
struct Slices {
  int64_t count = 0, width = 0;
  explicit Slices(int64_t d) {
    if (d <= 0) return;
    const int64_t target = std::clamp<int64_t>(d / 256, 1, 16);
    width = (((d + target - 1) / target) + 15) / 16 * 16;
    count = (d + width - 1) / width;
  }
  int64_t size(int64_t d, int64_t j) const { return std::min(width, d - j * width); }
};

EMOFAST_INLINE void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i);
}

// Rows go through in blocks: for each block, slice after slice, row after row. A row is then read as one
// contiguous stream per thread (kBlockRows streams at a time), and the direction slice stays in L1 for the
// whole block. Each (row, slice) prefetches the piece visited kBlockRows steps later.
constexpr int64_t kBlockRows = 16;
// Calls with fewer rows read each direction slice too few times to repay packing it.
constexpr int64_t kPackMinRows = 4 * kBlockRows;
// A thread per 2^20 gathered values at most (~0.1-0.3 ms of work): waking a thread costs microseconds on an
// idle machine but a scheduler tick (ms) when the other cores are busy, and the call waits for the slowest.
constexpr int64_t kMinWorkPerThread = 1 << 20;

// One thread's slices [j0, j1) of D, over all R rows: the sums go straight into those columns of out, which
// this thread alone writes; the dots go into part [slices, R, K]. dirs [j1 - j0, K, width] receives the packed
// direction slices (rows of the full [K, D] matrix are D floats apart, which for D = 4096 would map them all
// to the same L1 sets); row [width] holds the current converted row piece.
template <class L>
EMOFAST_MULTIVERSION void run_slices(const SelectReduceArgs& a, const Slices& sl, int64_t j0, int64_t j1,
                                     float* dirs, float* row, float* part) {
  using T = typename L::T;
  const int64_t W = sl.width;
  if (!a.accumulate) {
    for (int64_t c = 0; c < a.C; ++c) {
      float* o = a.out + c * a.soc;
      for (int64_t i = j0 * W; i < std::min(j1 * W, a.D); ++i) o[i * a.sod] = 0.f;
    }
  }
  const bool packed = a.R >= kPackMinRows;
  if (packed) {
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t k = 0; k < a.K; ++k) {
        const float* d = a.dirs + k * a.D + j * W;
        std::copy(d, d + sl.size(a.D, j), dirs + ((j - j0) * a.K + k) * W);
      }
    }
  }
  const T* x = static_cast<const T*>(a.x);
  const auto src = [&](int64_t r, int64_t j) {
    return x + a.batch_index[r] * a.sb + a.token_index[r] * a.st + j * W * a.sd;
  };
  // Prefetching pays for contiguous pieces only; a strided piece would span W * sd elements.
  const int64_t piece_bytes = a.sd == 1 ? W * static_cast<int64_t>(sizeof(T)) : 0;
  for (int64_t r0 = 0; r0 < a.R; r0 += kBlockRows) {
    const int64_t r1 = std::min(r0 + kBlockRows, a.R);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n = sl.size(a.D, j);
      const float* dirs_j = packed ? dirs + (j - j0) * a.K * W : a.dirs + j * W;
      const int64_t ldd = packed ? W : a.D;
      for (int64_t r = r0; r < r1; ++r) {
        if (j + 1 < j1) {
          prefetch(src(r, j + 1), piece_bytes);
        } else if (r + kBlockRows < a.R) {
          prefetch(src(r + kBlockRows, j0), piece_bytes);
        }
        load_scaled<L>(src(r, j), a.sd, n, a.weights ? a.weights[r] : 1.f, row);
        float* o = a.out + a.labels[r] * a.soc + j * W * a.sod;
        if (a.sod == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] += row[i];
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * a.sod] += row[i];
        }
        if (a.K) project(row, dirs_j, ldd, a.K, n, part + (j * a.R + r) * a.K);
      }
    }
  }
}

void check_range(const int64_t* v, int64_t n, int64_t hi, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    if (v[i] < 0 || v[i] >= hi) {
      throw std::out_of_range(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v[i]) +
                              " is out of range [0, " + std::to_string(hi) + ")");
    }
  }
}

template <class L>
void run(const SelectReduceArgs& a) {
  const Slices sl(a.D);
  // At most one thread per slice, and per kMinWorkPerThread gathered values.
  const int64_t threads = std::max<int64_t>(1, std::min({a.threads, sl.count, a.R * a.D / kMinWorkPerThread}));
  const int64_t per_thread = (sl.count + threads - 1) / threads;  // slices
  // Per-thread scratch (direction slices of its slices, one row piece) and the [slices, R, K] projection
  // partials, allocated here so that nothing in the parallel region can throw.
  const int64_t scratch = (a.K * per_thread + 1) * sl.width;
  std::unique_ptr<float[]> scratch_all(new float[threads * scratch]);
  std::unique_ptr<float[]> part(new float[sl.count * a.R * a.K]);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int64_t t = 0; t < threads; ++t) {
    float* mine = scratch_all.get() + t * scratch;
    run_slices<L>(a, sl, std::min(t * per_thread, sl.count), std::min((t + 1) * per_thread, sl.count), mine,
                  mine + a.K * per_thread * sl.width, part.get());
  }
  if (!a.K) return;
  const int64_t rk = a.R * a.K;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < a.R; ++r) {
    for (int64_t k = 0; k < a.K; ++k) {
      float s = 0.f;
      for (int64_t j = 0; j < sl.count; ++j) s += part[j * rk + r * a.K + k];
      a.proj[r * a.spr + k * a.spk] = s;
    }
  }
}

}  // namespace

void select_reduce(const SelectReduceArgs& a) {
  if (a.B < 0 || a.T < 0 || a.D < 0 || a.R < 0 || a.C < 0 || a.K < 0) {
    throw std::invalid_argument("select_reduce: negative size");
  }
  if (a.R && (!a.x || !a.batch_index || !a.token_index || !a.labels)) {
    throw std::invalid_argument("select_reduce: null x or index pointer");
  }
  if (a.C && a.D && !a.out) throw std::invalid_argument("select_reduce: null out pointer");
  if (a.K && ((a.R && !a.proj) || (a.D && !a.dirs))) {
    throw std::invalid_argument("select_reduce: K > 0 needs dirs and proj");
  }
  check_range(a.batch_index, a.R, a.B, "batch_index");
  check_range(a.token_index, a.R, a.T, "token_index");
  check_range(a.labels, a.R, a.C, "labels");
  switch (a.x_dtype) {
    case DType::F32:
      return run<LoadF32>(a);
    case DType::F16:
      return run<LoadF16>(a);
    case DType::BF16:
      return run<LoadBF16>(a);
  }
  throw std::invalid_argument("select_reduce: unknown dtype code " + std::to_string(static_cast<int>(a.x_dtype)));
}

}  // namespace emofast
