package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Launcher of native/nf4_gemv.cu (module "nf4_gemv"): the "v2" decode GEMV of a 4-bit weight, y [rows, out] =
 * x [rows, in] W^T (+ bias) for rows &lt;= 16, 16-bit compute and in % 32 == 0 (the same preconditions and numerics
 * as the other tensor-core variants of {@link Quant4bitKernels}). One block per 16 output rows, its warps splitting
 * K and adding their fragments in warp order through shared memory: no split-K scratch, no atomics, deterministic.
 * Also the "v3" kernel (Decode.V3_STREAM, rows &lt;= 4): a persistent grid whose warps own whole rows and stream
 * them with a ring of loads in flight, decoding while later loads arrive (native/bench/README.md).
 */
final class Nf4GemvKernels {
    static final String MODULE = "nf4_gemv";
    // native/nf4_gemv.cu: V2_WARPS, 16 * V2_TILES output rows per block
    static final int THREADS = 8 * 32;
    static final int ROWS_PER_BLOCK = 16;

    // native/nf4_gemv.cu: V3_WARPS, V3_BLOCKS (per SM), the rows of x of the largest v3 kernel, nf4v3::XSMEM_MAX
    static final int V3_THREADS = 8 * 32;
    static final int V3_BLOCKS_PER_SM = 3;
    static final int V3_MAX_ROWS = 4;
    static final int V3_X_SMEM_MAX = 32 * 1024;

    /**
     * Which kernel and decode: v2 with the 16-float shared table, v2 with register tables (ALU only), or V3_STREAM
     * = the v3 persistent streaming kernel (table decode, FMA in f32; rows &lt;= 4, blocksize &gt;= 32, else the v2
     * table kernel runs), or PAIR = v2 decoding each byte with one read of a replicated 256-entry (code[hi], code[lo])
     * table (the same values as TABLE, bit for bit; rows 1..16). BNB = bitsandbytes'
     * batch-1 weights round_T(round_T(code) * round_T(absmax)) (one HMUL2 per byte from a 64 KiB "wide" table of T
     * pairs, one copy per lane; rows 1..16), products exact in float32: NOT the exact contract of the others (opt-in
     * "v2bnb"). CODE = the codes alone in the mma, round_T(code), with each absmax block's float32 sum scaled once by
     * its absmax (native/nf4_gemv_code.cuh; rows 1..8 where {@link #codeApplies} holds, else the exact PAIR kernel):
     * NOT the exact contract (the weight code * absmax is never rounded to 16 bits; only the code is): "v2code", the
     * default variant of {@link Quant4bitKernels}.
     */
    enum Decode {
        TABLE, REGISTERS, V3_STREAM, PAIR, BNB, CODE;

        /** Whether the kernels take the 64 KiB wide table as dynamic shared memory. */
        boolean wideTable() { return this == BNB || this == CODE; }
    }

    /**
     * Rows of x the CODE kernels take (m4: 1..4, m8: 5..8, m16: 9..16; the m16 kernels load x per n-tile inside each
     * chunk: nf4_gemv_code.cuh, code_chunk_x_in_turn); more rows take the PAIR kernels.
     */
    static final int CODE_MAX_ROWS = 16;

    /** The CODE kernels' name suffix for rows of x: "_m4", "_m8" or "_m16" (1..{@link #CODE_MAX_ROWS} rows). */
    static String codeRowsSuffix(int rows) {
        if (rows < 1 || rows > CODE_MAX_ROWS) throw new IllegalArgumentException("the v2 CODE GEMV takes 1.." + CODE_MAX_ROWS + " rows of x, got " + rows);
        return rows <= 4 ? "_m4" : rows <= 8 ? "_m8" : "_m16";
    }

    /**
     * Whether the CODE kernel decodes this weight with its own numerics (native/nf4_gemv_code.cuh, nf4v2::code_applies):
     * in % 128 == 0, in a multiple of the blocksize, blocksize &gt;= 64, and a power-of-two nested blocksize. The
     * CODE kernels trap on other weights: {@link #gemv} and {@link #gemvGroup} give those the exact kernels.
     */
    static boolean codeApplies(CudaQuant4bit w) {
        int k = w.inFeatures(), bs = w.blocksize();
        return k % 128 == 0 && k % bs == 0 && bs >= 64 && Integer.bitCount(bs) == 1
                && (!w.nested() || Integer.bitCount(w.nestedBlocksize()) == 1);
    }

    /** Dynamic shared memory of the BNB kernels: nf4v2::WIDE_TABLE_BYTES (256 rows of 256 bytes). */
    static final int WIDE_TABLE_BYTES = 256 * 256;

    private Nf4GemvKernels() {}

    /** Whether the v2 GEMV applies: 16-bit compute and K a multiple of 32 (16-byte aligned rows of codes and x). */
    static boolean applies(CudaQuant4bit w) {
        return w.computeDType() != DType.F32 && w.inFeatures() % 32 == 0;
    }

    /** The v2 kernel name for the compute dtype, the rows of x (m8: rows &lt;= 8, m16: rows &lt;= 16) and the decode. */
    static String kernelName(DType compute, int rows, Decode decode) {
        if (rows < 1 || rows > Quant4bitKernels.GEMV_MAX_ROWS) {
            throw new IllegalArgumentException("the v2 GEMV takes 1.." + Quant4bitKernels.GEMV_MAX_ROWS + " rows of x, got " + rows);
        }
        String dt = switch (compute) {
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> throw new IllegalArgumentException("the v2 GEMV computes in BF16 or F16, not " + compute);
        };
        String prefix = switch (decode) {
            case REGISTERS -> "q4v2reg_gemv_";
            case PAIR -> "q4v2pair_gemv_";
            case BNB -> "q4v2bnb_gemv_";
            case CODE -> "q4v2code_gemv_";
            default -> "q4v2_gemv_";
        };
        if (decode == Decode.CODE) return prefix + dt + codeRowsSuffix(rows);
        return prefix + dt + (rows <= 8 ? "_m8" : "_m16");
    }

    /** Weights one grouped launch takes at most (the segments of native/nf4_gemv.cu's q4v2g entries). */
    static final int GROUP_MAX_SEGMENTS = 3;

    /** Grouped launches made so far (all contexts): lets a test see that the grouped kernel ran, not a fallback. */
    static final AtomicLong GROUP_LAUNCHES = new AtomicLong();

    /**
     * Whether one grouped v2 launch takes these weights for rows of x: 1..3 weights, each one the v2 GEMV applies to
     * ({@link #applies}) in the row layout, all with the same in_features and compute dtype, and 1..16 rows.
     */
    static boolean groupApplies(List<CudaQuant4bit> ws, int rows) {
        if (ws.isEmpty() || ws.size() > GROUP_MAX_SEGMENTS || rows < 1 || rows > Quant4bitKernels.GEMV_MAX_ROWS) return false;
        CudaQuant4bit first = ws.get(0);
        for (CudaQuant4bit w : ws) {
            if (!applies(w) || w.inFeatures() != first.inFeatures() || w.computeDType() != first.computeDType()
                    || w.layout() != Q4Layout.ROWS) return false;  // the grouped kernels read the row layout only
        }
        return true;
    }

    /**
     * The grouped v2 kernel name (native/nf4_gemv.cu, V2G_ENTRY / V2G_ENTRY_CODE): as {@link #kernelName} with "q4v2g",
     * "q4v2greg" or "q4v2gcode".
     */
    static String groupKernelName(DType compute, int rows, Decode decode) {
        if (decode == Decode.V3_STREAM) throw new IllegalArgumentException("the grouped GEMV has no v3 form");
        return kernelName(compute, rows, decode).replaceFirst("^q4v2", "q4v2g");
    }

    /**
     * One launch of the v2 GEMV for several weights reading the same x: ys.get(s) [rows, out_s] = the result of
     * {@link #gemv}(ctx, ws.get(s), xc, rows, biases.get(s), ys.get(s), decode), bit for bit (each block runs the
     * single-weight kernel's body on its weight). decode: TABLE, REGISTERS or CODE (where rows &gt; 8 or a weight is
     * not {@link #codeApplies}: TABLE, the values of the PAIR kernel {@link #gemv} then takes). biases: one entry per
     * weight, null for none; every y in the same dtype.
     */
    static void gemvGroup(CudaContext ctx, List<CudaQuant4bit> ws, Tensor xc, int rows, List<Tensor> biases,
                          List<Tensor> ys, Decode decode) {
        if (decode == Decode.CODE && (rows > CODE_MAX_ROWS || !ws.stream().allMatch(Nf4GemvKernels::codeApplies))) {
            decode = Decode.TABLE;
        }
        if (!groupApplies(ws, rows)) {
            throw new IllegalArgumentException("the grouped v2 GEMV takes 1.." + GROUP_MAX_SEGMENTS + " weights with BF16/F16"
                    + " compute, in % 32 == 0, the same in_features and compute dtype, and 1.." + Quant4bitKernels.GEMV_MAX_ROWS
                    + " rows of x; got " + ws + " with " + rows + " rows");
        }
        if (biases.size() != ws.size() || ys.size() != ws.size()) {
            throw new IllegalArgumentException("the grouped GEMV needs one bias (or null) and one output per weight: "
                    + ws.size() + " weights, " + biases.size() + " biases, " + ys.size() + " outputs");
        }
        DType compute = ws.get(0).computeDType();
        if (xc.dtype() != compute) {
            throw new IllegalArgumentException("x must be in the compute dtype " + compute + ", got " + xc.dtype());
        }
        DType yType = ys.get(0).dtype();
        KernelArgs args = segmentArgs(ws, biases, ys, false);
        int blocks = 0;
        for (CudaQuant4bit w : ws) blocks += grid(w.outFeatures());
        args.ptr(CudaContext.ptr(xc)).i32(rows).i32(ws.get(0).inFeatures()).i32(Quant4bitKernels.dtypeCode(yType, "output"));
        if (blocks == 0) return;  // every weight has 0 output features: nothing to write
        long fn = ctx.function(MODULE, groupKernelName(compute, rows, decode));
        int shared = decode.wideTable() ? WIDE_TABLE_BYTES : 0;
        ctx.allowSharedMemory(fn, shared);
        ctx.launch(fn, Dim3.of(blocks), Dim3.of(THREADS), shared, args);
        GROUP_LAUNCHES.incrementAndGet();
    }

    /**
     * The segments' arguments of a grouped launch (nf4_gemv.cu, V2G_SEG_PARAMS 0..2): per weight its Q4_WEIGHT_PARAMS
     * (tiles: the layout's own, for the tile kernels; else the row layout's), code16, N, bias (or null) and its dtype,
     * y, double_round; absent segments zero (no blocks, pointers never read). Every y in one dtype.
     */
    static KernelArgs segmentArgs(List<CudaQuant4bit> ws, List<Tensor> biases, List<Tensor> ys, boolean tiles) {
        DType yType = ys.get(0).dtype();
        KernelArgs args = KernelArgs.of();
        for (int s = 0; s < GROUP_MAX_SEGMENTS; s++) {
            if (s >= ws.size()) {
                args.ptr(0L).ptr(0L).ptr(0L).ptr(0L).f32(0f).i32(0).i32(1).i32(0).i32(0).ptr(0L)
                        .i32(0).ptr(0L).i32(0).ptr(0L).i32(0);
                continue;
            }
            CudaQuant4bit w = ws.get(s);
            Tensor bias = biases.get(s), y = ys.get(s);
            if (y.dtype() != yType) {
                throw new IllegalArgumentException("the grouped GEMV writes every output in one dtype: " + yType + " and " + y.dtype());
            }
            boolean doubleRound = w.stateDType() != DType.F32 && w.stateDType() != w.computeDType();
            (tiles ? Quant4bitKernels.addLayoutWeightArgs(args, w) : Quant4bitKernels.addWeightArgs(args, w))
                    .ptr(CudaContext.ptr(w.code16())).i32(w.outFeatures())
                    .ptr(bias == null ? 0L : CudaContext.ptr(bias))
                    .i32(bias == null ? 0 : Quant4bitKernels.dtypeCode(bias.dtype(), "bias"))
                    .ptr(CudaContext.ptr(y)).i32(doubleRound ? 1 : 0);
        }
        return args;
    }

    /** Whether the v3 kernel takes this call (else V3_STREAM falls back to the v2 table kernel). */
    static boolean v3Applies(CudaQuant4bit w, int rows) {
        // chunk indices of 32 values are 32-bit in the kernel; absmax blocks hold whole 32-value chunks
        return rows <= V3_MAX_ROWS && w.blocksize() >= 32 && (long) w.outFeatures() * w.inFeatures() / 32 < (1L << 32);
    }

    /** The v3 kernel name: m1 for one row of x, m4 for 2..4. */
    static String v3KernelName(DType compute, int rows) {
        if (rows < 1 || rows > V3_MAX_ROWS) {
            throw new IllegalArgumentException("the v3 GEMV takes 1.." + V3_MAX_ROWS + " rows of x, got " + rows);
        }
        String dt = switch (compute) {
            case BF16 -> "bf16";
            case F16 -> "f16";
            default -> throw new IllegalArgumentException("the v3 GEMV computes in BF16 or F16, not " + compute);
        };
        return "q4v3_gemv_" + dt + (rows == 1 ? "_m1" : "_m4");
    }

    /** Dynamic shared memory of a v3 launch: x [rows, in] when it fits V3_X_SMEM_MAX, else 0 (as nf4v3::x_smem_bytes). */
    static int v3SharedBytes(int rows, int inFeatures) {
        long b = (long) rows * inFeatures * 2;
        return b <= V3_X_SMEM_MAX ? (int) b : 0;
    }

    /** Blocks of a launch: one per 16 output rows. */
    static int grid(int outFeatures) {
        return (outFeatures + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    }

    /**
     * y [rows, out] in y.dtype = round(y, round(compute, x W^T + round(compute, bias))); xc is x in the compute dtype
     * [rows, in] (16-byte aligned rows); bias null or [out] in any float dtype.
     */
    static void gemv(CudaContext ctx, CudaQuant4bit w, Tensor xc, int rows, Tensor bias, Tensor y, Decode decode) {
        if (!applies(w)) {
            throw new IllegalArgumentException(w + ": the v2 GEMV needs BF16/F16 compute and in % 32 == 0");
        }
        if (xc.dtype() != w.computeDType()) {
            throw new IllegalArgumentException("x must be in the compute dtype " + w.computeDType() + ", got " + xc.dtype());
        }
        if (decode == Decode.CODE && (rows > CODE_MAX_ROWS || !codeApplies(w))) decode = Decode.PAIR;  // the exact kernel
        boolean tiles = w.layout() == Q4Layout.TILES;
        if (tiles && decode != Decode.CODE && decode != Decode.PAIR) {
            throw new IllegalArgumentException(w + " has the tile layout, which only the CODE and PAIR kernels read, not " + decode);
        }
        boolean v3 = decode == Decode.V3_STREAM && v3Applies(w, rows);
        int persistent = tiles && decode == Decode.CODE ? Nf4TileGemvKernels.persistentSingle(ctx, w, w.outFeatures() / 16, false, rows) : 0;
        String kernel = v3 ? v3KernelName(w.computeDType(), rows)
                : kernelName(w.computeDType(), rows, decode == Decode.V3_STREAM ? Decode.TABLE : decode)
                + Quant4bitKernels.layoutSuffix(w);
        boolean doubleRound = w.stateDType() != DType.F32 && w.stateDType() != w.computeDType();
        KernelArgs args = Quant4bitKernels.layoutWeightArgs(w).ptr(CudaContext.ptr(w.code16()))
                .ptr(CudaContext.ptr(xc)).i32(rows).i32(w.outFeatures()).i32(w.inFeatures())
                .ptr(bias == null ? 0L : CudaContext.ptr(bias))
                .i32(bias == null ? 0 : Quant4bitKernels.dtypeCode(bias.dtype(), "bias"))
                .ptr(CudaContext.ptr(y)).i32(Quant4bitKernels.dtypeCode(y.dtype(), "output"))
                .i32(doubleRound ? 1 : 0);
        if (persistent > 0) {
            Nf4TileGemvKernels.launchPersistent(ctx, kernel, persistent, false, rows, w.inFeatures(), args);
            return;
        }
        long fn = ctx.function(MODULE, kernel);
        if (v3) {  // persistent: any grid is correct; V3_BLOCKS_PER_SM per SM fit (registers, <= 32 KiB of x each)
            ctx.launch(fn, Dim3.of(V3_BLOCKS_PER_SM * ctx.properties().multiprocessorCount()), Dim3.of(V3_THREADS),
                    v3SharedBytes(rows, w.inFeatures()), args);
        } else {
            int shared = decode.wideTable() ? WIDE_TABLE_BYTES : 0;
            ctx.allowSharedMemory(fn, shared);
            ctx.launch(fn, Dim3.of(grid(w.outFeatures())), Dim3.of(THREADS), shared, args);
        }
    }
}
