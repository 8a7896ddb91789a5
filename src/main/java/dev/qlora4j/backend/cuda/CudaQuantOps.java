package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.quant.DynamicMap;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The CUDA backend's quantized-weight ops (bitsandbytes 4-bit and LLM.int8), with the numerics of the CPU
 * reference in dev.qlora4j.quant: dequantization and quantization bit-exact, matmuls equal up to float32
 * accumulation order.
 *
 * <p>4-bit linear, y [n, out] = x [n, in] W^T + bias, by rows of x:
 * <ul>
 *   <li>n &lt;= 16 (decode): one fused kernel that reads each packed byte once (tensor cores for BF16/F16
 *       compute with in % 32 == 0: the v2 kernel of native/nf4_gemv.cu unless -Dqlora4j.nf4.gemv=v2reg|hybrid|stream|mma
 *       picks its register-decode form or one of native/nf4.cu's kernels; a float32 SIMT kernel for F32 compute or
 *       other in);</li>
 *   <li>n &gt; 16 (prefill, training): dequantize into a compute-dtype workspace, then one cuBLAS GEMM (float32
 *       output plus a bias epilogue when there is a bias, see {@link PrefillPlan}).</li>
 * </ul>
 * Several 4-bit weights that read the same x at decode (q/k/v, gate/up: Backend.linearQuantizedGroup) go through
 * one grouped v2 launch ({@link #fusedGroup}, {@link #linear4bitGroup}) with the per-weight launches' exact values.
 * Compute dtype semantics (Nf4Matmul, bitsandbytes' Linear4bit): weight rounded to the state's dtype then to
 * the compute dtype; x and bias rounded to the compute dtype; float32 accumulation; the sum plus bias
 * rounded once to the compute dtype, then stored in x's dtype.
 */
public final class CudaQuantOps {
    private CudaQuantOps() {}

    // ---- 4-bit ----

    /** Uploads a bitsandbytes 4-bit state [out, in]; the matmul computes in computeDType (F32, BF16 or F16). */
    public static QuantizedWeight prepare4bit(CudaContext ctx, QuantState4bit state, DType computeDType) {
        int[] shape = state.shape();
        if (shape.length != 2) {
            throw new IllegalArgumentException("a 4-bit linear weight must be 2-D [out, in], got shape " + Arrays.toString(shape));
        }
        Quant4bitKernels.dtypeCode(computeDType, "bnb_4bit_compute_dtype");
        long n = state.numel();
        int packedBytes = Math.toIntExact((n + 1) / 2);
        Tensor packed = null, absmax = null, nestedAbsmax = null, nestedCode = null, code16 = null;
        try {
            packed = ctx.upload(Tensor.view(state.weight().segment().asSlice(0, packedBytes), DType.U8, packedBytes));
            absmax = ctx.upload(state.absmax().reshape(state.blocks()));
            float[] nestedCodeHost = null;
            int nestedBs = 0;
            if (state.nested()) {
                QuantState4bit.Nested s2 = state.state2();
                nestedAbsmax = ctx.upload(s2.absmax().reshape(Math.toIntExact(s2.absmax().numel())));
                nestedCodeHost = s2.code();
                nestedCode = ctx.upload(Tensor.of(nestedCodeHost.clone(), 256));
                nestedBs = s2.blocksize();
            }
            code16 = ctx.upload(Tensor.of(dequantTable(state.quantType()), 16));
            return new CudaQuant4bit(packed, absmax, nestedAbsmax, nestedCode, nestedCodeHost, code16, shape[0], shape[1],
                    state.blocksize(), nestedBs, state.quantType(), state.dtype(), computeDType, state.offset());
        } catch (RuntimeException e) {
            closeAll(packed, absmax, nestedAbsmax, nestedCode, code16);
            throw e;
        }
    }

    /**
     * w in the layout the backend gives its weights ({@link Q4Layout}): w itself in the row layout, or, where the tile
     * layout applies, is asked for (qlora4j.nf4.layout) and the decode GEMV variant has tile kernels (v2code, v2), a
     * weight with the same values whose bytes are regrouped into tiles (w is consumed: closed, its statistics moved).
     */
    public static CudaQuant4bit arranged(CudaContext ctx, CudaQuant4bit w) {
        Quant4bitKernels.GemvVariant v = Quant4bitKernels.gemvVariant();
        boolean tileKernels = v == Quant4bitKernels.GemvVariant.V2CODE || v == Quant4bitKernels.GemvVariant.V2;
        if (w.layout() != Q4Layout.ROWS || !tileKernels || Q4Layout.requested() != Q4Layout.TILES
                || !Q4Layout.tilesApply(w.outFeatures(), w.inFeatures(), w.blocksize(), w.nested(), w.nestedBlocksize(),
                w.computeDType())) {
            return w;
        }
        return toTiles(ctx, w);
    }

    /** Weights given the tile layout so far (all contexts): lets a test see that a model's weights were tiled. */
    static final java.util.concurrent.atomic.AtomicLong TILED_WEIGHTS = new java.util.concurrent.atomic.AtomicLong();

    /** w with its bytes in the tile layout (Q4Layout.tilesApply must hold; w is consumed). */
    static CudaQuant4bit toTiles(CudaContext ctx, CudaQuant4bit w) {
        Tensor rows = w.packed();
        Tensor tiles = ctx.empty(DType.U8, Math.toIntExact(rows.numel()));
        try {
            Quant4bitKernels.tileLayout(ctx, rows, tiles, w.outFeatures(), w.inFeatures(), true);
            TILED_WEIGHTS.incrementAndGet();
            return w.withPacked(tiles, Q4Layout.TILES);
        } catch (RuntimeException e) {
            tiles.close();
            throw e;
        }
    }

    /**
     * Quantizes a device weight [out, in] (F32, BF16 or F16) on the GPU, bit-exact with
     * {@link Quant4bit#quantize(Tensor, QuantType, int, boolean)}; the matmul computes in the weight's dtype.
     */
    public static CudaQuant4bit quantize4bit(CudaContext ctx, Tensor deviceWeight, QuantType type, int blocksize,
                                             boolean doubleQuant) {
        return quantize4bit(ctx, deviceWeight, type, blocksize, doubleQuant, deviceWeight.dtype());
    }

    /** As {@link #quantize4bit(CudaContext, Tensor, QuantType, int, boolean)} with an explicit compute dtype. */
    public static CudaQuant4bit quantize4bit(CudaContext ctx, Tensor deviceWeight, QuantType type, int blocksize,
                                             boolean doubleQuant, DType computeDType) {
        if (deviceWeight.rank() != 2) {
            throw new IllegalArgumentException("quantize4bit takes a 2-D weight [out, in], got shape " + Arrays.toString(deviceWeight.shape()));
        }
        Quant4bitKernels.dtypeCode(deviceWeight.dtype(), "the weight to quantize");
        Quant4bitKernels.dtypeCode(computeDType, "bnb_4bit_compute_dtype");
        checkBlocksize(blocksize);
        long n = deviceWeight.numel();
        if (n > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("weight " + deviceWeight + " has more than 2^31 values; split it");
        }
        int blocks = (int) ((n + blocksize - 1) / blocksize);
        Tensor packed = ctx.empty(DType.U8, (int) ((n + 1) / 2));
        Tensor absmax = ctx.empty(DType.F32, blocks);
        Tensor code16 = null, codes = null, nestedAbsmax = null, nestedCode = null;
        try {
            Quant4bitKernels.quantize(ctx, deviceWeight, blocksize, type == QuantType.NF4 ? 0 : 1, packed, absmax);
            code16 = ctx.upload(Tensor.of(dequantTable(type), 16));
            if (!doubleQuant) {
                return new CudaQuant4bit(packed, absmax, null, null, null, code16, deviceWeight.dim(0), deviceWeight.dim(1),
                        blocksize, 0, type, deviceWeight.dtype(), computeDType, 0f);
            }
            // offset = mean(absmax) exactly as Quant4bit computes it: a sequential float64 sum on the host
            float[] hostAbsmax = ctx.download(absmax).toFloatArray();
            double sum = 0;
            for (float a : hostAbsmax) sum += a;
            float offset = (float) (sum / blocks);
            int nb = Quant4bit.NESTED_BLOCKSIZE;
            float[] map = DynamicMap.signed();
            codes = ctx.empty(DType.U8, blocks);
            nestedAbsmax = ctx.empty(DType.F32, (blocks + nb - 1) / nb);
            nestedCode = ctx.upload(Tensor.of(map.clone(), 256));
            Quant4bitKernels.doubleQuantize(ctx, absmax, offset, nestedCode, nb, codes, nestedAbsmax);
            absmax.close();
            return new CudaQuant4bit(packed, codes, nestedAbsmax, nestedCode, map, code16, deviceWeight.dim(0),
                    deviceWeight.dim(1), blocksize, nb, type, deviceWeight.dtype(), computeDType, offset);
        } catch (RuntimeException e) {
            closeAll(packed, absmax, code16, codes, nestedAbsmax, nestedCode);
            throw e;
        }
    }

    // ---- LLM.int8 ----

    /** Uploads an LLM.int8 weight (CB, SCB); threshold 0 means pure int8 (no outlier decomposition). */
    public static QuantizedWeight prepare8bit(CudaContext ctx, Int8Weight w, float threshold) {
        if (!(threshold >= 0f) || Float.isInfinite(threshold)) {
            throw new IllegalArgumentException("llm_int8_threshold must be a finite value >= 0, got " + threshold);
        }
        Tensor cb = null, scb = null;
        try {
            cb = ctx.upload(Tensor.view(MemorySegment.ofArray(w.cb()), DType.I8, w.outFeatures(), w.inFeatures()));
            scb = ctx.upload(Tensor.of(w.scb().clone(), w.outFeatures()));
            return new CudaInt8(cb, scb, threshold);
        } catch (RuntimeException e) {
            closeAll(cb, scb);
            throw e;
        }
    }

    // ---- the ops ----

    /**
     * y [n, out] in x's dtype = x [n, in] W^T + bias. x: device F32, BF16 or F16; bias: device [out]
     * (F32, BF16 or F16) or null.
     */
    public static Tensor linear(CudaContext ctx, Tensor x, QuantizedWeight w, Tensor bias) {
        checkLinearArgs(x, w, bias);
        int n = x.dim(0);
        if (n == 0) return ctx.empty(x.dtype(), 0, w.outFeatures());
        return switch (w) {
            case CudaQuant4bit q -> linear4bit(ctx, x, q, bias);
            case CudaInt8 q -> Int8Kernels.linear(ctx, x, q, bias);
            default -> throw wrongBackend(w);
        };
    }

    /**
     * The 4-bit weights of ws when one grouped GEMV launch takes x [rows, in] times all of them (decode q/k/v or
     * gate/up): every weight a {@link CudaQuant4bit} the grouped v2 kernel applies to (same in_features and compute
     * dtype, at most 3, see {@link Nf4GemvKernels#groupApplies}), 1..16 rows, and the GEMV variant property
     * (qlora4j.nf4.gemv) naming a v2 kernel (v2 or v2reg: the ones with a grouped form). Else null: the caller runs
     * {@link #linear} per weight.
     */
    static List<CudaQuant4bit> fusedGroup(Tensor x, List<? extends QuantizedWeight> ws) {
        if (!Boolean.parseBoolean(System.getProperty(GROUP_PROPERTY, "false"))) return null;
        if (x.rank() != 2 || groupDecode(Quant4bitKernels.gemvVariant()) == null) return null;
        List<CudaQuant4bit> q = new ArrayList<>(ws.size());
        for (QuantizedWeight w : ws) {
            if (!(w instanceof CudaQuant4bit c)) return null;
            q.add(c);
        }
        return Nf4GemvKernels.groupApplies(q, x.dim(0)) ? q : null;
    }

    /**
     * The 4-bit weights of ws when the grouped persistent code decode takes x [rows, in] times all of them in one launch
     * (Nf4GemvKernels#groupTilesApplies: tiled BF16 weights of one quantization, 1..16 rows of BF16 x, the default GEMV
     * variant), else null. Same values as {@link #linear} per weight.
     */
    static List<CudaQuant4bit> tilesGroup(CudaContext ctx, Tensor x, List<? extends QuantizedWeight> ws, List<Tensor> biases) {
        if (x.rank() != 2 || x.dtype() != DType.BF16 || biases.size() != ws.size()
                || Quant4bitKernels.gemvVariant() != Quant4bitKernels.GemvVariant.V2CODE) {
            return null;
        }
        List<CudaQuant4bit> q = new ArrayList<>(ws.size());
        for (QuantizedWeight w : ws) {
            if (!(w instanceof CudaQuant4bit c) || c.inFeatures() != x.dim(1)) return null;
            q.add(c);
        }
        for (Tensor b : biases) if (b != null && (b.rank() != 1)) return null;
        return Nf4TileGemvKernels.groupTilesApplies(ctx, q, x.dim(0)) ? q : null;
    }

    /** ys[s] [n, out_s] in x's dtype for a group {@link #tilesGroup} accepted, in one launch (bit for bit per weight). */
    static Tensor[] linear4bitTilesGroup(CudaContext ctx, Tensor x, List<CudaQuant4bit> ws, List<Tensor> biases) {
        for (int s = 0; s < ws.size(); s++) checkLinearArgs(x, ws.get(s), biases.get(s));
        Tensor[] ys = new Tensor[ws.size()];
        try {
            for (int s = 0; s < ws.size(); s++) ys[s] = ctx.empty(x.dtype(), x.dim(0), ws.get(s).outFeatures());
            Nf4TileGemvKernels.gemvGroupTiles(ctx, ws, x, x.dim(0), biases, Arrays.asList(ys));
        } catch (RuntimeException e) {
            closeAll(ys);
            throw e;
        }
        return ys;
    }

    /**
     * -Dqlora4j.nf4.groupGemv=true: q/k/v and gate/up in one grouped launch each at decode. Off by default: with
     * programmatic dependent launches the separate launches measured faster (Llama-7B NF4 decode on the H200, same
     * device call: 240.4 / 241.6 tokens/s per weight vs 229.9 grouped; bench/RESULTS.md, session 4).
     */
    public static final String GROUP_PROPERTY = "qlora4j.nf4.groupGemv";

    /** The v2 decode of a grouped launch under a GEMV variant, or null when the variant has no grouped form. */
    static Nf4GemvKernels.Decode groupDecode(Quant4bitKernels.GemvVariant v) {
        return switch (v) {
            case V2, V2TABLE -> Nf4GemvKernels.Decode.TABLE;  // the grouped kernel has no pair-table form
            case V2REG -> Nf4GemvKernels.Decode.REGISTERS;
            case V2CODE -> Nf4GemvKernels.Decode.CODE;
            default -> null;
        };
    }

    /**
     * ys[s] [n, out_s] in x's dtype = x [n, in] ws[s]^T + biases[s], for a group {@link #fusedGroup} accepted, in one
     * kernel launch: bit-identical to {@link #linear} per weight. biases: one per weight, null entries for none.
     */
    static Tensor[] linear4bitGroup(CudaContext ctx, Tensor x, List<CudaQuant4bit> ws, List<Tensor> biases) {
        for (int s = 0; s < ws.size(); s++) checkLinearArgs(x, ws.get(s), biases.get(s));
        Nf4GemvKernels.Decode decode = groupDecode(Quant4bitKernels.gemvVariant());
        if (decode == null) throw new IllegalStateException("qlora4j.nf4.gemv names no kernel with a grouped form");
        int n = x.dim(0);
        DType compute = ws.get(0).computeDType();
        Tensor[] ys = new Tensor[ws.size()];
        Tensor xc = null;
        try {
            for (int s = 0; s < ws.size(); s++) ys[s] = ctx.empty(x.dtype(), n, ws.get(s).outFeatures());
            xc = x.dtype() == compute ? x : converted(ctx, x, compute);
            Nf4GemvKernels.gemvGroup(ctx, ws, xc, n, biases, Arrays.asList(ys), decode);
        } catch (RuntimeException e) {
            closeAll(ys);
            throw e;
        } finally {
            if (xc != null && xc != x) xc.close();
        }
        return ys;
    }

    /**
     * silu(x gate^T) * (x up^T) [n, out] in x's dtype by one joint decode GEMV launch (Nf4GemvKernels#swiGlu), where it
     * applies: the default GEMV variant (v2code), 1..16 rows of x in the compute dtype, and two tiled 4-bit weights of
     * one shape and quantization ({@link Nf4GemvKernels#swiGluApplies}). The values of {@link #linear} twice and
     * silu_mul bit for bit. Else null (nothing run).
     */
    public static Tensor swiGlu(CudaContext ctx, Tensor x, QuantizedWeight gate, QuantizedWeight up) {
        if (!(gate instanceof CudaQuant4bit g) || !(up instanceof CudaQuant4bit u) || x.rank() != 2
                || Quant4bitKernels.gemvVariant() != Quant4bitKernels.GemvVariant.V2CODE
                || !Nf4TileGemvKernels.swiGluApplies(g, u, x.dim(0)) || x.dtype() != g.computeDType() || x.dim(1) != g.inFeatures()) {
            return null;
        }
        Tensor y = ctx.empty(x.dtype(), x.dim(0), g.outFeatures());
        try {
            Nf4TileGemvKernels.swiGlu(ctx, g, u, x, x.dim(0), y);
            return y;
        } catch (RuntimeException e) {
            y.close();
            throw e;
        }
    }

    /** The dequantized weight [out, in] in dtype (F32, BF16 or F16), bit-exact with the CPU. */
    public static Tensor dequantize(CudaContext ctx, QuantizedWeight w, DType dtype) {
        Quant4bitKernels.dtypeCode(dtype, "dequantize dtype");
        return switch (w) {
            case CudaQuant4bit q -> {
                Tensor y = ctx.empty(dtype, q.outFeatures(), q.inFeatures());
                Quant4bitKernels.dequantize(ctx, q, y, DType.F32);
                yield y;
            }
            case CudaInt8 q -> Int8Kernels.dequantize(ctx, q, dtype);
            default -> throw wrongBackend(w);
        };
    }

    static Tensor linear4bit(CudaContext ctx, Tensor x, CudaQuant4bit w, Tensor bias) {
        int n = x.dim(0);
        DType compute = w.computeDType();
        Tensor y = ctx.empty(x.dtype(), n, w.outFeatures());
        if (n <= Quant4bitKernels.GEMV_MAX_ROWS) {
            if (Quant4bitKernels.mmaGemvApplies(w)) {
                Tensor xc = x.dtype() == compute ? x : converted(ctx, x, compute);
                try {
                    Quant4bitKernels.gemv(ctx, w, xc, n, bias, y, Quant4bitKernels.gemvVariant());
                } finally {
                    if (xc != x) xc.close();
                }
            } else {
                Quant4bitKernels.gemvSimt(ctx, w, x, n, bias, y);
            }
            return y;
        }
        // prefill: weight dequantized to the compute dtype (through the state's dtype), one cuBLAS GEMM
        DType mid = stateRounding(w);
        PrefillPlan plan = prefillPlan(x.dtype(), compute, bias != null);
        Tensor xc = x.dtype() == compute ? x : converted(ctx, x, compute);
        Tensor gemmOut = plan.gemmOutput() == y.dtype() ? y : ctx.empty(plan.gemmOutput(), n, w.outFeatures());
        Tensor wc = ctx.empty(compute, w.outFeatures(), w.inFeatures());
        boolean done = false;
        try {
            Quant4bitKernels.dequantize(ctx, w, wc, mid);
            ctx.cublas().gemmRowMajor(false, true, n, w.outFeatures(), w.inFeatures(), 1f, CudaContext.ptr(xc),
                    CudaContext.ptr(wc), cublasType(compute), 0f, CudaContext.ptr(gemmOut), cublasType(plan.gemmOutput()));
            if (plan.biasEpilogue()) {
                // in place when gemmOut is y (F32): each element is read before it is written, by the same thread
                Quant4bitKernels.biasEpilogue(ctx, gemmOut, bias, compute, y, n, w.outFeatures());
            } else if (gemmOut != y) {
                Quant4bitKernels.convert(ctx, gemmOut, y);
            }
            done = true;
        } finally {
            if (xc != x) xc.close();
            if (gemmOut != y) gemmOut.close();
            if (!done || !ctx.dequantCache().offer(w, wc, w.inFeatures(), mid)) wc.close();   // kept for the backward?
        }
        return y;
    }

    /**
     * The dtype a weight's values pass through before the compute dtype in a prefill matmul (Nf4Matmul rounds the weight
     * to the state's dtype first): the state's dtype, or F32 (no extra rounding) when it is F32 or the compute dtype.
     */
    static DType stateRounding(CudaQuant4bit w) {
        return w.stateDType() == DType.F32 || w.stateDType() == w.computeDType() ? DType.F32 : w.stateDType();
    }

    /**
     * How the prefill path forms y: the GEMM's output dtype, and whether a bias epilogue (not a conversion) makes y.
     * With a bias the GEMM writes float32 and the epilogue rounds (sum + bias) once to the compute dtype, as
     * Nf4Matmul does. (The bias as the beta = 1 C operand of a 16-bit GEMM failed the GPU test with 16-bit compute and
     * a bias: a sum rounded before the bias add is wrong by many ulps where the bias cancels it; the epilogue does not
     * depend on how cuBLAS orders its epilogue.) Without a bias the GEMM writes the compute
     * dtype (its one rounding), converted to x's dtype when that differs.
     */
    record PrefillPlan(DType gemmOutput, boolean biasEpilogue) {}

    static PrefillPlan prefillPlan(DType xDType, DType compute, boolean bias) {
        Quant4bitKernels.dtypeCode(xDType, "x");
        Quant4bitKernels.dtypeCode(compute, "compute dtype");
        return bias ? new PrefillPlan(DType.F32, true) : new PrefillPlan(compute, false);
    }

    // ---- helpers ----

    private static Tensor converted(CudaContext ctx, Tensor x, DType dtype) {
        Tensor t = ctx.empty(dtype, x.shape());
        Quant4bitKernels.convert(ctx, x, t);
        return t;
    }

    static Cublas.DataType cublasType(DType d) {
        return switch (d) {
            case F32 -> Cublas.DataType.F32;
            case BF16 -> Cublas.DataType.BF16;
            case F16 -> Cublas.DataType.F16;
            default -> throw new IllegalArgumentException("no cuBLAS type for " + d);
        };
    }

    /** The 16 factors the dequantize kernel multiplies absmax by (QuantType.dequantValue). */
    static float[] dequantTable(QuantType type) {
        float[] t = new float[16];
        for (int q = 0; q < 16; q++) t[q] = type.dequantValue(q);
        return t;
    }

    static void checkBlocksize(int blocksize) {
        if (blocksize < 32 || blocksize > 4096 || Integer.bitCount(blocksize) != 1) {
            throw new IllegalArgumentException("blocksize must be a power of two in 32..4096 (bitsandbytes' kernels), got " + blocksize);
        }
    }

    /** Shape and dtype checks of linear(), with messages that say what to pass instead. */
    static void checkLinearArgs(Tensor x, QuantizedWeight w, Tensor bias) {
        if (x.rank() != 2) {
            throw new IllegalArgumentException("quantized linear takes x as [rows, in_features], got shape " + Arrays.toString(x.shape())
                    + "; reshape it to 2-D first");
        }
        if (x.dim(1) != w.inFeatures()) {
            throw new IllegalArgumentException("x has " + x.dim(1) + " features but the weight " + w + " expects " + w.inFeatures());
        }
        Quant4bitKernels.dtypeCode(x.dtype(), "x");
        if (bias != null) {
            if (bias.rank() != 1 || bias.dim(0) != w.outFeatures()) {
                throw new IllegalArgumentException("bias must be [" + w.outFeatures() + "], got shape " + Arrays.toString(bias.shape()));
            }
            Quant4bitKernels.dtypeCode(bias.dtype(), "bias");
        }
    }

    private static IllegalArgumentException wrongBackend(QuantizedWeight w) {
        return new IllegalArgumentException("quantized weight " + w.getClass().getSimpleName()
                + " was prepared for another backend; prepare it with the CUDA backend's prepare4bit/prepare8bit");
    }

    private static void closeAll(Tensor... ts) {
        for (Tensor t : ts) if (t != null) t.close();
    }
}
