/* The `read` probe for the CPU: sum(x) over fp32, each thread reading its part as four streams
   in lockstep, 128 bytes a stream a step, so the hardware prefetchers run ahead in each (why:
   simd.py). Built and loaded by kernels/cbuild.py, called through ctypes by simd.py. */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#else
#define omp_get_thread_num() 0
#define omp_get_num_threads() 1
#endif
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define STREAMS 4       /* per thread, read in lockstep */
#define STEP 32         /* floats per stream per step: 128 bytes */
#define BLOCK 4096      /* steps summed in fp32 before going into the double total */

/* Thread t's range [lo, hi): equal parts, cut at multiples of STEP. */
static void part(int64_t n, int t, int T, int64_t* lo, int64_t* hi) {
  *lo = n * t / T / STEP * STEP;
  *hi = t == T - 1 ? n : n * (t + 1) / T / STEP * STEP;
}

/* sum(x) with x read as STREAMS streams per thread. fp32 partial sums over BLOCK steps, then double:
   the error stays near one rounding of the total (the check wants 1e-4 on 2^26 values). */
double read_sum(const float* x, int64_t n, int nthreads) {
  double total = 0.0;
  #pragma omp parallel num_threads(nthreads) reduction(+:total)
  {
    int64_t lo, hi;
    part(n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    const int64_t len = (hi - lo) / (STEP * STREAMS) * STEP;   /* floats per stream */
    double acc = 0.0;
    for (int64_t i0 = 0; i0 < len; i0 += STEP * BLOCK) {
      const int64_t i1 = i0 + STEP * BLOCK < len ? i0 + STEP * BLOCK : len;
#ifdef __AVX2__
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = i0; i < i1; i += STEP)
        for (int s = 0; s < STREAMS; s++) {
          const float* p = x + lo + s * len + i;
          a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p));
          a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + 8));
          a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + 16));
          a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + 24));
        }
      float v[8];
      _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      for (int l = 0; l < 8; l++) acc += v[l];
#else
      float a[STEP] = {0};
      for (int64_t i = i0; i < i1; i += STEP)
        for (int s = 0; s < STREAMS; s++)
          for (int l = 0; l < STEP; l++) a[l] += x[lo + s * len + i + l];
      for (int l = 0; l < STEP; l++) acc += a[l];
#endif
    }
    for (int64_t i = lo + STREAMS * len; i < hi; i++) acc += x[i];
    total += acc;
  }
  return total;
}
