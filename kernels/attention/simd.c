/* Paged decode attention for the CPU (AVX2 + FMA + F16C, OpenMP; the scores and P.V loops in zmm
   where the build has AVX-512F, and bf16 KV through VDPBF16PS where it has AVX512_BF16), one fp32
   online-softmax pass. A target without AVX2, FMA or F16C (Arm, x86-64 before Haswell) builds
   the portable C at the end of the file instead: the same tasks, scratch and merge.
   Built and loaded by kernels/cbuild.py, called through ctypes by simd.py (which says why C).

   Each K and V row is read once, straight from its block, converted in registers; the softmax
   and the output accumulator stay in fp32:
   - one task per (sequence, token split) walks the sequence's blocks, each block whole (all KV
     heads, K then V); while one (block, head) is computed, the K and V rows of the one AHEAD
     steps later in that walk are prefetched into L2, a few lines per step: the table defeats
     hardware prefetch;
   - all G query heads of a KV head share each K/V row;
   - scores: four query heads against four tokens a step in zmm (16 accumulators, reduced
     together into one vector) or two in ymm (8), so every q vector loaded from L1 feeds four
     (two) FMAs and every K vector four; each 16 tokens' scores are stored as one row a head,
     and the softmax runs a row a vector at a time, so its loads take whole stores;
   - P.V: per 16-wide slice of D, the four heads' accumulators stay in registers across a whole
     block of tokens, each broadcast p feeding two FMAs; INT8 KV folds k_scale into the score and
     v_scale into p (gathered once a block and head, multiplied a vector at a time), so rows are
     only widened;
   - bf16 KV with AVX512_BF16: scores take q and K in bf16 pairs along D, P.V takes p rounded to
     bf16 (as FlashAttention feeds P to its MMA) and V rows paired along the tokens, each
     VDPBF16PS doing two products a lane in fp32: half the instructions of widening and FMAs.
     INT8 KV with bf16 q takes the same loops, each (block, head)'s rows widened to bf16 first
     (exactly) and shared by all G heads;
   - splits (for few sequences: simd.py splits_for) keep their (max, sum, acc) and are merged at
     the end.
   Positions past seq_len and table entries past a sequence are never read. */
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define X86 1
#include <immintrin.h>
#else
#define X86 0  /* the portable C at the end of the file: Arm, x86-64 before AVX2 */
#if defined(__GNUC__) && !defined(__clang__)
/* GCC keeps a loop with a floating-point select scalar unless FP exceptions may be assumed not
   to trap (clang assumes so by default); results are the same: nothing is reassociated. Set for
   the whole file, so that every function inlined into another has the same options. */
#pragma GCC optimize("no-trapping-math")
#endif
#endif

enum { F32 = 0, BF16 = 1, F16 = 2, I8 = 3 };
#define INLINE static inline __attribute__((always_inline))
#define MAXD 256
#define MAXBS 64
/* Prefetch distance in (block, head) steps. One step is 4 KiB of K and 4 of V (bf16, D = 128,
   16-token blocks). On a 2-core Zen 4, from DRAM, alternated: 2, 3, 4 and 6 steps within 2% of
   each other; one step (K, with the V rows of the step in use into L1) mostly 0.71-0.85x of 3. */
#define AHEAD 3
#if X86 && defined(__AVX512BF16__) && defined(__AVX512F__)
#define DPBF16 1
#else
#define DPBF16 0
#endif

/* exp(x) = 2^n e^r, n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts), e^r = 1 + r + r^2
   P(r): rel. error ~2e-7. For x <= 0 (softmax after the max is subtracted); x < -87 gives 0. */
static const float EXP_P[6] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                               4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f};
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_MIN -87.0f

/* The first row of the (block, head) AHEAD steps after head h of the block holding tokens
   t..t+n, and in *pn how many of its rows the task reads (0: none, past t1): in this block, or
   in one the table names (elsewhere in the pool: no hardware prefetcher can guess it). */
INLINE int64_t ahead_row(const int32_t* table, int64_t BS, int64_t Hkv, int64_t t, int n,
                         int64_t t1, int64_t h, int64_t row, int* pn) {
  const int64_t ahead = h + AHEAD, later = ahead / Hkv, tp = t + n + (later - 1) * BS;
  *pn = n;
  if (!later) return row + AHEAD;
  *pn = tp < t1 ? (int)((t1 - tp) < BS ? (t1 - tp) : BS) : 0;
  return *pn ? table[tp / BS] * BS * Hkv + ahead % Hkv : row;
}

#if X86
INLINE __m256 load8(const void* p, int dt) {   /* 8 elements -> fp32 */
  if (dt == F32) return _mm256_loadu_ps((const float*)p);
  if (dt == BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
  if (dt == F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}

/* 16 bf16 -> two fp32 vectors by interleaving with zeros (no shifts): lo holds elements
   0-3, 8-11 and hi 4-7, 12-15. bf16 rows are used in this permuted order throughout (q is
   stored permuted, the accumulator comes out permuted and is put back in order at the end). */
INLINE void load16_bf16(const void* p, __m256* lo, __m256* hi) {
  __m256i x = _mm256_loadu_si256((const __m256i*)p), z = _mm256_setzero_si256();
  *lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, x));
  *hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, x));
}

/* Logical index of physical slot i of a bf16-permuted row (see load16_bf16). The AVX-512 build
   widens bf16 in order (load16), so there its rows are not permuted. */
#ifdef __AVX512F__
#define BF16_PERMUTED 0
#else
#define BF16_PERMUTED 1
#endif
INLINE int64_t bf16_logical(int64_t i) {
#ifdef __AVX512F__
  return i;
#else
  const int64_t s = i & 15, base = i - s;
  return base + (s < 4 ? s : s < 8 ? s + 4 : s < 12 ? s - 4 : s);
#endif
}

#ifdef __AVX512F__
/* 16 elements -> fp32 in one zmm, in order (bf16: widen and shift, two ops for 16 elements, as
   the ymm unpacks take for 16). */
INLINE __m512 load16(const void* p, int dt) {
  if (dt == F32) return _mm512_loadu_ps(p);
  if (dt == BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
  if (dt == F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}

/* The widest fp32 vector of this build (VW lanes), so that P.V is written once; load2 widens 2 VW
   consecutive elements into two vectors (zmm: in order; ymm bf16: the permuted order above). */
typedef __m512 vf;
enum { VW = 16 };
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm512_mul_ps(a, b)
INLINE void load2(const char* p, int dt, vf* x0, vf* x1) {
  const int es = dt == F32 ? 4 : dt == I8 ? 1 : 2;
  *x0 = load16(p, dt);
  *x1 = load16(p + 16 * es, dt);
}

/* Horizontal sums of 16 vectors at once: lane 4 L + m of the result is the sum of z[4 m + L].
   A tree of lane shuffles and adds: 45 instructions for 16 sums, which come out in one vector
   (folding each zmm to a ymm and hsum8 takes 33 for 8, plus eight scalar stores). */
INLINE __m512 sum16(const __m512* z) {
  __m512 y[8], w[4], u[2];
  for (int i = 0; i < 8; i++)     /* 128-bit lanes: z[2i]'s two halves added, then z[2i+1]'s */
    y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; i++)     /* 128-bit lane L: z[4i+L]'s four partial sums */
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; i++)     /* lane L: z[8i+L] and z[8i+4+L], two partials each */
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(w[2 * i], w[2 * i + 1]),
                         _mm512_unpackhi_ps(w[2 * i], w[2 * i + 1]));
  return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
}
#endif

#ifndef __AVX512F__
typedef __m256 vf;
enum { VW = 8 };
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm256_mul_ps(a, b)
INLINE void load2(const char* p, int dt, vf* x0, vf* x1) {
  const int es = dt == F32 ? 4 : dt == I8 ? 1 : 2;
  if (dt == BF16) load16_bf16(p, x0, x1);
  else { *x0 = load8(p, dt); *x1 = load8(p + 8 * es, dt); }
}
#endif

/* Whether the VDPBF16PS loops run (scores4_zmm's dp, pv4_dp): bf16 q, and bf16 KV or INT8 KV
   (each (block, head)'s rows widened to bf16 first, widen_rows: every int8 is a bf16). */
INLINE int uses_dp(int qdt, int kvdt) {
  return DPBF16 && qdt == BF16 && (kvdt == BF16 || kvdt == I8);
}

/* Logical index of accumulator slot i in pv4_dp's order: each pass of 32 columns holds the
   unpacklo lanes (columns 0-3, 8-11, 16-19, 24-27) then the unpackhi ones (4-7, ...). */
INLINE int64_t dp_logical(int64_t i) {
  const int64_t s = i & 31, w = s & 15;
  return i - s + 8 * (w >> 2) + 4 * (s >> 4) + (w & 3);
}

INLINE float load1(const void* p, int64_t i, int dt) {
  if (dt == F32) return ((const float*)p)[i];
  if (dt == BF16) { uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16; float f; memcpy(&f, &u, 4); return f; }
  if (dt == F16) return _cvtsh_ss(((const uint16_t*)p)[i]);
  return (float)((const int8_t*)p)[i];
}

INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* max(m, x[0..n)), a vector at a time, not one compare-and-select chain through the whole block;
   NaN if any x is NaN (max_ps alone would drop it: a split whose scores are all NaN would then
   keep m = -inf, which the merge reads as a split that saw nothing). */
INLINE float hmax(const float* x, int n, float m) {
#ifdef __AVX512F__
  __m512 v = _mm512_set1_ps(m);
  __mmask16 nan = 0;
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 y = _mm512_loadu_ps(x + j);
    nan |= _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    v = _mm512_max_ps(y, v);
  }
  if (j < n) {
    const __m512 y = _mm512_mask_loadu_ps(v, (1u << (n - j)) - 1, x + j);
    nan |= _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    v = _mm512_max_ps(y, v);
  }
  return nan ? NAN : _mm512_reduce_max_ps(v);
#else
  __m256 v = _mm256_set1_ps(m), nan = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 y = _mm256_loadu_ps(x + j);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    v = _mm256_max_ps(y, v);
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  int tail_nan = 0;
  for (; j < n; j++) {
    tail_nan |= x[j] != x[j];
    r = x[j] > r ? x[j] : r;
  }
  return _mm256_movemask_ps(nan) || tail_nan ? NAN : r;
#endif
}


INLINE __m256 exp256(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_MIN), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x);   /* NaN stays NaN: max_ps returns b */
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO),
                                    _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x));
  __m256 p = _mm256_set1_ps(EXP_P[0]);
  for (int i = 1; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                       _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#ifdef __AVX512F__
/* exp256 on 16 lanes, 2^n applied by VSCALEFPS. */
INLINE __m512 exp512(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_MIN), _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x));
  __m512 p = _mm512_set1_ps(EXP_P[0]);
  for (int i = 1; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P[i]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_scalef_ps(~tiny, p, n);
}
#endif

/* x[j] = exp(x[j] - mt) for j < n, in place; returns their sum. */
INLINE float exp_sum(float* x, int n, float mt) {
#ifdef __AVX512F__
  __m512 sum = _mm512_setzero_ps();
  const __m512 mv = _mm512_set1_ps(mt);
  int j = 0;
  for (; j + 16 <= n; j += 16) {      /* whole rows unmasked: PV's loads take them from the store */
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv));
    _mm512_storeu_ps(x + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (j < n) {
    const __mmask16 k = (1u << (n - j)) - 1;
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mv));
    _mm512_mask_storeu_ps(x + j, k, e);
    sum = _mm512_mask_add_ps(sum, k, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
#else
  int j = 0;
  __m256 sum = _mm256_setzero_ps();
  const __m256 mv = _mm256_set1_ps(mt);
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    _mm256_storeu_ps(x + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float tot = hsum(sum);
  for (; j < n; j++) { x[j] = expf(x[j] - mt); tot += x[j]; }
  return tot;
#endif
}

/* One head's online-softmax step over a block's n scores x (in place, to p = exp(x - max)):
   the running max *m and sum *l updated; returns what the head's accumulator is to be scaled by
   (0 on the first block, m = -inf; 1, with no exp, where the block's max is not new). */
INLINE float softmax1(float* x, int n, float* m, float* l) {
  const float mt = hmax(x, n, *m);
  const float alpha = mt > *m ? expf(*m - mt) : 1.0f;
  *m = mt;
  *l = *l * alpha + exp_sum(x, n, mt);
  return alpha;
}

/* Horizontal sums of 8 vectors at once: lane i of the result is the sum of a[i]. */
INLINE __m256 hsum8(const __m256* a) {
  __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  t0 = _mm256_hadd_ps(t0, t1);
  t2 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

/* Rows j, j + 1 of the K rows AHEAD steps on (pk: pkn rows), into L2, from the scores loop; the
   V rows AHEAD steps on are prefetched from the P.V loop (pv4, pv4_dp), so each thread's misses
   go out through the whole step, not in one burst a step. Issued together from the scores loop
   (Zen 4, alternated): fp32 0.79-0.89x; bf16 with equal sequence lengths (the threads' tasks in
   step) 0.73-0.86x in some runs and the same in others, with ragged lengths 0.91-1.06x.
   With the V rows into L1 (T0) instead of L2 the kernel read 0.78x (bf16, one run). */
INLINE void prefetch_k(const char* pk, int pkn, int j, int rows, int64_t rs, int64_t row_bytes) {
  for (int jj = j; jj < j + rows && jj < pkn; jj++)
    for (int64_t off = 0; off < row_bytes; off += 64) _mm_prefetch(pk + jj * rs + off, _MM_HINT_T1);
}

#ifndef __AVX512F__
/* Scores of 4 query heads (qf rows, D floats each) against n consecutive K rows (stride rs), in
   ymm (AVX2): two tokens per step, so each q vector feeds two FMAs and each K vector four. */
INLINE void scores4(const float* qf, int64_t D, const char* k, int64_t rs, int dt, int n,
                    float* s /* [4][MAXBS] */, const char* pk, int pkn) {
  const int es = dt == F32 ? 4 : dt == I8 ? 1 : 2;
  float r[8] __attribute__((aligned(32)));
  for (int j = 0; j < n; j += 2) {
    prefetch_k(pk, pkn, j, 2, rs, D * es);
    const char* k0 = k + j * rs;
    const char* k1 = j + 1 < n ? k0 + rs : k0;     /* odd n: the last token twice, one kept */
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    if (dt == BF16) {
      for (int64_t d = 0; d < D; d += 16) {
        __m256 x0, y0, x1, y1;
        load16_bf16(k0 + d * 2, &x0, &y0);
        load16_bf16(k1 + d * 2, &x1, &y1);
        for (int g = 0; g < 4; g++) {
          __m256 qv = _mm256_loadu_ps(qf + g * D + d), qw = _mm256_loadu_ps(qf + g * D + d + 8);
          a[2 * g] = _mm256_fmadd_ps(qw, y0, _mm256_fmadd_ps(qv, x0, a[2 * g]));
          a[2 * g + 1] = _mm256_fmadd_ps(qw, y1, _mm256_fmadd_ps(qv, x1, a[2 * g + 1]));
        }
      }
    } else {
      for (int64_t d = 0; d < D; d += 8) {
        __m256 x0 = load8(k0 + d * es, dt);
        __m256 x1 = load8(k1 + d * es, dt);
        for (int g = 0; g < 4; g++) {
          __m256 qv = _mm256_loadu_ps(qf + g * D + d);
          a[2 * g] = _mm256_fmadd_ps(qv, x0, a[2 * g]);
          a[2 * g + 1] = _mm256_fmadd_ps(qv, x1, a[2 * g + 1]);
        }
      }
    }
    _mm256_store_ps(r, hsum8(a));
    for (int g = 0; g < 4; g++) { s[g * MAXBS + j] = r[2 * g]; s[g * MAXBS + j + 1] = r[2 * g + 1]; }
  }
}
#endif

/* acc[g][:] += sum_j p[g][j] * V[j][:] for 4 heads, n consecutive V rows; 2 VW columns of D per
   pass (32 in zmm: D % 32 == 0; 16 in ymm) so each broadcast p feeds two FMAs (8 accumulators in
   registers). Each pass prefetches the lines of its columns in the rows AHEAD steps on (pv: pvn
   rows; see prefetch_k). */
INLINE void pv4(const float* p /* [4][MAXBS] */, const char* v, int64_t rs, int dt, int n,
                int64_t D, float* acc /* [4][D] */, const char* pv, int pvn) {
  const int es = dt == F32 ? 4 : dt == I8 ? 1 : 2;
  for (int64_t d = 0; d < D; d += 2 * VW) {
    vf a[8];
    for (int g = 0; g < 4; g++) {
      a[2 * g] = VLOAD(acc + g * D + d);
      a[2 * g + 1] = VLOAD(acc + g * D + d + VW);
    }
    const char* vp = v + d * es;
    const int64_t o0 = (d * es + 63) / 64 * 64, o1 = (d + 2 * VW) * es;  /* lines starting here */
    for (int j = 0; j < n; j++, vp += rs) {
      if (j < pvn) for (int64_t o = o0; o < o1; o += 64) _mm_prefetch(pv + j * rs + o, _MM_HINT_T1);
      vf x0, x1;
      load2(vp, dt, &x0, &x1);
      for (int g = 0; g < 4; g++) {
        const vf pb = VSET1(p[g * MAXBS + j]);
        a[2 * g] = VFMA(pb, x0, a[2 * g]);
        a[2 * g + 1] = VFMA(pb, x1, a[2 * g + 1]);
      }
    }
    for (int g = 0; g < 4; g++) {
      VSTORE(acc + g * D + d, a[2 * g]);
      VSTORE(acc + g * D + d + VW, a[2 * g + 1]);
    }
  }
}

#ifdef __AVX512F__
/* scores4 in zmm: four tokens a step, so each q vector feeds four instructions and each K vector
   four, and the 16 sums are reduced together (sum16). dp (bf16 q and K, AVX512_BF16): q and K
   pair up along D as stored, 32 elements a VDPBF16PS, the scale applied to the sums (q as given,
   in bf16); else K widened to fp32 in order, 16 elements an FMA, q pre-scaled in fp32. Rows
   past n are the last row again (never a row past the sequence); their scores land past n in
   s and are not used. */
INLINE void scores4_zmm(const void* q, int64_t D, const char* k, int64_t rs, int dt, int dp,
                        int n, float scale, float* s /* [4][MAXBS] */, const char* pk, int pkn) {
  const int es = dt == F32 ? 4 : dt == I8 ? 1 : 2;
  const __m512 sc = _mm512_set1_ps(scale);          /* dp only: q pre-scaled on the FMA path */
  for (int j0 = 0; j0 < n; j0 += 16) {
    __m512 r[4];                                   /* lane 4 g + t: head g, token j0 + 4 i + t */
    for (int i = 0; i < 4; i++) {
      const int j = j0 + 4 * i;
      if (j >= n) { r[i] = r[0]; continue; }
      prefetch_k(pk, pkn, j, 4, rs, D * es);
      const char* kt[4];
      for (int t = 0; t < 4; t++) kt[t] = k + (j + t < n ? j + t : n - 1) * rs;
      __m512 z[16];                                /* z[4 * token + head] */
      for (int c = 0; c < 16; c++) z[c] = _mm512_setzero_ps();
#if DPBF16
      if (dp) {
        const uint16_t* qb = (const uint16_t*)q;
        for (int64_t d = 0; d < D; d += 32) {
          __m512bh x[4];
          for (int t = 0; t < 4; t++) x[t] = (__m512bh)_mm512_loadu_si512(kt[t] + d * 2);
          for (int g = 0; g < 4; g++) {
            const __m512bh qv = (__m512bh)_mm512_loadu_si512(qb + g * D + d);
            for (int t = 0; t < 4; t++) z[4 * t + g] = _mm512_dpbf16_ps(z[4 * t + g], qv, x[t]);
          }
        }
      } else
#endif
      {
        const float* qf = (const float*)q;
        for (int64_t d = 0; d < D; d += 16) {
          __m512 x[4];
          for (int t = 0; t < 4; t++) x[t] = load16(kt[t] + d * es, dt);
          for (int g = 0; g < 4; g++) {
            const __m512 qv = _mm512_loadu_ps(qf + g * D + d);
            for (int t = 0; t < 4; t++) z[4 * t + g] = _mm512_fmadd_ps(qv, x[t], z[4 * t + g]);
          }
        }
      }
      r[i] = dp ? _mm512_mul_ps(sum16(z), sc) : sum16(z);
    }
    /* Head g's 16 scores from lane g of each r[i], stored as one row: the softmax's full-width
       loads then take them from the store (a load spanning several smaller stores waits for
       them to retire). */
#define ROW(G) _mm512_shuffle_f32x4(_mm512_shuffle_f32x4(r[0], r[1], G * 0x55), \
                                    _mm512_shuffle_f32x4(r[2], r[3], G * 0x55), 0x88)
    _mm512_storeu_ps(s + j0, ROW(0));
    _mm512_storeu_ps(s + MAXBS + j0, ROW(1));
    _mm512_storeu_ps(s + 2 * MAXBS + j0, ROW(2));
    _mm512_storeu_ps(s + 3 * MAXBS + j0, ROW(3));
#undef ROW
  }
}
#endif

#if DPBF16
/* pv4 for bf16 V through VDPBF16PS: p rounded to bf16 (round to nearest even), rows j and j + 1
   interleaved (unpack) so each lane pairs two tokens' values of one column with their two p.
   The unpacks work within 128-bit lanes, so each pass's 32 columns land permuted in the
   accumulator (dp_logical). An odd last row pairs with itself at p = 0: never a row past n,
   whose slots may hold NaN. Each pass prefetches its line of the rows AHEAD steps on, as pv4. */
INLINE void pv4_dp(const float* p /* [4][MAXBS] */, const char* v, int64_t rs, int n, int64_t D,
                   float* acc /* [4][D] */, const char* pv, int pvn) {
  /* p in bf16, token 2i's and 2i + 1's read as one 32-bit pair by memcpy: a uint16_t array
     read through a uint32_t lvalue breaks C's aliasing rules, and Clang then reads the pairs
     before pb[g][n] = 0 is stored */
  uint16_t pb[4][MAXBS + 2] __attribute__((aligned(64)));
  for (int g = 0; g < 4; g++) {
    for (int j = 0; j < n; j += 16)
      _mm256_storeu_si256((__m256i*)(pb[g] + j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(p + g * MAXBS + j)));
    pb[g][n] = 0;
  }
  for (int64_t d = 0; d < D; d += 32) {
    __m512 a[8];
    for (int g = 0; g < 4; g++) {
      a[2 * g] = _mm512_loadu_ps(acc + g * D + d);
      a[2 * g + 1] = _mm512_loadu_ps(acc + g * D + d + 16);
    }
    const char* vp = v + d * 2;
    for (int j = 0; j < n; j += 2, vp += 2 * rs) {
      for (int jj = j; jj < j + 2 && jj < pvn; jj++)
        _mm_prefetch(pv + jj * rs + d * 2, _MM_HINT_T1);
      const __m512i r0 = _mm512_loadu_si512(vp);
      const __m512i r1 = j + 1 < n ? _mm512_loadu_si512(vp + rs) : r0;
      const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
      const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
      for (int g = 0; g < 4; g++) {
        int32_t pair;
        memcpy(&pair, pb[g] + j, 4);
        const __m512bh pp = (__m512bh)_mm512_set1_epi32(pair);
        a[2 * g] = _mm512_dpbf16_ps(a[2 * g], lo, pp);
        a[2 * g + 1] = _mm512_dpbf16_ps(a[2 * g + 1], hi, pp);
      }
    }
    for (int g = 0; g < 4; g++) {
      _mm512_storeu_ps(acc + g * D + d, a[2 * g]);
      _mm512_storeu_ps(acc + g * D + d + 16, a[2 * g + 1]);
    }
  }
}
#endif

/* Rows x[g][0..n) *= c[0..n) for the gn heads of a group (rows MAXBS apart), a vector at a time:
   the softmax's full-width loads then take whole rows from these stores. */
INLINE void scale_rows(float* x, int gn, int n, const float* c) {
  for (int g = 0; g < gn; g++, x += MAXBS) {
    int j = 0;
    for (; j + VW <= n; j += VW) VSTORE(x + j, VMUL(VLOAD(x + j), VLOAD(c + j)));
    for (; j < n; j++) x[j] *= c[j];
  }
}

#if DPBF16
/* n INT8 rows of D (stride rs bytes) widened to bf16 rows of D in dst, exactly (an int8 has 8
   significant bits, a bf16 8): the VDPBF16PS loops then take INT8 KV as they take bf16, the
   scales folded into s and p as on the FMA path. The rows AHEAD steps on are prefetched here
   (pk: pkn rows), the loops that read dst being given none. */
INLINE void widen_rows(const char* src, int64_t rs, int n, int64_t D, uint16_t* dst,
                       const char* pk, int pkn) {
  for (int j = 0; j < n; j++) {
    if (j < pkn)
      for (int64_t o = 0; o < D; o += 64) _mm_prefetch(pk + j * rs + o, _MM_HINT_T1);
    for (int64_t d = 0; d < D; d += 32) {
      const char* r = src + j * rs + d;
      const __m512 lo = load16(r, I8), hi = load16(r + 16, I8);
      _mm512_storeu_si512(dst + j * D + d, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}
#endif

/* One task: sequence b, tokens [t0, t1), every KV head. Each block is consumed whole (all heads,
   K then V) while the rows AHEAD (block, head) steps on are prefetched. Per head h, query head
   group g: st[(h*G + g)] = (m, l) and acc rows [h][G4][D] (unnormalized). Always inlined into
   one copy per KV dtype (below), so every dtype switch is resolved at compile time and the inner
   loops keep their accumulators in registers. */
INLINE void attend(const void* q, int qdt, int kvdt, int64_t Hq, int64_t Hkv, int64_t D, int64_t G,
                   const char* k, const char* v, const void* ks, const void* vs, int64_t BS,
                   const int32_t* table, int64_t b, int64_t t0, int64_t t1, float scale,
                   float* m, float* l, float* acc, float* qf) {
  const int64_t G4 = (G + 3) / 4 * 4;
  const int es = kvdt == F32 ? 4 : kvdt == I8 ? 1 : 2;
  const int64_t rs = Hkv * D * es;                 /* bytes between slots of a block */
  float s[4 * MAXBS] __attribute__((aligned(64)));
  float ksc[MAXBS], vsc[MAXBS];                   /* INT8 KV: a (block, head)'s scales */
#if DPBF16
  uint16_t kb[MAXBS * MAXD] __attribute__((aligned(64)));  /* INT8 KV widened (widen_rows) */
  uint16_t vb[MAXBS * MAXD] __attribute__((aligned(64)));
#endif
  const int dp = uses_dp(qdt, kvdt);              /* q as given, in bf16 (scores4_zmm) */
  const int qes = qdt == F32 ? 4 : 2;
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t h = 0; h < Hkv; h++)                /* q rows, a vector at a time: once a task */
    for (int64_t g = 0; g < G4; g++) {
      const int64_t i = (h * G4 + g) * D;
      const char* qs = (const char*)q + (b * Hq + h * G + g) * D * qes;
      if (dp) {
        if (g < G) memcpy((uint16_t*)qf + i, qs, D * 2);
        else memset((uint16_t*)qf + i, 0, D * 2);
        continue;
      }
      if (g >= G) { memset(qf + i, 0, D * 4); continue; }
      for (int64_t d = 0; d < D; d += 16) {
        __m256 x = _mm256_mul_ps(load8(qs + d * qes, qdt), sc);
        __m256 y = _mm256_mul_ps(load8(qs + (d + 8) * qes, qdt), sc);
        if (kvdt == BF16 && BF16_PERMUTED) {      /* the order load16_bf16 widens K rows in */
          const __m256 t = x;
          x = _mm256_permute2f128_ps(t, y, 0x20);
          y = _mm256_permute2f128_ps(t, y, 0x31);
        }
        _mm256_storeu_ps(qf + i + d, x);
        _mm256_storeu_ps(qf + i + d + 8, y);
      }
    }
  for (int64_t i = 0; i < Hkv * G; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
  memset(acc, 0, sizeof(float) * Hkv * G4 * D);
  for (int64_t t = t0; t < t1;) {
    const int64_t blk = table[t / BS], slot = t % BS;
    const int n = (int)((t1 - t) < (BS - slot) ? (t1 - t) : (BS - slot));
    for (int64_t h = 0; h < Hkv; h++) {
      const int64_t row = (blk * BS + slot) * Hkv + h;    /* (token, head) row index */
      const char* kr = k + row * D * es;
      const char* vr = v + row * D * es;
      int pn;
      const int64_t prow = ahead_row(table, BS, Hkv, t, n, t1, h, row, &pn);
      const char* pk = k + prow * D * es;
      const char* pv = v + prow * D * es;
      if (ks)                                   /* INT8 KV: this (block, head)'s scales, once */
        for (int j = 0; j < n; j++) {
          ksc[j] = load1(ks, row + j * Hkv, qdt);
          vsc[j] = load1(vs, row + j * Hkv, qdt);
        }
      /* INT8 KV in the VDPBF16PS loops: K widened now, V before the first P.V; the loops then
         read bf16 rows D apart, their prefetches issued by widen_rows. */
#if DPBF16
      const int wide = dp && kvdt == I8;
      if (wide) widen_rows(kr, rs, n, D, kb, pk, pn);
      const char* kw = wide ? (const char*)kb : kr;
      const char* vw = wide ? (const char*)vb : vr;
#endif
      for (int64_t g0 = 0; g0 < G4; g0 += 4) {
        if (g0) pn = 0;                                 /* one group prefetches */
#ifdef __AVX512F__
        const void* qg = dp ? (const void*)((const uint16_t*)qf + (h * G4 + g0) * D)
                            : (const void*)(qf + (h * G4 + g0) * D);
#if DPBF16
        if (wide) scores4_zmm(qg, D, kw, D * 2, BF16, dp, n, scale, s, pk, 0);
        else
#endif
        scores4_zmm(qg, D, kr, rs, kvdt, dp, n, scale, s, pk, pn);
#else
        scores4(qf + (h * G4 + g0) * D, D, kr, rs, kvdt, n, s, pk, pn);
#endif
        const int gn = G - g0 < 4 ? (int)(G - g0) : 4;  /* real heads in this group */
        if (ks) scale_rows(s, gn, n, ksc);
        float alpha[4];
        for (int gi = 0; gi < gn; gi++)
          alpha[gi] = softmax1(s + gi * MAXBS, n, m + h * G + g0 + gi, l + h * G + g0 + gi);
        for (int gi = 0; gi < gn; gi++)
          if (alpha[gi] != 1.0f) {
            float* ag = acc + (h * G4 + g0 + gi) * D;
            const vf av = VSET1(alpha[gi]);
            for (int64_t d = 0; d < D; d += VW) VSTORE(ag + d, VMUL(av, VLOAD(ag + d)));
          }
        if (vs) scale_rows(s, gn, n, vsc);
        for (int gi = 0; gi < 4; gi++)                 /* padded heads: p = 0 */
          if (g0 + gi >= G) for (int j = 0; j < n; j++) s[gi * MAXBS + j] = 0.0f;
#if DPBF16
        if (wide && g0 == 0) widen_rows(vr, rs, n, D, vb, pv, pn);
        if (dp) pv4_dp(s, vw, wide ? D * 2 : rs, n, D, acc + (h * G4 + g0) * D, pv, wide ? 0 : pn);
        else
#endif
        pv4(s, vr, rs, kvdt, n, D, acc + (h * G4 + g0) * D, pv, pn);
      }
    }
    t += n;
  }
}

/* A row of D fp32 (D % 8 == 0) stored in out's dtype (odt: F32, BF16 or F16): bf16 rounded to
   nearest even with NaN kept a NaN, fp16 by F16C. The caller's tensor is written directly. */
INLINE void store_row(const float* r, void* o, int64_t D, int odt) {
  if (odt == F32) { memcpy(o, r, D * 4); return; }
  for (int64_t d = 0; d < D; d += 8) {
    const __m256 v = _mm256_loadu_ps(r + d);
    __m128i h;
    if (odt == F16) {
      h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m256i u = _mm256_castps_si256(v), odd = _mm256_set1_epi32(1);
      __m256i b = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)),
                                   _mm256_and_si256(_mm256_srli_epi32(u, 16), odd));
      b = _mm256_blendv_epi8(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x7FC0),
                             _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
      h = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    }
    _mm_storeu_si128((__m128i*)((uint16_t*)o + d), h);
  }
}

#else  /* ------------------------------------------------------------------------------------
   Portable C, for CPUs without AVX2, FMA and F16C (Arm; x86-64 before Haswell): the same tasks,
   scratch layout, online softmax and merge, in loops the compiler vectorizes for the target.
   Each (block, head)'s K and V rows are converted to fp32 once, into buffers of this thread's
   (8 KiB each for 16 tokens of D = 128), and shared by all G query heads; dot products keep PW
   independent partial sums, so vectorizing them needs no reassociation (no -ffast-math). */
enum { PW = 8 };
typedef union { float f; uint32_t u; } fu;

/* fp16 bits -> fp32: the fp16 fields moved into fp32's, exponent rebiased by 127 - 15; Inf and
   NaN get the rest of the all-ones exponent, subnormals are renormalized by one fp32 subtract.
   Selects, not branches, so the compiler vectorizes a row of them. */
INLINE float f16_to_f32(uint16_t h) {
#if defined(__aarch64__) && defined(__ARM_FP16_FORMAT_IEEE)
  __fp16 x;
  memcpy(&x, &h, 2);
  return (float)x;
#else
  const uint32_t em = (uint32_t)(h & 0x7fff) << 13, e = em & 0x0f800000u;
  const fu sub = {.f = ((fu){.u = em + 0x38800000u}).f - 6.103515625e-05f};  /* - 2^-14 */
  const uint32_t o = e == 0 ? sub.u : em + (e == 0x0f800000u ? 0x70000000u : 0x38000000u);
  return ((fu){.u = o | (uint32_t)(h & 0x8000) << 16}).f;
#endif
}

/* fp32 -> fp16 bits, rounded to nearest even: Inf from 65520 up, a NaN stays a NaN; below
   2^-14 adding 0.5 (whose ulp is fp16's subnormal step) rounds in the fp32 adder. */
INLINE uint16_t f32_to_f16(float f) {
  fu x = {.f = f};
  const uint32_t sign = x.u & 0x80000000u;
  uint32_t o;
  x.u ^= sign;
  if (x.u >= 0x47800000u) o = x.u > 0x7f800000u ? 0x7e00 : 0x7c00;
  else if (x.u < 0x38800000u) { x.f += 0.5f; o = x.u - 0x3f000000u; }
  else o = (x.u + 0xc8000fffu + ((x.u >> 13) & 1)) >> 13;  /* exponent - 112, round */
  return (uint16_t)(o | sign >> 16);
}

INLINE float load1(const void* p, int64_t i, int dt) {
  if (dt == F32) return ((const float*)p)[i];
  if (dt == BF16) { fu x = {.u = (uint32_t)((const uint16_t*)p)[i] << 16}; return x.f; }
  if (dt == F16) return f16_to_f32(((const uint16_t*)p)[i]);
  return (float)((const int8_t*)p)[i];
}

/* D elements of a row in dtype dt (bf16, fp16 or int8) -> fp32. */
INLINE void load_row(const char* p, int dt, int64_t D, fu* o) {
  const uint16_t* h = (const uint16_t*)p;
  if (dt == BF16) for (int64_t d = 0; d < D; d++) o[d].u = (uint32_t)h[d] << 16;
  else if (dt == F16) for (int64_t d = 0; d < D; d++) o[d].f = f16_to_f32(h[d]);
  else for (int64_t d = 0; d < D; d++) o[d].f = (float)((const int8_t*)p)[d];
}

INLINE void prefetch_row(const char* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 2);
}

/* max(m, x[0..n)); NaN if m or any x is NaN, as the x86 hmax. */
INLINE float hmax(const float* x, int n, float m) {
  int nan = m != m;
  for (int j = 0; j < n; j++) { nan |= x[j] != x[j]; m = x[j] > m ? x[j] : m; }
  return nan ? NAN : m;
}

/* x[j] = exp(x[j] - mt) for j < n, in place, by exp256's polynomial; returns their sum. n is
   rounded by adding 1.5 * 2^23 (fp32 addition rounds to nearest), whose low bits then hold it
   as an integer: no float-to-int conversion, so a NaN score stays NaN through the product. */
INLINE float exp_sum(float* x, int n, float mt) {
  float sum = 0.0f;
  for (int j = 0; j < n; j++) {
    const float y0 = x[j] - mt, y = y0 < EXP_MIN ? EXP_MIN : y0;
    const fu t = {.f = y * EXP_LOG2E + 12582912.0f};
    const float k = t.f - 12582912.0f, r = y - k * EXP_LN2_HI - k * EXP_LN2_LO;
    float p = EXP_P[0];
    for (int i = 1; i < 6; i++) p = p * r + EXP_P[i];
    p = p * (r * r) + (r + 1.0f);
    const fu e = {.u = (t.u - 0x4b400000u + 127u) << 23};
    x[j] = y0 < EXP_MIN ? 0.0f : p * e.f;
    sum += x[j];
  }
  return sum;
}

INLINE int uses_dp(int qdt, int kvdt) { (void)qdt; (void)kvdt; return 0; }
INLINE int64_t dp_logical(int64_t i) { return i; }
INLINE int64_t bf16_logical(int64_t i) { return i; }

/* A (block, head)'s n rows (rs bytes apart) in fp32: fp32 rows in place (*stride rs / 4), others
   converted into buf (*stride D). First the pn rows of the step AHEAD (from `ahead`) are
   prefetched: without, the kernel read 0.71x as fast (bf16 and fp32, 8 x 4096, built for plain
   x86-64 on a Zen 4). */
INLINE const float* block_rows(const char* r, int64_t rs, int dt, int n, int64_t D, fu* buf,
                               const char* ahead, int pn, int64_t* stride) {
  const int64_t rb = D * (dt == F32 ? 4 : dt == I8 ? 1 : 2);
  for (int j = 0; j < pn; j++) prefetch_row(ahead + j * rs, rb);
  if (dt == F32) { *stride = rs / 4; return (const float*)r; }
  for (int j = 0; j < n; j++) load_row(r + j * rs, dt, D, buf + j * D);
  *stride = D;
  return &buf[0].f;
}

/* The x86 attend's contract (above), in portable C: per (block, head), K's rows in fp32, then
   scores four query heads at a time (each K element loaded once for four products), the online
   softmax, and P.V four heads by PV columns at a time, the sums in locals across the block. */
enum { PV = 16 };

static _Thread_local fu kbuf[MAXBS * MAXD], vbuf[MAXBS * MAXD];
INLINE void attend(const void* q, int qdt, int kvdt, int64_t Hq, int64_t Hkv, int64_t D, int64_t G,
                   const char* k, const char* v, const void* ks, const void* vs, int64_t BS,
                   const int32_t* table, int64_t b, int64_t t0, int64_t t1, float scale,
                   float* m, float* l, float* acc, float* qf) {
  const int64_t G4 = (G + 3) / 4 * 4;
  const int es = kvdt == F32 ? 4 : kvdt == I8 ? 1 : 2;
  const int64_t rs = Hkv * D * es, rb = D * es;
  float s[4 * MAXBS], ksc[MAXBS], vsc[MAXBS];
  for (int64_t h = 0; h < Hkv; h++)
    for (int64_t g = 0; g < G4; g++) {
      float* qg = qf + (h * G4 + g) * D;
      for (int64_t d = 0; d < D; d++)
        qg[d] = g < G ? load1(q, (b * Hq + h * G + g) * D + d, qdt) * scale : 0.0f;
    }
  for (int64_t i = 0; i < Hkv * G; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
  memset(acc, 0, sizeof(float) * Hkv * G4 * D);
  for (int64_t t = t0; t < t1;) {
    const int64_t blk = table[t / BS], slot = t % BS;
    const int n = (int)((t1 - t) < (BS - slot) ? (t1 - t) : (BS - slot));
    for (int64_t h = 0; h < Hkv; h++) {
      const int64_t r0 = (blk * BS + slot) * Hkv + h;
      int pn;
      const int64_t prow = ahead_row(table, BS, Hkv, t, n, t1, h, r0, &pn);
      int64_t kst, vst;
      const float* kb = block_rows(k + r0 * rb, rs, kvdt, n, D, kbuf, k + prow * rb, pn, &kst);
      if (ks)
        for (int j = 0; j < n; j++) {
          ksc[j] = load1(ks, r0 + j * Hkv, qdt);
          vsc[j] = load1(vs, r0 + j * Hkv, qdt);
        }
      const float* vb = NULL;
      for (int64_t g0 = 0; g0 < G4; g0 += 4) {
        const float* q0 = qf + (h * G4 + g0) * D;
        float* a0 = acc + (h * G4 + g0) * D;
        const int gn = G - g0 < 4 ? (int)(G - g0) : 4;  /* real heads in this group */
        for (int j = 0; j < n; j++) {
          const float* kr = kb + j * kst;
          float p[4][PW] = {{0}};
          for (int64_t d = 0; d < D; d += PW)
            for (int i = 0; i < PW; i++)
              for (int gi = 0; gi < 4; gi++) p[gi][i] += q0[gi * D + d + i] * kr[d + i];
          for (int gi = 0; gi < 4; gi++) {
            float tot = 0.0f;
            for (int i = 0; i < PW; i++) tot += p[gi][i];
            s[gi * MAXBS + j] = ks ? tot * ksc[j] : tot;
          }
        }
        for (int gi = 0; gi < 4; gi++) {
          float* x = s + gi * MAXBS;
          if (gi >= gn) { for (int j = 0; j < n; j++) x[j] = 0.0f; continue; }  /* padded: p = 0 */
          float* mg = m + h * G + g0 + gi;
          const float mt = hmax(x, n, *mg);
          const float alpha = mt > *mg ? expf(*mg - mt) : 1.0f;
          l[h * G + g0 + gi] = l[h * G + g0 + gi] * alpha + exp_sum(x, n, mt);
          *mg = mt;
          if (alpha != 1.0f) for (int64_t d = 0; d < D; d++) a0[gi * D + d] *= alpha;
          if (vs) for (int j = 0; j < n; j++) x[j] *= vsc[j];
        }
        if (!vb) vb = block_rows(v + r0 * rb, rs, kvdt, n, D, vbuf, v + prow * rb, pn, &vst);
        for (int64_t d = 0; d < D; d += PV) {
          float o[4][PV];
          for (int gi = 0; gi < 4; gi++)
            for (int i = 0; i < PV; i++) o[gi][i] = a0[gi * D + d + i];
          for (int j = 0; j < n; j++) {
            const float* vr = vb + j * vst + d;
            for (int gi = 0; gi < 4; gi++)
              for (int i = 0; i < PV; i++) o[gi][i] += s[gi * MAXBS + j] * vr[i];
          }
          for (int gi = 0; gi < 4; gi++)
            for (int i = 0; i < PV; i++) a0[gi * D + d + i] = o[gi][i];
        }
      }
    }
    t += n;
  }
}

/* A row of D fp32 stored in out's dtype (odt): bf16 rounded to nearest even with NaN kept a
   NaN, fp16 by f32_to_f16. */
INLINE void store_row(const float* r, void* o, int64_t D, int odt) {
  if (odt == F32) { memcpy(o, r, D * 4); return; }
  uint16_t* h = (uint16_t*)o;
  for (int64_t d = 0; d < D; d++) {
    const fu x = {.f = r[d]};
    if (odt == F16) h[d] = f32_to_f16(r[d]);
    else h[d] = r[d] != r[d] ? 0x7fc0 : (uint16_t)((x.u + 0x7fff + ((x.u >> 16) & 1)) >> 16);
  }
}
#endif

#define ATTEND_FOR(NAME, DT) \
  static void NAME(const void* q, int qdt, int64_t Hq, int64_t Hkv, int64_t D, int64_t G, \
                   const char* k, const char* v, const void* ks, const void* vs, int64_t BS, \
                   const int32_t* table, int64_t b, int64_t t0, int64_t t1, float scale, \
                   float* m, float* l, float* acc, float* qf) { \
    attend(q, qdt, DT, Hq, Hkv, D, G, k, v, ks, vs, BS, table, b, t0, t1, scale, m, l, acc, qf); }
ATTEND_FOR(attend_f32, F32)
ATTEND_FOR(attend_bf16, BF16)
ATTEND_FOR(attend_f16, F16)
ATTEND_FOR(attend_i8, I8)
typedef void (*attend_fn)(const void*, int, int64_t, int64_t, int64_t, int64_t, const char*,
                          const char*, const void*, const void*, int64_t, const int32_t*, int64_t,
                          int64_t, int64_t, float, float*, float*, float*, float*);
static const attend_fn attend_dt[4] = {attend_f32, attend_bf16, attend_f16, attend_i8};

/* 1 where bf16 KV takes the VDPBF16PS loops in this build (AVX512_BF16), else 0. */
int bf16_dot_loops(void) { return DPBF16; }

/* out[b, hq, :] in odt (F32, BF16 or F16). part: scratch of B*S*per floats (per task: acc
   [Hkv][G4][D], m and l [Hkv*G], and q pre-scaled in fp32 [Hkv][G4][D]). */
int paged_attention(const void* q, int qdt, int kvdt, int64_t B, int64_t Hq, int64_t Hkv,
                    int64_t D, const void* k, const void* v, const void* ks, const void* vs,
                    int64_t BS, const int32_t* table, int64_t MB, const int32_t* lens,
                    float scale, int64_t S, int64_t split_tokens, float* part, void* out,
                    int odt, int nthreads) {
  const int64_t G = Hq / Hkv, G4 = (G + 3) / 4 * 4;
  if (D % 32 || D > MAXD || BS > MAXBS) return 1;
  const int64_t A = Hkv * G4 * D, per = 2 * A + 2 * Hq;
  #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t i = 0; i < B * S; i++) {
    const int64_t b = i / S, sp = i % S;
    const int64_t t0 = sp * split_tokens;
    int64_t t1 = t0 + split_tokens;
    if (t1 > lens[b]) t1 = lens[b];
    float* pp = part + i * per;
    if (t0 >= t1) {                                  /* empty split: weight 0 */
      for (int64_t g = 0; g < Hq; g++) { pp[A + g] = -INFINITY; pp[A + Hq + g] = 0.0f; }
      continue;
    }
    attend_dt[kvdt](q, qdt, Hq, Hkv, D, G, (const char*)k, (const char*)v, ks, vs, BS,
                    table + b * MB, b, t0, t1, scale, pp + A, pp + A + Hq, pp, pp + A + 2 * Hq);
  }
  #pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t bq = 0; bq < B * Hq; bq++) {
    const int64_t b = bq / Hq, hq = bq % Hq, h = hq / G, g = hq % G;
    float mx = -INFINITY, den = 0.0f;
    for (int64_t sp = 0; sp < S; sp++) {
      float mm = part[(b * S + sp) * per + A + hq];
      mx = mm > mx ? mm : mx;
    }
    float sum[MAXD] __attribute__((aligned(64)));  /* in the accumulators' order */
    for (int64_t d = 0; d < D; d++) sum[d] = 0.0f;
    for (int64_t sp = 0; sp < S; sp++) {
      const float* pp = part + (b * S + sp) * per;
      const float mm = pp[A + hq];
      if (mm == -INFINITY) continue;
      const float w = expf(mm - mx);
      den += w * pp[A + Hq + hq];
      const float* a = pp + (h * G4 + g) * D;
      for (int64_t d = 0; d < D; d++) sum[d] += w * a[d];
    }
    const float inv = 1.0f / den;
    float row[MAXD] __attribute__((aligned(64)));     /* put in order once */
    if (uses_dp(qdt, kvdt)) for (int64_t d = 0; d < D; d++) row[dp_logical(d)] = sum[d] * inv;
    else if (kvdt == BF16) for (int64_t d = 0; d < D; d++) row[bf16_logical(d)] = sum[d] * inv;
    else for (int64_t d = 0; d < D; d++) row[d] = sum[d] * inv;
    store_row(row, (char*)out + bq * D * (odt == F32 ? 4 : 2), D, odt);
  }
  return 0;
}
