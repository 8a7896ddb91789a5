package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Map;
import java.util.Set;
import java.util.WeakHashMap;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Launchers of native/nf4.cu (module "nf4"). Each method validates nothing beyond what the kernel needs
 * to be memory-safe; {@link CudaQuantOps} checks shapes and dtypes first. All launches go to the
 * context's stream.
 */
final class Quant4bitKernels {
    static final String MODULE = "nf4";
    /** Rows of x up to which linear() takes the fused GEMV; above it, dequantize + cuBLAS. */
    static final int GEMV_MAX_ROWS = 16;
    // native/nf4.cu: GEMV_THREADS, GEMV_SMEM_BYTES, GEMV_CHUNK_K, and the blocks per SM of __launch_bounds__
    static final int GEMV_THREADS = 256;
    static final int GEMV_WARPS = GEMV_THREADS / 32;
    static final int GEMV_SMEM_BYTES = 256 * 32 * 8 + 256 * 4;
    static final int GEMV_CHUNK_K = 128;
    // native/nf4.cu, streaming GEMV: STREAM_THREADS, the panel of 8 warps x 16 rows, STREAM_FIXED_SMEM
    static final int STREAM_THREADS = 256;
    static final int STREAM_PANEL_ROWS = 128;
    static final int STREAM_FIXED_SMEM = 256 * 32 * 8 + 256 * 4;
    /** Shared memory for the x slice of one stream block, at most (two blocks per SM with the 65 KiB tables). */
    static final int STREAM_MAX_X_BYTES = 40 * 1024;
    /**
     * System property choosing the decode GEMV: "v2code" (default: native/nf4_gemv_code.cuh, rows 1..16 of x, the
     * tensor cores multiplying x by the 16-bit-rounded codes and each absmax block's float32 sum scaled by its absmax;
     * the weight code * absmax is never rounded to 16 bits, so the bits differ from the exact dequantize contract, not
     * the accuracy; 9% faster Llama-7B decode on the H200 than "v2"; the weights it does not apply to take the exact
     * decode), "v2" (the exact contract: native/nf4_gemv.cu decoding each byte with one read of a
     * replicated 256-entry pair table (rows 1..16), 4% faster Llama-7B decode than "v2table", the same kernel with two
     * reads of the 16-float table per byte; both give the same values bit for bit), "v2bnb" (bitsandbytes' batch-1
     * weights, as transformers gets them at batch 1), "v3" (its
     * persistent streaming kernel), "v2reg" (the same kernel decoding in registers), "v7" (native/nf4_gemv7.cu: one row of x only, bitsandbytes'
     * batch-1 numerics, see {@link Nf4Gemv7Kernels}), "hybrid", "stream" or "mma" (native/nf4.cu).
     */
    static final String GEMV_VARIANT_PROPERTY = "qlora4j.nf4.gemv";
    /**
     * System property of the hybrid variant: every Nth 128-wide chunk of a warp is decoded through register tables
     * (ALU pipe) instead of the shared-memory pair table (default 3: a third of the bytes; NOTES-nf4-gemv.md).
     */
    static final String HYBRID_PERIOD_PROPERTY = "qlora4j.nf4.hybridPeriod";
    static final int DEFAULT_HYBRID_PERIOD = 3;

    private static final Set<Long> SHARED_MEMORY_RAISED = ConcurrentHashMap.newKeySet();
    private static final Map<CudaContext, GemvScratch> SCRATCH = new WeakHashMap<>();

    private Quant4bitKernels() {}

    /** 0 float32, 1 bfloat16, 2 float16: the dtype codes of the kernels. */
    static int dtypeCode(DType d, String what) {
        return switch (d) {
            case F32 -> 0;
            case BF16 -> 1;
            case F16 -> 2;
            default -> throw new IllegalArgumentException(what + " must be F32, BF16 or F16, got " + d);
        };
    }

    /**
     * The weight's leading kernel arguments (Q4_WEIGHT_PARAMS in nf4.cu) for a kernel that reads the row layout: a
     * weight in the tile layout is refused (the launchers of the kernels that read it use {@link #layoutWeightArgs}).
     */
    static KernelArgs weightArgs(CudaQuant4bit w) {
        return addWeightArgs(KernelArgs.of(), w);
    }

    /** Appends the weight's Q4_WEIGHT_PARAMS to args for a kernel that reads the row layout (as {@link #weightArgs}). */
    static KernelArgs addWeightArgs(KernelArgs args, CudaQuant4bit w) {
        if (w.layout() != Q4Layout.ROWS) {
            throw new IllegalStateException(w + " has the tile layout, which this kernel does not read; prepare the weight"
                    + " with -D" + Q4Layout.PROPERTY + "=rows to use it");
        }
        return addLayoutWeightArgs(args, w);
    }

    /** The weight's Q4_WEIGHT_PARAMS for a kernel chosen for the weight's layout (a "_tiles" entry for TILES). */
    static KernelArgs layoutWeightArgs(CudaQuant4bit w) {
        return addLayoutWeightArgs(KernelArgs.of(), w);
    }

    /** Appends the weight's Q4_WEIGHT_PARAMS for a kernel chosen for the weight's layout. */
    static KernelArgs addLayoutWeightArgs(KernelArgs args, CudaQuant4bit w) {
        int nbs = w.nested() ? w.nestedBlocksize() : 1;
        int nshift = Integer.bitCount(nbs) == 1 ? Integer.numberOfTrailingZeros(nbs) : -1;
        return args
                .ptr(CudaContext.ptr(w.packed()))
                .ptr(CudaContext.ptr(w.absmax()))
                .ptr(w.nested() ? CudaContext.ptr(w.nestedAbsmax()) : 0L)
                .ptr(w.nested() ? CudaContext.ptr(w.nestedCode()) : 0L)
                .f32(w.offset())
                .i32(Integer.numberOfTrailingZeros(w.blocksize()))
                .i32(nbs)
                .i32(nshift)
                .i32(w.nested() ? 1 : 0);
    }

    /** A grid-stride grid: enough blocks to cover `items` at `perBlock` each, at most 32 per SM. */
    static Dim3 strideGrid(CudaContext ctx, long items, int perBlock) {
        long blocks = Math.max(1, (items + perBlock - 1) / perBlock);
        return Dim3.of((int) Math.min(blocks, 32L * ctx.properties().multiprocessorCount()));
    }

    // native/nf4.cu dequantize: DQ_THREADS per block, one warp per chunk of 32 x DQ_PIECES pieces of 8 values (the two
    // #defines there; NativeConstantsTest checks that they agree with these)
    static final int DQ_THREADS = 256;
    static final int DQ_PIECES = 8;
    /** Pieces (8 values) one dequantize block covers: 8 warps x 32 lanes x DQ_PIECES. */
    static final long DQ_PIECES_PER_BLOCK = (long) DQ_THREADS * DQ_PIECES;

    /**
     * The dequantize grid: one warp per chunk, every chunk once (any grid >= 1 is correct: warps stride over the
     * chunks, but a smaller one serializes their loads). n / 8 must be below 2^31 (the kernel's 32-bit piece indices).
     */
    static Dim3 dequantizeGrid(long n) {
        long pieces = n / 8;
        if (pieces >= (1L << 31)) throw new IllegalArgumentException("dequantize: at most 2^34 values, got " + n);
        return Dim3.of((int) Math.max(1, (pieces + DQ_PIECES_PER_BLOCK - 1) / DQ_PIECES_PER_BLOCK));
    }

    /** y [numel] in dtype = round(dtype, round(mid, value)); mid = F32 for a plain dequantize. */
    static void dequantize(CudaContext ctx, CudaQuant4bit w, Tensor y, DType mid) {
        String kernel = switch (y.dtype()) {
            case F32 -> "q4_dequantize_f32";
            case BF16 -> "q4_dequantize_bf16";
            case F16 -> "q4_dequantize_f16";
            default -> throw new IllegalArgumentException("dequantize to F32, BF16 or F16, not " + y.dtype());
        };
        long n = w.numel();
        KernelArgs args = layoutWeightArgs(w).ptr(CudaContext.ptr(w.code16())).ptr(CudaContext.ptr(y)).i64(n).i32(dtypeCode(mid, "mid"));
        if (w.layout() == Q4Layout.TILES) args.i32(w.inFeatures());
        ctx.launch(ctx.function(MODULE, kernel + layoutSuffix(w)), dequantizeGrid(n), Dim3.of(DQ_THREADS), 0, args);
    }

    /** The kernel-name suffix of the weight's layout: "" for the row layout, "_tiles" for the tile layout. */
    static String layoutSuffix(CudaQuant4bit w) {
        return w.layout() == Q4Layout.TILES ? "_tiles" : "";
    }

    /**
     * Moves a weight [out, in]'s packed bytes between the layouts (nf4.cu q4_tile_layout): toTiles reads the row layout
     * from src and writes the tile layout to dst, else the reverse. src, dst: distinct U8 [out * in / 2] tensors.
     */
    static void tileLayout(CudaContext ctx, Tensor src, Tensor dst, int out, int in, boolean toTiles) {
        long records = (long) out * in / 32;
        if (out % Q4Layout.TILE_ROWS != 0 || in % Q4Layout.CHUNK_K != 0 || records >= (1L << 32)
                || src.byteSize() != records * 16 || dst.byteSize() != records * 16) {
            throw new IllegalArgumentException("tileLayout: [" + out + ", " + in + "] needs out % 16 == 0, in % 128 == 0 and"
                    + " two buffers of out * in / 2 bytes, got " + src + " and " + dst);
        }
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(src)).ptr(CudaContext.ptr(dst)).i32(out).i32(in).i32(toTiles ? 1 : 0);
        ctx.launch(ctx.function(MODULE, "q4_tile_layout"), strideGrid(ctx, records, 256), Dim3.of(256), 0, args);
    }

    /**
     * The BF16 dequantize of w [out, in] into the first in columns of y (BF16 [out, ldy], ldy >= in), the columns
     * [in, ldy) untouched: the same values as {@link #dequantize} into a contiguous tensor (nf4.cu's ROWS store).
     * in and y's row stride must be multiples of 8 (16-byte stores) and the weight have fewer than 2^34 values (the
     * kernel's 32-bit piece indices).
     */
    static void dequantizeRows(CudaContext ctx, CudaQuant4bit w, Tensor y, DType mid) {
        if (y.dtype() != DType.BF16 || y.rank() != 2 || y.dim(0) != w.outFeatures()) {
            throw new IllegalArgumentException("dequantizeRows: y must be BF16 [" + w.outFeatures() + ", >= "
                    + w.inFeatures() + "], got " + y);
        }
        dequantizeRows(ctx, w, CudaContext.ptr(y), y.dim(1), mid);
    }

    /**
     * The same into BF16 rows of stride ld at device address y (out_features rows from there: e.g. one layer's
     * block of rows in a buffer that stacks several weights, 16-byte aligned).
     */
    static void dequantizeRows(CudaContext ctx, CudaQuant4bit w, long y, int ld, DType mid) {
        int in = w.inFeatures();
        long n = w.numel();
        if (ld < in || in % 8 != 0 || ld % 8 != 0 || n / 8 >= (1L << 31) || (y & 15) != 0) {
            throw new IllegalArgumentException("dequantizeRows: the rows need a stride >= " + in + ", in_features and the "
                    + "stride multiples of 8, a 16-byte aligned start and fewer than 2^34 values (stride " + ld + ")");
        }
        KernelArgs args = layoutWeightArgs(w).ptr(CudaContext.ptr(w.code16())).ptr(y).i64(n)
                .i32(dtypeCode(mid, "mid")).i32(in).i64(ld);
        ctx.launch(ctx.function(MODULE, "q4_dequantize_rows_bf16" + layoutSuffix(w)), dequantizeGrid(n), Dim3.of(DQ_THREADS), 0, args);
    }

    /**
     * {@link #dequantizeRows} into rows of stride ld at y that also fills each row's columns [in, ld) the way the LoRA
     * fold's lora_fold_b_bf16 does (CudaLoraFold#foldedWeight): scaling * bMaster[row, c - column] rounded once to
     * BF16 in the adapter's block c - in in [column, column + r), zeros elsewhere. One launch (nf4.cu,
     * q4_dequantize_fold_bf16), the bits of the two kernels in turn.
     *
     * @param bMaster F32 [out_features, r] on the device
     */
    static void dequantizeRowsFold(CudaContext ctx, CudaQuant4bit w, long y, int ld, DType mid, Tensor bMaster, int column,
                                   float scaling) {
        int in = w.inFeatures();
        long n = w.numel();
        if (ld < in || in % 8 != 0 || ld % 8 != 0 || n / 8 >= (1L << 31) || (y & 15) != 0) {
            throw new IllegalArgumentException("dequantizeRowsFold: the rows need a stride >= " + in + ", in_features and the "
                    + "stride multiples of 8, a 16-byte aligned start and fewer than 2^34 values (stride " + ld + ")");
        }
        if (bMaster.dtype() != DType.F32 || bMaster.rank() != 2 || bMaster.dim(0) != w.outFeatures()) {
            throw new IllegalArgumentException("dequantizeRowsFold: lora_B must be the F32 master [" + w.outFeatures()
                    + ", r], got " + bMaster);
        }
        KernelArgs args = layoutWeightArgs(w).ptr(CudaContext.ptr(w.code16())).ptr(y).i64(n)
                .i32(dtypeCode(mid, "mid")).i32(in).i64(ld).ptr(CudaContext.ptr(bMaster)).i32(column).i32(bMaster.dim(1))
                .f32(scaling);
        ctx.launch(ctx.function(MODULE, "q4_dequantize_fold_bf16" + layoutSuffix(w)), dequantizeGrid(n), Dim3.of(DQ_THREADS), 0, args);
    }

    /** packed U8 [(n+1)/2] and absmax F32 [blocks] of x (F32/BF16/F16, n values). typeCode 0 NF4, 1 FP4. */
    static void quantize(CudaContext ctx, Tensor x, int blocksize, int typeCode, Tensor packed, Tensor absmax) {
        long n = x.numel();
        long blocks = (n + blocksize - 1) / blocksize;
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(x)).i32(dtypeCode(x.dtype(), "weight dtype")).i64(n)
                .i32(blocksize).i32(typeCode).ptr(CudaContext.ptr(packed)).ptr(CudaContext.ptr(absmax));
        ctx.launch(ctx.function(MODULE, "q4_quantize"), strideGrid(ctx, blocks, 8), Dim3.of(256), 0, args);
    }

    /** codes U8 [n] and nestedAbsmax F32 [ceil(n / nestedBs)] of absmax F32 [n] - offset against map256. */
    static void doubleQuantize(CudaContext ctx, Tensor absmax, float offset, Tensor map256, int nestedBs,
                               Tensor codes, Tensor nestedAbsmax) {
        long n = absmax.numel();
        long blocks = (n + nestedBs - 1) / nestedBs;
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(absmax)).i64(n).f32(offset).ptr(CudaContext.ptr(map256))
                .i32(nestedBs).ptr(CudaContext.ptr(codes)).ptr(CudaContext.ptr(nestedAbsmax));
        ctx.launch(ctx.function(MODULE, "q4_double_quantize"), strideGrid(ctx, blocks, 8), Dim3.of(256), 0, args);
    }

    /** y = round(y.dtype, x) elementwise (same element count). */
    static void convert(CudaContext ctx, Tensor x, Tensor y) {
        long n = x.numel();
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(x)).i32(dtypeCode(x.dtype(), "source"))
                .ptr(CudaContext.ptr(y)).i32(dtypeCode(y.dtype(), "target")).i64(n);
        ctx.launch(ctx.function(MODULE, "q4_convert"), strideGrid(ctx, n, 256), Dim3.of(256), 0, args);
    }

    /**
     * y [rows, cols] in y.dtype = round(compute, acc + round(compute, bias[col])), acc F32 [rows, cols] (the prefill
     * GEMM's float32 output): the bias is added before the one rounding to the compute dtype, as Nf4Matmul does.
     */
    static void biasEpilogue(CudaContext ctx, Tensor acc, Tensor bias, DType compute, Tensor y, int rows, int cols) {
        KernelArgs args = KernelArgs.of().ptr(CudaContext.ptr(acc)).ptr(CudaContext.ptr(bias)).i32(dtypeCode(bias.dtype(), "bias"))
                .i32(dtypeCode(compute, "compute dtype")).ptr(CudaContext.ptr(y)).i32(dtypeCode(y.dtype(), "output"))
                .i64(rows).i32(cols);
        ctx.launch(ctx.function(MODULE, "q4_bias_epilogue"), strideGrid(ctx, (long) rows * cols, 256), Dim3.of(256), 0, args);
    }

    /** The float32 SIMT GEMV: any K, any compute dtype, rows <= 16. */
    static void gemvSimt(CudaContext ctx, CudaQuant4bit w, Tensor x, int rows, Tensor bias, Tensor y) {
        KernelArgs args = weightArgs(w).ptr(CudaContext.ptr(w.code16()))
                .ptr(CudaContext.ptr(x)).i32(dtypeCode(x.dtype(), "x")).i32(rows).i32(w.outFeatures()).i32(w.inFeatures())
                .i32(dtypeCode(w.computeDType(), "compute dtype")).i32(dtypeCode(w.stateDType(), "state dtype"))
                .ptr(bias == null ? 0L : CudaContext.ptr(bias)).i32(bias == null ? 0 : dtypeCode(bias.dtype(), "bias"))
                .ptr(CudaContext.ptr(y)).i32(dtypeCode(y.dtype(), "output"));
        ctx.launch(ctx.function(MODULE, "q4_gemv_simt"), strideGrid(ctx, w.outFeatures(), 8), Dim3.of(256), 0, args);
    }

    /** Whether the tensor-core GEMV applies: 16-bit compute and K a multiple of 32. */
    static boolean mmaGemvApplies(CudaQuant4bit w) {
        return w.computeDType() != DType.F32 && w.inFeatures() % 32 == 0;
    }

    /** Blocks per SM the tensor-core GEMV's launch bounds are set for (shared memory allows 3). */
    static int gemvBlocksPerSm(int rows) { return rows <= 8 ? 3 : 2; }

    /** Chunks of work of the tensor-core GEMV: 16-row tiles times 128-wide k chunks. */
    static long gemvChunks(int outFeatures, int inFeatures) {
        return ((outFeatures + 15L) / 16) * ((inFeatures + GEMV_CHUNK_K - 1L) / GEMV_CHUNK_K);
    }

    /** Blocks of the persistent tensor-core GEMV grid: every SM full, never more warps than chunks. */
    static int gemvGrid(int multiprocessors, int rows, long chunks) {
        long wanted = (long) multiprocessors * gemvBlocksPerSm(rows);
        long byWork = Math.max(1, (chunks + GEMV_WARPS - 1) / GEMV_WARPS);
        return (int) Math.min(wanted, byWork);
    }

    /**
     * The decode GEMV variants of 16-bit compute with K % 32 == 0 (same numerics, bit-identical weights, except V7):
     * V2 / V2TABLE / V2REG = {@link Nf4GemvKernels} (pair-table / table / register decode), V3 = its persistent streaming kernel (rows &lt;= 4), HYBRID = the streaming kernel with part of the decode on register tables, STREAM = the streaming kernel
     * decoding only through the shared-memory pair table, MMA = the stream-K kernel. V7 = {@link Nf4Gemv7Kernels} for
     * one row of x (where {@link Nf4Gemv7Kernels#applies} holds, else v2) with bitsandbytes' batch-1 inference numerics
     * (weights and products rounded to the compute dtype) instead of the exact contract of the others: opt-in only.
     * V2BNB = v2 with bitsandbytes' batch-1 weights (not the exact contract; products exact): opt-in. V2CODE = v2
     * multiplying x by the rounded codes and scaling each block's float32 sum by its absmax (not the exact contract:
     * the weight is never rounded to 16 bits; rows 1..8, more rows as V2): the default.
     */
    enum GemvVariant { V2, V2BNB, V2CODE, V2TABLE, V2REG, V3, V7, HYBRID, STREAM, MMA }

    /** The variant the system property qlora4j.nf4.gemv names (read per call, so a benchmark can switch). */
    static GemvVariant gemvVariant() {
        return parseVariant(System.getProperty(GEMV_VARIANT_PROPERTY, "v2code"));
    }

    static GemvVariant parseVariant(String value) {
        String v = value.trim().toLowerCase(java.util.Locale.ROOT);
        return switch (v) {
            case "v2" -> GemvVariant.V2;
            case "v2reg" -> GemvVariant.V2REG;
            case "v2table" -> GemvVariant.V2TABLE;
            case "v2bnb" -> GemvVariant.V2BNB;
            case "v2code", "" -> GemvVariant.V2CODE;
            case "v3" -> GemvVariant.V3;
            case "v7" -> GemvVariant.V7;
            case "hybrid" -> GemvVariant.HYBRID;
            case "stream" -> GemvVariant.STREAM;
            case "mma" -> GemvVariant.MMA;
            default -> throw new IllegalArgumentException("system property " + GEMV_VARIANT_PROPERTY
                    + " must be v2code (the default), v2, v2bnb, v2table, v2reg, v3, v7, hybrid, stream or mma, got '" + value + "'");
        };
    }

    /** The hybrid variant's register-decode period (system property qlora4j.nf4.hybridPeriod, read per call). */
    static int hybridPeriod() {
        return parseHybridPeriod(System.getProperty(HYBRID_PERIOD_PROPERTY, Integer.toString(DEFAULT_HYBRID_PERIOD)));
    }

    static int parseHybridPeriod(String value) {
        int p;
        try {
            p = Integer.parseInt(value.trim());
        } catch (NumberFormatException e) {
            p = -1;
        }
        if (p < 1 || p > 64) {
            throw new IllegalArgumentException("system property " + HYBRID_PERIOD_PROPERTY + " must be an integer in 1..64"
                    + " (1 = every chunk decoded in registers, 3 = every third), got '" + value + "'");
        }
        return p;
    }

    /** The tensor-core GEMV of the chosen variant; xc is x in the compute dtype (16-byte aligned rows). */
    static void gemv(CudaContext ctx, CudaQuant4bit w, Tensor xc, int rows, Tensor bias, Tensor y, GemvVariant variant) {
        if (w.layout() == Q4Layout.TILES) {  // only the code and pair kernels read tiles: the exact pair values otherwise
            Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y,
                    variant == GemvVariant.V2CODE ? Nf4GemvKernels.Decode.CODE : Nf4GemvKernels.Decode.PAIR);
            return;
        }
        switch (variant) {
            case V2 -> Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.PAIR);
            case V2BNB -> Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.BNB);
            case V2CODE -> Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.CODE);
            case V2TABLE -> Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.TABLE);
            case V2REG -> Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.REGISTERS);
            case V3 -> Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.V3_STREAM);
            case V7 -> {
                if (Nf4Gemv7Kernels.applies(w, rows, bias, y)) Nf4Gemv7Kernels.gemv(ctx, w, xc, rows, bias, y);
                else Nf4GemvKernels.gemv(ctx, w, xc, rows, bias, y, Nf4GemvKernels.Decode.TABLE);
            }
            case HYBRID -> gemvStream(ctx, w, xc, rows, bias, y, hybridPeriod());
            case STREAM -> gemvStream(ctx, w, xc, rows, bias, y, 0);
            case MMA -> gemvMma(ctx, w, xc, rows, bias, y);
        }
    }

    /** Rows of x the stream kernel's shared slice holds: 8 (m8 kernel) or 16 (m16 kernel). */
    static int streamPaddedRows(int rows) { return rows <= 8 ? 8 : 16; }

    /** 128-wide chunks of K. */
    static int gemvChunksK(int inFeatures) { return (inFeatures + GEMV_CHUNK_K - 1) / GEMV_CHUNK_K; }

    /**
     * Splits of K for the stream GEMV: enough that the x slice fits STREAM_MAX_X_BYTES, and enough blocks
     * (panels x splits) for two per SM where K allows; never more splits than chunks.
     */
    static int streamSplits(int multiprocessors, int outFeatures, int inFeatures, int rows) {
        int chunks = gemvChunksK(inFeatures);
        long panels = (outFeatures + STREAM_PANEL_ROWS - 1L) / STREAM_PANEL_ROWS;
        int maxChunksPerSplit = STREAM_MAX_X_BYTES / (streamPaddedRows(rows) * GEMV_CHUNK_K * 2);
        long forSmem = (chunks + maxChunksPerSplit - 1L) / maxChunksPerSplit;
        long forFill = (2L * multiprocessors + panels - 1) / panels;
        return (int) Math.max(1, Math.min(chunks, Math.max(forSmem, forFill)));
    }

    /** Dynamic shared memory of a stream block: tables + x slice of ceil(chunks / splits) chunks. */
    static int streamSharedBytes(int inFeatures, int rows, int splits) {
        int chunks = gemvChunksK(inFeatures);
        int perSplit = (chunks + splits - 1) / splits;
        return STREAM_FIXED_SMEM + streamPaddedRows(rows) * perSplit * GEMV_CHUNK_K * 2;
    }

    /**
     * The streaming tensor-core GEMV (native/NOTES-nf4-gemv.md); xc is x in the compute dtype, K % 32 == 0.
     * regPeriod 0: all decoding through the shared pair table; p > 0: every p-th chunk of a warp through register tables.
     */
    static void gemvStream(CudaContext ctx, CudaQuant4bit w, Tensor xc, int rows, Tensor bias, Tensor y, int regPeriod) {
        boolean f16 = w.computeDType() == DType.F16;
        String kernel = "q4_gemv_stream_" + (f16 ? "f16" : "bf16") + (rows <= 8 ? "_m8" : "_m16");
        long fn = ctx.function(MODULE, kernel);
        if (SHARED_MEMORY_RAISED.add(fn)) ctx.driver().funcSetMaxDynamicSharedMemory(fn, STREAM_FIXED_SMEM + STREAM_MAX_X_BYTES);
        int splits = streamSplits(ctx.properties().multiprocessorCount(), w.outFeatures(), w.inFeatures(), rows);
        long panels = (w.outFeatures() + STREAM_PANEL_ROWS - 1L) / STREAM_PANEL_ROWS;
        long blocks = panels * splits;
        if (blocks >= Integer.MAX_VALUE) {
            throw new IllegalArgumentException(w + " is too large for the GEMV (" + blocks + " blocks); split the layer");
        }
        int smem = streamSharedBytes(w.inFeatures(), rows, splits);
        GemvScratch scratch = scratch(ctx, splits == 1 ? 0 : blocks * STREAM_THREADS * 8, panels);
        boolean doubleRound = w.stateDType() != DType.F32 && w.stateDType() != w.computeDType();
        KernelArgs args = weightArgs(w).ptr(CudaContext.ptr(w.code16()))
                .ptr(CudaContext.ptr(xc)).i32(rows).i32(w.outFeatures()).i32(w.inFeatures()).i32(splits)
                .ptr(bias == null ? 0L : CudaContext.ptr(bias)).i32(bias == null ? 0 : dtypeCode(bias.dtype(), "bias"))
                .ptr(CudaContext.ptr(y)).i32(dtypeCode(y.dtype(), "output"))
                .ptr(scratch.partials == null ? 0L : CudaContext.ptr(scratch.partials)).ptr(CudaContext.ptr(scratch.counters))
                .i32(doubleRound ? 1 : 0).i32(regPeriod);
        ctx.launch(fn, Dim3.of((int) blocks), Dim3.of(STREAM_THREADS), smem, args);
    }

    /** The stream-K tensor-core GEMV ("mma"); xc is x in the compute dtype (16-bit, 16-byte aligned rows: K % 32 == 0). */
    static void gemvMma(CudaContext ctx, CudaQuant4bit w, Tensor xc, int rows, Tensor bias, Tensor y) {
        boolean f16 = w.computeDType() == DType.F16;
        String kernel = "q4_gemv_mma_" + (f16 ? "f16" : "bf16") + (rows <= 8 ? "_m8" : "_m16");
        long fn = ctx.function(MODULE, kernel);
        if (SHARED_MEMORY_RAISED.add(fn)) ctx.driver().funcSetMaxDynamicSharedMemory(fn, GEMV_SMEM_BYTES);
        long chunks = gemvChunks(w.outFeatures(), w.inFeatures());
        if (chunks >= Integer.MAX_VALUE) {
            throw new IllegalArgumentException(w + " is too large for the GEMV (" + chunks + " chunks of work); split the layer");
        }
        int grid = gemvGrid(ctx.properties().multiprocessorCount(), rows, chunks);
        GemvScratch scratch = scratch(ctx, (long) grid * GEMV_WARPS * 2 * 32 * 8, (w.outFeatures() + 15) / 16);
        boolean doubleRound = w.stateDType() != DType.F32 && w.stateDType() != w.computeDType();
        KernelArgs args = weightArgs(w).ptr(CudaContext.ptr(w.code16()))
                .ptr(CudaContext.ptr(xc)).i32(rows).i32(w.outFeatures()).i32(w.inFeatures())
                .ptr(bias == null ? 0L : CudaContext.ptr(bias)).i32(bias == null ? 0 : dtypeCode(bias.dtype(), "bias"))
                .ptr(CudaContext.ptr(y)).i32(dtypeCode(y.dtype(), "output"))
                .ptr(CudaContext.ptr(scratch.partials)).ptr(CudaContext.ptr(scratch.counters)).i32(doubleRound ? 1 : 0);
        ctx.launch(fn, Dim3.of(grid), Dim3.of(GEMV_THREADS), GEMV_SMEM_BYTES, args);
    }

    /**
     * Per-context scratch of the split GEMVs: float32 partial fragments (mma: 2 slots of 32 lanes x 8 floats per
     * warp; stream: 256 threads x 8 floats per block) and arrival counters (mma: one per 16-row tile; stream: one
     * per 128-row panel). Both kernels leave every counter at 0, so they are zeroed only when allocated. All
     * launches are ordered on the context's one stream, so one scratch serves both variants and all layers.
     */
    private static final class GemvScratch {
        Tensor partials;   // F32 [partialFloats]
        Tensor counters;   // I32 [counters]
        long partialFloats;
        long counterCount;
    }

    private static GemvScratch scratch(CudaContext ctx, long partialFloats, long counters) {
        synchronized (SCRATCH) {
            GemvScratch s = SCRATCH.computeIfAbsent(ctx, c -> new GemvScratch());
            if (s.partialFloats < partialFloats) {
                if (s.partials != null) s.partials.close();
                s.partials = ctx.empty(DType.F32, Math.toIntExact(partialFloats));
                s.partialFloats = partialFloats;
            }
            if (s.counterCount < counters) {
                if (s.counters != null) s.counters.close();
                long n = Math.max(counters, 1024);
                s.counters = ctx.empty(DType.I32, Math.toIntExact(n));
                ctx.driver().memsetD32Async(CudaContext.ptr(s.counters), 0, n, ctx.stream());
                s.counterCount = n;
            }
            return s;
        }
    }
}
