package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

/**
 * Loads of float32, bfloat16 and float16 values from little-endian memory (heap or native
 * segments, e.g. a memory-mapped safetensors file) as float32 vectors of the preferred species,
 * so weights are widened slice by slice inside the hot loops and never copied whole to f32.
 */
final class HalfVectors {
    private HalfVectors() {}

    static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    static final VectorSpecies<Integer> I = VectorSpecies.of(int.class, F.vectorShape());
    /** Shorts with as many lanes as F: half its bit size. */
    static final VectorSpecies<Short> S = VectorSpecies.of(short.class, VectorShape.forBitSize(F.vectorBitSize() / 2));
    static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;

    // float16 -> float32: normals rebias the exponent by 127-15, Inf/NaN get the maximum
    // exponent, subnormals are renormalised with one float subtraction.
    private static final int F16_EXP_IN_F32 = 0x7C00 << 13;
    private static final int REBIAS = (127 - 15) << 23;
    private static final float SUBNORMAL_MAGIC = Float.intBitsToFloat((127 - 15 + 1) << 23);

    /** F.length() float32 values starting at byte offset off. */
    static FloatVector f32(MemorySegment seg, long off) {
        return FloatVector.fromMemorySegment(F, seg, off, LE);
    }

    /** F.length() bfloat16 values starting at byte offset off, widened exactly to float32. */
    static FloatVector bf16(MemorySegment seg, long off) {
        IntVector wide = (IntVector) ShortVector.fromMemorySegment(S, seg, off, LE)
                .convertShape(VectorOperators.S2I, I, 0);
        // bf16 is the top half of a float32: the sign extension from S2I is shifted out.
        return wide.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
    }

    /**
     * count bfloat16 values from byte offset off widened into dst[dstOff...]: exact.
     */
    static void bf16ToFloats(MemorySegment seg, long off, float[] dst, int dstOff, int count) {
        int lanes = F.length();
        int bound = count - count % lanes;
        int i = 0;
        for (; i < bound; i += lanes) bf16(seg, off + 2L * i).intoArray(dst, dstOff + i);
        for (; i < count; i++) dst[dstOff + i] = Half.bf16ToFloat(seg.get(Tensor.I16_LE, off + 2L * i));
    }

    /**
     * count float16 values from byte offset off widened into dst[dstOff...], by bit manipulation
     * (the exponent-rebias trick): exact for every non-NaN input; NaNs stay NaN (the payload is
     * not quieted, unlike Float.float16ToFloat). The whole conversion sits in this one loop body
     * on purpose: as a separate vector-returning method C2 declines to inline it (too large) and
     * every vector would be boxed.
     */
    static void f16ToFloats(MemorySegment seg, long off, float[] dst, int dstOff, int count) {
        int lanes = F.length();
        int bound = count - count % lanes;
        int i = 0;
        for (; i < bound; i += lanes) {
            IntVector h = (IntVector) ShortVector.fromMemorySegment(S, seg, off + 2L * i, LE)
                    .convertShape(VectorOperators.S2I, I, 0);
            IntVector sign = h.and(0x8000).lanewise(VectorOperators.LSHL, 16);
            IntVector bits = h.and(0x7FFF).lanewise(VectorOperators.LSHL, 13);
            IntVector exp = bits.and(F16_EXP_IN_F32);
            bits = bits.add(REBIAS);
            // Inf and NaN: rebias once more, to the all-ones float32 exponent.
            bits = bits.add(REBIAS, exp.eq(F16_EXP_IN_F32));
            // Zero and subnormals: renormalise with one float subtraction.
            IntVector renormalised = bits.add(1 << 23).reinterpretAsFloats().sub(SUBNORMAL_MAGIC).reinterpretAsInts();
            bits = bits.blend(renormalised, exp.eq(0));
            bits.or(sign).reinterpretAsFloats().intoArray(dst, dstOff + i);
        }
        for (; i < count; i++) dst[dstOff + i] = Half.f16ToFloat(seg.get(Tensor.I16_LE, off + 2L * i));
    }
}
