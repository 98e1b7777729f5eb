/* GEMV for the CPU (AVX2 + FMA + F16C, OpenMP): INT8 (gemv_w8), INT4 (gemv_w4) and 16-bit or fp32
   (gemv_bf16) weights, x and y in bf16/fp16/fp32. Built and loaded by kernels/cbuild.py, called through ctypes by
   simd.py (which says why C and lists the tricks). Without AVX2 portable C computes the same;
   with AVX-512F the tiled INT4 loop at M = 1 (w4_asm.h), the INT8 loops and the 16-bit loop run on
   zmm registers. */
#include <stdint.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#else  /* cbuild.py's build without -fopenmp: one thread */
#define omp_get_thread_num() 0
#endif
#if defined(__AVX2__) || defined(__F16C__)  /* F16C alone: Ivy Bridge, Piledriver, Jaguar */
#include <immintrin.h>
#endif

enum { F32 = 0, BF16 = 1, F16 = 2, I8 = 3 };  /* I8: INT8 weights in the shared tile loop */
enum { PL = 16 };  /* lanes of the portable loops' partial sums (builds without AVX2) */
#define INLINE static inline __attribute__((always_inline))
/* The tiled INT4 loop through VDPBF16PS (w4dot_chunk) where the build has AVX512_BF16 */
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512F__) && defined(__AVX2__) \
    && defined(__F16C__)
#define W4DOT 1
#else
#define W4DOT 0
#endif

static inline float half_to_float(uint16_t h) {
#ifdef __F16C__
  return _cvtsh_ss(h);
#elif defined(__aarch64__) && defined(__ARM_FP16_FORMAT_IEEE)
  __fp16 f;
  memcpy(&f, &h, 2);
  return (float)f;
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
  if (dt == I8) return (float)((const int8_t*)p)[i];
  uint16_t h = ((const uint16_t*)p)[i];
  if (dt == BF16) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
  return half_to_float(h);
}

/* fp32 -> bf16 / fp16, round to nearest even, NaN kept: bit for bit what torch's .to() gives. */
static uint16_t float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

static uint16_t float_to_half(float f) {
#ifdef __F16C__
  return _cvtss_sh(f, 0);
#else
  uint32_t u, a, h, rem;
  memcpy(&u, &f, 4);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00;                  /* NaN */
  if (a >= 0x477FF000u) return sign | 0x7C00;                 /* >= 65520 rounds to inf */
  if (a < 0x38800000u) return sign | (uint16_t)rintf(fabsf(f) * 16777216.0f);  /* subnormal */
  h = (a >> 13) - (112u << 10);                               /* rebias 127 -> 15 */
  rem = a & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
  return sign | (uint16_t)h;
#endif
}

/* The result in the caller's dtype, written from C: converting in Python cost a tensor op and
   ~5-10 us a call, a few % of a 4096 x 4096 INT4 GEMV here. */
void store_out(const float* y, void* out, int64_t n, int odt) {
  int64_t i = 0;
  if (odt == F32) { if ((const void*)y != out) memcpy(out, y, n * 4); return; }
  uint16_t* o = (uint16_t*)out;
#if defined(__AVX2__) && defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(y + i);
    __m128i r;
    if (odt == F16) r = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else {
      const __m256i u = _mm256_castps_si256(v);
      __m256i b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)),
                       _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))), 16);
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      b = _mm256_blendv_epi8(b, _mm256_set1_epi32(0x7FC0), nan);
      r = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    }
    _mm_storeu_si128((__m128i*)(o + i), r);
  }
#endif
  for (; i < n; i++) o[i] = odt == F16 ? float_to_half(y[i]) : float_to_bf16(y[i]);
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

/* M = 1: R consecutive rows n share each load of x. With one row per pass, every 8 weights
   (8 bytes) need a 32-byte fp32 x load and the 32 KiB x vector (K = 8192) fights the weight
   stream for L1, so the loop runs at L2 speed on x; R = 4 cuts x traffic 4x. Two accumulators per
   row give 8 independent FMA chains (Zen 3: 4-cycle latency, 2 per cycle). With AVX-512F the
   loop takes 16 weights a widen and FMA (zmm), then ymm and scalar tails: on a Zen 4, whose
   widening and FMAs hold the ymm loop below its fast DRAM phases (35 GB/s with the weights in
   L3), 1.14x in L3 and 1.05-1.18x from DRAM.
   Each step prefetches its bytes two tiles ahead (a row is two 4 KiB pages at K = 8192 and
   hardware prefetchers stop at page edges) into L2 (T1): on that Zen 4 1.07-1.17x the same into
   L1 (T0), which itself read 1.18-1.32x no prefetch. A line is named in a prefetch each 16 bytes,
   four times: once a line was 2-5% slower. */
INLINE void w8_rows(const int8_t* q, const float* xf, int64_t K, const void* sc, int dt,
                    int64_t n, float* y, const int R) {
  int64_t k = 0;
  float out[4] = {0, 0, 0, 0};
#ifdef __AVX2__
  __m256 acc[4][2];
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
#ifdef __AVX512F__
  __m512 az[4][2];
  for (int r = 0; r < R; r++) az[r][0] = az[r][1] = _mm512_setzero_ps();
  for (; k + 32 <= K; k += 32) {
    for (int r = 0; r < R; r++) {
      _mm_prefetch((const char*)(q + (r + 8) * K + k), _MM_HINT_T1);
      _mm_prefetch((const char*)(q + (r + 8) * K + k + 16), _MM_HINT_T1);
    }
    for (int t = 0; t < 2; t++) {
      const __m512 xv = _mm512_loadu_ps(xf + k + 16 * t);
      for (int r = 0; r < R; r++) {
        const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            _mm_loadu_si128((const __m128i*)(q + r * K + k + 16 * t))));
        az[r][t] = _mm512_fmadd_ps(w, xv, az[r][t]);
      }
    }
  }
  for (int r = 0; r < R; r++) {  /* the zmm sums into the ymm loop's accumulators */
    const __m512 v = _mm512_add_ps(az[r][0], az[r][1]);
    acc[r][0] = _mm512_castps512_ps256(v);
    acc[r][1] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  }
#endif
  for (; k + 16 <= K; k += 16) {
    for (int r = 0; r < R; r++) _mm_prefetch((const char*)(q + (r + 8) * K + k), _MM_HINT_T1);
    for (int t = 0; t < 2; t++) {
      const __m256 xv = _mm256_loadu_ps(xf + k + 8 * t);
      for (int r = 0; r < R; r++) {
        __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + r * K + k + 8 * t))));
        acc[r][t] = _mm256_fmadd_ps(w, xv, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; r++) out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
#else
  /* portable: PL independent sums a row, which the compiler vectorizes without reassociating */
  float part[4][PL] = {{0}};
  for (; k + PL <= K; k += PL) {
    if (k % 64 == 0)
      for (int r = 0; r < R; r++) __builtin_prefetch(q + (r + 8) * K + k, 0, 2);
    for (int r = 0; r < R; r++)
      for (int i = 0; i < PL; i++) part[r][i] += xf[k + i] * (float)q[r * K + k + i];
  }
  for (int r = 0; r < R; r++) for (int i = 0; i < PL; i++) out[r] += part[r][i];
#endif
  for (int r = 0; r < R; r++) {
    float v = out[r];
    for (int64_t kk = k; kk < K; kk++) v += xf[kk] * (float)q[r * K + kk];
    y[r] = v * ld(sc, n + r, dt);
  }
}

static void w_tiles(const void* x, int dt, int64_t M, int64_t K, const void* w, int wdt,
                    const void* sc, int64_t N, float* y, float* scratch, int nthreads);

/* y: fp32 [M, N] (scratch unless odt is F32, then it may be out itself); out: [M, N] in odt.
   M > 1 takes the 16-bit GEMV's tile loop (w_tiles), the int8 widened as it loads. */
int gemv_w8(const void* x, int dt, int64_t M, int64_t K, const int8_t* qw, const void* scales,
            int64_t N, float* y, float* scratch, int nthreads, void* out, int odt) {
  if (M == 1) {
    const int64_t NT = N / 4;
    for (int64_t k = 0; k < (K + 31) / 32 * 32; k++) scratch[k] = k < K ? ld(x, k, dt) : 0.0f;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t <= NT; t++) {
      if (t < NT) w8_rows(qw + 4 * t * K, scratch, K, scales, dt, 4 * t, y + 4 * t, 4);
      else for (int64_t n = 4 * NT; n < N; n++) w8_rows(qw + n * K, scratch, K, scales, dt, n, y + n, 1);
    }
    store_out(y, out, N, odt);
    return 0;
  }
  w_tiles(x, dt, M, K, qw, I8, scales, N, y, scratch, nthreads);
  store_out(y, out, M * N, odt);
  return 0;
}

/* ---- INT4: y[m, n] = sum_g s[n,g] * (sum_{k in g} x[m,k] q[n,k] - z[n,g] * xsum[m,g]) ------ */

/* Weight layouts (tiled is 0 or 1): rows n = 4t..4t+3 start at word 4t * KW in both. Row layout
   (docs/kernels.md, Formats; read in place): row n's words are contiguous. Tiled (simd.py
   tile_int4_rows, when K % 64 == 0): each 8-word chunk of the four rows is stored together, 128
   contiguous bytes per chunk, rows beyond the last full tile stay in row layout. Why tile: at
   K = 8192 rows are 4 KiB apart, so the four rows read together (and the prefetches ahead of them)
   share L1 sets and alias at 4 KiB; one contiguous stream per tile avoids both and suits the
   hardware prefetchers. Tiles are further grouped W4_TB at a time and K cut into K-blocks of
   KBW = w4_kbw(KW) words per row (4096 k when K is a larger multiple of it, else all of K); a
   block's stream holds K-block 0 of all its tiles, then K-block 1, ...: the M = 1 loop walks it in
   that order so that the x slice of a K-block (16 KiB of fp32) stays in L1 while the weights
   stream past, instead of all of x (32 KiB at K = 8192, the whole L1) being refetched from L2 per
   tile. 4096 k, not 2048: with the scales out of the tile loop (w4_blocks), fewer, longer K-blocks
   measured +2-5% at 8192 x 8192 and the 8B shapes (A/B, 150 paired rounds; +-3% noise).
   Word i of a row (i % 8 == 0, the start of a chunk) is at wr + (i / KBW) * KBS + CS * (i % KBW):
   row layout (CS, KBW) = (1, KW); tiled, wr, CS and KBS come from w4_tiled_row. */
#define W4_TB 32    /* tiles per block (simd.py reads this) */
#define W4_KBW 512  /* words per row of a K-block: 4096 k (simd.py reads this) */
static int64_t w4_kbw(int64_t KW) { return KW > W4_KBW && KW % W4_KBW == 0 ? W4_KBW : KW; }
static int64_t w4_block_tiles(int64_t b, int64_t NT) { return (b + 1) * W4_TB <= NT ? W4_TB : NT - b * W4_TB; }

/* Row n < 4 * NT of the tiled layout: its word pointer for K-block 0 and the K-block stride. */
static const int32_t* w4_tiled_row(const int32_t* wr, int64_t n, int64_t KW, int64_t NT,
                                   int64_t* KBS) {
  const int64_t t = n / 4, b = t / W4_TB, KBW = w4_kbw(KW);
  *KBS = w4_block_tiles(b, NT) * 4 * KBW;
  return wr + b * W4_TB * 4 * KW + (t % W4_TB) * 4 * KBW + (n % 4) * 8;
}

/* xp[m][c][j][l] = x[m, 8i + j] * f[j] for word i = 8c + l, so one chunk's eight x vectors are
   contiguous; words past KW are zero. f[j] undoes the position of nibble j as unpacked (below). */
INLINE void w4_tile(const int32_t* wr, int64_t CS, int64_t KBW, int64_t KBS, int64_t KW, int64_t KW8,
                    int64_t WG, int64_t ng, const float* xp, const float* xs, const void* sc,
                    const void* zr, int dt, int64_t n, float* y, int64_t N, const int MT) {
  float corr[4] = {0, 0, 0, 0}, out[4];
  const int64_t XS = 8 * KW8;                       /* stride of xp between rows of x */
#ifdef __AVX2__
  const int A = MT == 1 ? 4 : MT == 2 ? 2 : 1;
  __m256 tot[4];
  for (int m = 0; m < MT; m++) tot[m] = _mm256_setzero_ps();
  const int64_t span = WG >= 8 ? WG : 8;            /* words between scale flushes */
  const int64_t gstep = WG >= 8 ? 1 : 2;            /* groups per flush (G = 32: two per vector) */
  int64_t i = 0, left = KBW;
  const int32_t* pw = wr;  /* word i's chunk, bumped per chunk: a division per chunk cost 5-17% */
  for (int64_t g = 0; g < ng; g += gstep) {
    __m256 dot[4][4];
    for (int m = 0; m < MT; m++) for (int a = 0; a < A; a++) dot[m][a] = _mm256_setzero_ps();
    for (int64_t c = 0; c < span; c += 8, i += 8) {
      __m256i w;
      if (i + 8 <= KW) {
        w = _mm256_loadu_si256((const __m256i*)pw);
        pw += 8 * CS;
        if ((left -= 8) == 0) { left = KBW; pw += KBS - KBW * CS; }   /* next K-block */
      }
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
  /* portable: the AVX2 loop above in GCC/Clang vector types of 128 bits, which the compiler maps
     to SSE2 or NEON registers (wider ones GCC 12 turns into scalar conversions on AArch64): a
     chunk's 8 words as two vectors of 4 lanes, nibble j into sum j % A (one sum would chain a
     chunk's 8 adds, each waiting for the last), scaled a group at a time into per-lane totals */
  typedef float v4f __attribute__((vector_size(16)));
  typedef uint32_t v4u __attribute__((vector_size(16)));
  typedef int32_t v4i __attribute__((vector_size(16)));
#ifdef __has_builtin
#if __has_builtin(__builtin_convertvector)
#define CVT_V4F(v) __builtin_convertvector(v, v4f)
#endif
#endif
#ifndef CVT_V4F  /* GCC before 10 has no __has_builtin; both compile to one conversion */
#define CVT_V4F(v) ((v4f){(float)(v)[0], (float)(v)[1], (float)(v)[2], (float)(v)[3]})
#endif
  const int A = MT == 1 ? 4 : MT == 2 ? 2 : 1;
  v4f tot[4][2];
  for (int m = 0; m < MT; m++) tot[m][0] = tot[m][1] = (v4f){0};
  const int64_t span = WG >= 8 ? WG : 8, gstep = WG >= 8 ? 1 : 2;
  int64_t i = 0, left = KBW;
  const int32_t* pw = wr;
  for (int64_t g = 0; g < ng; g += gstep) {
    v4f d[4][4][2];
    for (int m = 0; m < MT; m++) for (int a = 0; a < A; a++) d[m][a][0] = d[m][a][1] = (v4f){0};
    for (int64_t c = 0; c < span; c += 8, i += 8) {
      v4u w[2] = {{0}};  /* memcpy: qweight is bytes, and a word of it need not be 4-aligned */
      if (i + 8 <= KW) {
        memcpy(w, pw, sizeof w);
        pw += 8 * CS;
        if ((left -= 8) == 0) { left = KBW; pw += KBS - KBW * CS; }   /* next K-block */
      } else if (i < KW) {  /* the row layout's last chunk: words past KW are not read (x is 0) */
        memcpy(w, wr + i, (size_t)(KW - i) * sizeof(int32_t));
      }
      for (int j = 0; j < 8; j++)
        for (int h = 0; h < 2; h++) {
          const v4u nib = j < 7 ? w[h] & (0xFu << (4 * j)) : w[h] >> 28;
          const v4f wf = CVT_V4F((v4i)nib);  /* < 2^31: exact as signed */
          for (int m = 0; m < MT; m++) {
            v4f xv;
            memcpy(&xv, xp + m * XS + 8 * i + 8 * j + 4 * h, sizeof xv);
            d[m][j % A][h] += wf * xv;
          }
        }
    }
    const float s0 = ld(sc, n * ng + g, dt), z0 = ld(zr, n * ng + g, dt);
    float s1 = s0, z1 = 0.0f;
    if (gstep == 2) s1 = g + 1 < ng ? ld(sc, n * ng + g + 1, dt) : 0.0f;
    if (gstep == 2 && g + 1 < ng) z1 = ld(zr, n * ng + g + 1, dt);
    for (int m = 0; m < MT; m++) {
      for (int a = 1; a < A; a++) { d[m][0][0] += d[m][a][0]; d[m][0][1] += d[m][a][1]; }
      tot[m][0] += d[m][0][0] * s0;
      tot[m][1] += d[m][0][1] * s1;
      corr[m] += s0 * z0 * xs[m * ng + g];
      if (gstep == 2 && g + 1 < ng) corr[m] += s1 * z1 * xs[m * ng + g + 1];
    }
  }
  for (int m = 0; m < MT; m++) {
    const v4f t = tot[m][0] + tot[m][1];
    out[m] = (t[0] + t[1]) + (t[2] + t[3]);
  }
#undef CVT_V4F
#endif
  for (int m = 0; m < MT; m++) y[m * N] = out[m] - corr[m];
}

#if defined(__AVX2__) && defined(__F16C__)
/* M = 1 unpacks nibble j one of two ways (DN is a compile-time switch of w4_rows):
   - cvt: `word & (0xF << 4j)` is an exact integer, cvtdq2ps makes it a float, f[j] = 16^-j
     (j = 7: shift right by 28, f = 1). Per 8 weights: AND, CVT and FMA, all on the FP pipes.
   - denormal (DN): a word ANDed down to one nibble at bits p..p+3 (p <= 19) has its exponent bits
     clear, so its bits ARE the float q * 2^(p - 149), a denormal, exactly: the AND alone unpacks.
     Nibbles 0-3 sit at p = 4j; nibbles 4-7 overlap the exponent and sign, so the words are shifted
     right by 16 once per chunk and those are taken at p = 0, 4, 8, 12: four masks serve all
     eight (they stay in registers in the tiled loop). f[j] = 2^(149 - p - c) with c chosen per call from max|x| so that no scaled x overflows and the products q x 2^-c are normal
     floats; the total is scaled back by 2^c. Per 8 weights: AND and FMA (+1/8 shift), a third
     fewer FP-pipe ops: what lets the loop keep up with DRAM on Zen 3. AMD cores take denormal
     operands at full speed, Intel cores trap them to microcode (same result, slower), so "best for
     this CPU" picks DN on AMD only; DAZ (which would read the denormals as zero) is switched off
     inside the kernel. */
static const int W4_DPOS[8] = {0, 4, 8, 12, 0, 4, 8, 12};
#define W4_M8(v) {v, v, v, v, v, v, v, v}
static const int32_t W4_MASK[2][8][8] __attribute__((aligned(32))) = {
  {W4_M8(0xF), W4_M8(0xF0), W4_M8(0xF00), W4_M8(0xF000), W4_M8(0xF0000), W4_M8(0xF00000),
   W4_M8(0xF000000), W4_M8(0)},                                               /* cvt */
  {W4_M8(0xF), W4_M8(0xF0), W4_M8(0xF00), W4_M8(0xF000), W4_M8(0xF), W4_M8(0xF0),
   W4_M8(0xF00), W4_M8(0xF000)}};                                             /* DN */

/* The INT4 M = 1 inner loops, whole chunks of four rows, in inline asm: w4_asm.h. Tiled loops
   prefetch their stream W4_PREFETCH bytes ahead (into L1; w4dot_chunk into L2). */
#define W4_PREFETCH 4096
#include "w4_asm.h"

/* The same unpack for one word vector in intrinsics (tails, single rows); ws = w >> 16 for DN. */
INLINE __m256 w4_nib(__m256i w, __m256i ws, int j, const int DN) {
  if (DN) return _mm256_castsi256_ps(_mm256_and_si256(j < 4 ? w : ws, _mm256_set1_epi32(0xF << W4_DPOS[j])));
  return _mm256_cvtepi32_ps(j < 7 ? _mm256_and_si256(w, _mm256_set1_epi32(0xF << (4 * j)))
                                  : _mm256_srli_epi32(w, 28));
}

/* Group g's scale of one row for a vector of 8 words (G = 32: two groups, by halves). */
INLINE __m256 w4_sv(const float* s, int64_t g, int64_t ng, int64_t gstep) {
  return gstep == 1 ? _mm256_broadcast_ss(&s[g])
       : _mm256_set_m128(_mm_set1_ps(g + 1 < ng ? s[g + 1] : 0.0f), _mm_set1_ps(s[g]));
}

/* End of a group: tot[r] += (d[r] + e[r]) * scale. */
INLINE void w4_flush(float tot[4][8], const __m256* d, const __m256* e, float* const* sf, int64_t g,
                     int64_t ng, int64_t gstep, const int R) {
  for (int r = 0; r < R; r++)
    _mm256_store_ps(tot[r], _mm256_fmadd_ps(_mm256_add_ps(d[r], e[r]), w4_sv(sf[r], g, ng, gstep),
                                            _mm256_load_ps(tot[r])));
}

#ifdef __AVX512F__
/* The same for the zmm tile forms: a[] holds rows 0-1 (a ymm each), b[] rows 2-3. */
INLINE __m512 w4z_pair(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                                             _mm256_castps_pd(hi), 1));
}
INLINE void w4z_flush_sums(float tot[4][8], __m512 sa, __m512 sb, float* const* sf, int64_t g,
                           int64_t ng, int64_t gstep) {
  const __m512 va = w4z_pair(w4_sv(sf[0], g, ng, gstep), w4_sv(sf[1], g, ng, gstep));
  const __m512 vb = w4z_pair(w4_sv(sf[2], g, ng, gstep), w4_sv(sf[3], g, ng, gstep));
  _mm512_store_ps(tot[0], _mm512_fmadd_ps(sa, va, _mm512_load_ps(tot[0])));
  _mm512_store_ps(tot[2], _mm512_fmadd_ps(sb, vb, _mm512_load_ps(tot[2])));
}
INLINE void w4z_flush(float tot[4][8], const __m512* a, const __m512* b, float* const* sf, int64_t g,
                      int64_t ng, int64_t gstep) {
  const __m512 sa = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
  const __m512 sb = _mm512_add_ps(_mm512_add_ps(b[0], b[1]), _mm512_add_ps(b[2], b[3]));
  w4z_flush_sums(tot, sa, sb, sf, g, ng, gstep);
}
#endif

#if W4DOT
/* The M = 1 loops for bf16 x through VDPBF16PS (unpack 3, "dot"; tiled and row layout): each
   nibble is looked up as a bf16 (VPERMW from a 32-entry table, the index's fifth bit, the next
   nibble's, picking the same value) and each 32-bit lane pairs nibble j of its word's low half
   with nibble j + 4 of its high half against x[8i + j] and x[8i + j + 4] (xb, see gemv_w4), so
   one VDPBF16PS takes 32 weights: per chunk (256 weights) 2 loads, 6 shifts, 8 lookups, 4 x
   broadcasts and 8 VDPBF16PS, where the DN loop takes 44 ops. The products are exact (q <= 15, x as given), summed
   in fp32, as the FMA loops do. Accumulators as w4_asm.h's zmm forms: a rows 0-1, b rows 2-3,
   by nibble j % 4, so w4z_flush takes them. It prefetches its stream W4_PREFETCH bytes ahead into
   L2 (T1: 1.06-1.22x T0 from DRAM on a Zen 4, where the asm loops read 0.96-0.99x with T1). On
   that Zen 4 (256-bit datapaths), against the DN loop: 1.49x the bytes a second on one core with
   the weights in L1/L2; tiled 1.33x in L3 and 1.15x from DRAM at 28672 x 4096, the row layout
   1.22-1.34x there (w4_rows, which prefetches as its DN loop does). */
static const uint16_t W4_BF16_NIB[32] __attribute__((aligned(64))) = {
  0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
  0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170,
  0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0,
  0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170};
INLINE void w4dot_words(__m512i w01, __m512i w23, const uint16_t* xq, __m512* a, __m512* b,
                        const __m512i tbl) {
  for (int j = 0; j < 4; j++) {
    const __m512bh xv = (__m512bh)_mm512_broadcast_i64x4(
        _mm256_loadu_si256((const __m256i*)(xq + 16 * j)));
    a[j] = _mm512_dpbf16_ps(a[j], (__m512bh)_mm512_permutexvar_epi16(w01, tbl), xv);
    b[j] = _mm512_dpbf16_ps(b[j], (__m512bh)_mm512_permutexvar_epi16(w23, tbl), xv);
    w01 = _mm512_srli_epi16(w01, 4);
    w23 = _mm512_srli_epi16(w23, 4);
  }
}
/* A chunk of the tiled layout: rows 0-1 then 2-3, 64 contiguous bytes each. */
INLINE void w4dot_chunk(const int32_t* p, const uint16_t* xq, __m512* a, __m512* b,
                        const __m512i tbl) {
  _mm_prefetch((const char*)p + W4_PREFETCH, _MM_HINT_T1);
  _mm_prefetch((const char*)p + W4_PREFETCH + 64, _MM_HINT_T1);
  w4dot_words(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 16), xq, a, b, tbl);
}
/* A chunk of the row layout: 8 words of each of four rows RS words apart, paired into zmm. */
INLINE __m512i w4_pair_rows(const int32_t* p0, const int32_t* p1) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)p0)),
                            _mm256_loadu_si256((const __m256i*)p1), 1);
}
INLINE void w4dot_rows(const int32_t* p, int64_t RS, const uint16_t* xq, __m512* a, __m512* b,
                       const __m512i tbl) {
  w4dot_words(w4_pair_rows(p, p + RS), w4_pair_rows(p + 2 * RS, p + 3 * RS), xq, a, b, tbl);
}
#endif

INLINE float w4_total(const float* tot, const int DN, int csh) {
  const float t = hsum(_mm256_load_ps(tot));
  return DN ? ldexpf(t, csh) : t;
}

INLINE __m256 ld8(const void* x, int64_t k, int dt) {
  return dt == F32 ? _mm256_loadu_ps((const float*)x + k)
       : dt == I8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)((const int8_t*)x + k))))
       : dt == BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(
                        _mm_loadu_si128((const __m128i*)((const uint16_t*)x + k))), 16))
       : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + k)));
}

/* Scales of one row's groups o .. o + cnt - 1 to fp32 in sf; returns sum_g s z xs[g], the row's
   zero-point term. Done once per row before the loop over its weights (tiled: for all of a block's
   rows before its loop): per group inside it (scalar loads, dtype branches) it took ~15% of the
   time. */
INLINE float w4_scales(const void* sc, const void* zr, int dt, int64_t o, int64_t cnt,
                       const float* xs, float* sf) {
  int64_t g = 0;
  __m256 cv = _mm256_setzero_ps();
  for (; g + 8 <= cnt; g += 8) {
    const __m256 s8 = ld8(sc, o + g, dt), z8 = ld8(zr, o + g, dt);
    _mm256_storeu_ps(sf + g, s8);
    cv = _mm256_fmadd_ps(_mm256_mul_ps(s8, z8), _mm256_loadu_ps(xs + g), cv);
  }
  float corr = hsum(cv);
  for (; g < cnt; g++) { sf[g] = ld(sc, o + g, dt); corr += sf[g] * ld(zr, o + g, dt) * xs[g]; }
  return corr;
}

/* M = 1 in row layout (DESIGN's, read in place): R consecutive rows n of y = W x, R = 4 or 1.
   - 4 rows share each x-vector load: one row per pass needs a 32-byte x load per 4 bytes of weights.
   - Prefetch: a row is one 4 KiB page at K = 8192 and hardware prefetchers stop at page edges, so
     each chunk prefetches the same words W4_PF rows (two tiles) ahead, into L2 (T1: those lines
     share the L1 sets of the current rows).
   - Whole chunks of 4 rows take a loop with nothing but asm blocks and pointer bumps: the
     general loop's per-chunk checks cost ~8% from DRAM and ~20% from L3.
   (Folding x and the masks into the ANDs/FMAs as memory operands was slower: 3x the load uops.) */
#define W4_PF 8
#define W4_MAXG 1024  /* groups per row on the M = 1 paths (K <= 32768 at G = 32) */
INLINE void w4_rows(const int32_t* wr, int64_t KW, int64_t WG, int64_t ng, const float* xp,
                    const float* xs, const void* sc, const void* zr, int dt, int64_t n, float* y,
                    const int R, const int DN, int csh, const uint16_t* xb, const int DOT) {
  (void)xb, (void)DOT;                                   /* used where the build has W4DOT */
  const int64_t RS = KW;
  float sfb[4 * W4_MAXG] __attribute__((aligned(32))), corr[4] = {0, 0, 0, 0};
  float* sf[4] = {sfb, sfb + ng, sfb + 2 * ng, sfb + 3 * ng};  /* rows ng apart, not 4 KiB */
  { /* the next tile's scales and zeros, so that its prologue does not wait on DRAM */
    const int64_t es = dt == F32 ? 4 : 2, nb = R * ng * es, o = (n + R) * ng * es;
    for (int64_t b = 0; b < nb; b += 64) {
      _mm_prefetch((const char*)sc + o + b, _MM_HINT_T0);
      _mm_prefetch((const char*)zr + o + b, _MM_HINT_T0);
    }
  }
  for (int r = 0; r < R; r++) corr[r] = w4_scales(sc, zr, dt, (n + r) * ng, ng, xs, sf[r]);
  /* Group totals stay in memory (touched once per group) so the 8 accumulators keep registers. */
  float tot[4][8] __attribute__((aligned(64)));   /* w4z_flush: aligned zmm loads and stores */
  for (int r = 0; r < R; r++) _mm256_store_ps(tot[r], _mm256_setzero_ps());
  const int64_t span = WG >= 8 ? WG : 8, gstep = WG >= 8 ? 1 : 2;
  if (R == 4 && KW % 8 == 0) {  /* the hot loop: 4 rows, whole chunks, no per-chunk branches */
    const int32_t* p = wr;
    const float* xc = xp;
#if W4DOT
    if (DOT) {   /* bf16 x through VDPBF16PS (w4dot_words), xb in xp's order */
      const __m512i tbl = _mm512_load_si512(W4_BF16_NIB);
      const uint16_t* xq = xb;
      for (int64_t g = 0; g < ng; g += gstep) {
        __m512 a[4], b[4];
        for (int j = 0; j < 4; j++) a[j] = b[j] = _mm512_setzero_ps();
        for (int64_t c = 0; c < span; c += 8, p += 8, xq += 64) {
          for (int r = 0; r < 4; r++) _mm_prefetch((const char*)(p + (r + W4_PF) * RS), _MM_HINT_T1);
          w4dot_rows(p, RS, xq, a, b, tbl);
        }
        w4z_flush(tot, a, b, sf, g, ng, gstep);
      }
      for (int r = 0; r < 4; r++) y[r] = w4_total(tot[r], 0, 0) - corr[r];
      return;
    }
#endif
    for (int64_t g = 0; g < ng; g += gstep) {
      __m256 d[4], e[4];
      for (int r = 0; r < 4; r++) d[r] = e[r] = _mm256_setzero_ps();
      for (int64_t c = 0; c < span; c += 8, p += 8, xc += 64) {
        for (int r = 0; r < 4; r++) _mm_prefetch((const char*)(p + (r + W4_PF) * RS), _MM_HINT_T1);
        if (DN) W4_CHUNK4_DN(p, p + RS, p + 2 * RS, p + 3 * RS, xc, d, e);
        else W4_CHUNK4_CVT(p, p + RS, p + 2 * RS, p + 3 * RS, xc, d, e);
      }
      w4_flush(tot, d, e, sf, g, ng, gstep, 4);
    }
    for (int r = 0; r < 4; r++) y[r] = w4_total(tot[r], DN, csh) - corr[r];
    return;
  }
  /* Single rows, or K % 64 != 0. */
  int64_t i = 0;
  for (int64_t g = 0; g < ng; g += gstep) {
    __m256 d[4], e[4];
    for (int r = 0; r < R; r++) d[r] = e[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < span; c += 8, i += 8) {
      for (int r = 0; r < R; r++) _mm_prefetch((const char*)(wr + (r + W4_PF) * RS + i), _MM_HINT_T1);
      if (R == 4 && i + 8 <= KW) {
        const int32_t *p0 = wr + i, *p1 = p0 + RS, *p2 = p1 + RS, *p3 = p2 + RS;
        if (DN) W4_CHUNK4_DN(p0, p1, p2, p3, xp + 8 * i, d, e);
        else W4_CHUNK4_CVT(p0, p1, p2, p3, xp + 8 * i, d, e);
        continue;
      }
      __m256i w[4], ws[4];
      if (i + 8 <= KW) {
        for (int r = 0; r < R; r++) w[r] = _mm256_loadu_si256((const __m256i*)(wr + r * RS + i));
      } else {                                      /* last chunk of a row layout, KW % 8 != 0 */
        const __m256i mk = _mm256_setr_epi32(-(i + 0 < KW), -(i + 1 < KW), -(i + 2 < KW), -(i + 3 < KW),
                                             -(i + 4 < KW), -(i + 5 < KW), -(i + 6 < KW), -(i + 7 < KW));
        for (int r = 0; r < R; r++) w[r] = _mm256_maskload_epi32(wr + r * RS + i, mk);
      }
      for (int r = 0; r < R; r++) ws[r] = _mm256_srli_epi32(w[r], 16);
      for (int j = 0; j < 8; j++) {
        const __m256 xv = _mm256_loadu_ps(xp + 8 * i + 8 * j);
        for (int r = 0; r < R; r++) {
          if (j % 2) e[r] = _mm256_fmadd_ps(w4_nib(w[r], ws[r], j, DN), xv, e[r]);
          else d[r] = _mm256_fmadd_ps(w4_nib(w[r], ws[r], j, DN), xv, d[r]);
        }
      }
    }
    w4_flush(tot, d, e, sf, g, ng, gstep, R);
  }
  for (int r = 0; r < R; r++) y[r] = w4_total(tot[r], DN, csh) - corr[r];
}

#if W4DOT
/* M > 1: MT rows of x (1-4) against each looked-up vector, so a chunk's loads, shifts and lookups
   (16 ops) serve 8 MT VDPBF16PS where MT passes of the M = 1 loop take 28 MT ops and read the
   weights MT times. x row m's bf16 are XQS apart in xq; two accumulators a side and row of x
   (nibble j % 2) keep 4 MT + 6 zmm registers. */
INLINE void w4dot_words_m(__m512i w01, __m512i w23, const uint16_t* xq, int64_t XQS,
                          __m512 (*a)[2], __m512 (*b)[2], const __m512i tbl, const int MT) {
  for (int j = 0; j < 4; j++) {
    const __m512bh p01 = (__m512bh)_mm512_permutexvar_epi16(w01, tbl);
    const __m512bh p23 = (__m512bh)_mm512_permutexvar_epi16(w23, tbl);
    for (int m = 0; m < MT; m++) {
      const __m512bh xv = (__m512bh)_mm512_broadcast_i64x4(
          _mm256_loadu_si256((const __m256i*)(xq + m * XQS + 16 * j)));
      a[m][j % 2] = _mm512_dpbf16_ps(a[m][j % 2], p01, xv);
      b[m][j % 2] = _mm512_dpbf16_ps(b[m][j % 2], p23, xv);
    }
    w01 = _mm512_srli_epi16(w01, 4);
    w23 = _mm512_srli_epi16(w23, 4);
  }
}

/* M > 1 (bf16 x): one 4-row tile for MT rows of x, in either layout (w4_tile_m's walk: row r of
   a chunk RO words after row 0, chunks 8 CS words apart, K-blocks KBW words a row, KBS apart);
   the tile stays in L1/L2 between the passes over the rows of x. */
INLINE void w4dot_tile_m(const int32_t* wr, int64_t RO, int64_t CS, int64_t KBW, int64_t KBS,
                         int64_t WG, int64_t ng, const float* xs, const void* sc, const void* zr,
                         int dt, int64_t n, float* y, int64_t N, const uint16_t* xb, int64_t XQS,
                         const int MT) {
  const int64_t span = WG >= 8 ? WG : 8, gstep = WG >= 8 ? 1 : 2;
  float sfb[4 * W4_MAXG] __attribute__((aligned(32))), corr[4][4];
  float* sf[4] = {sfb, sfb + ng, sfb + 2 * ng, sfb + 3 * ng};
  for (int r = 0; r < 4; r++)
    for (int m = 0; m < MT; m++) corr[m][r] = w4_scales(sc, zr, dt, (n + r) * ng, ng, xs + m * ng, sf[r]);
  float tot[4][4][8] __attribute__((aligned(64)));
  for (int m = 0; m < MT; m++) for (int r = 0; r < 4; r++) _mm256_store_ps(tot[m][r], _mm256_setzero_ps());
  const __m512i tbl = _mm512_load_si512(W4_BF16_NIB);
  const int32_t* p = wr;
  const uint16_t* xq = xb;
  int64_t left = KBW;
  for (int64_t g = 0; g < ng; g += gstep) {
    __m512 a[4][2], b[4][2];
    for (int m = 0; m < MT; m++) a[m][0] = a[m][1] = b[m][0] = b[m][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < span; c += 8, xq += 64) {
      __m512i w01, w23;
      if (CS == 1) {   /* row layout: rows pages apart, prefetched two tiles ahead into L2 */
        for (int r = 0; r < 4; r++) _mm_prefetch((const char*)(p + (r + W4_PF) * RO), _MM_HINT_T1);
        w01 = w4_pair_rows(p, p + RO);
        w23 = w4_pair_rows(p + 2 * RO, p + 3 * RO);
      } else {         /* tiled: the chunk's 128 contiguous bytes, one stream */
        _mm_prefetch((const char*)p + W4_PREFETCH, _MM_HINT_T1);
        _mm_prefetch((const char*)p + W4_PREFETCH + 64, _MM_HINT_T1);
        w01 = _mm512_loadu_si512(p);
        w23 = _mm512_loadu_si512(p + 16);
      }
      w4dot_words_m(w01, w23, xq, XQS, a, b, tbl, MT);
      p += 8 * CS;
      if ((left -= 8) == 0) { left = KBW; p += KBS - KBW * CS; }   /* tiled: next K-block */
    }
    for (int m = 0; m < MT; m++)
      w4z_flush_sums(tot[m], _mm512_add_ps(a[m][0], a[m][1]), _mm512_add_ps(b[m][0], b[m][1]), sf,
                     g, ng, gstep);
  }
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < 4; r++) y[m * N + n + r] = w4_total(tot[m][r], 0, 0) - corr[m][r];
}
#endif

/* M = 1 in the tiled layout: S blocks of nb tiles each (4 nb rows from n0[s]), walked together
   K-block by K-block (see the layout above). First all the blocks' scales to fp32 (sfb, this
   thread's scratch) and their rows' zero-point terms, in one pass over their contiguous runs; then
   per tile and K-block, group by group and block by block, whole chunks in asm blocks of two
   (G >= 128) or one, each prefetching W4_PREFETCH bytes ahead in its block's stream
   (without it, ~20% slower from DRAM). Tiles' group totals wait in tot between K-blocks.
   - S = 2 streams: one core reading one stream gets ~11 GB/s here, two streams interleaved at
     fine grain ~14 (the hardware prefetchers run ahead in each), so each thread reads two blocks
     at once; they share x's slice (same K-block, same groups).
   - The scales out of the tile loop: per tile and K-block, the same work cost ~12% from DRAM. */
INLINE void w4_blocks(const int32_t* const* bp, const int S, int64_t nb, int64_t KW, int64_t WG,
                      int64_t ng, const float* xp, const float* xs, const void* sc, const void* zr,
                      int dt, const int64_t* n0, float* y, float* sfb, const int DN, int csh,
                      const uint16_t* xb, const int DOT) {
  (void)xb, (void)DOT;                                   /* used where the build has W4DOT */
  const int64_t KBW = w4_kbw(KW), KBG = ng * KBW / KW;   /* words and groups per K-block */
  const int64_t span = WG >= 8 ? WG : 8, gstep = WG >= 8 ? 1 : 2;
  float tot[2][W4_TB][4][8] __attribute__((aligned(64))), corr[2][W4_TB * 4];
#ifdef __AVX512F__
  const __m512i mk[4] = {_mm512_set1_epi32(0xF), _mm512_set1_epi32(0xF0), _mm512_set1_epi32(0xF00),
                         _mm512_set1_epi32(0xF000)};   /* DN's masks, in registers all along */
#else
  const __m256i mk[4] = {_mm256_set1_epi32(0xF), _mm256_set1_epi32(0xF0), _mm256_set1_epi32(0xF00),
                         _mm256_set1_epi32(0xF000)};
#endif
  const int32_t* p[2] = {bp[0], bp[S - 1]};
  for (int s = 0; s < S; s++) {
    for (int64_t i = 0; i < 4 * nb; i++)
      corr[s][i] = w4_scales(sc, zr, dt, (n0[s] + i) * ng, ng, xs, sfb + (s * 4 * W4_TB + i) * ng);
    for (int64_t t = 0; t < nb; t++)
      for (int r = 0; r < 4; r++) _mm256_store_ps(tot[s][t][r], _mm256_setzero_ps());
  }
  for (int64_t g0 = 0; g0 < ng; g0 += KBG) {
    const float* xk = xp + 8 * KW * g0 / ng;
    for (int64_t t = 0; t < nb; t++) {
      float* sf[2][4];
      for (int s = 0; s < S; s++)
        for (int r = 0; r < 4; r++) sf[s][r] = sfb + (s * 4 * W4_TB + 4 * t + r) * ng + g0;
      for (int64_t g = 0; g < KBG; g += gstep) {
        const float* xg = xk + 64 * (g / gstep) * (span / 8);
        for (int s = 0; s < S; s++) {
          const float* xc = xg;
          int64_t c = 0;
#ifdef __AVX512F__
          __m512 a[4], b[4];
          for (int j = 0; j < 4; j++) a[j] = b[j] = _mm512_setzero_ps();
#if W4DOT
          if (DOT) {   /* xb holds x as xp does, a bf16 where xp has a float (gemv_w4) */
            const __m512i tbl = _mm512_load_si512(W4_BF16_NIB);
            const uint16_t* xq = xb + (xc - xp);
            for (; c < span; c += 8, p[s] += 32, xq += 64) w4dot_chunk(p[s], xq, a, b, tbl);
          }
#endif
          for (; c + 16 <= span; c += 16, p[s] += 64, xc += 128) {
            if (DN) W4Z_TILE2_DN(p[s], xc, a, b, mk);
            else W4Z_TILE2_CVT(p[s], xc, a, b);
          }
          for (; c < span; c += 8, p[s] += 32, xc += 64) {
            if (DN) W4Z_TILE_DN(p[s], xc, a, b, mk);
            else W4Z_TILE_CVT(p[s], xc, a, b);
          }
          w4z_flush(tot[s][t], a, b, sf[s], g, KBG, gstep);
#else
          __m256 d[4], e[4];
          for (int r = 0; r < 4; r++) d[r] = e[r] = _mm256_setzero_ps();
          for (; c + 16 <= span; c += 16, p[s] += 64, xc += 128) {
            if (DN) W4_TILE2_DN(p[s], xc, d, e, mk);
            else W4_TILE2_CVT(p[s], xc, d, e);
          }
          for (; c < span; c += 8, p[s] += 32, xc += 64) {
            if (DN) W4_TILE_DN(p[s], xc, d, e, mk);
            else W4_TILE_CVT(p[s], xc, d, e);
          }
          w4_flush(tot[s][t], d, e, sf[s], g, KBG, gstep, 4);
#endif
        }
      }
    }
  }
  for (int s = 0; s < S; s++)
    for (int64_t t = 0; t < nb; t++)
      for (int r = 0; r < 4; r++) y[n0[s] + 4 * t + r] = w4_total(tot[s][t][r], DN, csh) - corr[s][4 * t + r];
}

/* The shift c of the DN path: max|x| < 2^e, c = max(e + 24, 22) keeps every x * 2^(149 - p - c)
   below 2^125 and every factor 2^(149 - p - c) a finite float. */
static int w4_dn_shift(const void* x, int64_t K, int dt) {
  __m256 mx = _mm256_setzero_ps();
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(ld8(x, k, dt), absm));
  float t8[8], amax = 0.0f;
  _mm256_storeu_ps(t8, mx);
  for (int l = 0; l < 8; l++) amax = t8[l] > amax ? t8[l] : amax;
  for (; k < K; k++) { float a = fabsf(ld(x, k, dt)); amax = a > amax ? a : amax; }
  int e = 0;
  if (isfinite(amax)) frexpf(amax, &e);
  return e + 24 > 22 ? e + 24 : 22;
}
/* M > 1 without the dot loops: one 4-row tile (either layout: row r of a chunk RO words after
   row 0, chunks 8 CS words apart, K-blocks as w4_tile walks them) for MT rows of x, each word
   vector unpacked once (DN: an AND; cvt: AND and CVT) for the MT rows, which each add an FMA. The
   M = 1 kernel once per row of x unpacks every weight M times and reads it M times. */
#ifdef __AVX512F__
#define W4_MT 4   /* rows of x a pass: 4 MT accumulators, of 32 vector registers */
#else
#define W4_MT 2   /* of 16 */
#endif
INLINE void w4_tile_m(const int32_t* wr, int64_t RO, int64_t CS, int64_t KBW, int64_t KBS,
                      int64_t WG, int64_t ng, const float* xp, int64_t XS, const float* xs,
                      const void* sc, const void* zr, int dt, int64_t n, float* y, int64_t N,
                      const int MT, const int DN, int csh) {
  float sfb[4 * W4_MAXG] __attribute__((aligned(32))), corr[W4_MT][4];
  float* sf[4] = {sfb, sfb + ng, sfb + 2 * ng, sfb + 3 * ng};
  for (int r = 0; r < 4; r++)
    for (int m = 0; m < MT; m++) corr[m][r] = w4_scales(sc, zr, dt, (n + r) * ng, ng, xs + m * ng, sf[r]);
  float tot[W4_MT][4][8] __attribute__((aligned(32)));
  for (int m = 0; m < MT; m++) for (int r = 0; r < 4; r++) _mm256_store_ps(tot[m][r], _mm256_setzero_ps());
  const int64_t span = WG >= 8 ? WG : 8, gstep = WG >= 8 ? 1 : 2;
  const int32_t* p = wr;
  const float* xc = xp;
  int64_t left = KBW;
  for (int64_t g = 0; g < ng; g += gstep) {
    __m256 acc[4][W4_MT];
    for (int r = 0; r < 4; r++) for (int m = 0; m < MT; m++) acc[r][m] = _mm256_setzero_ps();
    for (int64_t c = 0; c < span; c += 8, xc += 64) {
      if (CS == 1) {   /* row layout: the same words two tiles ahead (pages apart) into L2 */
        for (int r = 0; r < 4; r++) _mm_prefetch((const char*)(p + (r + W4_PF) * RO), _MM_HINT_T1);
      } else {         /* tiled: one stream */
        _mm_prefetch((const char*)p + W4_PREFETCH, _MM_HINT_T1);
        _mm_prefetch((const char*)p + W4_PREFETCH + 64, _MM_HINT_T1);
      }
      for (int r = 0; r < 4; r++) {
        const __m256i w = _mm256_loadu_si256((const __m256i*)(p + r * RO));
        const __m256i ws = DN ? _mm256_srli_epi32(w, 16) : w;
        for (int j = 0; j < 8; j++) {
          const __m256 q = w4_nib(w, ws, j, DN);
          for (int m = 0; m < MT; m++)
            acc[r][m] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xc + m * XS + 8 * j), acc[r][m]);
        }
      }
      p += 8 * CS;
      if ((left -= 8) == 0) { left = KBW; p += KBS - KBW * CS; }   /* tiled: next K-block */
    }
    for (int r = 0; r < 4; r++) {
      const __m256 sv = w4_sv(sf[r], g, ng, gstep);
      for (int m = 0; m < MT; m++)
        _mm256_store_ps(tot[m][r], _mm256_fmadd_ps(acc[r][m], sv, _mm256_load_ps(tot[m][r])));
    }
  }
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < 4; r++) y[m * N + n + r] = w4_total(tot[m][r], DN, csh) - corr[m][r];
}
#endif

/* ---- 16-bit (and fp32) weights: y[m, n] = sum_k x[m, k] * w[n, k] (gemv_bf16) ------------- */

/* The widest fp32 vector of this build (VW lanes), so that the loop below is written once:
   VWLD widens VW weights in dt (bf16 shifted into the high half, fp16 converted, fp32 loaded). */
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__F16C__)
INLINE __m512 wld16(const void* w, int64_t k, int dt) {
  if (dt == F32) return _mm512_loadu_ps((const float*)w + k);
  if (dt == I8)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)((const int8_t*)w + k))));
  const __m256i h = _mm256_loadu_si256((const __m256i*)((const uint16_t*)w + k));
  return dt == BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                    : _mm512_cvtph_ps(h);
}
typedef __m512 vf;
enum { VW = 16 };
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUM(v) _mm512_reduce_add_ps(v)
#define VWLD(w, k, dt) wld16(w, k, dt)
#elif defined(__AVX2__) && defined(__F16C__)
typedef __m256 vf;
enum { VW = 8 };
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSUM(v) hsum(v)
#define VWLD(w, k, dt) ld8(w, k, dt)
#endif

/* R consecutive rows n (R = 4 or 1) for MT rows of x (fp32, stride K32, zero padded): each x
   vector feeds R FMAs, each weight vector MT, so a weight is loaded and widened once for MT rows
   of x. wdt is the weights' dtype (I8: INT8, scaled at the end by sc[n] in sdt). Two accumulators
   a (row, x row) pair where that leaves at most 8 in use, so M = 1 has 8 independent FMA chains.
   Rows are K * es bytes apart (2-8 pages at K = 4096-8192) and hardware prefetchers stop at 4 KiB
   page edges: each step prefetches the same bytes 8 rows ahead (past the last row: a prefetch
   does not fault), into L2 (T1). On a Zen 4, from DRAM, alternated: into L1 (T0) gained nothing
   over no prefetch, into L2 1.08-1.33x; 16 rows ahead read as 8. */
INLINE void w_tile(const void* w, int wdt, const void* sc, int sdt, const float* xf, int64_t K,
                   int64_t K32, int64_t n, float* y, int64_t N, const int R, const int MT) {
  const int es = wdt == F32 ? 4 : wdt == I8 ? 1 : 2;
  const char* wb = (const char*)w + n * K * es;
  float out[4][4] = {{0}};
  int64_t k = 0;
#if defined(__AVX2__) && defined(__F16C__)
  const int A = R * MT <= 4 ? 2 : 1;
  vf acc[4][4][2];
  for (int r = 0; r < R; r++) for (int m = 0; m < MT; m++) acc[r][m][0] = acc[r][m][1] = VZERO();
  for (; k + 2 * VW <= K; k += 2 * VW) {
    for (int r = 0; r < R; r++)
      for (int64_t o = 0; o < 2 * VW * es; o += 64) _mm_prefetch(wb + ((r + 8) * K + k) * es + o, _MM_HINT_T1);
    for (int t = 0; t < 2; t++) {
      vf wv[4];
      for (int r = 0; r < R; r++) wv[r] = VWLD(wb + r * K * es, k + VW * t, wdt);
      for (int m = 0; m < MT; m++) {
        const vf xv = VLOAD(xf + m * K32 + k + VW * t);
        for (int r = 0; r < R; r++) acc[r][m][t % A] = VFMA(wv[r], xv, acc[r][m][t % A]);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) out[r][m] = VSUM(VADD(acc[r][m][0], acc[r][m][1]));
#else
  /* portable: PL weights of each row widened into wv, then PL independent sums per (row, row of
     x); one loop per weight dtype, so that no dtype test is left in a loop for the compiler to
     take out. At M <= 2 each row's line 8 rows on is prefetched into L2, as the AVX2 loop does
     (at M >= 4 this loop is bound by its arithmetic, and the prefetches only cost) */
  float part[4][4][PL] = {{{0}}};
#define W_TILE_LOOP(WIDEN, WROW)                                                        \
  for (; k + PL <= K; k += PL) {                                                        \
    float wv[4][PL];                                                                    \
    for (int r = 0; r < R; r++) {                                                       \
      const char* p = wb + (r * K + k) * es;                                            \
      if (MT <= 2 && (k * es) % 64 == 0) __builtin_prefetch(p + 8 * K * es, 0, 2);      \
      WIDEN;                                                                            \
    }                                                                                   \
    for (int m = 0; m < MT; m++)                                                        \
      for (int r = 0; r < R; r++)                                                       \
        for (int i = 0; i < PL; i++) part[r][m][i] += xf[m * K32 + k + i] * (WROW)[i];  \
  }
  if (wdt == BF16)
    W_TILE_LOOP(for (int i = 0; i < PL; i++) {
                  const uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16;
                  memcpy(&wv[r][i], &u, 4);
                }, wv[r])
  else if (wdt == F16)
    W_TILE_LOOP(for (int i = 0; i < PL; i++) wv[r][i] = half_to_float(((const uint16_t*)p)[i]),
                wv[r])
  else if (wdt == I8)
    W_TILE_LOOP(for (int i = 0; i < PL; i++) wv[r][i] = (float)((const int8_t*)p)[i], wv[r])
  else  /* fp32: read in place */
    W_TILE_LOOP(((void)p, (void)wv), (const float*)(wb + (r * K + k) * 4))
#undef W_TILE_LOOP
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) for (int i = 0; i < PL; i++) out[r][m] += part[r][m][i];
#endif
  for (int r = 0; r < R; r++) {
    const float s = sc ? ld(sc, n + r, sdt) : 1.0f;
    for (int m = 0; m < MT; m++) {
      float v = out[r][m];
      for (int64_t kk = k; kk < K; kk++) v += xf[m * K32 + kk] * ld(wb + r * K * es, kk, wdt);
      y[m * N + n + r] = sc ? v * s : v;
    }
  }
}

#if W4DOT
/* bf16 x with bf16 or INT8 weights (a W4DOT build: AVX512_BF16): w_tile through VDPBF16PS, which
   multiplies adjacent pairs of k in both operands, so x goes in as given: 32 weights an
   instruction. bf16 weights go in as loaded, where the FMA loop takes 16 a time and widens each
   (two ops); INT8 weights are converted to bf16 (exact: |q| <= 128) once for the MT rows of x.
   The products are exact, summed in fp32 as the FMA loop sums them. xf (fp32) serves the tail. */
INLINE __m512bh w_bf16x32(const void* w, int64_t k, int wdt) {
  if (wdt == BF16) return (__m512bh)_mm512_loadu_si512((const uint16_t*)w + k);
  const __m128i* q = (const __m128i*)((const int8_t*)w + k);
  return _mm512_cvtne2ps_pbh(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))),
                             _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))));
}
INLINE void w_tile_dp(const void* w, int wdt, const void* sc, const uint16_t* x, const float* xf,
                      int64_t K, int64_t K32, int64_t n, float* y, int64_t N, const int R,
                      const int MT) {
  const int es = wdt == I8 ? 1 : 2;
  const char* wb = (const char*)w + n * K * es;
  __m512 acc[4][4];
  for (int r = 0; r < R; r++) for (int m = 0; m < MT; m++) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[4];
    for (int r = 0; r < R; r++) {
      _mm_prefetch(wb + ((r + 8) * K + k) * es, _MM_HINT_T1);
      wv[r] = w_bf16x32(wb + r * K * es, k, wdt);
    }
    for (int m = 0; m < MT; m++) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k);
      for (int r = 0; r < R; r++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv[r], xv);
    }
  }
  for (int r = 0; r < R; r++) {
    const float s = sc ? ld(sc, n + r, BF16) : 1.0f;
    for (int m = 0; m < MT; m++) {
      float v = _mm512_reduce_add_ps(acc[r][m]);
      for (int64_t kk = k; kk < K; kk++) v += xf[m * K32 + kk] * ld(wb + r * K * es, kk, wdt);
      y[m * N + n + r] = sc ? v * s : v;
    }
  }
}
#endif

/* y[M, N] = x W^T (times sc[n] for INT8) in fp32: x converted into scratch (fp32, rows K32 apart,
   zero padded), then tiles of 4 rows and the rows past the last tile one at a time, x rows 4, 2
   or 1 at a time (a tile's second pass over its rows reads them from L1/L2). */
static void w_tiles(const void* x, int dt, int64_t M, int64_t K, const void* w, int wdt,
                    const void* sc, int64_t N, float* y, float* scratch, int nthreads) {
  const int64_t K32 = (K + 31) / 32 * 32, NT = N / 4;
  const int dp = W4DOT && (wdt == BF16 || wdt == I8) && dt == BF16;   /* w_tile_dp */
  (void)dp;
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K32; k++) scratch[m * K32 + k] = k < K ? ld(x, m * K + k, dt) : 0.0f;
  #pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t t = 0; t <= NT; t++) {
    const int64_t n0 = 4 * t, R = t < NT ? 4 : N - 4 * NT;
    for (int64_t n = n0; n < n0 + R; n += t < NT ? 4 : 1) {
      int64_t m = 0;
#if W4DOT
#define W_TILE(R_, MT_) \
  (dp && R_ == 4 ? w_tile_dp(w, wdt, sc, (const uint16_t*)x + m * K, scratch + m * K32, K, K32, n, \
                             y + m * N, N, 4, MT_) \
                 : w_tile(w, wdt, sc, dt, scratch + m * K32, K, K32, n, y + m * N, N, R_, MT_))
#else
#define W_TILE(R_, MT_) w_tile(w, wdt, sc, dt, scratch + m * K32, K, K32, n, y + m * N, N, R_, MT_)
#endif
      for (; m + 4 <= M; m += 4) { if (t < NT) W_TILE(4, 4); else W_TILE(1, 4); }
      for (; m + 2 <= M; m += 2) { if (t < NT) W_TILE(4, 2); else W_TILE(1, 2); }
      for (; m < M; m++) { if (t < NT) W_TILE(4, 1); else W_TILE(1, 1); }
#undef W_TILE
    }
  }
}

int gemv_bf16(const void* x, int dt, int64_t M, int64_t K, const void* w, int64_t N, float* y,
              float* scratch, int nthreads, void* out, int odt) {
  w_tiles(x, dt, M, K, w, dt, NULL, N, y, scratch, nthreads);
  store_out(y, out, M * N, odt);
  return 0;
}

/* Register width of the tiled INT4 loop at M = 1 in this build: 512 (AVX-512F), 256 (AVX2 + F16C),
   0 (the scalar path). */
int w4_tile_bits(void) {
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__F16C__)
  return 512;
#elif defined(__AVX2__) && defined(__F16C__)
  return 256;
#else
  return 0;
#endif
}

/* Whether this build has the VDPBF16PS loops (unpack 3, w4dot_words): bf16 x. */
int w4_dot_unpack(void) { return W4DOT; }

/* Whether unpack 0 (best for this CPU) is the denormal one here where the dot loops do not apply
   (see above). */
int w4_denormal_unpack(void) {
#if defined(__AVX2__) && defined(__F16C__)
  return __builtin_cpu_is("amd");
#else
  return 0;
#endif
}

/* tiled: the weights are in the tiled layout (see above). unpack (M = 1): 0 = best for this CPU,
   1 = cvt, 2 = DN (tests force each on any CPU), 3 = dot (w4dot_words: a W4DOT build, bf16 x,
   K % 64 == 0; 0 takes it wherever it applies). Returns 1 for a tiled K % 64 != 0, 2 for DN in a build
   without AVX2 + F16C (the path exists only there), 3 for dot where it does not apply. */
int gemv_w4(const void* x, int dt, int64_t M, int64_t K, const uint8_t* qw, const void* scales,
            const void* zeros, int64_t N, int64_t G, float* y, float* scratch, int nthreads,
            int tiled, int unpack, void* out, int odt) {
  const int64_t KW = K / 8, KW8 = (KW + 7) / 8 * 8, WG = G / 8, ng = K / G, NT = N / 4;
  float* xp = scratch;                              /* [M][8][KW8] */
  float* xs = scratch + M * 8 * KW8;                /* [M][ng], then (tiled) w4_blocks' scales */
  if (tiled && KW % 8) return 1;
#if !(defined(__AVX2__) && defined(__F16C__))
  if (unpack == 2) return 2;
#endif
  /* unpack 3 ("dot": W4DOT builds, bf16 x, whole chunks) is also what 0 picks there, at any M */
#if W4DOT
  const int dot = KW % 8 == 0 && dt == BF16 && ng <= W4_MAXG && (unpack == 3 || unpack == 0);
#else
  const int dot = 0;
#endif
  if (unpack == 3 && !dot) return 3;
#if defined(__AVX2__) && defined(__F16C__)
  const int tile_m = M > 1 && !dot && ng <= W4_MAXG && KW % 8 == 0;   /* w4_tile_m */
  if (tiled && M > 1 && !dot && !tile_m) {
    /* The tiled layout is made for M = 1. At M > 1 the row-by-row loop below reads a quarter of
       each tile line per row and M rows of x push the tile out of L1 between rows: 1.3-2x slower
       than the row layout. The M = 1 kernel once per row of x is faster at every M measured
       (4096 x 4096 G = 128, M = 2..64), weights re-read M times included. Reached where neither
       the dot loops nor w4_tile_m apply: more than W4_MAXG groups a row. (The portable build
       takes the row loop in either layout: tiled at M = 8, 4096 x 4096, built for plain x86-64
       on a Zen 4, 6.9-7.0 ms against 11.6 for its M = 1 loop once per row of x.) */
    const int64_t xe = dt == F32 ? 4 : 2, oe = odt == F32 ? 4 : 2;
    for (int64_t m = 0; m < M; m++) {
      const int rc = gemv_w4((const char*)x + m * K * xe, dt, 1, K, qw, scales, zeros, N, G, y + m * N,
                             scratch, nthreads, tiled, unpack, (char*)out + m * N * oe, odt);
      if (rc) return rc;
    }
    return 0;
  }
#endif
#if defined(__AVX2__) && defined(__F16C__)
  const int dn = !dot && (M == 1 || tile_m) && ng <= W4_MAXG
                 && (unpack == 2 || (unpack == 0 && w4_denormal_unpack()));
  const int csh = dn ? w4_dn_shift(x, M * K, dt) : 0;   /* one shift for every row of x */
  float fv[8];
  for (int j = 0; j < 8; j++) fv[j] = dn ? ldexpf(1.0f, 149 - W4_DPOS[j] - csh) : j < 7 ? ldexpf(1.0f, -4 * j) : 1.0f;
  const __m256 f = _mm256_loadu_ps(fv);
  /* Vectorized: word i's eight x values, scaled by f, are one column of the 8x8 block of chunk c;
     a register transpose writes the block's rows (the scalar loop cost ~20 us). */
  for (int64_t m = 0; m < M; m++) {
    __m256 gs = _mm256_setzero_ps();
    for (int64_t c = 0; c < KW8; c += 8) {
      __m256 v[8];
      for (int l = 0; l < 8; l++) {
        const int64_t i = c + l;
        if (i >= KW) { v[l] = _mm256_setzero_ps(); continue; }
        v[l] = ld8(x, m * K + 8 * i, dt);
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
  const int32_t* wr = (const int32_t*)qw;
  /* dot: x as bf16 in xp's order, two values a 32-bit lane: chunk c (64 k), nibble j < 4 and
     word i of the chunk hold x[64c + 8i + j] then x[64c + 8i + j + 4] (see w4dot_chunk); one
     two-source word permute a 32 of them. In the scratch after xs (tiled: after every thread's
     scales). */
  uint16_t* xb = dot ? (uint16_t*)(xs + M * ng + (tiled ? (int64_t)nthreads * 8 * W4_TB * ng : 0))
                     : NULL;
  (void)xb;
#if W4DOT
  if (dot) {
    uint16_t ix[64] __attribute__((aligned(64)));
    for (int o = 0; o < 64; o++) ix[o] = (uint16_t)(8 * ((o % 16) / 2) + o / 16 + 4 * (o % 2));
    const __m512i i0 = _mm512_load_si512(ix), i1 = _mm512_load_si512(ix + 32);
    for (int64_t m = 0; m < M; m++)
      for (int64_t c = 0; c < KW / 8; c++) {
        const uint16_t* xc = (const uint16_t*)x + m * K + 64 * c;
        uint16_t* o = xb + m * K + 64 * c;
        const __m512i lo = _mm512_loadu_si512(xc), hi = _mm512_loadu_si512(xc + 32);
        _mm512_storeu_si512(o, _mm512_permutex2var_epi16(lo, i0, hi));
        _mm512_storeu_si512(o + 32, _mm512_permutex2var_epi16(lo, i1, hi));
      }
  }
#endif
#if defined(__AVX2__) && defined(__F16C__)
  if (M == 1 && ng <= W4_MAXG) {
    const int64_t NB = tiled ? (NT + W4_TB - 1) / W4_TB : 0;   /* blocks of tiles */
    #pragma omp parallel num_threads(nthreads)
    {
      const unsigned csr = _mm_getcsr();
      if (dn) _mm_setcsr(csr & ~0x40u);               /* DAZ off: the denormals are the data */
      float* sfb = xs + M * ng + (int64_t)omp_get_thread_num() * 8 * W4_TB * ng;   /* [2][4 W4_TB][ng] */
      /* Dynamic: pieces of 32 tiles (512 KiB at K = 8192; tiled: two at once), still long
         streams, and a core slowed by a neighbour (VMs) takes fewer pieces instead of finishing
         last: ~5% here. The last piece is the rows past the last tile (row layout in both
         layouts). G = 128 gets copies with a compile-time group span (the chunk loop unrolled):
         ~5%. */
      if (tiled) {
        /* Work items: pairs of full blocks (two streams), then an odd full block, a short last
           block and the rows past the last tile (row layout in both layouts), one stream each. */
        const int64_t NF = NT / W4_TB, NP = NF / 2, NS = NB - 2 * NP;
        #pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it <= NP + NS; it++) {
          const int S = it < NP ? 2 : 1;
          const int64_t b = it < NP ? 2 * it : it + NP;
          if (b == NB) {
            for (int64_t n = 4 * NT; n < N; n++) {
              if (dn) w4_rows(wr + n * KW, KW, WG, ng, xp, xs, scales, zeros, dt, n, y + n, 1, 1, csh,
                              xb, 0);
              else w4_rows(wr + n * KW, KW, WG, ng, xp, xs, scales, zeros, dt, n, y + n, 1, 0, 0, xb, 0);
            }
            continue;
          }
          const int64_t nb = w4_block_tiles(b, NT), b1 = b + S - 1;   /* the second stream's block */
          const int64_t n0[2] = {4 * b * W4_TB, 4 * b1 * W4_TB};
          const int32_t* bp[2] = {wr + b * W4_TB * 4 * KW, wr + b1 * W4_TB * 4 * KW};
          /* each call a copy with its streams, span, unpack constant (w4_blocks is inlined) */
#define W4_BLOCKS(S_, WG_, DN_, DOT_) \
  w4_blocks(bp, S_, nb, KW, WG_, ng, xp, xs, scales, zeros, dt, n0, y, sfb, DN_, csh, xb, DOT_)
          if (S == 2) {
            if (dot && WG == 16) W4_BLOCKS(2, 16, 0, 1);
            else if (dot) W4_BLOCKS(2, WG, 0, 1);
            else if (dn && WG == 16) W4_BLOCKS(2, 16, 1, 0);
            else if (dn) W4_BLOCKS(2, WG, 1, 0);
            else if (WG == 16) W4_BLOCKS(2, 16, 0, 0);
            else W4_BLOCKS(2, WG, 0, 0);
          } else {
            if (dot) W4_BLOCKS(1, WG, 0, 1);
            else if (dn) W4_BLOCKS(1, WG, 1, 0);
            else W4_BLOCKS(1, WG, 0, 0);
          }
#undef W4_BLOCKS
        }
      } else {
        #pragma omp for schedule(dynamic, 32)
        for (int64_t t = 0; t <= NT; t++) {
          const int32_t* tw = wr + 4 * t * KW;
          if (t == NT) {
            for (int64_t n = 4 * NT; n < N; n++) {
              if (dn) w4_rows(wr + n * KW, KW, WG, ng, xp, xs, scales, zeros, dt, n, y + n, 1, 1, csh,
                              xb, 0);
              else w4_rows(wr + n * KW, KW, WG, ng, xp, xs, scales, zeros, dt, n, y + n, 1, 0, 0, xb, 0);
            }
          }
#define W4_ROWS(WG_, DN_, DOT_) \
  w4_rows(tw, KW, WG_, ng, xp, xs, scales, zeros, dt, 4 * t, y + 4 * t, 4, DN_, csh, xb, DOT_)
          else if (dot && WG == 16) W4_ROWS(16, 0, 1);
          else if (dot) W4_ROWS(WG, 0, 1);
          else if (dn && WG == 16) W4_ROWS(16, 1, 0);
          else if (dn) W4_ROWS(WG, 1, 0);
          else if (WG == 16) W4_ROWS(16, 0, 0);
          else W4_ROWS(WG, 0, 0);
#undef W4_ROWS
        }
      }
      _mm_setcsr(csr);
    }
    store_out(y, out, N, odt);
    return 0;
  }
  if (M > 1 && (dot || tile_m)) {
    /* A tile at a time, its rows of x up to 4 (dot) or W4_MT (w4_tile_m) a pass, 2 or 1 for the
       rest: the tile's 4 rows stay in L1/L2 between passes, so the weights come from DRAM once.
       The rows past the last tile go one row of x at a time. */
    const int MX = dot ? 4 : W4_MT;
    #pragma omp parallel num_threads(nthreads)
    {
      const unsigned csr = _mm_getcsr();
      if (dn) _mm_setcsr(csr & ~0x40u);               /* DAZ off: the denormals are the data */
      #pragma omp for schedule(dynamic, 32)
      for (int64_t t = 0; t <= NT; t++) {
        if (t == NT) {
          for (int64_t m = 0; m < M; m++)
            for (int64_t n = 4 * NT; n < N; n++)
              w4_rows(wr + n * KW, KW, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n,
                      y + m * N + n, 1, dn, csh, xb, 0);
          continue;
        }
        int64_t KBS = 0;
        const int32_t* tw = tiled ? w4_tiled_row(wr, 4 * t, KW, NT, &KBS) : wr + 4 * t * KW;
        const int64_t RO = tiled ? 8 : KW, CS = tiled ? 4 : 1, KBW = tiled ? w4_kbw(KW) : KW;
        for (int64_t m0 = 0, MT; m0 < M; m0 += MT) {
          MT = M - m0 >= MX ? MX : M - m0 >= 2 ? 2 : 1;
#if W4DOT
#define W4_DOT_M(MT_) w4dot_tile_m(tw, RO, CS, KBW, KBS, WG, ng, xs + m0 * ng, scales, zeros, dt, \
                                   4 * t, y + m0 * N, N, xb + m0 * K, K, MT_)
          if (dot) {
            if (MT == 4) W4_DOT_M(4); else if (MT == 2) W4_DOT_M(2); else W4_DOT_M(1);
            continue;
          }
#undef W4_DOT_M
#endif
#define W4_TILE_M(MT_, DN_) w4_tile_m(tw, RO, CS, KBW, KBS, WG, ng, xp + m0 * 8 * KW8, 8 * KW8, \
                                      xs + m0 * ng, scales, zeros, dt, 4 * t, y + m0 * N, N, MT_, \
                                      DN_, csh)
#if W4_MT == 4
          if (MT == 4) { if (dn) W4_TILE_M(4, 1); else W4_TILE_M(4, 0); continue; }
#endif
          if (MT == 2) { if (dn) W4_TILE_M(2, 1); else W4_TILE_M(2, 0); }
          else { if (dn) W4_TILE_M(1, 1); else W4_TILE_M(1, 0); }
#undef W4_TILE_M
        }
      }
      _mm_setcsr(csr);
    }
    store_out(y, out, M * N, odt);
    return 0;
  }
#endif
  #pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t n = 0; n < N; n++) {
    const int tile = tiled && n < 4 * NT;
    int64_t KBS = 0;
    const int32_t* rw = tile ? w4_tiled_row(wr, n, KW, NT, &KBS) : wr + n * KW;
    const int64_t CS = tile ? 4 : 1, KBW = tile ? w4_kbw(KW) : KW;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4)
      w4_tile(rw, CS, KBW, KBS, KW, KW8, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n, y + m * N + n, N, 4);
    for (; m + 2 <= M; m += 2)
      w4_tile(rw, CS, KBW, KBS, KW, KW8, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n, y + m * N + n, N, 2);
    for (; m < M; m++)
      w4_tile(rw, CS, KBW, KBS, KW, KW8, WG, ng, xp + m * 8 * KW8, xs + m * ng, scales, zeros, dt, n, y + m * N + n, N, 1);
  }
  store_out(y, out, M * N, odt);
  return 0;
}
