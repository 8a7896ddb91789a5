package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.HostStorage;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

/**
 * Blockwise 4-bit quantization (NF4 / FP4) with bitsandbytes' numerics, the CPU reference the CUDA kernels
 * are tested against.
 *
 * <p>Quantize, per block of {@code blocksize} values of the flattened weight: absmax = max|x| in float32;
 * scale = 1/absmax in float32; code = the type's decision tree on x * scale; two codes per byte, element
 * 2i in the high nibble. An all-zero block has absmax 0, scale +inf and x * scale = 0 * inf = NaN, which
 * the trees send to code 0 (NF4 -1.0, FP4 +0), exactly as the kernel does; the value still dequantizes to
 * (-)0. The pad nibble of an odd count is the code of 0 * scale (NF4 7, FP4 0; 0 in an all-zero block).
 *
 * <p>bitsandbytes builds its kernels with --use_fast_math, so 1/absmax there is an approximate reciprocal
 * (within 1 ulp) and denormals are flushed; we use the correctly rounded reciprocal. The two can disagree
 * only for a value within an ulp of a decision threshold; our own CUDA kernels use the IEEE reciprocal and
 * agree with this class exactly.
 *
 * <p>Dequantize: value = table[code] * absmax in float32, then rounded to the output dtype (nearest even).
 */
public final class Quant4bit {
    /** bitsandbytes' double quantization: blocks of 256 absmax values against the signed dynamic map. */
    public static final int NESTED_BLOCKSIZE = 256;

    private Quant4bit() {}

    /** Quantizes float32 values of the given shape (dtype recorded as float32). */
    public static QuantState4bit quantize(float[] w, int[] shape, QuantType type, int blocksize, boolean doubleQuant) {
        if (w.length != Tensor.numel(shape)) {
            throw new IllegalArgumentException(w.length + " values do not fill shape " + Arrays.toString(shape));
        }
        return quantize(w, shape.clone(), DType.F32, type, blocksize, doubleQuant);
    }

    /** Quantizes a host tensor of dtype F32, BF16 or F16 (its dtype is recorded as the state's dtype). */
    public static QuantState4bit quantize(Tensor w, QuantType type, int blocksize, boolean doubleQuant) {
        DType d = w.dtype();
        if (d != DType.F32 && d != DType.BF16 && d != DType.F16) {
            throw new IllegalArgumentException("4-bit quantization takes F32, BF16 or F16 weights, got " + d);
        }
        return quantize(w.toFloatArray(), w.shape(), d, type, blocksize, doubleQuant);
    }

    private static QuantState4bit quantize(float[] w, int[] shape, DType dtype, QuantType type, int blocksize, boolean doubleQuant) {
        Blockwise8bit.checkBlocksize(blocksize);
        int n = w.length;
        int blocks = (n + blocksize - 1) / blocksize;
        byte[] packed = new byte[(n + 1) / 2];
        float[] absmax = new float[blocks];
        Parallel.forRange(blocks, Math.max(1, 32768 / blocksize), (b0, b1) -> {
            for (int b = b0; b < b1; b++) quantizeBlock(w, n, b, blocksize, type, packed, absmax);
        });
        Tensor weight = bytesTensor(packed, packed.length, 1);
        if (!doubleQuant) {
            return new QuantState4bit(weight, Tensor.of(absmax, blocks), shape, type.quantMap(), dtype, blocksize, type, 0f, null);
        }
        // offset = absmax.mean(). torch reduces in float32 on the GPU in a launch-dependent tree order; we take
        // the correctly rounded mean (float64 sum, one rounding), which is within an ulp or two of torch's.
        // The offset is saved in the checkpoint, so loading bitsandbytes' files is exact either way; only a
        // freshly quantized nested code can differ, and only for a value on a code midpoint.
        double sum = 0;
        for (float a : absmax) sum += a;
        float offset = (float) (sum / blocks);
        float[] centered = new float[blocks];
        for (int i = 0; i < blocks; i++) centered[i] = absmax[i] - offset;
        Blockwise8bit.Result r = Blockwise8bit.quantize(centered, DynamicMap.signedShared(), NESTED_BLOCKSIZE);
        QuantState4bit.Nested state2 = new QuantState4bit.Nested(
                Tensor.of(r.absmax(), r.absmax().length), DynamicMap.signedShared(), NESTED_BLOCKSIZE, DType.F32);
        return new QuantState4bit(weight, bytesTensor(r.codes(), blocks), shape, type.quantMap(), dtype, blocksize,
                type, offset, state2);
    }

    private static void quantizeBlock(float[] w, int n, int b, int blocksize, QuantType type, byte[] packed, float[] absmax) {
        int from = b * blocksize;
        int to = Math.min(n, from + blocksize);
        float amax = Blockwise8bit.blockAbsmax(w, from, to, to - from < blocksize);
        absmax[b] = amax;
        float inv = 1.0f / amax;
        // from is even (blocksize is a power of two >= 32), so blocks own whole bytes
        for (int e = from; e < to; e += 2) {
            int hi = type.quantize(w[e] * inv);
            int lo = type.quantize((e + 1 < to ? w[e + 1] : 0f) * inv);
            packed[e >> 1] = (byte) ((hi << 4) | lo);
        }
    }

    static Tensor bytesTensor(byte[] bytes, int... shape) {
        return new Tensor(new HostStorage(MemorySegment.ofArray(bytes), null), DType.U8, true, shape);
    }

    // ---- dequantize ----

    /** Dequantizes to a host tensor of the state's shape in {@code out} dtype (F32, BF16 or F16). */
    public static Tensor dequantize(QuantState4bit s, DType out) {
        int n = Math.toIntExact(s.numel());
        int[] shape = s.shape();
        switch (out) {
            case F32 -> {
                float[] v = new float[n];
                dequantizeInto(s, v);
                return Tensor.of(v, shape);
            }
            case BF16, F16 -> {
                short[] bits = new short[n];
                boolean bf16 = out == DType.BF16;
                Parallel.forRange(s.blocks(), Math.max(1, 65536 / s.blocksize()), (b0, b1) -> {
                    float[] buf = new float[s.blocksize()];
                    for (int b = b0; b < b1; b++) {
                        int from = b * s.blocksize();
                        int to = (int) Math.min(n, (long) from + s.blocksize());
                        decode(s, from, to, buf, 0);
                        for (int i = from; i < to; i++) {
                            float v = buf[i - from];
                            bits[i] = bf16 ? Half.floatToBf16(v) : Half.floatToF16(v);
                        }
                    }
                });
                return new Tensor(new HostStorage(MemorySegment.ofArray(bits), null), out, true, shape);
            }
            default -> throw new IllegalArgumentException("dequantize to F32, BF16 or F16, not " + out);
        }
    }

    /** Dequantizes to float32 in the state's dtype-independent form (table[code] * absmax, no 16-bit rounding). */
    public static float[] dequantizeToF32(QuantState4bit s) {
        float[] v = new float[Math.toIntExact(s.numel())];
        dequantizeInto(s, v);
        return v;
    }

    /** Allocation-free dequantize into {@code out} (length >= numel); multithreaded over blocks. */
    public static void dequantizeInto(QuantState4bit s, float[] out) {
        int n = Math.toIntExact(s.numel());
        if (out.length < n) throw new IllegalArgumentException("output holds " + out.length + " values, need " + n);
        s.absmaxValues(); // compute the cache once before the workers start
        int bs = s.blocksize();
        Parallel.forRange(s.blocks(), Math.max(1, 65536 / bs), (b0, b1) -> {
            int from = b0 * bs;
            int to = (int) Math.min(n, (long) b1 * bs);
            decode(s, from, to, out, from);
        });
    }

    /**
     * Writes table[code] * absmax (float32) of the flattened elements [from, to) to dst[dstOff..]; from and
     * to may be anywhere (odd starts and block boundaries inside the range are handled).
     */
    static void decode(QuantState4bit s, int from, int to, float[] dst, int dstOff) {
        MemorySegment packed = s.packed();
        float[] absmax = s.absmaxValues();
        float[] table = s.quantType() == QuantType.NF4 ? NF4_TABLE : FP4_TABLE;
        float[] pairs = s.quantType() == QuantType.NF4 ? NF4_PAIRS : FP4_PAIRS;
        int bs = s.blocksize();
        int e = from;
        while (e < to) {
            int block = e / bs;
            int blockEnd = Math.min(to, (block + 1) * bs);
            float amax = absmax[block];
            int o = dstOff + (e - from);
            if ((e & 1) == 1) { // odd start: the low nibble of the byte shared with the previous element
                dst[o++] = table[packed.get(ValueLayout.JAVA_BYTE, e >> 1) & 0x0F] * amax;
                e++;
            }
            if (VectorDecode.ENABLED) {
                int vecEnd = e + ((blockEnd - e) & ~(VectorDecode.STEP - 1));
                VectorDecode.decode(s.quantType(), packed, e, vecEnd, amax, dst, o);
                o += vecEnd - e;
                e = vecEnd;
            }
            for (; e + 1 < blockEnd; e += 2) {
                int b = (packed.get(ValueLayout.JAVA_BYTE, e >> 1) & 0xFF) << 1;
                dst[o++] = pairs[b] * amax;
                dst[o++] = pairs[b + 1] * amax;
            }
            if (e < blockEnd) { // trailing element in the high nibble
                dst[o] = table[(packed.get(ValueLayout.JAVA_BYTE, e >> 1) & 0xFF) >>> 4] * amax;
                e++;
            }
        }
    }

    private static final float[] NF4_TABLE = QuantType.NF4.dequantTable();
    private static final float[] FP4_TABLE = QuantType.FP4.dequantTable();
    /** For each byte value b: (table[b >> 4], table[b & 15]), so one lookup decodes a byte's two values. */
    private static final float[] NF4_PAIRS = pairs(NF4_TABLE);
    private static final float[] FP4_PAIRS = pairs(FP4_TABLE);

    private static float[] pairs(float[] table) {
        float[] p = new float[512];
        for (int b = 0; b < 256; b++) {
            p[2 * b] = table[b >>> 4];
            p[2 * b + 1] = table[b & 15];
        }
        return p;
    }
}
