"""Hand-written CPU dequant-GEMV kernels in C (AVX2 + OpenMP), built on first use, called via ctypes.

Why C and not torch.compile on the CPU: Inductor's CPU code for an int8/int4 reduction loads the
weights with partial (count < width) vector loads or 2-D transposes and runs 10-40x under the
memory roof; a GEMV has to stream the packed weights once and unpack them in registers.

The kernels read the op's tensors in place (x, scales and zeros in bf16/fp16/fp32, weights packed
as DESIGN.md says), so their bytes are exactly the op's byte model. Tricks, all in registers:
- INT8: `vpmovsxbd` widens 8 int8 at a time straight from memory, then convert and FMA.
- INT4: a 32-bit word holds 8 nibbles, k = 8i..8i+7 in order. Nibble j is `word & (0xF << 4j)`,
  an exact float after conversion (4 significant bits); x is pre-scaled by 16^-j to cancel the
  shift, so unpacking costs one AND per 8 weights. Lane i of a vector holds k = 8i..8i+7, all in
  one group, so scales apply per lane and G = 32 needs no special case.
- The zero point leaves the inner loop: sum_k x (q - z) s = s (sum_k x q) - s z sum_k x, with
  sum_k x per group computed once per call.
The library is compiled with the host's compiler for the host's CPU (-march=native) and cached;
without a compiler the impls raise NotImplementedError, so the runner skips them with the reason.
"""
from __future__ import annotations

import ctypes

import torch

from .cbuild import CLibrary

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

enum { F32 = 0, BF16 = 1, F16 = 2 };
#define INLINE static inline __attribute__((always_inline))

static float half_to_float(uint16_t h) {
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
  float f;
  if (e == 0) { f = (float)m * (1.0f / 16777216.0f); return sign ? -f : f; }
  u = sign | ((e == 31 ? 255u : e + 112u) << 23) | (m << 13);
  memcpy(&f, &u, 4);
  return f;
#endif
}

INLINE float ld(const void* p, int64_t i, int dt) {
  if (dt == F32) return ((const float*)p)[i];
  uint16_t h = ((const uint16_t*)p)[i];
  if (dt == BF16) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
  return half_to_float(h);
}

#ifdef __AVX2__
INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

/* ---- INT8: y[m, n] = s[n] * sum_k x[m, k] * q[n, k] ------------------------------------- */

/* One row n for MT rows of x (xf: fp32, stride K32, zero padded). */
INLINE void w8_tile(const int8_t* q, const float* xf, int64_t K, int64_t K32,
                    float s, float* y, int64_t N, const int MT) {
  int64_t k = 0;
  float out[4];
#ifdef __AVX2__
  const int A = MT == 1 ? 4 : MT == 2 ? 2 : 1;   /* independent FMA chains per row of x */
  __m256 acc[4][4];
  for (int m = 0; m < MT; m++) for (int a = 0; a < A; a++) acc[m][a] = _mm256_setzero_ps();
  for (; k + 32 <= K; k += 32) {
    for (int t = 0; t < 4; t++) {
      __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k + 8 * t))));
      for (int m = 0; m < MT; m++)
        acc[m][t % A] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xf + m * K32 + k + 8 * t), acc[m][t % A]);
    }
  }
  for (int m = 0; m < MT; m++) {
    for (int a = 1; a < A; a++) acc[m][0] = _mm256_add_ps(acc[m][0], acc[m][a]);
    out[m] = hsum(acc[m][0]);
  }
#else
  for (int m = 0; m < MT; m++) out[m] = 0.0f;
#endif
  for (int m = 0; m < MT; m++) {
    float r = out[m];
    for (int64_t kk = k; kk < K; kk++) r += xf[m * K32 + kk] * (float)q[kk];
    y[m * N] = r * s;
  }
}

/* M = 1: R consecutive rows n share each load of x. With one row per pass, every 8 weights
   (8 bytes) need a 32-byte fp32 x load and the 32 KiB x vector (K = 8192) fights the weight
   stream for L1, so the loop runs at L2 speed on x; R = 4 cuts x traffic 4x. Two accumulators per
   row give 8 independent FMA chains (Zen 3: 4-cycle latency, 2 per cycle). */
INLINE void w8_rows(const int8_t* q, const float* xf, int64_t K, const void* sc, int dt,
                    int64_t n, float* y, const int R) {
  int64_t k = 0;
  float out[4] = {0, 0, 0, 0};
#ifdef __AVX2__
  __m256 acc[4][2];
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    /* two tiles ahead: a row is two 4 KiB pages and hardware prefetchers stop at page edges */
    for (int r = 0; r < R; r++) _mm_prefetch((const char*)(q + (r + 8) * K + k), _MM_HINT_T0);
    for (int t = 0; t < 2; t++) {
      const __m256 xv = _mm256_loadu_ps(xf + k + 8 * t);
      for (int r = 0; r < R; r++) {
        __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + r * K + k + 8 * t))));
        acc[r][t] = _mm256_fmadd_ps(w, xv, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; r++) out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
#endif
  for (int r = 0; r < R; r++) {
    float v = out[r];
    for (int64_t kk = k; kk < K; kk++) v += xf[kk] * (float)q[r * K + kk];
    y[r] = v * ld(sc, n + r, dt);
  }
}

int gemv_w8(const void* x, int dt, int64_t M, int64_t K, const int8_t* qw, const void* scales,
            int64_t N, float* y, float* scratch, int nthreads) {
  const int64_t K32 = (K + 31) / 32 * 32;
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K32; k++) scratch[m * K32 + k] = k < K ? ld(x, m * K + k, dt) : 0.0f;
  if (M == 1) {
    const int64_t NT = N / 4;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t <= NT; t++) {
      if (t < NT) w8_rows(qw + 4 * t * K, scratch, K, scales, dt, 4 * t, y + 4 * t, 4);
      else for (int64_t n = 4 * NT; n < N; n++) w8_rows(qw + n * K, scratch, K, scales, dt, n, y + n, 1);
    }
    return 0;
  }
  #pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t n = 0; n < N; n++) {
    const int8_t* q = qw + n * K;
    float s = ld(scales, n, dt);
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) w8_tile(q, scratch + m * K32, K, K32, s, y + m * N + n, N, 4);
    for (; m + 2 <= M; m += 2) w8_tile(q, scratch + m * K32, K, K32, s, y + m * N + n, N, 2);
    for (; m < M; m++) w8_tile(q, scratch + m * K32, K, K32, s, y + m * N + n, N, 1);
  }
  return 0;
}

/* ---- INT4: y[m, n] = sum_g s[n,g] * (sum_{k in g} x[m,k] q[n,k] - z[n,g] * xsum[m,g]) ------ */

/* xp[m][c][j][l] = x[m, 8i + j] * 16^-j (j < 7; x[m, 8i + 7] for j = 7) for word i = 8c + l, so one
   chunk's eight x vectors are contiguous; words past KW are zero. */
INLINE void w4_tile(const int32_t* wr, int64_t KW, int64_t KW8, int64_t WG, int64_t ng,
                    const float* xp, const float* xs, const void* sc, const void* zr, int dt,
                    int64_t n, float* y, int64_t N, const int MT) {
  float corr[4] = {0, 0, 0, 0}, out[4];
  const int64_t XS = 8 * KW8;                       /* stride of xp between rows of x */
#ifdef __AVX2__
  const int A = MT == 1 ? 4 : MT == 2 ? 2 : 1;
  __m256 tot[4];
  for (int m = 0; m < MT; m++) tot[m] = _mm256_setzero_ps();
  const int64_t span = WG >= 8 ? WG : 8;            /* words between scale flushes */
  const int64_t gstep = WG >= 8 ? 1 : 2;            /* groups per flush (G = 32: two per vector) */
  int64_t i = 0;
  for (int64_t g = 0; g < ng; g += gstep) {
    __m256 dot[4][4];
    for (int m = 0; m < MT; m++) for (int a = 0; a < A; a++) dot[m][a] = _mm256_setzero_ps();
    for (int64_t c = 0; c < span; c += 8, i += 8) {
      __m256i w;
      if (i + 8 <= KW) w = _mm256_loadu_si256((const __m256i*)(wr + i));
      else w = _mm256_maskload_epi32(wr + i, _mm256_setr_epi32(-(i + 0 < KW), -(i + 1 < KW),
               -(i + 2 < KW), -(i + 3 < KW), -(i + 4 < KW), -(i + 5 < KW), -(i + 6 < KW), -(i + 7 < KW)));
      for (int j = 0; j < 8; j++) {
        __m256i nib = j < 7 ? _mm256_and_si256(w, _mm256_set1_epi32(0xF << (4 * j)))
                            : _mm256_srli_epi32(w, 28);
        __m256 wf = _mm256_cvtepi32_ps(nib);
        for (int m = 0; m < MT; m++)
          dot[m][j % A] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xp + m * XS + 8 * i + 8 * j), dot[m][j % A]);
      }
    }
    float s0 = ld(sc, n * ng + g, dt), z0 = ld(zr, n * ng + g, dt);
    float s1 = 0.0f, z1 = 0.0f;
    if (gstep == 2 && g + 1 < ng) { s1 = ld(sc, n * ng + g + 1, dt); z1 = ld(zr, n * ng + g + 1, dt); }
    __m256 sv = gstep == 1 ? _mm256_set1_ps(s0) : _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
    for (int m = 0; m < MT; m++) {
      for (int a = 1; a < A; a++) dot[m][0] = _mm256_add_ps(dot[m][0], dot[m][a]);
      tot[m] = _mm256_fmadd_ps(dot[m][0], sv, tot[m]);
      corr[m] += s0 * z0 * xs[m * ng + g];
      if (gstep == 2 && g + 1 < ng) corr[m] += s1 * z1 * xs[m * ng + g + 1];
    }
  }
  for (int m = 0; m < MT; m++) out[m] = hsum(tot[m]);
#else
  const int64_t gw = WG;                           /* words per group */
  for (int m = 0; m < MT; m++) out[m] = 0.0f;
  for (int64_t g = 0; g < ng; g++) {
    float s = ld(sc, n * ng + g, dt), z = ld(zr, n * ng + g, dt);
    for (int m = 0; m < MT; m++) {
      float d = 0.0f;
      for (int64_t i = g * gw; i < (g + 1) * gw; i++) {
        uint32_t w = (uint32_t)wr[i];
        const float* xc = xp + m * XS + 64 * (i / 8) + i % 8;
        for (int j = 0; j < 7; j++) d += (float)(int32_t)(w & (0xFu << (4 * j))) * xc[8 * j];
        d += (float)(w >> 28) * xc[56];
      }
      out[m] += s * d;
      corr[m] += s * z * xs[m * ng + g];
    }
  }
#endif
  for (int m = 0; m < MT; m++) y[m * N] = out[m] - corr[m];
}

#if defined(__AVX2__) && defined(__F16C__)
/* M = 1: R consecutive rows n (row stride RS words) of y = W x. Why this shape:
   - R rows share each x-vector load: one row per pass needs a 32-byte x load per 4 bytes of
     weights. Per row: the packed words, a per-group dot and the scaled total (12 of 16 ymm).
   - A row is one 4 KiB page at K = 8192 and the hardware prefetchers stop at page edges, so
     each chunk prefetches the same words W4_PF rows (two tiles) ahead: +15-25% on DRAM. Into L2
     (T1), not L1: those lines map to the L1 set of the current rows (4 KiB stride); ~2% better.
   (Blocking K so that the x slice stays in L1 was slower: short row pieces defeat DRAM streaming.) */
#define W4_PF 8
#define W4_MAXG 1024  /* groups per row on this path (K <= 32768 at G = 32) */
INLINE void w4_rows(const int32_t* wr, int64_t RS, int64_t KW, int64_t WG, int64_t ng,
                    const float* xp, const float* xs, const void* sc, const void* zr, int dt,
                    int64_t n, float* y, const int R) {
  /* Scales to fp32 (interleaved sf[g][r]: one cache line per flush for all R rows, none on the
     4 KiB-strided sets of the weight rows) and the zero-point terms before the main loop: done per
     group inside it (scalar loads, dtype branches, corr in memory) they took ~15% of the time. */
  float sf[W4_MAXG][4], corr[4] = {0, 0, 0, 0};
  for (int r = 0; r < R; r++) {
    const int64_t o = (n + r) * ng;
    int64_t g = 0;
    __m256 cv = _mm256_setzero_ps();
    for (; g + 8 <= ng; g += 8) {
      __m256 s8, z8;
      if (dt == F32) { s8 = _mm256_loadu_ps((const float*)sc + o + g); z8 = _mm256_loadu_ps((const float*)zr + o + g); }
      else if (dt == BF16) {
        s8 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)sc + o + g))), 16));
        z8 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)zr + o + g))), 16));
      } else {
        s8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)sc + o + g)));
        z8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)zr + o + g)));
      }
      float t8[8];
      _mm256_storeu_ps(t8, s8);
      for (int l = 0; l < 8; l++) sf[g + l][r] = t8[l];
      cv = _mm256_fmadd_ps(_mm256_mul_ps(s8, z8), _mm256_loadu_ps(xs + g), cv);
    }
    corr[r] = hsum(cv);
    for (; g < ng; g++) { sf[g][r] = ld(sc, o + g, dt); corr[r] += sf[g][r] * ld(zr, o + g, dt) * xs[g]; }
  }
  __m256 tot[4];
  for (int r = 0; r < R; r++) tot[r] = _mm256_setzero_ps();
  const int64_t span = WG >= 8 ? WG : 8, gstep = WG >= 8 ? 1 : 2;
  int64_t i = 0;
  for (int64_t g = 0; g < ng; g += gstep) {
    __m256 dot[4];
    for (int r = 0; r < R; r++) dot[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < span; c += 8, i += 8) {
      __m256i w[4];
      for (int r = 0; r < R; r++) _mm_prefetch((const char*)(wr + (r + W4_PF) * RS + i), _MM_HINT_T1);
      if (i + 8 <= KW) {
        for (int r = 0; r < R; r++) w[r] = _mm256_loadu_si256((const __m256i*)(wr + r * RS + i));
      } else {
        const __m256i mk = _mm256_setr_epi32(-(i + 0 < KW), -(i + 1 < KW), -(i + 2 < KW), -(i + 3 < KW),
                                             -(i + 4 < KW), -(i + 5 < KW), -(i + 6 < KW), -(i + 7 < KW));
        for (int r = 0; r < R; r++) w[r] = _mm256_maskload_epi32(wr + r * RS + i, mk);
      }
      for (int j = 0; j < 8; j++) {
        const __m256 xv = _mm256_loadu_ps(xp + 8 * i + 8 * j);
        for (int r = 0; r < R; r++) {
          __m256i nib = j < 7 ? _mm256_and_si256(w[r], _mm256_set1_epi32(0xF << (4 * j)))
                              : _mm256_srli_epi32(w[r], 28);
          dot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(nib), xv, dot[r]);
        }
      }
    }
    for (int r = 0; r < R; r++) {
      __m256 sv = gstep == 1 ? _mm256_broadcast_ss(&sf[g][r])
                : _mm256_set_m128(_mm_set1_ps(g + 1 < ng ? sf[g + 1][r] : 0.0f), _mm_set1_ps(sf[g][r]));
      tot[r] = _mm256_fmadd_ps(dot[r], sv, tot[r]);
    }
  }
  for (int r = 0; r < R; r++) y[r] = hsum(tot[r]) - corr[r];
}

#endif

int gemv_w4(const void* x, int dt, int64_t M, int64_t K, const uint8_t* qw, const void* scales,
            const void* zeros, int64_t N, int64_t G, float* y, float* scratch, int nthreads) {
  const int64_t KW = K / 8, KW8 = (KW + 7) / 8 * 8, WG = G / 8, ng = K / G;
  float* xp = scratch;                              /* [M][8][KW8] */
  float* xs = scratch + M * 8 * KW8;                /* [M][ng] */
#if defined(__AVX2__) && defined(__F16C__)
  /* Vectorized: word i's eight x values, scaled by 16^-j, are one column of the 8x8 block of
     chunk c; a register transpose writes the block's rows (the scalar loop cost ~20 us). */
  const __m256 f = _mm256_setr_ps(1.0f, 1.0f / 16, 1.0f / 256, 1.0f / 4096, 1.0f / 65536,
                                  1.0f / 1048576, 1.0f / 16777216, 1.0f);
  for (int64_t m = 0; m < M; m++) {
    __m256 gs = _mm256_setzero_ps();
    for (int64_t c = 0; c < KW8; c += 8) {
      __m256 v[8];
      for (int l = 0; l < 8; l++) {
        const int64_t i = c + l, k = m * K + 8 * i;
        if (i >= KW) { v[l] = _mm256_setzero_ps(); continue; }
        v[l] = dt == F32 ? _mm256_loadu_ps((const float*)x + k)
             : dt == BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(
                              _mm_loadu_si128((const __m128i*)((const uint16_t*)x + k))), 16))
             : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + k)));
        gs = _mm256_add_ps(gs, v[l]);                   /* group sums of the unscaled x */
        if ((i + 1) % WG == 0) { xs[m * ng + (i + 1) / WG - 1] = hsum(gs); gs = _mm256_setzero_ps(); }
        v[l] = _mm256_mul_ps(v[l], f);
      }
      __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
      __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
      __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
      __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
      __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* o = xp + m * 8 * KW8 + 8 * c;
      _mm256_storeu_ps(o + 0, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(o + 32, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(o + 40, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(o + 48, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(o + 56, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
  }
#else
  for (int64_t m = 0; m < M; m++) {
    for (int j = 0; j < 8; j++) {
      const float f = j < 7 ? 1.0f / (float)(1 << (4 * j)) : 1.0f;
      for (int64_t i = 0; i < KW8; i++)
        xp[m * 8 * KW8 + 64 * (i / 8) + 8 * j + i % 8] = i < KW ? ld(x, m * K + 8 * i + j, dt) * f : 0.0f;
    }
    for (int64_t g = 0; g < ng; g++) {
      float s = 0.0f;
      for (int64_t k = g * G; k < (g + 1) * G; k++) s += ld(x, m * K + k, dt);
      xs[m * ng + g] = s;
    }
  }
#endif
#if defined(__AVX2__) && defined(__F16C__)
  if (M == 1 && ng <= W4_MAXG) {
    const int64_t NT = N / 4, RS = K / 8;
    const int32_t* wr = (const int32_t*)qw;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t <= NT; t++) {
      /* G = 128 gets its own copy with a compile-time group span (the chunk loop unrolled):
         ~5% at N = K = 8192. (Building half the nibbles as 1 + q/16 floats with integer ops
         instead of cvtdq2ps was measured 5-10% slower here: the extra shift/or compete with it.) */
      if (t < NT && WG == 16)
        w4_rows(wr + 4 * t * RS, RS, KW, 16, ng, xp, xs, scales, zeros, dt, 4 * t, y + 4 * t, 4);
      else if (t < NT) w4_rows(wr + 4 * t * RS, RS, KW, WG, ng, xp, xs, scales, zeros, dt, 4 * t, y + 4 * t, 4);
      else for (int64_t n = 4 * NT; n < N; n++)
        w4_rows(wr + n * RS, RS, KW, WG, ng, xp, xs, scales, zeros, dt, n, y + n, 1);
    }
    return 0;
  }
#endif
  #pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t n = 0; n < N; n++) {
    const int32_t* wr = (const int32_t*)(qw + n * (K / 2));
    int64_t m = 0;
    for (; m + 4 <= M; m += 4)
      w4_tile(wr, KW, KW8, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n, y + m * N + n, N, 4);
    for (; m + 2 <= M; m += 2)
      w4_tile(wr, KW, KW8, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n, y + m * N + n, N, 2);
    for (; m < M; m++)
      w4_tile(wr, KW, KW8, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n, y + m * N + n, N, 1);
  }
  return 0;
}
"""

_DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
i64, ptr = ctypes.c_int64, ctypes.c_void_p
library = CLibrary("dequant_gemv", C_SOURCE, {
    "gemv_w8": ([ptr, ctypes.c_int, i64, i64, ptr, ptr, i64, ptr, ptr, ctypes.c_int], ctypes.c_int),
    "gemv_w4": ([ptr, ctypes.c_int, i64, i64, ptr, ptr, ptr, i64, i64, ptr, ptr, ctypes.c_int],
                ctypes.c_int),
})
_buffer = library.buffer


def _check(x: torch.Tensor, *tensors: torch.Tensor) -> None:
    if x.device.type != "cpu":
        raise NotImplementedError(f"the C SIMD kernels run on the CPU, not {x.device.type}")
    if x.dtype not in _DT:
        raise NotImplementedError(f"the C SIMD kernels take bf16/fp16/fp32 x, not {x.dtype}")
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("the C SIMD kernels need contiguous tensors")


def _finish(y32: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return y32.to(x.dtype)  # a new tensor: y32 is a reused buffer
    return out.copy_(y32)


def gemv_w8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    x = x.contiguous()
    _check(x, qweight, scales)
    M, K = x.shape
    N = qweight.shape[0]
    y32 = _buffer("y", M * N).view(M, N)
    xs = _buffer("x", M * ((K + 31) // 32 * 32))
    library().gemv_w8(x.data_ptr(), _DT[x.dtype], M, K, qweight.data_ptr(), scales.data_ptr(), N,
                      y32.data_ptr(), xs.data_ptr(), torch.get_num_threads())
    return _finish(y32, x, out)


def gemv_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
            group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    x = x.contiguous()
    _check(x, qweight, scales, zeros)
    M, K = x.shape
    N = qweight.shape[0]
    kw8 = (K // 8 + 7) // 8 * 8
    y32 = _buffer("y", M * N).view(M, N)
    xs = _buffer("x", M * 8 * kw8 + M * (K // group_size))
    library().gemv_w4(x.data_ptr(), _DT[x.dtype], M, K, qweight.data_ptr(), scales.data_ptr(),
                      zeros.data_ptr(), N, group_size, y32.data_ptr(), xs.data_ptr(),
                      torch.get_num_threads())
    return _finish(y32, x, out)


__all__ = ["C_SOURCE", "library", "gemv_w8", "gemv_w4"]
