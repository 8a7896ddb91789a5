package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * Launcher of native/nf4_gemv7.cu (module "nf4_gemv7"): the "v7" decode GEMV of a 4-bit weight, y [1, out] =
 * x [1, in] W^T (+ bias), ONE row of x only. A block of in / 32 threads (rounded up to a warp; two 32-value pieces per
 * thread above in = 32768) reads one whole weight row per iteration, blocks take rows grid-stride in address order with
 * the next rows' loads in flight, x stays in registers (native/NOTES-nf4-gemv.md, "v5" and "v7"). Measured on the H200
 * (bench "v7 bnb bcast b8 d2"): 4096x4096 8.2 us (v2 9.4), 4096x11008 16.9 (v2 22.6), 11008x4096 19.0 (v2 20.6),
 * 8192x28672 75.2 (v2 91.3).
 *
 * <p><b>Numerics: bitsandbytes' batch-1 inference kernel (kgemm_4bit_inference_naive), not the exact contract of v2.</b>
 * With T the compute dtype: weight = round_T(round_T(code) * round_T(absmax)), every product round_T(x * weight), the
 * products widened to float32 and summed in float32, the bias (T) added once in float32, one rounding of y to T. The
 * state dtype plays no part. v2 ({@link Nf4GemvKernels}, CPU twin dev.qlora4j.quant.Nf4Matmul) instead rounds the
 * weight once from the float32 code x absmax (through the state dtype where it differs) and keeps every product exact
 * in float32, so the two differ by up to the products' roundings: that is why v7 is opt-in
 * (-Dqlora4j.nf4.gemv=v7) and v2 stays the default.
 *
 * <p>v7 takes a call only when {@link #supports} holds (one row of x, 16-bit compute, in % 32 == 0, in &lt;= 65536,
 * blocksize a power of two &gt;= 32, y in the compute dtype, bias null or in the compute dtype); otherwise
 * {@link Quant4bitKernels#gemv} runs v2.
 */
final class Nf4Gemv7Kernels {
    static final String MODULE = "nf4_gemv7";
    /** Largest in: 2 pieces of 32 values x 1024 threads (nf4v5::pieces_for). */
    static final int MAX_IN = 65536;
    // nf4v5::max_threads(D = 2, P = 1): the one-piece kernels take up to 1024 threads, in <= 32768
    static final int MAX_THREADS = 1024;
    /** Blocks per SM the bench's "b8" configuration launches at most (bps = 8). */
    static final int MAX_BLOCKS_PER_SM = 8;
    /**
     * Warps per SM the kernels' registers allow: ptxas gives them 60-64 registers per thread (__launch_bounds__(1024)
     * caps them at 64), i.e. 2048 registers per warp after the 256-register allocation unit, and an SM has 65536.
     */
    static final int REGISTER_WARPS_PER_SM = 65536 / 2048;
    /** Dynamic shared memory: the 1 KiB pair table (nf4v7::table_bytes(TAB_BCAST)). */
    static final int SHARED_BYTES = 256 * 4;

    private Nf4Gemv7Kernels() {}

    /**
     * Whether v7 takes a call with these properties (the pure part of {@link #applies}): rows == 1, compute BF16 or
     * F16, in % 32 == 0 (16-byte pieces and x loads) and &lt;= MAX_IN, blocksize a power of two &gt;= 32 (a 32-value
     * piece has one absmax), y in the compute dtype and the bias null or in the compute dtype (the kernel reads and
     * writes T only).
     */
    static boolean supports(DType compute, int rows, int inFeatures, int blocksize, DType biasDType, DType yDType) {
        return rows == 1 && (compute == DType.BF16 || compute == DType.F16)
                && inFeatures > 0 && inFeatures % 32 == 0 && inFeatures <= MAX_IN
                && blocksize >= 32 && Integer.bitCount(blocksize) == 1
                && yDType == compute && (biasDType == null || biasDType == compute);
    }

    /** Whether v7 takes this call (else the caller runs v2). */
    static boolean applies(CudaQuant4bit w, int rows, Tensor bias, Tensor y) {
        return supports(w.computeDType(), rows, w.inFeatures(), w.blocksize(), bias == null ? null : bias.dtype(), y.dtype());
    }

    /** 32-value pieces per thread for in: 1 up to in = 32768, 2 up to 65536 (nf4v5::pieces_for with D = 2). */
    static int piecesPerThread(int inFeatures) {
        int c = inFeatures / 32;
        if (c <= MAX_THREADS) return 1;
        if (c <= 2 * MAX_THREADS) return 2;
        throw new IllegalArgumentException("the v7 GEMV takes in <= " + MAX_IN + ", got " + inFeatures);
    }

    /** Threads per block: in / 32 / pieces rounded up, then up to a whole warp (nf4v5::threads_for). */
    static int threads(int inFeatures) {
        int p = piecesPerThread(inFeatures);
        int per = (inFeatures / 32 + p - 1) / p;
        return (per + 31) / 32 * 32;
    }

    /** Blocks per SM launched: min(8, the register-bound fit of blocks of this many threads), at least 1. */
    static int blocksPerSm(int threads) {
        int warps = threads / 32;
        return Math.max(1, Math.min(MAX_BLOCKS_PER_SM, REGISTER_WARPS_PER_SM / warps));
    }

    /** Blocks of a launch: min(out, blocksPerSm x SMs), at least 1 (rows are taken grid-stride: any grid is correct). */
    static int grid(int multiprocessors, int outFeatures, int inFeatures) {
        long fit = (long) blocksPerSm(threads(inFeatures)) * multiprocessors;
        return (int) Math.max(1, Math.min(outFeatures, fit));
    }

    /** The kernel for the compute dtype and in: _p1 (one piece per thread) or _p2 (two). */
    static String kernelName(DType compute, int inFeatures) {
        String dt = switch (compute) {
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> throw new IllegalArgumentException("the v7 GEMV computes in BF16 or F16, not " + compute);
        };
        return "q4v7_gemv_" + dt + "_p" + piecesPerThread(inFeatures);
    }

    /**
     * y [1, out] (compute dtype) = round(compute, sum of the bnb-rounded products + bias); xc is x [1, in] in the
     * compute dtype (16-byte aligned); bias null or [out] in the compute dtype.
     */
    static void gemv(CudaContext ctx, CudaQuant4bit w, Tensor xc, int rows, Tensor bias, Tensor y) {
        if (!applies(w, rows, bias, y)) {
            throw new IllegalArgumentException(w + ", rows " + rows + ", bias " + (bias == null ? "none" : bias.dtype())
                    + ", y " + y.dtype() + ": the v7 GEMV needs one row of x, BF16/F16 compute, in % 32 == 0 and <= "
                    + MAX_IN + ", blocksize a power of two >= 32, and y / bias in the compute dtype (use v2 otherwise)");
        }
        if (xc.dtype() != w.computeDType()) {
            throw new IllegalArgumentException("x must be in the compute dtype " + w.computeDType() + ", got " + xc.dtype());
        }
        long fn = ctx.function(MODULE, kernelName(w.computeDType(), w.inFeatures()));
        KernelArgs args = Quant4bitKernels.weightArgs(w).ptr(CudaContext.ptr(w.code16()))
                .ptr(CudaContext.ptr(xc)).i32(w.outFeatures()).i32(w.inFeatures())
                .ptr(bias == null ? 0L : CudaContext.ptr(bias))
                .ptr(CudaContext.ptr(y));
        ctx.launch(fn, Dim3.of(grid(ctx.properties().multiprocessorCount(), w.outFeatures(), w.inFeatures())),
                Dim3.of(threads(w.inFeatures())), SHARED_BYTES, args);
    }
}
