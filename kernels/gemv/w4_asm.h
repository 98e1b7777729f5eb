/* The INT4 GEMV's M = 1 inner loops in inline asm (x86-64 AVX2 + FMA), included by simd.c.

   Each statement takes whole 8-word chunks of four rows (256 weights a chunk) into eight
   accumulators: %[d0]-%[d3] take the even nibbles of rows 0-3 and %[e0]-%[e3] the odd ones, eight
   independent FMA chains to cover the FMA latency. In asm because GCC, given these loops in
   intrinsics, spills accumulators inside them.

   Registers: ymm9-ymm12 hold the four rows' words (ymm9-ymm10 in the DN tile form), ymm13 an x
   vector, ymm14 a mask, ymm15 the unpacked nibbles. Memory operands: %[x] points at the chunk's
   eight x vectors (32 bytes each, 256 bytes a chunk, see xp in simd.c), %[mask] at a row of
   W4_MASK. Displacements are assembler expressions (256*C+32*J: chunk C, nibble J).

   Unpacks (see the comment above W4_DPOS in simd.c):
   - CVT: AND with mask J, convert the integer to float (J = 7: shift right by 28 instead of AND).
   - DN: AND only, the masked word's bits are the denormal float itself; before nibble 4 the words
     are shifted right by 16 so that the same four masks take nibbles 4-7. */
#ifndef W4_ASM_H
#define W4_ASM_H

#define W4_STR_(s) #s
#define W4_STR(s) W4_STR_(s)

/* One row: the nibble of ymmW (AND with ymm14, or a shift for the top nibble) times x, into A. */
#define W4_CVT(W, A) "vpand %%ymm14, %%ymm" #W ", %%ymm15\n\t" "vcvtdq2ps %%ymm15, %%ymm15\n\t" \
  "vfmadd231ps %%ymm13, %%ymm15, %[" #A "]\n\t"
#define W4_CVT_TOP(W, A) "vpsrld $28, %%ymm" #W ", %%ymm15\n\t" "vcvtdq2ps %%ymm15, %%ymm15\n\t" \
  "vfmadd231ps %%ymm13, %%ymm15, %[" #A "]\n\t"
#define W4_DN(W, A) "vpand %%ymm14, %%ymm" #W ", %%ymm15\n\t" \
  "vfmadd231ps %%ymm13, %%ymm15, %[" #A "]\n\t"

/* Nibble J of chunk C for the four rows in ymm9-ymm12: x vector J and mask J, then each row into
   accumulator K0..K3 (K is d for even J, e for odd J). */
#define W4_NIB4(UNPACK, C, J, K) \
  "vmovups 256*" #C "+32*" #J "(%[x]), %%ymm13\n\t" "vmovdqa 32*" #J "(%[mask]), %%ymm14\n\t" \
  UNPACK(9, K##0) UNPACK(10, K##1) UNPACK(11, K##2) UNPACK(12, K##3)
#define W4_NIB4_TOP(C) "vmovups 256*" #C "+224(%[x]), %%ymm13\n\t" \
  W4_CVT_TOP(9, e0) W4_CVT_TOP(10, e1) W4_CVT_TOP(11, e2) W4_CVT_TOP(12, e3)
#define W4_SHIFT16_4 "vpsrld $16, %%ymm9, %%ymm9\n\t" "vpsrld $16, %%ymm10, %%ymm10\n\t" \
  "vpsrld $16, %%ymm11, %%ymm11\n\t" "vpsrld $16, %%ymm12, %%ymm12\n\t"

/* All eight nibbles of chunk C, the four rows' words already in ymm9-ymm12. */
#define W4_CHUNK_CVT(C) \
  W4_NIB4(W4_CVT, C, 0, d) W4_NIB4(W4_CVT, C, 1, e) W4_NIB4(W4_CVT, C, 2, d) \
  W4_NIB4(W4_CVT, C, 3, e) W4_NIB4(W4_CVT, C, 4, d) W4_NIB4(W4_CVT, C, 5, e) \
  W4_NIB4(W4_CVT, C, 6, d) W4_NIB4_TOP(C)
#define W4_CHUNK_DN(C) \
  W4_NIB4(W4_DN, C, 0, d) W4_NIB4(W4_DN, C, 1, e) W4_NIB4(W4_DN, C, 2, d) W4_NIB4(W4_DN, C, 3, e) \
  W4_SHIFT16_4 \
  W4_NIB4(W4_DN, C, 4, d) W4_NIB4(W4_DN, C, 5, e) W4_NIB4(W4_DN, C, 6, d) W4_NIB4(W4_DN, C, 7, e)

/* Row layout: the four rows' words from four pointers. */
#define W4_LOAD_ROWS "vmovdqu (%[w0]), %%ymm9\n\t" "vmovdqu (%[w1]), %%ymm10\n\t" \
  "vmovdqu (%[w2]), %%ymm11\n\t" "vmovdqu (%[w3]), %%ymm12\n\t"
/* Tiled layout: chunk C's four rows, 32 bytes apart, from one pointer. */
#define W4_LOAD_TILE(C) "vmovdqu 128*" #C "(%[w]), %%ymm9\n\t" \
  "vmovdqu 128*" #C "+32(%[w]), %%ymm10\n\t" "vmovdqu 128*" #C "+64(%[w]), %%ymm11\n\t" \
  "vmovdqu 128*" #C "+96(%[w]), %%ymm12\n\t"
/* Tiled: one line of the block's stream W4_PREFETCH bytes (+ 64 * L) ahead. */
#define W4_PREFETCH_LINE(L) "prefetcht0 " W4_STR(W4_PREFETCH) "+64*" #L "(%[w])\n\t"

/* DN tile form: rows two at a time (ymm9, ymm10), the four masks 0xF << 4j held in registers
   (%[m0]-%[m3]) for the whole loop and x as the FMA's memory operand, so no mask or x loads of
   their own. Looped over an L1-resident buffer it runs at 1.5-1.9x the time of its bare FMAs
   (docs/cpu-results.md), where the core is the limit; from DRAM it ties the four-row form (mask
   and x loads). Each row pair prefetches one line W4_PREFETCH ahead. */
#define W4_DN2(C, J, M, K, RA, RB) \
  "vpand %[m" #M "], %%ymm9, %%ymm15\n\t" \
  "vfmadd231ps 256*" #C "+32*" #J "(%[x]), %%ymm15, %[" #K #RA "]\n\t" \
  "vpand %[m" #M "], %%ymm10, %%ymm15\n\t" \
  "vfmadd231ps 256*" #C "+32*" #J "(%[x]), %%ymm15, %[" #K #RB "]\n\t"
#define W4_DN_PAIR(C, P, RA, RB) \
  "vmovdqu 128*" #C "+32*" #RA "(%[w]), %%ymm9\n\t" "vmovdqu 128*" #C "+32*" #RB "(%[w]), %%ymm10\n\t" \
  "prefetcht0 " W4_STR(W4_PREFETCH) "+128*" #C "+64*" #P "(%[w])\n\t" \
  W4_DN2(C, 0, 0, d, RA, RB) W4_DN2(C, 1, 1, e, RA, RB) W4_DN2(C, 2, 2, d, RA, RB) \
  W4_DN2(C, 3, 3, e, RA, RB) \
  "vpsrld $16, %%ymm9, %%ymm9\n\t" "vpsrld $16, %%ymm10, %%ymm10\n\t" \
  W4_DN2(C, 4, 0, d, RA, RB) W4_DN2(C, 5, 1, e, RA, RB) W4_DN2(C, 6, 2, d, RA, RB) \
  W4_DN2(C, 7, 3, e, RA, RB)
#define W4_TILE_DN_CHUNK(C) W4_DN_PAIR(C, 0, 0, 1) W4_DN_PAIR(C, 1, 2, 3)

/* The statements. d and e are arrays of four __m256 accumulators. */
#define W4_ACC(d, e) [d0] "+x"(d[0]), [d1] "+x"(d[1]), [d2] "+x"(d[2]), [d3] "+x"(d[3]), \
  [e0] "+x"(e[0]), [e1] "+x"(e[1]), [e2] "+x"(e[2]), [e3] "+x"(e[3])
#define W4_CLOBBERS "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory"
#define W4_DN_CLOBBERS "xmm9", "xmm10", "xmm15", "memory"

/* Row layout, rows at r0..r3, one chunk. */
#define W4_CHUNK4_CVT(r0, r1, r2, r3, xc, d, e) __asm__(W4_LOAD_ROWS W4_CHUNK_CVT(0) \
  : W4_ACC(d, e) : [w0] "r"(r0), [w1] "r"(r1), [w2] "r"(r2), [w3] "r"(r3), [x] "r"(xc), \
  [mask] "r"(W4_MASK[0]) : W4_CLOBBERS)
#define W4_CHUNK4_DN(r0, r1, r2, r3, xc, d, e) __asm__(W4_LOAD_ROWS W4_CHUNK_DN(0) \
  : W4_ACC(d, e) : [w0] "r"(r0), [w1] "r"(r1), [w2] "r"(r2), [w3] "r"(r3), [x] "r"(xc), \
  [mask] "r"(W4_MASK[1]) : W4_CLOBBERS)
/* Tiled layout, the tile's chunk(s) at t: one chunk (TILE) or two (TILE2). */
#define W4_TILE_CVT(t, xc, d, e) __asm__(W4_PREFETCH_LINE(0) W4_PREFETCH_LINE(1) \
  W4_LOAD_TILE(0) W4_CHUNK_CVT(0) \
  : W4_ACC(d, e) : [w] "r"(t), [x] "r"(xc), [mask] "r"(W4_MASK[0]) : W4_CLOBBERS)
#define W4_TILE2_CVT(t, xc, d, e) __asm__(W4_PREFETCH_LINE(0) W4_PREFETCH_LINE(1) \
  W4_PREFETCH_LINE(2) W4_PREFETCH_LINE(3) W4_LOAD_TILE(0) W4_CHUNK_CVT(0) \
  W4_LOAD_TILE(1) W4_CHUNK_CVT(1) \
  : W4_ACC(d, e) : [w] "r"(t), [x] "r"(xc), [mask] "r"(W4_MASK[0]) : W4_CLOBBERS)
#define W4_TILE_DN(t, xc, d, e, mk) __asm__(W4_TILE_DN_CHUNK(0) \
  : W4_ACC(d, e) : [w] "r"(t), [x] "r"(xc), [m0] "x"(mk[0]), [m1] "x"(mk[1]), [m2] "x"(mk[2]), \
  [m3] "x"(mk[3]) : W4_DN_CLOBBERS)
#define W4_TILE2_DN(t, xc, d, e, mk) __asm__(W4_TILE_DN_CHUNK(0) W4_TILE_DN_CHUNK(1) \
  : W4_ACC(d, e) : [w] "r"(t), [x] "r"(xc), [m0] "x"(mk[0]), [m1] "x"(mk[1]), [m2] "x"(mk[2]), \
  [m3] "x"(mk[3]) : W4_DN_CLOBBERS)

#ifdef __AVX512F__
/* AVX-512 tile forms (builds with AVX-512F: -march=native on such a CPU, x86-64-v4): a zmm holds
   one chunk of two rows (rows 0-1 or 2-3, 64 contiguous bytes of the tile), so one AND and one
   FMA take 16 weights, half the instructions of the ymm forms, and x vector J, broadcast to both
   halves, serves both row pairs. Accumulators: %[a0]-%[a3] rows 0-1 and %[b0]-%[b3] rows 2-3, by
   nibble J % 4 (eight independent FMA chains: 4-cycle latency, 2 FMAs a cycle). Fixed registers:
   zmm30/zmm31 the row pairs' words, zmm29 an x vector, zmm27/zmm28 the unpacked nibbles. Where
   the FPU executes 512-bit ops whole (Zen 5, Intel server cores) a cycle unpacks twice the weights;
   where it splits them in two (Zen 4) it saves decode and issue slots only. */
#define W4Z_LOAD(C) "vmovdqu64 128*" #C "(%[w]), %%zmm30\n\t" "vmovdqu64 128*" #C "+64(%[w]), %%zmm31\n\t" \
  "prefetcht0 " W4_STR(W4_PREFETCH) "+128*" #C "(%[w])\n\t" \
  "prefetcht0 " W4_STR(W4_PREFETCH) "+128*" #C "+64(%[w])\n\t"
#define W4Z_X(C, J) "vbroadcastf64x4 256*" #C "+32*" #J "(%[x]), %%zmm29\n\t"
#define W4Z_FMA2(A) "vfmadd231ps %%zmm29, %%zmm27, %[a" #A "]\n\t" \
  "vfmadd231ps %%zmm29, %%zmm28, %[b" #A "]\n\t"
/* DN: AND with mask J % 4 (registers %[m0]-%[m3]); the words shifted right by 16 before J = 4. */
#define W4Z_DN(C, J, A) W4Z_X(C, J) "vpandd %[m" #A "], %%zmm30, %%zmm27\n\t" \
  "vpandd %[m" #A "], %%zmm31, %%zmm28\n\t" W4Z_FMA2(A)
#define W4Z_CHUNK_DN(C) W4Z_LOAD(C) \
  W4Z_DN(C, 0, 0) W4Z_DN(C, 1, 1) W4Z_DN(C, 2, 2) W4Z_DN(C, 3, 3) \
  "vpsrld $16, %%zmm30, %%zmm30\n\t" "vpsrld $16, %%zmm31, %%zmm31\n\t" \
  W4Z_DN(C, 4, 0) W4Z_DN(C, 5, 1) W4Z_DN(C, 6, 2) W4Z_DN(C, 7, 3)
/* CVT: AND with mask J (W4_MASK[0] row J, element 0 broadcast), convert; J = 7 shifts by 28. */
#define W4Z_CVT(C, J, A) W4Z_X(C, J) \
  "vpandd 32*" #J "(%[mask])%{1to16%}, %%zmm30, %%zmm27\n\t" \
  "vpandd 32*" #J "(%[mask])%{1to16%}, %%zmm31, %%zmm28\n\t" \
  "vcvtdq2ps %%zmm27, %%zmm27\n\t" "vcvtdq2ps %%zmm28, %%zmm28\n\t" W4Z_FMA2(A)
#define W4Z_CVT_TOP(C) W4Z_X(C, 7) "vpsrld $28, %%zmm30, %%zmm27\n\t" "vpsrld $28, %%zmm31, %%zmm28\n\t" \
  "vcvtdq2ps %%zmm27, %%zmm27\n\t" "vcvtdq2ps %%zmm28, %%zmm28\n\t" W4Z_FMA2(3)
#define W4Z_CHUNK_CVT(C) W4Z_LOAD(C) \
  W4Z_CVT(C, 0, 0) W4Z_CVT(C, 1, 1) W4Z_CVT(C, 2, 2) W4Z_CVT(C, 3, 3) \
  W4Z_CVT(C, 4, 0) W4Z_CVT(C, 5, 1) W4Z_CVT(C, 6, 2) W4Z_CVT_TOP(C)

/* The statements; a and b are arrays of four __m512 accumulators. */
#define W4Z_ACC(a, b) [a0] "+v"(a[0]), [a1] "+v"(a[1]), [a2] "+v"(a[2]), [a3] "+v"(a[3]), \
  [b0] "+v"(b[0]), [b1] "+v"(b[1]), [b2] "+v"(b[2]), [b3] "+v"(b[3])
#define W4Z_CLOBBERS "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory"
#define W4Z_TILE_DN(t, xc, a, b, mk) __asm__(W4Z_CHUNK_DN(0) \
  : W4Z_ACC(a, b) : [w] "r"(t), [x] "r"(xc), [m0] "v"(mk[0]), [m1] "v"(mk[1]), [m2] "v"(mk[2]), \
  [m3] "v"(mk[3]) : W4Z_CLOBBERS)
#define W4Z_TILE2_DN(t, xc, a, b, mk) __asm__(W4Z_CHUNK_DN(0) W4Z_CHUNK_DN(1) \
  : W4Z_ACC(a, b) : [w] "r"(t), [x] "r"(xc), [m0] "v"(mk[0]), [m1] "v"(mk[1]), [m2] "v"(mk[2]), \
  [m3] "v"(mk[3]) : W4Z_CLOBBERS)
#define W4Z_TILE_CVT(t, xc, a, b) __asm__(W4Z_CHUNK_CVT(0) \
  : W4Z_ACC(a, b) : [w] "r"(t), [x] "r"(xc), [mask] "r"(W4_MASK[0]) : W4Z_CLOBBERS)
#define W4Z_TILE2_CVT(t, xc, a, b) __asm__(W4Z_CHUNK_CVT(0) W4Z_CHUNK_CVT(1) \
  : W4Z_ACC(a, b) : [w] "r"(t), [x] "r"(xc), [mask] "r"(W4_MASK[0]) : W4Z_CLOBBERS)
#endif

#endif
