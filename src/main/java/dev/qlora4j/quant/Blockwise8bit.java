package dev.qlora4j.quant;

/**
 * bitsandbytes' blockwise 8-bit quantization against a 256-entry code ({@code quantize_blockwise} /
 * {@code dequantize_blockwise} as the CUDA kernels compute them). Double quantization uses it with the
 * signed dynamic map and blocksize 256 to compress the 4-bit absmax values.
 */
public final class Blockwise8bit {
    private Blockwise8bit() {}

    /** Codes and per-block absmax. codes[n] (one byte per value), absmax[ceil(n / blocksize)]. */
    public record Result(byte[] codes, float[] absmax, int blocksize) {}

    /**
     * Per block: absmax = max |a| (float32; a partial last block also counts its zero padding, as the kernel
     * loads zeros there), scale = 1/absmax in float32, code = {@link DynamicMap#quantize} of a * scale.
     */
    public static Result quantize(float[] a, float[] code, int blocksize) {
        checkBlocksize(blocksize);
        if (code.length != 256) throw new IllegalArgumentException("8-bit code must have 256 values, got " + code.length);
        int n = a.length;
        int blocks = (n + blocksize - 1) / blocksize;
        byte[] q = new byte[n];
        float[] absmax = new float[blocks];
        Parallel.forRange(blocks, Math.max(1, 16384 / blocksize), (b0, b1) -> {
            for (int b = b0; b < b1; b++) {
                int from = b * blocksize;
                int to = Math.min(n, from + blocksize);
                float amax = blockAbsmax(a, from, to, to - from < blocksize);
                absmax[b] = amax;
                float inv = 1.0f / amax;
                for (int i = from; i < to; i++) q[i] = (byte) DynamicMap.quantize(code, a[i] * inv);
            }
        });
        return new Result(q, absmax, blocksize);
    }

    /** out[i] = code[q[i]] * absmax[i / blocksize] in float32 (the kernel's General8bit dequantize). */
    public static float[] dequantize(byte[] q, float[] absmax, float[] code, int blocksize) {
        checkBlocksize(blocksize);
        float[] out = new float[q.length];
        for (int i = 0; i < q.length; i++) out[i] = code[q[i] & 0xFF] * absmax[i / blocksize];
        return out;
    }

    /**
     * max |x[from..to)| with CUDA fmaxf semantics (a NaN operand is ignored), starting from -FLT_MAX as the
     * kernel does; {@code includesPadding} adds the zero the kernel loads past the end of a partial block.
     */
    static float blockAbsmax(float[] x, int from, int to, boolean includesPadding) {
        float m = -Float.MAX_VALUE;
        for (int i = from; i < to; i++) m = fmaxf(m, Math.abs(x[i]));
        return includesPadding ? fmaxf(m, 0f) : m;
    }

    /** C fmaxf: the other operand when one is NaN. */
    static float fmaxf(float a, float b) {
        if (a != a) return b;
        if (b != b) return a;
        return Math.max(a, b);
    }

    static void checkBlocksize(int blocksize) {
        if (blocksize < 32 || blocksize > 4096 || Integer.bitCount(blocksize) != 1) {
            throw new IllegalArgumentException("blocksize must be a power of two in 32..4096 (bitsandbytes' kernels), got " + blocksize);
        }
    }
}
