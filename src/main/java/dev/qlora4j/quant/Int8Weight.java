package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.HostStorage;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import java.util.function.Function;

/**
 * An LLM.int8 weight as bitsandbytes' Linear8bitLt stores it: CB int8 [out, in] and SCB float32 [out].
 *
 * <p>Quantization ({@code int8_vectorwise_quant(W.to(float16))}): each row is cast to fp16, SCB = max|row|
 * (the fp16 value as float32), CB = round-half-even(w16 * (127 / SCB)) with 127/SCB in float32. The CUDA
 * kernel computes the scale with {@code __fdividef} (approximate to 2 ulp); the correctly rounded division
 * used here is what bitsandbytes' torch backend does and what our kernels do. An all-zero row has SCB 0 and
 * CB 0 (0 * inf = NaN converts to 0, as {@code __float2int_rn} does).
 *
 * <p>Dequantization ({@code int8_vectorwise_dequant}): (CB * SCB) * float32(1/127), two float32 roundings.
 *
 * @param cb  [out * in] row-major int8 codes
 * @param scb [out] row absmax
 */
public record Int8Weight(byte[] cb, float[] scb, int outFeatures, int inFeatures) {
    /** float32(1/127): the constant bitsandbytes multiplies by (7.874015718698502e-3 in Python). */
    public static final float INV_127 = 1f / 127f;

    public Int8Weight {
        Objects.requireNonNull(cb, "cb");
        Objects.requireNonNull(scb, "scb");
        if (outFeatures < 0 || inFeatures < 0 || (long) outFeatures * inFeatures != cb.length) {
            throw new IllegalArgumentException("CB has " + cb.length + " values, not " + outFeatures + " x " + inFeatures);
        }
        if (scb.length != outFeatures) {
            throw new IllegalArgumentException("SCB has " + scb.length + " values, weight has " + outFeatures + " rows");
        }
    }

    /** Quantizes a host weight [out, in] of any float dtype (cast to fp16 first, as bitsandbytes does). */
    public static Int8Weight quantize(Tensor w) {
        if (w.rank() != 2) throw new IllegalArgumentException("int8 weight must be 2-D [out, in], got " + Arrays.toString(w.shape()));
        if (!w.dtype().isFloating()) throw new IllegalArgumentException("int8 quantization takes a float weight, got " + w.dtype());
        return quantize(w.toFloatArray(), w.dim(0), w.dim(1));
    }

    /** Quantizes float32 values [out, in] (cast to fp16 first). */
    public static Int8Weight quantize(float[] w, int outFeatures, int inFeatures) {
        if ((long) outFeatures * inFeatures != w.length) {
            throw new IllegalArgumentException(w.length + " values do not fill [" + outFeatures + ", " + inFeatures + "]");
        }
        byte[] cb = new byte[w.length];
        float[] scb = new float[outFeatures];
        Parallel.forRange(outFeatures, Math.max(1, 16384 / Math.max(1, inFeatures)), (r0, r1) -> {
            float[] row = new float[inFeatures];
            for (int r = r0; r < r1; r++) {
                int off = r * inFeatures;
                for (int j = 0; j < inFeatures; j++) row[j] = Half.roundF16(w[off + j]);
                scb[r] = quantizeRow(row, 0, inFeatures, 0f, cb, off);
            }
        });
        return new Int8Weight(cb, scb, outFeatures, inFeatures);
    }

    /**
     * Row-wise absmax int8 quantization of fp16-valued v[off..off+len) into dst[dstOff..]; returns the row's
     * absmax. With threshold > 0 (sparse decomposition) values with |v| >= threshold are left out of the
     * absmax and written as 0 (the kernel compares |v| with the threshold rounded to fp16).
     */
    static float quantizeRow(float[] v, int off, int len, float threshold, byte[] dst, int dstOff) {
        boolean sparse = threshold > 0f;
        float t16 = Half.roundF16(threshold);
        float amax = sparse ? -0f : 0f; // the kernel starts from -FLT_MIN, which is -0 in fp16
        for (int j = 0; j < len; j++) {
            float a = Math.abs(v[off + j]);
            if (!sparse || a < t16) amax = Blockwise8bit.fmaxf(amax, a);
        }
        float scale = 127f / amax;
        for (int j = 0; j < len; j++) {
            float x = v[off + j];
            dst[dstOff + j] = (sparse && Math.abs(x) >= threshold) ? 0 : (byte) (int) Math.rint(x * scale);
        }
        return amax;
    }

    /** (CB * SCB) * float32(1/127), float32 [out * in]. */
    public float[] dequantize() {
        float[] out = new float[cb.length];
        for (int r = 0; r < outFeatures; r++) {
            float s = scb[r];
            int off = r * inFeatures;
            for (int j = 0; j < inFeatures; j++) out[off + j] = dequant(cb[off + j], s);
        }
        return out;
    }

    static float dequant(byte q, float scb) {
        return (q * scb) * INV_127;
    }

    /** P.weight (I8 [out, in]), P.SCB (F32 [out]), P.weight_format (U8 scalar 0 = row-major). */
    public Map<String, Tensor> toSafetensors(String prefix) {
        Map<String, Tensor> out = new LinkedHashMap<>();
        out.put(QuantState4bit.key(prefix, "weight"),
                new Tensor(new HostStorage(MemorySegment.ofArray(cb.clone()), null), DType.I8, true, outFeatures, inFeatures));
        out.put(QuantState4bit.key(prefix, "SCB"), Tensor.of(scb.clone(), outFeatures));
        out.put(QuantState4bit.key(prefix, "weight_format"),
                new Tensor(new HostStorage(MemorySegment.ofArray(new byte[1]), null), DType.U8, true));
        return out;
    }

    public static Int8Weight fromSafetensors(String prefix, Map<String, Tensor> tensors) {
        return fromSafetensors(prefix, (Function<String, Tensor>) tensors::get);
    }

    /** Reads P.weight / P.SCB (and checks P.weight_format when present); lookup returns null when missing. */
    public static Int8Weight fromSafetensors(String prefix, Function<String, Tensor> lookup) {
        String wKey = QuantState4bit.key(prefix, "weight");
        String scbKey = QuantState4bit.key(prefix, "SCB");
        String fmtKey = QuantState4bit.key(prefix, "weight_format");
        Tensor w = lookup.apply(wKey);
        if (w == null) throw new IllegalArgumentException("missing '" + wKey + "' (int8 weight)");
        Tensor scb = lookup.apply(scbKey);
        if (scb == null) {
            throw new IllegalArgumentException("missing '" + scbKey + "': '" + wKey + "' has no int8 row scales; is this weight really LLM.int8?");
        }
        if (w.dtype() != DType.I8) throw new IllegalArgumentException("'" + wKey + "' is " + w.dtype() + " but an LLM.int8 weight is I8");
        if (w.rank() != 2) throw new IllegalArgumentException("'" + wKey + "' must be 2-D [out, in], got " + Arrays.toString(w.shape()));
        if (scb.dtype() != DType.F32) throw new IllegalArgumentException("'" + scbKey + "' is " + scb.dtype() + " but must be F32");
        if (scb.numel() != w.dim(0)) {
            throw new IllegalArgumentException("'" + scbKey + "' has " + scb.numel() + " values but '" + wKey + "' has " + w.dim(0) + " rows");
        }
        Tensor fmt = lookup.apply(fmtKey);
        if (fmt != null) {
            if (fmt.numel() != 1) throw new IllegalArgumentException("'" + fmtKey + "' must be a scalar, got shape " + Arrays.toString(fmt.shape()));
            int f = fmt.getInt(0);
            if (f != 0) {
                String name = switch (f) { case 1 -> "col32"; case 2 -> "col_turing"; case 3 -> "col_ampere"; default -> "unknown"; };
                throw new IllegalArgumentException("'" + fmtKey + "' = " + f + " (" + name + " tile layout); only row-major (0) is supported: "
                        + "re-save the model with a recent bitsandbytes, which stores row-major weights");
            }
        }
        byte[] cb = w.segment().asSlice(0, w.byteSize()).toArray(ValueLayout.JAVA_BYTE);
        return new Int8Weight(cb, scb.toFloatArray(), w.dim(0), w.dim(1));
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Int8Weight other && outFeatures == other.outFeatures && inFeatures == other.inFeatures
                && Arrays.equals(cb, other.cb) && Arrays.equals(scb, other.scb);
    }

    @Override
    public int hashCode() {
        return 31 * Arrays.hashCode(cb) + Arrays.hashCode(scb);
    }

    @Override
    public String toString() {
        return "Int8Weight[" + outFeatures + ", " + inFeatures + "]";
    }
}
