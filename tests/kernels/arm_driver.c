/* Calls one CPU kernel of kernels/ on inputs read from files and writes its fp32 output to
   stdout: tests/kernels/test_cpu_arm.py builds it and the kernels for Arm and runs it under
   qemu-user, so the portable C is checked as an Arm compiler builds it.
   argv: gemv_bf16|gemv_w8|gemv_w4|read_sum dtype M K N G tiled nthreads file...; files in the
   kernel's argument order (gemv_w4's qweight in the tiled layout when tiled is 1). */
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

int main(int argc, char** argv) {
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
