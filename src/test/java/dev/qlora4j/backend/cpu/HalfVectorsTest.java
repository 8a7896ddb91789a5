package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.tensor.Half;
import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import org.junit.jupiter.api.Test;

/** The vector widenings must be exact: every one of the 65536 bit patterns, bit for bit (NaN: any NaN). */
class HalfVectorsTest {
    private static final int LANES = HalfVectors.F.length();

    private static MemorySegment allPatterns() {
        short[] all = new short[65536];
        for (int i = 0; i < all.length; i++) all[i] = (short) i;
        return MemorySegment.ofArray(all);
    }

    @Test
    void float16WideningMatchesFloatFloat16ToFloatForEveryPattern() {
        MemorySegment seg = allPatterns();
        float[] lanes = new float[LANES];
        for (int i = 0; i < 65536; i += LANES) {
            HalfVectors.f16(seg, 2L * i).intoArray(lanes, 0);
            for (int l = 0; l < LANES; l++) {
                float expected = Half.f16ToFloat((short) (i + l));
                if (Float.isNaN(expected)) {
                    // NaN payloads may differ (Java quiets signalling NaNs); NaN must stay NaN.
                    assertTrue(Float.isNaN(lanes[l]), "f16 bits 0x" + Integer.toHexString(i + l) + " must be NaN");
                    continue;
                }
                assertEquals(Float.floatToRawIntBits(expected), Float.floatToRawIntBits(lanes[l]),
                        "f16 bits 0x" + Integer.toHexString(i + l) + ": expected " + expected + " got " + lanes[l]);
            }
        }
    }

    @Test
    void bfloat16WideningMatchesScalarForEveryPattern() {
        MemorySegment seg = allPatterns();
        float[] lanes = new float[LANES];
        for (int i = 0; i < 65536; i += LANES) {
            HalfVectors.bf16(seg, 2L * i).intoArray(lanes, 0);
            for (int l = 0; l < LANES; l++) {
                float expected = Half.bf16ToFloat((short) (i + l));
                assertEquals(Float.floatToRawIntBits(expected), Float.floatToRawIntBits(lanes[l]),
                        "bf16 bits 0x" + Integer.toHexString(i + l));
            }
        }
    }

    @Test
    void loadsAreLittleEndianAtUnalignedOffsets() {
        // Bytes of 1.5f (0x3FC00000) little-endian, starting at byte 1.
        byte[] bytes = new byte[1 + 4 * LANES];
        MemorySegment seg = MemorySegment.ofArray(bytes);
        for (int l = 0; l < LANES; l++) {
            seg.set(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN),
                    1 + 4L * l, 1.5f + l);
        }
        FloatVector v = HalfVectors.f32(seg, 1);
        for (int l = 0; l < LANES; l++) assertEquals(1.5f + l, v.lane(l));
    }
}
