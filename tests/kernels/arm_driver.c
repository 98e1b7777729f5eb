/* Calls one CPU kernel of kernels/ on inputs read from files and writes its fp32 output to
   stdout: tests/kernels/test_cpu_arm.py builds it and the kernels for Arm and runs it under
   qemu-user, so the portable C is checked as an Arm compiler builds it.
   argv: gemv_bf16|gemv_w8|gemv_w4|read_sum dtype M K N G tiled nthreads file...; files in the
   kernel's argument order (gemv_w4's qweight in the tiled layout when tiled is 1). Or
   paged_attention qdt kvdt B Hq Hkv D BS MB S split_tokens scale nthreads q k v table lens
   [k_scale v_scale]: the output in q's dtype. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gemv_w8(const void*, int, int64_t, int64_t, const int8_t*, const void*, int64_t, float*,
            float*, int, void*, int);
int gemv_w4(const void*, int, int64_t, int64_t, const uint8_t*, const void*, const void*, int64_t,
            int64_t, float*, float*, int, int, int, void*, int);
int gemv_bf16(const void*, int, int64_t, int64_t, const void*, int64_t, float*, float*, int, void*,
              int);
double read_sum(const float*, int64_t, int);
int paged_attention(const void*, int, int, int64_t, int64_t, int64_t, int64_t, const void*,
                    const void*, const void*, const void*, int64_t, const int32_t*, int64_t,
                    const int32_t*, float, int64_t, int64_t, float*, void*, int, int);

static void* slurp(const char* path, long* size) {
  FILE* f = fopen(path, "rb");
  if (!f) { perror(path); exit(3); }
  fseek(f, 0, SEEK_END);
  const long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void* p = malloc(n + 64);
  if (!p || fread(p, 1, n, f) != (size_t)n) { perror(path); exit(3); }
  fclose(f);
  if (size) *size = n;
  return p;
}

static int attention(int argc, char** argv) {
  if (argc != 19 && argc != 21) {
    fprintf(stderr, "usage: see the comment at the top\n");
    return 2;
  }
  int64_t a[10];
  for (int i = 0; i < 10; i++) a[i] = atoll(argv[2 + i]);
  const int qdt = (int)a[0], kvdt = (int)a[1];
  const int64_t B = a[2], Hq = a[3], Hkv = a[4], D = a[5], BS = a[6], MB = a[7], S = a[8];
  const int64_t G4 = (Hq / Hkv + 3) / 4 * 4, n = B * Hq * D, es = qdt ? 2 : 4;
  float* part = malloc(B * S * (2 * Hkv * G4 * D + 2 * Hq) * 4);
  unsigned char* out = malloc(n * es);
  memset(out, 0xff, n * es);  /* poisoned: NaN in every dtype */
  const int rc = paged_attention(
      slurp(argv[14], 0), qdt, kvdt, B, Hq, Hkv, D, slurp(argv[15], 0), slurp(argv[16], 0),
      argc == 21 ? slurp(argv[19], 0) : NULL, argc == 21 ? slurp(argv[20], 0) : NULL,
      BS, slurp(argv[17], 0), MB, slurp(argv[18], 0), (float)strtod(argv[12], NULL), S, a[9],
      part, out, qdt, atoi(argv[13]));
  if (rc) { fprintf(stderr, "paged_attention returned %d\n", rc); return 4; }
  fwrite(out, es, n, stdout);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && !strcmp(argv[1], "paged_attention")) return attention(argc, argv);
  if (argc < 10) { fprintf(stderr, "usage: see the comment at the top\n"); return 2; }
  const char* fn = argv[1];
  const int dt = atoi(argv[2]), tiled = atoi(argv[7]), nt = atoi(argv[8]);
  const int64_t M = atoll(argv[3]), K = atoll(argv[4]), N = atoll(argv[5]), G = atoll(argv[6]);
  long n;
  void* a = slurp(argv[9], &n);
  if (!strcmp(fn, "read_sum")) {
    const float total = (float)read_sum(a, n / 4, nt);
    fwrite(&total, 4, 1, stdout);
    return 0;
  }
  float* y = malloc(M * N * 4);
  for (int64_t i = 0; i < M * N; i++) y[i] = NAN;  /* poisoned: every output must be written */
  float* scratch = calloc(M * (K + 64) * 8 + (1 << 20), 4);  /* more than any of them takes */
  int rc = 0;
  if (!strcmp(fn, "gemv_bf16"))
    rc = gemv_bf16(a, dt, M, K, slurp(argv[10], 0), N, y, scratch, nt, y, 0);
  else if (!strcmp(fn, "gemv_w8"))
    rc = gemv_w8(a, dt, M, K, slurp(argv[10], 0), slurp(argv[11], 0), N, y, scratch, nt, y, 0);
  else if (!strcmp(fn, "gemv_w4"))
    rc = gemv_w4(a, dt, M, K, slurp(argv[10], 0), slurp(argv[11], 0), slurp(argv[12], 0), N, G,
                 y, scratch, nt, tiled, 0, y, 0);
  else
    rc = 99;
  if (rc) { fprintf(stderr, "%s returned %d\n", fn, rc); return 4; }
  fwrite(y, 4, M * N, stdout);
  return 0;
}
