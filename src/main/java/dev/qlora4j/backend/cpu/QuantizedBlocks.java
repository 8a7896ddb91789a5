package dev.qlora4j.backend.cpu;

import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Quantized weights [out, in] dequantized one block of rows and columns at a time, as
 * {@link MatmulAccumulate.BlockSource}s for grad_x = gradOut dequant(W): the f32 weight never
 * exists whole.
 *
 * <p>4-bit: element e of the flattened weight is dequantValue(code(e)) * absmax[e / blocksize]
 * in float32 (code(e) is the high nibble of byte e/2 for even e, the low nibble for odd e), the
 * float ops of Quant4bit.dequantize; the value is then rounded to the state's dtype and to the
 * compute dtype, as the forward (Nf4Matmul) rounds the weight it multiplies by. With a float32
 * state and compute dtype the block equals Quant4bit.dequantize(state, F32) exactly.
 *
 * <p>int8: (CB * SCB) * float32(1/127), Int8Weight.dequantize's two roundings.
 */
final class QuantizedBlocks {
    private QuantizedBlocks() {}

    static MatmulAccumulate.BlockSource of4bit(QuantState4bit s, DType computeDType) {
        int cols = s.shape()[1];
        MemorySegment packed = s.weight().segment();
        float[] absmax = s.dequantizedAbsmax();
        QuantType type = s.quantType();
        float[] table = new float[16];
        for (int q = 0; q < 16; q++) table[q] = type.dequantValue(q);
        int bs = s.blocksize();
        DType stateDType = s.dtype();
        boolean round = stateDType != DType.F32 || computeDType != DType.F32;
        return (p0, p1, c0, c1, dst, ld) -> {
            for (int p = p0; p < p1; p++) {
                int o = (p - p0) * ld - c0;
                int e = p * cols + c0; // numel < 2^31 (QuantState4bit checks)
                int end = p * cols + c1;
                int c = c0;
                while (e < end) {
                    int block = e / bs;
                    int blockEnd = Math.min(end, (block + 1) * bs);
                    float amax = absmax[block];
                    for (; e < blockEnd; e++, c++) {
                        int bits = packed.get(ValueLayout.JAVA_BYTE, e >> 1);
                        int code = (e & 1) == 0 ? (bits >> 4) & 15 : bits & 15;
                        float v = table[code] * amax;
                        dst[o + c] = round ? roundTo(computeDType, roundTo(stateDType, v)) : v;
                    }
                }
            }
        };
    }

    private static float roundTo(DType d, float v) {
        return switch (d) {
            case BF16 -> Half.roundBf16(v);
            case F16 -> Half.roundF16(v);
            default -> v;
        };
    }

    static MatmulAccumulate.BlockSource of8bit(Int8Weight w) {
        byte[] cb = w.cb();
        float[] scb = w.scb();
        int cols = w.inFeatures();
        return (p0, p1, c0, c1, dst, ld) -> {
            for (int p = p0; p < p1; p++) {
                float s = scb[p];
                int src = p * cols;
                int o = (p - p0) * ld - c0;
                for (int c = c0; c < c1; c++) dst[o + c] = (cb[src + c] * s) * Int8Weight.INV_127;
            }
        };
    }
}
