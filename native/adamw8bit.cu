// adamw8bit.cu — bitsandbytes' AdamW8bit (blockwise) over many parameters in one launch; the CPU twin is
// optim/BnbAdamKernels (update8bitBlock for 8-bit state, update32 for float32 state).
//
// Launch:  grid = total 256-element blocks over all entries (Entry.first_block is the prefix sum), 256 threads;
//          CUDA block b updates block (b - first_block) of the entry whose range holds b. One thread per element.
// Table:   Entry[count] in device memory (layout below, written byte for byte by CudaAdamW8bit.Table); the
//          state pointers may be device memory or pinned host memory (paged optimizers: UVA makes
//          cuMemAllocHost memory addressable from kernels, so the kernel reads and writes it over the bus).
// Codes:   code[512] = the signed map (state1) then the unsigned map (state2), copied to shared memory per block.
// Math:    bit-identical to the CPU twin: every product and sum rounded separately in the twin's order (__f*_rn
//          keeps the compiler from contracting to FMA; Java does not contract), sqrt correctly rounded, max with
//          Java's NaN propagation, the nearest-code search and the sign fix of BnbAdamKernels / DynamicMap.quantize.
#include "common.cuh"

struct Adam8bitEntry {
    float* p;                 // [n] parameter, updated in place
    const float* g;           // [n] gradient
    void* s1;                 // [n] uint8 codes (8-bit) or float exp_avg (float32 state)
    void* s2;                 // [n] uint8 codes (8-bit) or float exp_avg_sq (float32 state)
    float* absmax1;           // [ceil(n/256)] (8-bit only)
    float* absmax2;           // [ceil(n/256)] (8-bit only)
    long long n;
    long long first_block;    // prefix sum of ceil(n/256) over the entries before this one
    float beta1, beta2, eps, lr, weight_decay, correction2, step_size, gnorm_scale;
    int eight_bit;            // 1: 8-bit blockwise state, 0: float32 state
    int pad;
};
static_assert(sizeof(Adam8bitEntry) == 104, "Adam8bitEntry layout is fixed: CudaAdamW8bit.Table writes it");

#define BNB_BLOCK 256

// Java's Math.max for floats: NaN if either is NaN.
__device__ __forceinline__ float jmax(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
}

// DynamicMap.quantize (bitsandbytes' dQuantize): 7-step binary search over 256 sorted codes, then the midpoint test.
__device__ __forceinline__ int quantize_code(const float* code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[255];
    if (lower_pivot == 0) lower = code[0];
    if (x > val) {
        float midpoint = __fmul_rn(__fadd_rn(upper, val), 0.5f);
        return x > midpoint ? upper_pivot : pivot;
    } else {
        float midpoint = __fmul_rn(__fadd_rn(lower, val), 0.5f);
        return x < midpoint ? lower_pivot : pivot;
    }
}

// Max over the 256 threads of the block (NaN-propagating); every thread gets the result.
__device__ __forceinline__ float block_max256(float v, float* scratch /* [8] */) {
    for (int o = 16; o > 0; o >>= 1) v = jmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < 8; w++) r = jmax(r, scratch[w]);
    return r;
}

extern "C" __global__ void __launch_bounds__(256) adamw8bit_blockwise(const Adam8bitEntry* __restrict__ table, int count,
                                                                      const float* __restrict__ codes) {
    __shared__ float code1[256];
    __shared__ float code2[256];
    __shared__ float red1[8];
    __shared__ float red2[8];
    __shared__ int entry_index;
    const int t = threadIdx.x;
    code1[t] = codes[t];
    code2[t] = codes[256 + t];
    const long long b = blockIdx.x;
    if (t == 0) {   // the last entry whose first_block <= b (first_block is non-decreasing)
        int lo = 0, hi = count - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) >> 1;
            if (table[mid].first_block <= b) lo = mid; else hi = mid - 1;
        }
        entry_index = lo;
    }
    __syncthreads();
    const Adam8bitEntry& e = table[entry_index];
    const long long block = b - e.first_block;
    const long long base = block * BNB_BLOCK;
    const long long n = e.n;
    const bool in_range = base + t < n;
    const long long i = base + t;

    if (!e.eight_bit) {   // BnbAdamKernels.update32
        if (!in_range) return;
        float* s1 = (float*)e.s1;
        float* s2 = (float*)e.s2;
        float decay = __fsub_rn(1.0f, __fmul_rn(e.lr, e.weight_decay));
        float gi = __fmul_rn(e.gnorm_scale, e.g[i]);
        float m = __fadd_rn(__fmul_rn(s1[i], e.beta1), __fmul_rn(__fsub_rn(1.0f, e.beta1), gi));
        float v = __fadd_rn(__fmul_rn(s2[i], e.beta2), __fmul_rn(__fsub_rn(1.0f, e.beta2), __fmul_rn(gi, gi)));
        float denom = __fadd_rn(__fsqrt_rn(v), __fmul_rn(e.eps, e.correction2));
        float pi = __fadd_rn(e.p[i], __fmul_rn(e.step_size, __fdiv_rn(m, denom)));
        if (e.weight_decay > 0.0f) pi = __fmul_rn(pi, decay);
        e.p[i] = pi;
        s1[i] = m;
        s2[i] = v;
        return;
    }

    unsigned char* q1 = (unsigned char*)e.s1;
    unsigned char* q2 = (unsigned char*)e.s2;
    const float old_max1 = e.absmax1[block];
    const float old_max2 = e.absmax2[block];
    float m = 0.0f, v = 0.0f;
    bool finite_g = false;
    float contrib1, contrib2;
    if (in_range) {
        float graw = e.g[i];
        finite_g = isfinite(graw);
        if (finite_g) {
            float gi = __fmul_rn(graw, e.gnorm_scale);
            float v2 = __fmul_rn(code2[q2[i]], old_max2);
            v = __fadd_rn(__fmul_rn(v2, e.beta2), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, e.beta2), gi), gi));
            float m1 = __fmul_rn(code1[q1[i]], old_max1);
            m = __fadd_rn(__fmul_rn(m1, e.beta1), __fmul_rn(__fsub_rn(1.0f, e.beta1), gi));
        }
        contrib1 = fabsf(m);
        contrib2 = fabsf(v);
    } else {
        // padding lanes as the GPU loads them in bitsandbytes: g = 0, state1 code 128, state2 code 0
        contrib1 = fabsf(__fadd_rn(__fmul_rn(__fmul_rn(code1[128], old_max1), e.beta1),
                                   __fmul_rn(__fsub_rn(1.0f, e.beta1), 0.0f)));
        contrib2 = fabsf(__fmul_rn(__fmul_rn(code2[0], old_max2), e.beta2));
    }
    // Java starts from -Float.MAX_VALUE; every lane contributes a value >= 0 or NaN, so the start never wins.
    float new_max1 = block_max256(contrib1, red1);
    float new_max2 = block_max256(contrib2, red2);
    if (t == 0) {
        e.absmax1[block] = new_max1;
        e.absmax2[block] = new_max2;
    }
    if (!in_range) return;

    if (finite_g) {
        float decay = __fsub_rn(1.0f, __fmul_rn(e.lr, e.weight_decay));
        float denom = __fadd_rn(__fsqrt_rn(v), __fmul_rn(e.correction2, e.eps));
        float pi = __fadd_rn(e.p[i], __fmul_rn(e.step_size, __fdiv_rn(m, denom)));
        if (e.weight_decay > 0.0f) pi = __fmul_rn(pi, decay);
        e.p[i] = pi;
    }
    int c1 = quantize_code(code1, __fdiv_rn(m, new_max1));
    int c2 = quantize_code(code2, __fdiv_rn(v, new_max2));
    if ((__float_as_uint(code1[c1]) >> 31) != (__float_as_uint(m) >> 31)) c1 = m > 0.0f ? (c1 + 1) & 0xFF : (c1 - 1) & 0xFF;
    q1[i] = (unsigned char)c1;
    q2[i] = (unsigned char)c2;
}
