// q4_probe_weights.cuh — random NF4 weights for the dequantize probes (dequant_ahead_probe.cu, sm_split_probe.cu):
// blocksize 64, double-quantized absmax (8-bit codes in groups of 256, a constant nested absmax), random code and
// absmax bytes (hash_fill.cuh: random data draws the power real weights do), NF4-like tables, and the engine's
// dequantize over them (nf4.cu's q4_dequantize_bf16), and the engine's bf16 GEMM of a projection. Include after nf4.cu,
// hash_fill.cuh, cublas_v2.h, the CK(...) / CB(...) macros and the token count T.
#pragma once
#include <vector>

struct Proj { const char* name; int in, out; };
struct W4 { uint8_t* packed; uint8_t* absmax; float* nested_absmax; long n; };
static float *g_ncode, *g_code16;

// copies x nproj weights, weight c * nproj + i being copy c of projection i (its own random bytes), and the tables.
static std::vector<W4> probe_weights(const Proj* proj, int nproj, int copies) {
    std::vector<W4> ws(copies * nproj);
    for (int c = 0; c < copies; c++)
        for (int i = 0; i < nproj; i++) {
            W4& w = ws[c * nproj + i];
            w.n = (long)proj[i].in * proj[i].out;
            CK(cudaMalloc(&w.packed, w.n / 2));
            CK(cudaMalloc(&w.absmax, w.n / 64));
            CK(cudaMalloc(&w.nested_absmax, (w.n / 64 / 256 + 1) * 4));
            fill_u8<<<1024, 256>>>(w.packed, w.n / 2, 7 * c + i);
            fill_u8<<<1024, 256>>>(w.absmax, w.n / 64, 100 + 7 * c + i);
            std::vector<float> na(w.n / 64 / 256 + 1, 0.02f);
            CK(cudaMemcpy(w.nested_absmax, na.data(), na.size() * 4, cudaMemcpyHostToDevice));
        }
    std::vector<float> code(16), ncode(256);
    for (int i = 0; i < 16; i++) code[i] = (i - 7.5f) / 8.f;
    for (int i = 0; i < 256; i++) ncode[i] = (i - 127.5f) / 128.f;
    CK(cudaMalloc(&g_code16, 64));
    CK(cudaMalloc(&g_ncode, 1024));
    CK(cudaMemcpy(g_code16, code.data(), 64, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g_ncode, ncode.data(), 1024, cudaMemcpyHostToDevice));
    return ws;
}

// The engine's dequantize of w into y (256 threads, a grid covering every chunk once).
static void dequant(const W4& w, __nv_bfloat16* y, cudaStream_t s) {
    int grid = (int)((w.n + 16383) / 16384);
    q4_dequantize_bf16<<<grid, DQ_THREADS, 0, s>>>(w.packed, w.absmax, w.nested_absmax, g_ncode, 0.01f, 6, 256, 8, 1,
                                                   g_code16, y, w.n, 1);
}

// forward: y [T, out] = x [T, in] W^T; backward: dx [T, in] = gy [T, out] W (row-major, as the engine's calls)
static void probe_gemm(cublasHandle_t h, bool backward, const Proj& p, const __nv_bfloat16* w, const __nv_bfloat16* x,
                       __nv_bfloat16* y) {
    float one = 1.f, zero = 0.f;
    if (!backward) {
        CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p.out, T, p.in, &one, w, CUDA_R_16BF, p.in, x, CUDA_R_16BF, p.in,
                        &zero, y, CUDA_R_16BF, p.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, p.in, T, p.out, &one, w, CUDA_R_16BF, p.in, x, CUDA_R_16BF, p.out,
                        &zero, y, CUDA_R_16BF, p.in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}
