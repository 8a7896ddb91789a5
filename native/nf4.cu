// nf4.cu — bitsandbytes 4-bit weights (NF4 / FP4, optionally double-quantized): dequantize, quantize,
// the fused decode GEMV (tensor cores, M <= 16 rows of x) and a float32 SIMT GEMV, plus the small
// conversions the launchers need around cuBLAS (CudaQuant4bit / Quant4bitKernels are the callers).
//
// Numerics are those of the CPU reference (dev.qlora4j.quant.Quant4bit, Nf4Matmul, Blockwise8bit,
// DynamicMap), which are bitsandbytes' rounding rules:
//   absmax(block)  = F32 absmax[block], or when nested (double quantization)
//                    fl(fl(nested_code[q[block]] * nested_absmax[block / nested_bs]) + offset)
//                    (two float32 roundings, in that order: __fmul_rn / __fadd_rn keep nvcc from
//                    contracting them into one FMA);
//   value(e)       = fl(table[code(e)] * absmax(e / blocksize)), table = QuantType.dequantValue
//                    (NF4 codes, FP4 kernel constants; 16 floats passed by the launcher);
//   dequantize     = value rounded once to the output dtype (nearest even);
//   matmul weight  = round(compute, round(state, value)), x = round(compute, x), float32 accumulation,
//                    out = round(compute, acc + round(compute, bias)), then stored in y's dtype.
//
// Layout of a 4-bit weight [N, K] (flattened row-major, n = N*K values): packed[(n+1)/2] bytes, value
// 2i in the high nibble of byte i and 2i+1 in the low nibble; blocks of `blocksize` consecutive
// flattened values (a power of two in 32..4096) share one absmax. Blocks may straddle rows.
//
// Dtype codes (launch arguments): 0 = float32, 1 = bfloat16, 2 = float16.
#include "q4_common.cuh"
#include "lora_fold.cuh"
#include <float.h>

// ---------------------------------------------------------------------------------------------
// shared helpers

// The statistics of one 4-bit weight as the kernels receive them.
struct Q4Weight {
    const uint8_t* packed;        // [(n+1)/2]
    const void* absmax;           // F32 [blocks], or U8 [blocks] when nested
    const float* nested_absmax;   // F32 [ceil(blocks / nested_bs)] (nested only)
    const float* nested_code;     // F32 [256] (nested only)
    float offset;                 // nested only
    int log2_blocksize;
    int nested_bs;                // nested only
    int nested_shift;             // log2(nested_bs) when a power of two, else -1
    int nested;                   // 0 / 1
};

__device__ __forceinline__ float q4_absmax(const Q4Weight& w, int64_t block) {
    if (!w.nested) return __ldg(reinterpret_cast<const float*>(w.absmax) + block);
    int q = __ldg(reinterpret_cast<const uint8_t*>(w.absmax) + block);
    int64_t nb = w.nested_shift >= 0 ? (block >> w.nested_shift) : block / w.nested_bs;
    // nested_code may point to shared memory (the GEMV copies it there): a generic load, not __ldg
    return __fadd_rn(__fmul_rn(w.nested_code[q], __ldg(w.nested_absmax + nb)), w.offset);
}

#define Q4_WEIGHT_PARAMS                                                                             \
    const uint8_t* __restrict__ packed, const void* __restrict__ absmax,                             \
    const float* __restrict__ nested_absmax, const float* __restrict__ nested_code, float offset,    \
    int log2_blocksize, int nested_bs, int nested_shift, int nested
#define Q4_WEIGHT_MAKE                                                                               \
    Q4Weight w{packed, absmax, nested_absmax, nested_code, offset, log2_blocksize, nested_bs,        \
               nested_shift, nested}

// ---------------------------------------------------------------------------------------------
// Dequantize. y[e] = round(out, round(mid, value(e))) for e < n, flattened.
// mid = the state's dtype when the result feeds a matmul in another compute dtype (Nf4Matmul rounds the
// weight to the state's dtype first), or DT_F32 for a plain dequantize (Quant4bit.dequantize).
// code16: the 16 dequantize factors.
//
// Shape (session 9, native/NOTES-dequantize.md): a warp owns a chunk of 32 x DQ_PIECES consecutive "pieces" (a piece =
// 8 values = 4 packed bytes = one 16-byte bf16 store); at step j lane l takes piece 32 j + l, so every warp load
// instruction reads 128 contiguous bytes and every store writes 512 contiguous bytes (whole 32-byte sectors). A lane
// issues all DQ_PIECES packed loads and its chunk's absmax loads before the block fills its tables and before any
// store (the table fill's L2 round trip overlaps the DRAM one instead of preceding it). The absmax of block b0 + l
// (b0 = the chunk's first block) is loaded and, when nested, decoded once by lane l, then handed to the lanes that
// need it with a shuffle (blocksize 64: lanes 8i..8i+7 of a step share block 4 j + i). mid is a template argument
// (no per-value branch). Launch: block DQ_THREADS; grid = ceil(n / 8 / (DQ_THREADS / 32 * 32 * DQ_PIECES)) blocks
// covers every chunk exactly once (Quant4bitKernels.dequantizeGrid); any grid >= 1 is correct (warps stride over
// the chunks, loading the next chunk after storing the current one).
// The values are those of the earlier kernel bit for bit (same float operations in the same order):
// fl(table[code] * absmax) rounded through mid, then to OutT.
// ROWS: the weight [n / cols, cols] is stored with a row stride of ldy elements (ldy >= cols, cols % 8 == 0 and
// ldy % 8 == 0, so a piece never crosses a row and its store is 16-byte aligned): how the LoRA fold
// (lora_fold.cu) leaves room after each row for the adapter's columns. Otherwise y is contiguous (cols and ldy unused).

#define DQ_THREADS 256
#define DQ_PIECES 8

template <typename OutT>
__device__ __forceinline__ void store_out(OutT* y, int64_t i, float v);
template <> __device__ __forceinline__ void store_out<float>(float* y, int64_t i, float v) { y[i] = v; }
template <> __device__ __forceinline__ void store_out<__nv_bfloat16>(__nv_bfloat16* y, int64_t i, float v) { y[i] = f32_to_bf16(v); }
template <> __device__ __forceinline__ void store_out<__half>(__half* y, int64_t i, float v) { y[i] = f32_to_f16(v); }

// 16-byte store; CS: st.global.cs (evict-first streaming hint)
template <bool CS>
__device__ __forceinline__ void dq_st16(void* p, uint4 v) {
    if (CS) __stcs(reinterpret_cast<uint4*>(p), v);
    else *reinterpret_cast<uint4*>(p) = v;
}

template <typename OutT, bool CS> struct DqPack8;  // 8 outputs as one 16-byte (or 2 x 16-byte) store
template <bool CS> struct DqPack8<__nv_bfloat16, CS> {
    static __device__ __forceinline__ void store(__nv_bfloat16* y, const float* v) {
        __nv_bfloat162 p0 = __floats2bfloat162_rn(v[0], v[1]), p1 = __floats2bfloat162_rn(v[2], v[3]);
        __nv_bfloat162 p2 = __floats2bfloat162_rn(v[4], v[5]), p3 = __floats2bfloat162_rn(v[6], v[7]);
        dq_st16<CS>(y, make_uint4(*reinterpret_cast<uint32_t*>(&p0), *reinterpret_cast<uint32_t*>(&p1),
                                  *reinterpret_cast<uint32_t*>(&p2), *reinterpret_cast<uint32_t*>(&p3)));
    }
};
template <bool CS> struct DqPack8<__half, CS> {
    static __device__ __forceinline__ void store(__half* y, const float* v) {
        __half2 p0 = __floats2half2_rn(v[0], v[1]), p1 = __floats2half2_rn(v[2], v[3]);
        __half2 p2 = __floats2half2_rn(v[4], v[5]), p3 = __floats2half2_rn(v[6], v[7]);
        dq_st16<CS>(y, make_uint4(*reinterpret_cast<uint32_t*>(&p0), *reinterpret_cast<uint32_t*>(&p1),
                                  *reinterpret_cast<uint32_t*>(&p2), *reinterpret_cast<uint32_t*>(&p3)));
    }
};
template <bool CS> struct DqPack8<float, CS> {
    static __device__ __forceinline__ void store(float* y, const float* v) {
        dq_st16<CS>(y, make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])));
        dq_st16<CS>(y + 4, make_uint4(__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]), __float_as_uint(v[7])));
    }
};

// One lane's loads for one chunk: P packed words (pieces 32 j + lane) and the absmax inputs of the chunk's blocks
// b0 + lane + 32 k. A chunk spans 256 P values: 8 P blocks at the smallest blocksize (32), hence AK = P / 4.
template <int P>
struct DqChunk {
    static constexpr int AK = P >= 4 ? P / 4 : 1;
    uint32_t q[P];
    float s[AK];        // absmax (plain) or the block's nested group absmax (nested)
    uint32_t code[AK];  // nested: the block's 8-bit absmax code
};

// TL: the packed bytes are in the tile layout (q4_tile_word); per_row = K / 8 pieces per row (TL only).
template <int P, bool TL = false>
__device__ __forceinline__ void dq_load(const Q4Weight& w, uint32_t u0, uint32_t units, uint32_t blocks, int lane,
                                        DqChunk<P>& c, uint32_t per_row = 0) {
    if (TL) {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(w.packed);
        const uint32_t chunks = per_row >> 4;
        uint32_t r = (u0 + lane) / per_row, kp = (u0 + lane) - r * per_row;
#pragma unroll
        for (int j = 0; j < P; j++) {
            c.q[j] = u0 + 32 * j + lane < units ? __ldg(words + q4_tile_word(r, kp, chunks)) : 0u;
            kp += 32;
            while (kp >= per_row) { kp -= per_row; r++; }
        }
    } else {
        const uint32_t* pk = reinterpret_cast<const uint32_t*>(w.packed) + (u0 + lane);
#pragma unroll
        for (int j = 0; j < P; j++) c.q[j] = u0 + 32 * j + lane < units ? __ldg(pk + 32 * j) : 0u;
    }
    const uint32_t b0 = u0 >> (w.log2_blocksize - 3);        // u0 * 8 values / blocksize
    const int nb = max(1, (256 * P) >> w.log2_blocksize);  // blocks in the chunk (1 when a block outspans it)
#pragma unroll
    for (int k = 0; k < DqChunk<P>::AK; k++) {
        const uint32_t b = b0 + lane + 32 * k;
        c.s[k] = 0.0f;
        c.code[k] = 0;
        if (lane + 32 * k < nb && b < blocks) {
            if (w.nested) {
                c.code[k] = __ldg(reinterpret_cast<const uint8_t*>(w.absmax) + b);
                c.s[k] = __ldg(w.nested_absmax + (w.nested_shift >= 0 ? (b >> w.nested_shift) : b / static_cast<uint32_t>(w.nested_bs)));
            } else {
                c.s[k] = __ldg(reinterpret_cast<const float*>(w.absmax) + b);
            }
        }
    }
}

// Decodes and stores one chunk (pieces u0 ..). Called by whole warps (the shuffles): u0 is warp-uniform.
template <typename OutT, bool ROWS, int P, bool CS, int MID>
__device__ __forceinline__ void dq_store(const Q4Weight& w, const float* table, const float* ncode, const DqChunk<P>& c,
                                         uint32_t u0, uint32_t units, OutT* __restrict__ y, uint32_t per_row,
                                         int64_t ldy, int lane) {
    constexpr int AK = DqChunk<P>::AK;
    float amax[AK];
#pragma unroll
    for (int k = 0; k < AK; k++) amax[k] = w.nested ? __fadd_rn(__fmul_rn(ncode[c.code[k]], c.s[k]), w.offset) : c.s[k];
    uint32_t row = 0, col = 0;
    OutT* yl = y;
    if (ROWS) {
        row = (u0 + lane) / per_row;
        col = (u0 + lane) - row * per_row;
    } else {
        yl = y + static_cast<int64_t>(u0 + lane) * 8;
    }
#pragma unroll
    for (int j = 0; j < P; j++) {
        // the piece's block in the chunk: lane idx & 31's amax[idx >> 5] (idx >> 5 is the same for the whole warp at
        // one j, and 0 unless the chunk has more than 32 blocks: blocksize 32 at P = 8); shuffled from every amax
        // register in use and selected after (selecting first makes nvcc index a local-memory array)
        const int idx = ((32 * j + lane) * 8) >> w.log2_blocksize;
        float a = __shfl_sync(0xffffffffu, amax[0], idx & 31);
#pragma unroll
        for (int k = 1; k < AK; k++) {
            if (((256 * P) >> w.log2_blocksize) > 32 * k) {
                const float ak = __shfl_sync(0xffffffffu, amax[k], idx & 31);
                if ((idx >> 5) == k) a = ak;
            }
        }
        if (ROWS && j > 0) {
            col += 32;
            while (col >= per_row) { col -= per_row; row++; }
        }
        if (u0 + 32 * j + lane < units) {
            float v[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const uint32_t byte = (c.q[j] >> (8 * b)) & 0xFF;
                v[2 * b] = round_to(__fmul_rn(table[byte >> 4], a), MID);
                v[2 * b + 1] = round_to(__fmul_rn(table[byte & 15], a), MID);
            }
            DqPack8<OutT, CS>::store(ROWS ? y + static_cast<int64_t>(row) * ldy + col * 8 : yl + 256 * j, v);
        }
    }
}

// Piece and block indices are 32-bit: n / 8 < 2^31 (the launchers check).
template <typename OutT, bool ROWS, int P, bool CS, int MID, bool TL>
__device__ __forceinline__ void dequantize_chunks(const Q4Weight& w, const float* __restrict__ code16, float* table,
                                                  float* ncode, OutT* __restrict__ y, int64_t n, int cols, int64_t ldy) {
    const int lane = threadIdx.x & 31;
    const uint32_t units = static_cast<uint32_t>(n / 8);  // whole pieces (8 values lie in one block: blocksize >= 32)
    const uint32_t blocks = static_cast<uint32_t>((n + (int64_t(1) << w.log2_blocksize) - 1) >> w.log2_blocksize);
    const uint32_t chunks = (units + 32 * P - 1) / (32 * P);
    const uint32_t warps = gridDim.x * (blockDim.x / 32);
    uint32_t chunk = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const uint32_t tl_per_row = TL ? static_cast<uint32_t>(cols) / 8 : 0u;
    DqChunk<P> c;
    if (chunk < chunks) dq_load<P, TL>(w, chunk * (32 * P), units, blocks, lane, c, tl_per_row);  // in flight while the tables fill
    if (threadIdx.x < 16) table[threadIdx.x] = __ldg(code16 + threadIdx.x);
    if (w.nested) {
        for (int j = threadIdx.x; j < 256; j += blockDim.x) ncode[j] = __ldg(w.nested_code + j);
    }
    __syncthreads();
    const uint32_t per_row = ROWS ? static_cast<uint32_t>(cols) / 8 : 1u;
    for (; chunk < chunks; chunk += warps) {
        dq_store<OutT, ROWS, P, CS, MID>(w, table, ncode, c, chunk * (32 * P), units, y, per_row, ldy, lane);
        if (chunk + warps < chunks) dq_load<P, TL>(w, (chunk + warps) * (32 * P), units, blocks, lane, c, tl_per_row);  // short grids only
    }
    // the last values (n % 8 != 0): one thread, value by value (never with ROWS: cols % 8 == 0; nor TL: K % 128 == 0)
    if (!ROWS && !TL && global_thread_index() == 0 && static_cast<int64_t>(units) * 8 < n) {
        for (int64_t e = static_cast<int64_t>(units) * 8; e < n; e++) {
            const uint32_t byte = w.packed[e >> 1];
            const uint32_t q = (e & 1) ? (byte & 15) : (byte >> 4);
            store_out<OutT>(y, e, round_to(__fmul_rn(table[q], q4_absmax(w, e >> w.log2_blocksize)), MID));
        }
    }
}

// The kernels' body: mid chosen once (a template argument of the loop), the tables in shared memory.
// TL: the weight's bytes in the tile layout (cols = K, a multiple of 128; the rows a multiple of 16).
template <typename OutT, bool ROWS = false, int P = DQ_PIECES, bool CS = false, bool TL = false>
__device__ __forceinline__ void dequantize_body(const Q4Weight& w, const float* __restrict__ code16, OutT* __restrict__ y,
                                                int64_t n, int mid, int cols = 0, int64_t ldy = 0) {
    __shared__ float table[16];
    __shared__ float ncode[256];
    if (mid == DT_BF16) dequantize_chunks<OutT, ROWS, P, CS, DT_BF16, TL>(w, code16, table, ncode, y, n, cols, ldy);
    else if (mid == DT_F16) dequantize_chunks<OutT, ROWS, P, CS, DT_F16, TL>(w, code16, table, ncode, y, n, cols, ldy);
    else dequantize_chunks<OutT, ROWS, P, CS, DT_F32, TL>(w, code16, table, ncode, y, n, cols, ldy);
}

extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_f32(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                           float* __restrict__ y, int64_t n, int mid) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<float>(w, code16, y, n, mid);
}

extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_bf16(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                            __nv_bfloat16* __restrict__ y, int64_t n, int mid) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<__nv_bfloat16>(w, code16, y, n, mid);
}

// The bf16 dequantize into rows of stride ldy (see the ROWS note above): y[row * ldy + col] for the weight's
// [n / cols, cols] values; the columns [cols, ldy) of each row are not written.
extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_rows_bf16(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                                 __nv_bfloat16* __restrict__ y, int64_t n, int mid,
                                                                                 int cols, int64_t ldy) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<__nv_bfloat16, true>(w, code16, y, n, mid, cols, ldy);
}

// The LoRA fold's weight W'_i (backend/cuda/CudaLoraFold, lora_fold.cu) in one launch: q4_dequantize_rows_bf16's
// values in columns [0, cols) of each row, and columns [cols, ldy) as lora_fold_b_bf16 writes them: s * b[row, c - col0]
// rounded once to BF16 for c - cols in [col0, col0 + r) (b the F32 master lora_B [rows, r]), else 0. The same bits as
// the two kernels in turn, one launch and one kernel boundary fewer per weight. (ldy - cols) % 8 == 0 (the launcher
// checks); the same grid-stride threads run both loops.
extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_fold_bf16(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                                 __nv_bfloat16* __restrict__ y, int64_t n, int mid,
                                                                                 int cols, int64_t ldy, const float* __restrict__ b,
                                                                                 int col0, int r, float s) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<__nv_bfloat16, true>(w, code16, y, n, mid, cols, ldy);
    lora_fold_fill_b(y, ldy, static_cast<int>(n / cols), cols, b, col0, r, s);
}

extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_f16(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                           __half* __restrict__ y, int64_t n, int mid) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<__half>(w, code16, y, n, mid);
}

// The same five dequantize kernels for a weight whose bytes are in the tile layout (q4_tile_word; CudaQuant4bit.Layout
// .TILES): the same values bit for bit, y in the same row-major order. cols = K (in % 128 == 0, out % 16 == 0: the
// launcher checks) is an argument of all of them.
#define Q4_DEQUANTIZE_TILES(name, OutT)                                                                              \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS) name(Q4_WEIGHT_PARAMS, const float* __restrict__ code16, \
                                                                  OutT* __restrict__ y, int64_t n, int mid, int cols) { \
        pdl_enter();                                                                                                 \
        Q4_WEIGHT_MAKE;                                                                                              \
        dequantize_body<OutT, false, DQ_PIECES, false, true>(w, code16, y, n, mid, cols);                           \
    }
Q4_DEQUANTIZE_TILES(q4_dequantize_f32_tiles, float)
Q4_DEQUANTIZE_TILES(q4_dequantize_bf16_tiles, __nv_bfloat16)
Q4_DEQUANTIZE_TILES(q4_dequantize_f16_tiles, __half)

extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_rows_bf16_tiles(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                                       __nv_bfloat16* __restrict__ y, int64_t n, int mid,
                                                                                       int cols, int64_t ldy) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<__nv_bfloat16, true, DQ_PIECES, false, true>(w, code16, y, n, mid, cols, ldy);
}

extern "C" __global__ void __launch_bounds__(DQ_THREADS) q4_dequantize_fold_bf16_tiles(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                                                       __nv_bfloat16* __restrict__ y, int64_t n, int mid,
                                                                                       int cols, int64_t ldy, const float* __restrict__ b,
                                                                                       int col0, int r, float s) { pdl_enter();
    Q4_WEIGHT_MAKE;
    dequantize_body<__nv_bfloat16, true, DQ_PIECES, false, true>(w, code16, y, n, mid, cols, ldy);
    lora_fold_fill_b(y, ldy, static_cast<int>(n / cols), cols, b, col0, r, s);
}

// Moves a weight [N, K]'s packed bytes between the row layout and the tile layout (N % 16 == 0, K % 128 == 0), 16
// bytes (32 values of one row) at a time: to_tiles = 1 reads rows and writes tiles, 0 the reverse. src and dst are
// distinct buffers of N * K / 2 bytes. Grid-stride over the records.
extern "C" __global__ void __launch_bounds__(256) q4_tile_layout(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                                                 int N, int K, int to_tiles) {
    pdl_enter();
    const uint32_t per_row = static_cast<uint32_t>(K) / 32, chunks = static_cast<uint32_t>(K) / 128;
    const uint32_t records = static_cast<uint32_t>(N) * per_row;
    for (uint32_t i = global_thread_index(); i < records; i += gridDim.x * blockDim.x) {
        const uint32_t r = i / per_row, kq = i - r * per_row;  // row r, k = 32 kq
        const uint32_t j = q4_tile_word(r, 4 * kq, chunks) >> 2;
        if (to_tiles) dst[j] = src[i];
        else dst[i] = src[j];
    }
}

// ---------------------------------------------------------------------------------------------
// Quantize (Quant4bit.quantize). One warp per block of `blocksize` values of x (F32/BF16/F16, n values):
//   absmax = fmaxf over |x| starting at -FLT_MAX (fmaxf ignores NaN), with the zero a partial last block
//   loads past the end; inv = 1/absmax (IEEE division); code = the type's decision tree on x * inv;
//   packed[i] = code(2i) << 4 | code(2i+1), the pad nibble of an odd n is the code of 0 * inv.
// quant_type: 0 = NF4, 1 = FP4. Launch: block 256 (8 warps), grid-stride over blocks of values.

__constant__ float NF4_MIDPOINTS[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
__constant__ float FP4_PIVOTS[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};

__device__ __forceinline__ int quantize_nf4(float x) {
    // the number of midpoints strictly below x, by the same four comparisons as QuantType.NF4
    int q = x > NF4_MIDPOINTS[7] ? 8 : 0;
    if (x > NF4_MIDPOINTS[q + 3]) q += 4;
    if (x > NF4_MIDPOINTS[q + 1]) q += 2;
    if (x > NF4_MIDPOINTS[q]) q += 1;
    return q;
}

__device__ __forceinline__ int quantize_fp4(float x) {
    const int rank_to_bits[8] = {0, 1, 6, 7, 4, 5, 2, 3};
    int sign = x < 0.0f ? 8 : 0;  // -0 and NaN keep the sign bit clear
    float a = fabsf(x);
    int r = a > FP4_PIVOTS[3] ? 4 : 0;
    if (a > FP4_PIVOTS[r + 1]) r += 2;
    if (a > FP4_PIVOTS[r]) r += 1;
    return rank_to_bits[r] | sign;
}

extern "C" __global__ void __launch_bounds__(256) q4_quantize(const void* __restrict__ x, int x_dtype, int64_t n,
                                                              int blocksize, int quant_type,
                                                              uint8_t* __restrict__ packed, float* __restrict__ absmax) { pdl_enter();
    int lane = threadIdx.x & 31;
    int64_t warp = global_thread_index() >> 5;
    int64_t warps = grid_stride() >> 5;
    int64_t blocks = (n + blocksize - 1) / blocksize;
    for (int64_t b = warp; b < blocks; b += warps) {
        int64_t from = b * blocksize;
        int64_t to = min(n, from + blocksize);
        float m = -FLT_MAX;
        for (int64_t e = from + lane; e < to; e += 32) m = fmaxf(m, fabsf(load_as_f32(x, e, x_dtype)));
#pragma unroll
        for (int s = 16; s > 0; s >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, s));
        if (to - from < blocksize) m = fmaxf(m, 0.0f);
        if (lane == 0) absmax[b] = m;
        float inv = __fdiv_rn(1.0f, m);
        for (int64_t e = from + 2 * lane; e < to; e += 64) {
            float v0 = __fmul_rn(load_as_f32(x, e, x_dtype), inv);
            float v1 = __fmul_rn(e + 1 < to ? load_as_f32(x, e + 1, x_dtype) : 0.0f, inv);
            int hi = quant_type == 0 ? quantize_nf4(v0) : quantize_fp4(v0);
            int lo = quant_type == 0 ? quantize_nf4(v1) : quantize_fp4(v1);
            packed[e >> 1] = (uint8_t)((hi << 4) | lo);
        }
    }
}

// Double quantization of the absmax values (Blockwise8bit.quantize with the signed dynamic map, blocks
// of 256): centered[i] = absmax[i] - offset (float32), per block amax as above, inv = 1/amax, code =
// DynamicMap.quantize(map, centered * inv). One warp per block of 256; block 256 threads.

__device__ __forceinline__ int dynamic_map_quantize(const float* code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) { lower_pivot = pivot; lower = val; pivot += i; }
        else { upper_pivot = pivot; upper = val; pivot -= i; }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[255];
    if (lower_pivot == 0) lower = code[0];
    if (x > val) {
        float mid = __fmul_rn(__fadd_rn(upper, val), 0.5f);
        return x > mid ? upper_pivot : pivot;
    } else {
        float mid = __fmul_rn(__fadd_rn(lower, val), 0.5f);
        return x < mid ? lower_pivot : pivot;
    }
}

extern "C" __global__ void __launch_bounds__(256) q4_double_quantize(const float* __restrict__ absmax, int64_t n,
                                                                     float offset, const float* __restrict__ map256,
                                                                     int nested_bs, uint8_t* __restrict__ codes,
                                                                     float* __restrict__ nested_absmax) { pdl_enter();
    __shared__ float map[256];
    map[threadIdx.x] = map256[threadIdx.x];
    __syncthreads();
    int lane = threadIdx.x & 31;
    int64_t warp = global_thread_index() >> 5;
    int64_t warps = grid_stride() >> 5;
    int64_t blocks = (n + nested_bs - 1) / nested_bs;
    for (int64_t b = warp; b < blocks; b += warps) {
        int64_t from = b * nested_bs;
        int64_t to = min(n, from + nested_bs);
        float m = -FLT_MAX;
        for (int64_t e = from + lane; e < to; e += 32) m = fmaxf(m, fabsf(__fsub_rn(absmax[e], offset)));
#pragma unroll
        for (int s = 16; s > 0; s >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, s));
        if (to - from < nested_bs) m = fmaxf(m, 0.0f);
        if (lane == 0) nested_absmax[b] = m;
        float inv = __fdiv_rn(1.0f, m);
        for (int64_t e = from + lane; e < to; e += 32) {
            codes[e] = (uint8_t)dynamic_map_quantize(map, __fmul_rn(__fsub_rn(absmax[e], offset), inv));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions around the cuBLAS path and the GEMV.
// q4_convert: y[i] = round(y_dtype, x[i]) (x widened exactly first). Grid-stride, block 256.
extern "C" __global__ void __launch_bounds__(256) q4_convert(const void* __restrict__ x, int x_dtype,
                                                             void* __restrict__ y, int y_dtype, int64_t n) { pdl_enter();
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        store_from_f32(y, i, y_dtype, load_as_f32(x, i, x_dtype));
    }
}

// q4_bias_epilogue: y[m, o] = round(y_dtype, round(compute, acc[m, o] + round(compute, bias[o]))) for m < rows,
// o < cols; acc is the float32 output of the prefill GEMM. The one rounding of (sum + bias) Nf4Matmul does, made
// here rather than trusted to cuBLAS: the earlier path (bias rows as the beta = 1 C operand of a 16-bit GEMM) failed
// the linear test with 16-bit compute and a bias, which is what a sum rounded before the bias add gives where the
// bias cancels the sum (errors of many ulps of the result).
extern "C" __global__ void __launch_bounds__(256) q4_bias_epilogue(const float* __restrict__ acc,
                                                                   const void* __restrict__ bias, int bias_dtype,
                                                                   int compute_dtype, void* __restrict__ y, int y_dtype,
                                                                   int64_t rows, int cols) { pdl_enter();
    int64_t n = rows * cols;
    for (int64_t i = global_thread_index(); i < n; i += grid_stride()) {
        float b = round_to(load_as_f32(bias, i % cols, bias_dtype), compute_dtype);
        store_from_f32(y, i, y_dtype, round_to(__fadd_rn(acc[i], b), compute_dtype));
    }
}

// ---------------------------------------------------------------------------------------------
// SIMT GEMV (any K, any compute dtype; the path for float32 compute and for K % 32 != 0).
// y[m, o] = round(y, round(compute, sum_k round(compute, x[m,k]) * round(compute, round(state, value(o*K+k)))
//                                      + round(compute, bias[o]))), m < M <= 16.
// One warp per output row (grid-stride over rows); lane j takes k = j, j+32, ...; float32 FMAs, then a
// shuffle reduction. Block 256.
#define SIMT_MAX_M 16

extern "C" __global__ void __launch_bounds__(256) q4_gemv_simt(Q4_WEIGHT_PARAMS, const float* __restrict__ code16,
                                                               const void* __restrict__ x, int x_dtype, int M, int N, int K,
                                                               int compute_dtype, int state_dtype,
                                                               const void* __restrict__ bias, int bias_dtype,
                                                               void* __restrict__ y, int y_dtype) { pdl_enter();
    Q4_WEIGHT_MAKE;
    __shared__ float table[16];
    if (threadIdx.x < 16) table[threadIdx.x] = code16[threadIdx.x];
    __syncthreads();
    int lane = threadIdx.x & 31;
    int64_t warp = global_thread_index() >> 5;
    int64_t warps = grid_stride() >> 5;
    for (int64_t o = warp; o < N; o += warps) {
        float acc[SIMT_MAX_M];
#pragma unroll
        for (int m = 0; m < SIMT_MAX_M; m++) acc[m] = 0.0f;
        int64_t base = o * (int64_t)K;
        for (int k = lane; k < K; k += 32) {
            int64_t e = base + k;
            uint32_t byte = __ldg(w.packed + (e >> 1));
            uint32_t q = (e & 1) ? (byte & 15) : (byte >> 4);
            float wv = round_to(round_to(__fmul_rn(table[q], q4_absmax(w, e >> w.log2_blocksize)), state_dtype), compute_dtype);
#pragma unroll
            for (int m = 0; m < SIMT_MAX_M; m++) {
                if (m < M) acc[m] = fmaf(round_to(load_as_f32(x, (int64_t)m * K + k, x_dtype), compute_dtype), wv, acc[m]);
            }
        }
#pragma unroll
        for (int m = 0; m < SIMT_MAX_M; m++) {
            if (m < M) {
                float s = acc[m];
#pragma unroll
                for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
                acc[m] = s;
            }
        }
        if (lane == 0) {
            float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), compute_dtype) : 0.0f;
#pragma unroll
            for (int m = 0; m < SIMT_MAX_M; m++) {
                if (m < M) store_from_f32(y, (int64_t)m * N + o, y_dtype, round_to(__fadd_rn(acc[m], b), compute_dtype));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core decode GEMV, 16-bit compute (bf16 or f16), M <= 8 * NT rows of x, K % 32 == 0.
//
// Work: the weight is cut into tiles of 16 output rows; each tile's K into chunks of 128. A chunk is one
// mma "row tile x 128 k" step of one warp: thread (g = lane / 4, t = lane % 4) loads 16 bytes (32 values)
// of rows g and g + 8 at k = 128c + 32t, one absmax each (a 32-value group never straddles a block).
// The chunks of all tiles, tile-major, are split evenly over all warps of the grid (stream-K): a warp
// walks its contiguous range with the next chunk's loads in flight while it decodes the current one, so
// every warp moves the same number of bytes whatever the shape. A tile whose chunks fall to several warps
// is finished by the last of them to arrive (an atomic counter per tile, reset by that warp): it adds the
// float32 partial fragments of all contributors in warp order (deterministic) and writes the output.
//
// Decoding: a pair table in shared memory maps each packed byte to (table[hi], table[lo]) as float2; it is
// replicated 32 times (entry (byte, lane) at byte * 256 + lane * 8) so the lanes of a warp never share a
// bank, and one byte_perm forms the address from the packed word and the lane's offset. Each value is
// then multiplied by the absmax in float32 and the pair rounded to bf16x2 / f16x2 by one cvt, which is
// exactly round(compute, value) (and round(compute, round(state, value)) with double_round).
// mma.m16n8k16: A = 16 weight rows x 16 k (bytes 2s, 2s+1 of both rows: k = 4s..4s+3 of the thread's 32),
// B = x rows g (+8) at the same k (the k order inside the thread is the same on both sides, so the sum is
// the dot product), C = float32 [16 rows x 8 x-rows].
//
// Shared memory (dynamic): 64 KiB pair table + 1 KiB nested code. Block 256 threads (8 warps).

#define GEMV_WARPS 8
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_TABLE_BYTES (256 * 32 * 8)
#define GEMV_SMEM_BYTES (GEMV_TABLE_BYTES + 256 * 4)
#define GEMV_CHUNK_K 128

__device__ __forceinline__ uint4 ld_stream_u4(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// The loads of one chunk for one thread, and where the chunk is.
struct ChunkLoad {
    uint4 w0, w1;     // rows g and g + 8, 16 bytes each
    float a0, a1;     // their absmax (0 for rows or k past the end, so they contribute nothing)
    int tile;         // 16-row tile
    int kb;           // this thread's first k: 128 * chunk + 32 * t
};

struct GemvShape {
    int M, N, K;
    int chunks_per_tile;  // ceil(K / 128)
};

__device__ __forceinline__ ChunkLoad load_chunk(const Q4Weight& w, const GemvShape& s, int tile, int chunk, int g, int t) {
    ChunkLoad L;
    L.tile = tile;
    L.kb = chunk * GEMV_CHUNK_K + t * 32;
    int64_t r0 = (int64_t)tile * 16 + g, r1 = r0 + 8;
    L.w0 = make_uint4(0, 0, 0, 0);
    L.w1 = make_uint4(0, 0, 0, 0);
    L.a0 = 0.0f;
    L.a1 = 0.0f;
    if (L.kb < s.K) {
        if (r0 < s.N) {
            int64_t e = r0 * s.K + L.kb;
            L.w0 = ld_stream_u4(w.packed + (e >> 1));
            L.a0 = q4_absmax(w, e >> w.log2_blocksize);
        }
        if (r1 < s.N) {
            int64_t e = r1 * s.K + L.kb;
            L.w1 = ld_stream_u4(w.packed + (e >> 1));
            L.a1 = q4_absmax(w, e >> w.log2_blocksize);
        }
    }
    return L;
}

// Decodes one byte through the pair table and scales: a bf16x2 / f16x2 register (low half = the high nibble's value).
template <bool F16C, bool DR>
__device__ __forceinline__ uint32_t decode_byte(const unsigned char* table, uint32_t word, uint32_t lane_off, int byte, float amax) {
    uint32_t addr = __byte_perm(word, lane_off, 0x5504 | (byte << 4));
    float2 p = *reinterpret_cast<const float2*>(table + addr);
    return pack_pair<F16C, DR>(__fmul_rn(p.x, amax), __fmul_rn(p.y, amax));
}

template <bool F16C, bool DR, int NT>
__device__ __forceinline__ void compute_chunk(const ChunkLoad& L, const unsigned char* table, uint32_t lane_off,
                                              const uint16_t* __restrict__ x, const GemvShape& s, int g,
                                              float (&acc)[NT][4]) {
    uint32_t xw[NT][16];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int xr = g + 8 * nt;
        if (xr < s.M && L.kb < s.K) {
            const uint4* xp = reinterpret_cast<const uint4*>(x + (int64_t)xr * s.K + L.kb);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint4 v = __ldg(xp + j);
                xw[nt][4 * j] = v.x; xw[nt][4 * j + 1] = v.y; xw[nt][4 * j + 2] = v.z; xw[nt][4 * j + 3] = v.w;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) xw[nt][j] = 0;
        }
    }
    uint32_t w0[4] = {L.w0.x, L.w0.y, L.w0.z, L.w0.w};
    uint32_t w1[4] = {L.w1.x, L.w1.y, L.w1.z, L.w1.w};
#pragma unroll
    for (int st = 0; st < 8; st++) {
        int word = st >> 1, byte = (st & 1) * 2;
        uint32_t a0 = decode_byte<F16C, DR>(table, w0[word], lane_off, byte, L.a0);
        uint32_t a1 = decode_byte<F16C, DR>(table, w1[word], lane_off, byte, L.a1);
        uint32_t a2 = decode_byte<F16C, DR>(table, w0[word], lane_off, byte + 1, L.a0);
        uint32_t a3 = decode_byte<F16C, DR>(table, w1[word], lane_off, byte + 1, L.a1);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) mma16816<F16C>(acc[nt], a0, a1, a2, a3, xw[nt][2 * st], xw[nt][2 * st + 1]);
    }
}

// Writes a finished 16-row tile: y[m, o] for the lane's fragment entries.
template <bool F16C, int NT>
__device__ __forceinline__ void store_tile(const float (&acc)[NT][4], const GemvShape& s, int tile, int g, int t,
                                           const void* bias, int bias_dtype, void* y, int y_dtype) {
    const int cdt = F16C ? DT_F16 : DT_BF16;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int o = tile * 16 + g + 8 * half;
        if (o >= s.N) continue;
        float b = bias ? round_to(load_as_f32(bias, o, bias_dtype), cdt) : 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                int m = 8 * nt + 2 * t + j;
                if (m < s.M) store_from_f32(y, (int64_t)m * s.N + o, y_dtype, round_to(__fadd_rn(acc[nt][2 * half + j], b), cdt));
            }
        }
    }
}

// The first chunk of warp w's range when `total` chunks are split over `warps` warps.
__device__ __forceinline__ int range_start(int64_t w, int64_t warps, int64_t total) { return (int)(w * total / warps); }

// The warp whose range holds chunk c: the largest w with range_start(w) <= c.
__device__ __forceinline__ int chunk_owner(int64_t c, int64_t warps, int64_t total) {
    return (int)(((c + 1) * warps + total - 1) / total - 1);
}

template <bool F16C, bool DR, int NT>
__device__ void gemv_mma_body(const Q4Weight& w, const uint16_t* __restrict__ x, const GemvShape& s,
                              const void* __restrict__ bias, int bias_dtype, void* __restrict__ y, int y_dtype,
                              float* __restrict__ partials, int* __restrict__ counters, const unsigned char* table,
                              int warp_id, int warps, int total) {
    int lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    uint32_t lane_off = (uint32_t)lane * 8;
    const int C = s.chunks_per_tile;
    const int start = range_start(warp_id, warps, total);
    const int end = range_start(warp_id + 1, warps, total);
    const int first_tile = start / C;
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    // (tile, chunk) of the next chunk to load, advanced without divisions
    int ntile = first_tile, nchunk = start - first_tile * C;
    ChunkLoad next = load_chunk(w, s, ntile, nchunk, g, t);
    for (int idx = start; idx < end; idx++) {
        ChunkLoad cur = next;
        if (++nchunk == C) { nchunk = 0; ntile++; }
        if (idx + 1 < end) next = load_chunk(w, s, ntile, nchunk, g, t);
        compute_chunk<F16C, DR, NT>(cur, table, lane_off, x, s, g, acc);
        // the tile ends here when the next chunk starts a new tile, or the range ends
        if (!(idx + 1 == end || nchunk == 0)) continue;
        const int tile = cur.tile;
        const int first = tile * C, last = first + C - 1;
        if (first >= start && last < end) {
            store_tile<F16C, NT>(acc, s, tile, g, t, bias, bias_dtype, y, y_dtype);
        } else {
            // a tile shared with other warps: slot 0 holds the warp's first tile, slot 1 its last
            int slot = tile == first_tile ? 0 : 1;
            float* p = partials + (((int64_t)warp_id * 2 + slot) * 32 + lane) * (NT * 4);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                __stcg(reinterpret_cast<float4*>(p + 4 * nt), make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]));
            }
            __threadfence();
            __syncwarp();
            int w_lo = chunk_owner(first, warps, total);
            int w_hi = chunk_owner(last, warps, total);
            int arrived = 0;
            if (lane == 0) arrived = atomicAdd(counters + tile, 1);
            arrived = __shfl_sync(0xffffffffu, arrived, 0);
            if (arrived == w_hi - w_lo) {  // the last contributor adds all partials, in warp order
                __threadfence();
                float sum[NT][4];
#pragma unroll
                for (int nt = 0; nt < NT; nt++) sum[nt][0] = sum[nt][1] = sum[nt][2] = sum[nt][3] = 0.0f;
                for (int cw = w_lo; cw <= w_hi; cw++) {
                    int cslot = range_start(cw, warps, total) / C == tile ? 0 : 1;
                    const float* q = partials + (((int64_t)cw * 2 + cslot) * 32 + lane) * (NT * 4);
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        float4 v = __ldcg(reinterpret_cast<const float4*>(q + 4 * nt));
                        sum[nt][0] += v.x; sum[nt][1] += v.y; sum[nt][2] += v.z; sum[nt][3] += v.w;
                    }
                }
                store_tile<F16C, NT>(sum, s, tile, g, t, bias, bias_dtype, y, y_dtype);
                if (lane == 0) counters[tile] = 0;  // ready for the next launch
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    }
}

template <bool F16C, int NT>
__device__ void gemv_mma_kernel(Q4Weight w, const float* __restrict__ code16, const uint16_t* __restrict__ x,
                                int M, int N, int K, const void* __restrict__ bias, int bias_dtype, void* __restrict__ y,
                                int y_dtype, float* __restrict__ partials, int* __restrict__ counters, int double_round) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    // pair table: entry j = byte * 32 + replica at j * 8 (consecutive threads write consecutive entries)
    for (int j = threadIdx.x; j < 256 * 32; j += GEMV_THREADS) {
        int byte = j >> 5;
        reinterpret_cast<float2*>(gemv_smem)[j] = make_float2(code16[byte >> 4], code16[byte & 15]);
    }
    float* ncode = reinterpret_cast<float*>(gemv_smem + GEMV_TABLE_BYTES);
    if (w.nested) {
        for (int j = threadIdx.x; j < 256; j += GEMV_THREADS) ncode[j] = w.nested_code[j];
        w.nested_code = ncode;  // 256 random lookups per warp chunk: shared memory, not global
    }
    __syncthreads();
    GemvShape s{M, N, K, (K + GEMV_CHUNK_K - 1) / GEMV_CHUNK_K};
    int total = ((N + 15) / 16) * s.chunks_per_tile;  // the launcher keeps this below 2^31
    int warps = (int)min((int64_t)gridDim.x * GEMV_WARPS, (int64_t)total);  // every warp gets >= 1 chunk
    int warp_id = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (warp_id >= warps) return;
    if (double_round) {
        gemv_mma_body<F16C, true, NT>(w, x, s, bias, bias_dtype, y, y_dtype, partials, counters, gemv_smem, warp_id, warps, total);
    } else {
        gemv_mma_body<F16C, false, NT>(w, x, s, bias, bias_dtype, y, y_dtype, partials, counters, gemv_smem, warp_id, warps, total);
    }
}

// Blocks per SM the register budget is set for (shared memory allows 3): 3 for M <= 8, 2 for M <= 16.
#define GEMV_MMA_KERNEL(name, F16C, NT)                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, NT == 1 ? 3 : 2) name(                                              \
        Q4_WEIGHT_PARAMS, const float* __restrict__ code16, const uint16_t* __restrict__ x, int M, int N, int K,      \
        const void* __restrict__ bias, int bias_dtype, void* __restrict__ y, int y_dtype,                           \
        float* __restrict__ partials, int* __restrict__ counters, int double_round) { pdl_enter();                               \
        Q4_WEIGHT_MAKE;                                                                                              \
        gemv_mma_kernel<F16C, NT>(w, code16, x, M, N, K, bias, bias_dtype, y, y_dtype, partials, counters,          \
                                  double_round);                                                                     \
    }

GEMV_MMA_KERNEL(q4_gemv_mma_bf16_m8, false, 1)
GEMV_MMA_KERNEL(q4_gemv_mma_bf16_m16, false, 2)
GEMV_MMA_KERNEL(q4_gemv_mma_f16_m8, true, 1)
GEMV_MMA_KERNEL(q4_gemv_mma_f16_m16, true, 2)

// ---------------------------------------------------------------------------------------------
// Streaming decode GEMV ("stream", the default; the kernels above are "mma", kept selectable with
// -Dqlora4j.nf4.gemv=mma). Same arithmetic as the mma kernel (pair-table decode, mma.m16n8k16 with
// float32 accumulators, the same k order inside a thread), a different organisation of the work
// (native/NOTES-nf4-gemv.md has the analysis):
//  - a block is 8 warps and owns a panel of 128 output rows (warp w: the 16-row tile 8 * panel + w) and a
//    split s of K's chunks of 128 (splits of ceil(C / S) or floor(C / S) chunks; blockIdx = panel * S + s);
//  - each thread keeps three chunks of loads in flight (the current one and two ahead: 96 bytes of packed
//    weights per thread, 48 KiB per SM at two blocks), issued before anything waits on them; the absmax
//    of a double-quantized weight is decoded when the chunk is used, so no load waits for another load;
//  - x is staged once per block in shared memory (its rows m < M, zero rows up to 8 * NT, zero past K),
//    in the order the mma B fragments are read, so each thread reads them with conflict-free 16-byte
//    loads instead of re-reading x from global memory for every chunk;
//  - S == 1: each warp writes its tile. S > 1: each thread writes its float32 fragment to a scratch
//    slot of its block; the last block of a panel to arrive (one atomic counter per panel, reset by that
//    block) adds the S slots in split order 0..S-1 (deterministic) and writes the outputs.
// Shared memory (dynamic): pair table 64 KiB, nested code 1 KiB, x slice 8 * NT rows x 128 * ceil(C / S)
// values (bf16/f16). Block 256 threads; the launcher sizes S (Quant4bitKernels.streamSplits).

#define STREAM_WARPS 8
#define STREAM_THREADS (STREAM_WARPS * 32)
#define STREAM_FIXED_SMEM (GEMV_TABLE_BYTES + 256 * 4)

// One chunk's loads for one thread (rows g and g + 8): raw, decoded only when the chunk is used.
struct StreamLoad {
    uint4 w0, w1;      // 16 packed bytes (32 values) of each row, zero past N or K
    float s0, s1;      // absmax (plain) or the nested absmax of the block's group (nested)
    uint32_t q0, q1;   // nested only: the 8-bit absmax codes
};

__device__ __forceinline__ void stream_load_row(const Q4Weight& w, int64_t e, uint4& v, float& s, uint32_t& q) {
    v = ld_stream_u4(w.packed + (e >> 1));
    int64_t block = e >> w.log2_blocksize;
    if (w.nested) {
        q = __ldg(reinterpret_cast<const uint8_t*>(w.absmax) + block);
        int64_t nb = w.nested_shift >= 0 ? (block >> w.nested_shift) : block / w.nested_bs;
        s = __ldg(w.nested_absmax + nb);
    } else {
        s = __ldg(reinterpret_cast<const float*>(w.absmax) + block);
    }
}

__device__ __forceinline__ StreamLoad stream_load(const Q4Weight& w, int64_t r0, int N, int K, int kb, bool wanted) {
    StreamLoad L;
    L.w0 = make_uint4(0, 0, 0, 0);
    L.w1 = make_uint4(0, 0, 0, 0);
    L.s0 = 0.0f;
    L.s1 = 0.0f;
    L.q0 = 0;
    L.q1 = 0;
    if (wanted && kb < K) {
        if (r0 < N) stream_load_row(w, r0 * K + kb, L.w0, L.s0, L.q0);
        if (r0 + 8 < N) stream_load_row(w, (r0 + 8) * K + kb, L.w1, L.s1, L.q1);
    }
    return L;
}

// absmax of a loaded row (nested_code points to shared memory). Zero-filled loads give a finite value, and
// their x is zero (past K) or their row is never stored (past N), so they contribute nothing.
__device__ __forceinline__ float stream_absmax(const Q4Weight& w, float s, uint32_t q) {
    return w.nested ? __fadd_rn(__fmul_rn(w.nested_code[q], s), w.offset) : s;
}

// x slice unit u (16 bytes = 8 values) = x[row][k0 + 128 * lc + 32 * t + 8 * j .. + 8) with
// u = ((lc * 4 + j) * MP + row) * 4 + t: for fixed (lc, j) the lanes (g, t) of a quarter warp read 8
// consecutive units (128 bytes), so the fragment loads are conflict-free.
template <bool F16C, bool DR, int NT>
__device__ __forceinline__ void stream_compute(const StreamLoad& L, const Q4Weight& w, const unsigned char* table,
                                               uint32_t lane_off, const uint4* xs_chunk, int M, int g, int t,
                                               float (&acc)[NT][4]) {
    const int MP = 8 * NT;
    const float a0 = stream_absmax(w, L.s0, L.q0);
    const float a1 = stream_absmax(w, L.s1, L.q1);
    uint32_t xw[NT][16];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        // lanes of x rows >= M skip the (zero) loads: for M = 1 a quarter of the shared-memory wavefronts
        const bool live = g + 8 * nt < M;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint4 v = live ? xs_chunk[(j * MP + g + 8 * nt) * 4 + t] : make_uint4(0, 0, 0, 0);
            xw[nt][4 * j] = v.x; xw[nt][4 * j + 1] = v.y; xw[nt][4 * j + 2] = v.z; xw[nt][4 * j + 3] = v.w;
        }
    }
    uint32_t w0[4] = {L.w0.x, L.w0.y, L.w0.z, L.w0.w};
    uint32_t w1[4] = {L.w1.x, L.w1.y, L.w1.z, L.w1.w};
#pragma unroll
    for (int st = 0; st < 8; st++) {
        int word = st >> 1, byte = (st & 1) * 2;
        uint32_t r0 = decode_byte<F16C, DR>(table, w0[word], lane_off, byte, a0);
        uint32_t r1 = decode_byte<F16C, DR>(table, w1[word], lane_off, byte, a1);
        uint32_t r2 = decode_byte<F16C, DR>(table, w0[word], lane_off, byte + 1, a0);
        uint32_t r3 = decode_byte<F16C, DR>(table, w1[word], lane_off, byte + 1, a1);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) mma16816<F16C>(acc[nt], r0, r1, r2, r3, xw[nt][2 * st], xw[nt][2 * st + 1]);
    }
}

// ---- register-table decode (the "hybrid" variant: every reg_period-th chunk of a warp decodes on the ALU pipe
// instead of through the shared-memory pair table, so the two pipes share the decode; see NOTES-nf4-gemv.md).
// A thread's 16 bytes of one row lie in one absmax block (blocks are >= 32 values, rows start at multiples of 32),
// so the 16 possible weights of the slice, T[q] = pack_pair(fl(code[q] * amax)) (exactly the values decode_byte
// gives), are built once per slice and held as byte planes: P[j] = low bytes of T[4j..4j+3], P[4+j] = high bytes.

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;  // PTX prmt (not __byte_perm): selector bit 3 of a nibble is the sign-replicate mode used below
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

template <bool F16C, bool DR>
__device__ __forceinline__ void build_planes(const float* code_s, float amax, uint32_t (&P)[8]) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        // t0 = (T[4j] low half, T[4j+1] high half), t1 = (T[4j+2], T[4j+3])
        float4 c = reinterpret_cast<const float4*>(code_s)[j];
        uint32_t t0 = pack_pair<F16C, DR>(__fmul_rn(c.x, amax), __fmul_rn(c.y, amax));
        uint32_t t1 = pack_pair<F16C, DR>(__fmul_rn(c.z, amax), __fmul_rn(c.w, amax));
        P[j] = prmt(t0, t1, 0x6420);      // low bytes of T[4j], T[4j+1], T[4j+2], T[4j+3]
        P[4 + j] = prmt(t0, t1, 0x7531);  // high bytes
    }
}

// The four decoded bytes of a packed word: r[b] = (T[high nibble of byte b] low half, T[low nibble] high half),
// the same register decode_byte(word, b) gives. prmt looks up 4 nibbles at a time (selector = 4 nibbles, the
// output byte i from nibble i): entries 0-7 with the nibbles as they are, 8-15 with bit 3 flipped; a byte mask
// of the nibbles' bit 3 (prmt in sign-replicate mode over w << 4 and w) picks between the two.
__device__ __forceinline__ void lookup_word(uint32_t w, const uint32_t (&P)[8], uint32_t* r) {
    const uint32_t sh = w << 4;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint32_t s = h ? (w >> 16) : w;  // nibbles: (byte 2h low, byte 2h high, byte 2h+1 low, byte 2h+1 high)
        const uint32_t sx = s ^ 0x8888u;
        const uint32_t m = prmt(sh, w, h ? 0xFBEA : 0xD9C8);  // 0xFF where the nibble is >= 8
        const uint32_t lo = (prmt(P[0], P[1], s) & ~m) | (prmt(P[2], P[3], sx) & m);
        const uint32_t hi = (prmt(P[4], P[5], s) & ~m) | (prmt(P[6], P[7], sx) & m);
        r[2 * h] = prmt(lo, hi, 0x4051);      // byte 2h: high nibble's value in the low half
        r[2 * h + 1] = prmt(lo, hi, 0x6273);  // byte 2h+1
    }
}

// stream_compute with the register-table decode (same products, same k order, same values).
template <bool F16C, bool DR, int NT>
__device__ __forceinline__ void stream_compute_reg(const StreamLoad& L, const Q4Weight& w, const float* code_s,
                                                   const uint4* xs_chunk, int M, int g, int t, float (&acc)[NT][4]) {
    const int MP = 8 * NT;
    uint32_t P0[8], P1[8];
    build_planes<F16C, DR>(code_s, stream_absmax(w, L.s0, L.q0), P0);
    build_planes<F16C, DR>(code_s, stream_absmax(w, L.s1, L.q1), P1);
    uint32_t xw[NT][16];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const bool live = g + 8 * nt < M;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint4 v = live ? xs_chunk[(j * MP + g + 8 * nt) * 4 + t] : make_uint4(0, 0, 0, 0);
            xw[nt][4 * j] = v.x; xw[nt][4 * j + 1] = v.y; xw[nt][4 * j + 2] = v.z; xw[nt][4 * j + 3] = v.w;
        }
    }
    const uint32_t w0[4] = {L.w0.x, L.w0.y, L.w0.z, L.w0.w};
    const uint32_t w1[4] = {L.w1.x, L.w1.y, L.w1.z, L.w1.w};
#pragma unroll
    for (int word = 0; word < 4; word++) {
        uint32_t r0[4], r1[4];
        lookup_word(w0[word], P0, r0);
        lookup_word(w1[word], P1, r1);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int st = 2 * word + half, byte = 2 * half;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                mma16816<F16C>(acc[nt], r0[byte], r1[byte], r0[byte + 1], r1[byte + 1], xw[nt][2 * st], xw[nt][2 * st + 1]);
            }
        }
    }
}

template <bool F16C, bool DR, int NT>
__device__ void gemv_stream_body(Q4Weight w, const float* __restrict__ code16, const uint16_t* __restrict__ x,
                                 int M, int N, int K, int S, const void* __restrict__ bias, int bias_dtype,
                                 void* __restrict__ y, int y_dtype, float* __restrict__ partials,
                                 int* __restrict__ counters, int reg_period) {
    extern __shared__ __align__(16) unsigned char stream_smem[];
    __shared__ int last_arrival;
    __shared__ __align__(16) float code_s[16];  // the 16 factors, for the register-table decode
    const int MP = 8 * NT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int C = (K + GEMV_CHUNK_K - 1) / GEMV_CHUNK_K;
    const int panel = blockIdx.x / S, split = blockIdx.x - panel * S;
    const int c0 = (int)((int64_t)split * C / S), c1 = (int)((int64_t)(split + 1) * C / S);
    const int tile = panel * STREAM_WARPS + warp;
    const int64_t r0 = (int64_t)tile * 16 + g;
    const int kb0 = c0 * GEMV_CHUNK_K + 32 * t;

    // the first two chunks' loads go out before the block builds its tables
    StreamLoad cur = stream_load(w, r0, N, K, kb0, c0 < c1);
    StreamLoad nxt = stream_load(w, r0, N, K, kb0 + GEMV_CHUNK_K, c0 + 1 < c1);

    // pair table (as the mma kernel: entry (byte, replica) at byte * 256 + replica * 8), nested code, x slice
    for (int j = threadIdx.x; j < 256 * 32; j += STREAM_THREADS) {
        int byte = j >> 5;
        reinterpret_cast<float2*>(stream_smem)[j] = make_float2(__ldg(code16 + (byte >> 4)), __ldg(code16 + (byte & 15)));
    }
    if (threadIdx.x < 16) code_s[threadIdx.x] = __ldg(code16 + threadIdx.x);
    float* ncode = reinterpret_cast<float*>(stream_smem + GEMV_TABLE_BYTES);
    if (w.nested) {
        for (int j = threadIdx.x; j < 256; j += STREAM_THREADS) ncode[j] = __ldg(w.nested_code + j);
        w.nested_code = ncode;
    }
    uint4* xs = reinterpret_cast<uint4*>(stream_smem + STREAM_FIXED_SMEM);
    const int units = (c1 - c0) * 4 * MP * 4;
    for (int u = threadIdx.x; u < units; u += STREAM_THREADS) {
        int ut = u & 3, rest = u >> 2;
        int row = rest % MP, lj = rest / MP;
        int j = lj & 3, lc = lj >> 2;
        int k = (c0 + lc) * GEMV_CHUNK_K + 32 * ut + 8 * j;  // K % 32 == 0: a unit is all inside K or all past it
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row < M && k < K) v = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)row * K + k));
        xs[u] = v;
    }
    __syncthreads();

    const unsigned char* table = stream_smem;
    const uint32_t lane_off = (uint32_t)lane * 8;
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    // reg_period > 0 (hybrid): chunks reg_period - 1, 2 * reg_period - 1, ... of the split decode in registers
    int phase = 0;
    for (int c = c0; c < c1; c++) {
        StreamLoad ahead = stream_load(w, r0, N, K, kb0 + (c + 2 - c0) * GEMV_CHUNK_K, c + 2 < c1);
        const uint4* xs_chunk = xs + (c - c0) * (4 * MP * 4);
        if (reg_period > 0 && ++phase == reg_period) {
            phase = 0;
            stream_compute_reg<F16C, DR, NT>(cur, w, code_s, xs_chunk, M, g, t, acc);
        } else {
            stream_compute<F16C, DR, NT>(cur, w, table, lane_off, xs_chunk, M, g, t, acc);
        }
        cur = nxt;
        nxt = ahead;
    }

    GemvShape s{M, N, K, C};
    if (S == 1) {
        store_tile<F16C, NT>(acc, s, tile, g, t, bias, bias_dtype, y, y_dtype);
        return;
    }
    // split-K: this block's fragments to its scratch slot; the panel's last block adds the slots in order
    float* p = partials + ((int64_t)blockIdx.x * STREAM_THREADS + threadIdx.x) * (NT * 4);
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        __stcg(reinterpret_cast<float4*>(p + 4 * nt), make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]));
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_arrival = atomicAdd(counters + panel, 1) == S - 1;
    __syncthreads();
    if (!last_arrival) return;
    __threadfence();
    float sum[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) sum[nt][0] = sum[nt][1] = sum[nt][2] = sum[nt][3] = 0.0f;
    for (int sp = 0; sp < S; sp++) {
        const float* q = partials + ((int64_t)(panel * S + sp) * STREAM_THREADS + threadIdx.x) * (NT * 4);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            float4 v = __ldcg(reinterpret_cast<const float4*>(q + 4 * nt));
            sum[nt][0] += v.x; sum[nt][1] += v.y; sum[nt][2] += v.z; sum[nt][3] += v.w;
        }
    }
    store_tile<F16C, NT>(sum, s, tile, g, t, bias, bias_dtype, y, y_dtype);
    if (threadIdx.x == 0) counters[panel] = 0;  // ready for the next launch
}

// Two blocks per SM: 2 x (64 KiB table + 1 KiB + at most 40 KiB of x) fits the SM's 228 KiB.
#define GEMV_STREAM_KERNEL(name, F16C, NT)                                                                           \
    extern "C" __global__ void __launch_bounds__(STREAM_THREADS, 2) name(                                            \
        Q4_WEIGHT_PARAMS, const float* __restrict__ code16, const uint16_t* __restrict__ x, int M, int N, int K,      \
        int S, const void* __restrict__ bias, int bias_dtype, void* __restrict__ y, int y_dtype,                    \
        float* __restrict__ partials, int* __restrict__ counters, int double_round, int reg_period) { pdl_enter();                \
        Q4_WEIGHT_MAKE;                                                                                              \
        if (double_round) {                                                                                          \
            gemv_stream_body<F16C, true, NT>(w, code16, x, M, N, K, S, bias, bias_dtype, y, y_dtype, partials,       \
                                             counters, reg_period);                                                  \
        } else {                                                                                                     \
            gemv_stream_body<F16C, false, NT>(w, code16, x, M, N, K, S, bias, bias_dtype, y, y_dtype, partials,      \
                                              counters, reg_period);                                                 \
        }                                                                                                            \
    }

GEMV_STREAM_KERNEL(q4_gemv_stream_bf16_m8, false, 1)
GEMV_STREAM_KERNEL(q4_gemv_stream_bf16_m16, false, 2)
GEMV_STREAM_KERNEL(q4_gemv_stream_f16_m8, true, 1)
GEMV_STREAM_KERNEL(q4_gemv_stream_f16_m16, true, 2)
