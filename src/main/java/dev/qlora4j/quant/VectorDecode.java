package dev.qlora4j.quant;

import jdk.incubator.vector.ByteVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;

/**
 * Vector API decoder of packed 4-bit codes: 8 bytes give 16 values. Each byte is duplicated into two int
 * lanes, shifted by 4 (even element, high nibble) or 0 (odd element, low nibble) and masked, so the codes
 * come out in element order; a two-vector table select maps codes 0..15 to the 16 dequantize factors,
 * which are then multiplied by the block's absmax. Produces exactly table[code] * absmax like the scalar
 * path. Enabled when the CPU has 256-bit vectors (otherwise the Vector API would run in slow Java code).
 */
final class VectorDecode {
    static final int STEP = 16;
    private static final VectorSpecies<Float> FS = FloatVector.SPECIES_256;
    private static final VectorSpecies<Integer> IS = IntVector.SPECIES_256;
    private static final VectorSpecies<Byte> BS = ByteVector.SPECIES_64;
    static final boolean ENABLED = FloatVector.SPECIES_PREFERRED.vectorBitSize() >= 256
            && !Boolean.getBoolean("qlora4j.quant.scalarDecode");

    private static final VectorShuffle<Integer> FIRST_FOUR = VectorShuffle.fromValues(IS, 0, 0, 1, 1, 2, 2, 3, 3);
    private static final VectorShuffle<Integer> LAST_FOUR = VectorShuffle.fromValues(IS, 4, 4, 5, 5, 6, 6, 7, 7);
    private static final IntVector SHIFTS = IntVector.fromArray(IS, new int[] {4, 0, 4, 0, 4, 0, 4, 0}, 0);
    private static final FloatVector NF4_LO = FloatVector.fromArray(FS, QuantType.NF4.dequantTable(), 0);
    private static final FloatVector NF4_HI = FloatVector.fromArray(FS, QuantType.NF4.dequantTable(), 8);
    private static final FloatVector FP4_LO = FloatVector.fromArray(FS, QuantType.FP4.dequantTable(), 0);
    private static final FloatVector FP4_HI = FloatVector.fromArray(FS, QuantType.FP4.dequantTable(), 8);

    private VectorDecode() {}

    /** Elements [from, to) with from even and (to - from) a multiple of 16, one absmax, into dst[o..]. */
    static void decode(QuantType type, MemorySegment packed, int from, int to, float amax, float[] dst, int o) {
        FloatVector lo = type == QuantType.NF4 ? NF4_LO : FP4_LO;
        FloatVector hi = type == QuantType.NF4 ? NF4_HI : FP4_HI;
        for (int e = from; e < to; e += STEP, o += STEP) {
            IntVector bytes = ((IntVector) ByteVector.fromMemorySegment(BS, packed, e >> 1, ByteOrder.LITTLE_ENDIAN)
                    .convertShape(VectorOperators.B2I, IS, 0)).and(0xFF);
            IntVector c0 = bytes.rearrange(FIRST_FOUR).lanewise(VectorOperators.LSHR, SHIFTS).and(15);
            IntVector c1 = bytes.rearrange(LAST_FOUR).lanewise(VectorOperators.LSHR, SHIFTS).and(15);
            ((FloatVector) c0.convert(VectorOperators.I2F, 0)).selectFrom(lo, hi).mul(amax).intoArray(dst, o);
            ((FloatVector) c1.convert(VectorOperators.I2F, 0)).selectFrom(lo, hi).mul(amax).intoArray(dst, o + 8);
        }
    }
}
