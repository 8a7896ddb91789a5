package dev.qlora4j.backend.cpu;

import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

/**
 * Loads of float32, bfloat16 and float16 values from little-endian memory (heap or native
 * segments, e.g. a memory-mapped safetensors file) as FloatVectors of the preferred species,
 * so weights are widened lane by lane inside the hot loops and never copied whole to f32.
 */
final class HalfVectors {
    private HalfVectors() {}

    static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    static final VectorSpecies<Integer> I = VectorSpecies.of(int.class, F.vectorShape());
    /** Shorts with as many lanes as F: half its bit size. */
    static final VectorSpecies<Short> S = VectorSpecies.of(short.class, VectorShape.forBitSize(F.vectorBitSize() / 2));
    static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;

    // float16 -> float32 by bit manipulation (the exponent-rebias trick), valid for every input:
    // normals rebias the exponent by 127-15, Inf/NaN get the maximum exponent, subnormals are
    // renormalised with one float subtraction.
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

    /** F.length() float16 values starting at byte offset off, widened exactly to float32. */
    static FloatVector f16(MemorySegment seg, long off) {
        IntVector h = (IntVector) ShortVector.fromMemorySegment(S, seg, off, LE)
                .convertShape(VectorOperators.S2I, I, 0);
        return f16BitsToFloat(h);
    }

    /**
     * h holds float16 bit patterns in the low 16 bits of each lane (upper bits ignored). Exact for
     * every non-NaN input; NaNs stay NaN (payload not quieted, unlike Float.float16ToFloat).
     */
    static FloatVector f16BitsToFloat(IntVector h) {
        IntVector sign = h.and(0x8000).lanewise(VectorOperators.LSHL, 16);
        IntVector bits = h.and(0x7FFF).lanewise(VectorOperators.LSHL, 13);
        IntVector exp = bits.and(F16_EXP_IN_F32);
        bits = bits.add(REBIAS);
        VectorMask<Integer> infOrNan = exp.eq(F16_EXP_IN_F32);
        bits = bits.add(REBIAS, infOrNan);
        VectorMask<Integer> zeroOrSubnormal = exp.eq(0);
        IntVector renormalised = bits.add(1 << 23).reinterpretAsFloats().sub(SUBNORMAL_MAGIC).reinterpretAsInts();
        bits = bits.blend(renormalised, zeroOrSubnormal);
        return bits.or(sign).reinterpretAsFloats();
    }
}
