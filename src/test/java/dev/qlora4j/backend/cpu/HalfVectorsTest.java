package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.tensor.Half;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import org.junit.jupiter.api.Test;

/**
 * The widenings must be exact: every one of the 65536 bit patterns, bit for bit (NaN: any NaN),
 * through vector bodies and scalar tails, from heap and unaligned native memory.
 */
class HalfVectorsTest {
    private static final int LANES = HalfVectors.F.length();
    private static final int ALL = 65536;

    private static MemorySegment allPatterns() {
        short[] all = new short[ALL];
        for (int i = 0; i < all.length; i++) all[i] = (short) i;
        return MemorySegment.ofArray(all);
    }

    private static void assertSameFloat(float expected, float got, String what) {
        if (Float.isNaN(expected)) {
            // NaN payloads may differ (Java quiets signalling NaNs); NaN must stay NaN.
            assertTrue(Float.isNaN(got), what + " must be NaN");
        } else {
            assertEquals(Float.floatToRawIntBits(expected), Float.floatToRawIntBits(got),
                    what + ": expected " + expected + " got " + got);
        }
    }

    @Test
    void float16WideningMatchesFloatFloat16ToFloatForEveryPattern() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment heap = allPatterns();
            // Offset 2 bytes in native memory, like a tensor inside a mapped file.
            MemorySegment mapped = arena.allocate(2L * ALL + 2, 8).asSlice(2);
            MemorySegment.copy(heap, 0, mapped, 0, 2L * ALL);
            for (MemorySegment seg : new MemorySegment[] {heap, mapped}) {
                float[] out = new float[ALL];
                // A scratch shorter than the count: the widening runs in several slices.
                HalfVectors.f16ToFloats(seg, 0, out, 0, ALL - 3, new short[1000]);
                HalfVectors.f16ToFloats(seg, 2L * (ALL - 3), out, ALL - 3, 3, new short[1]);
                for (int i = 0; i < ALL; i++) {
                    assertSameFloat(Half.f16ToFloat((short) i), out[i], "f16 0x" + Integer.toHexString(i));
                }
            }
        }
    }

    @Test
    void bfloat16WideningMatchesScalarForEveryPattern() {
        MemorySegment seg = allPatterns();
        float[] out = new float[ALL];
        HalfVectors.bf16ToFloats(seg, 0, out, 0, ALL - 5);
        HalfVectors.bf16ToFloats(seg, 2L * (ALL - 5), out, ALL - 5, 5);
        float[] lanes = new float[LANES];
        for (int i = 0; i < ALL; i++) {
            assertSameFloat(Half.bf16ToFloat((short) i), out[i], "bf16 0x" + Integer.toHexString(i));
            if (i % LANES == 0) {
                HalfVectors.bf16(seg, 2L * i).intoArray(lanes, 0);
                for (int l = 0; l < LANES; l++) {
                    assertSameFloat(Half.bf16ToFloat((short) (i + l)), lanes[l], "bf16 lane 0x" + Integer.toHexString(i + l));
                }
            }
        }
    }

    @Test
    void float32LoadsAreLittleEndianAtUnalignedOffsets() {
        byte[] bytes = new byte[1 + 4 * LANES];
        MemorySegment seg = MemorySegment.ofArray(bytes);
        for (int l = 0; l < LANES; l++) {
            seg.set(ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 1 + 4L * l, 1.5f + l);
        }
        FloatVector v = HalfVectors.f32(seg, 1);
        for (int l = 0; l < LANES; l++) assertEquals(1.5f + l, v.lane(l));
    }
}
