package dev.qlora4j.quant;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.*;

class Quant4bitTest {
    static byte[] bytes(Tensor t) {
        return t.segment().asSlice(0, t.byteSize()).toArray(ValueLayout.JAVA_BYTE);
    }

    static int[] ub(int... v) { return v; }

    static void assertBytes(int[] expected, byte[] actual, int from) {
        for (int i = 0; i < expected.length; i++) {
            assertEquals(expected[i], actual[from + i] & 0xFF, "byte " + (from + i));
        }
    }

    @Test
    void nf4HandWorkedBlockWithMidpointsNegativeZeroAndZeroBlock() {
        // block 0: absmax 2 (so 1/absmax = 0.5 exactly and x * 0.5 lands exactly where we put it)
        float mid7 = QuantType.NF4_MIDPOINTS[7];
        float mid0 = QuantType.NF4_MIDPOINTS[0];
        float[] w = new float[70];
        float[] head = {2.0f, -2.0f, 0.0f, 2 * mid7, 2 * Math.nextUp(mid7), 2 * mid0, -0.0f, 1.0f};
        System.arraycopy(head, 0, w, 0, head.length);
        // block 1 (elements 64..69, a partial block) is all zeros
        QuantState4bit s = Quant4bit.quantize(w, new int[] {7, 10}, QuantType.NF4, 64, false);

        assertArrayEquals(new int[] {35, 1}, s.weight().shape(), "packed U8 [(n+1)/2, 1]");
        assertEquals(DType.U8, s.weight().dtype());
        byte[] p = bytes(s.weight());
        // codes: 2->15, -2->0, 0->7, mid7 (exact midpoint)->7, just above->8, mid0->0, -0->7, 1 (0.5 scaled)->12
        assertBytes(ub(0xF0, 0x77, 0x80, 0x7C), p, 0);
        for (int i = 4; i < 32; i++) assertEquals(0x77, p[i] & 0xFF, "zeros in a non-zero block are code 7");
        // all-zero block: absmax 0, 1/0 = inf, 0 * inf = NaN -> code 0 (the kernel's result)
        assertBytes(ub(0x00, 0x00, 0x00), p, 32);
        assertArrayEquals(new float[] {2.0f, 0.0f}, s.absmax().toFloatArray());

        float[] d = Quant4bit.dequantizeToF32(s);
        assertEquals(2.0f, d[0]);
        assertEquals(-2.0f, d[1]);
        assertEquals(0.0f, d[2]);
        assertEquals(2 * 0.07958029955625534f, d[4], 0f);
        assertEquals(2 * 0.44070982933044434f, d[7], 0f);
        for (int i = 64; i < 70; i++) {
            assertEquals(Float.floatToRawIntBits(-0.0f), Float.floatToRawIntBits(d[i]), "zero block dequantizes to -1.0 * 0 = -0");
        }
    }

    @Test
    void oddCountPadsWithTheCodeOfZero() {
        float[] w = new float[67];
        w[0] = 1f;
        w[64] = 0.5f;
        w[65] = -0.25f;
        w[66] = 0.125f;
        QuantState4bit s = Quant4bit.quantize(w, new int[] {67}, QuantType.NF4, 64, false);
        byte[] p = bytes(s.weight());
        assertEquals(34, p.length);
        // block 1: absmax 0.5 -> scaled 1, -0.5, 0.25 -> codes 15, 2, 10; pad nibble = code(0 * 2) = 7
        assertBytes(ub(0xF2, 0xA7), p, 32);
        assertArrayEquals(new float[] {1f, 0.5f}, s.absmax().toFloatArray());
        float[] d = Quant4bit.dequantizeToF32(s);
        assertEquals(67, d.length);
        assertEquals(0.5f, d[64]);
        assertEquals(-0.5250730514526367f * 0.5f, d[65], 0f);
        assertEquals(0.24611230194568634f * 0.5f, d[66], 0f);
    }

    @Test
    void fp4HandWorkedPivotsSignAndZeroBlock() {
        float p3 = QuantType.FP4_PIVOTS[3];
        float[] w = new float[128];
        float[] head = {2.0f, -2.0f, 2 * p3, 2 * Math.nextUp(p3), -2 * p3, -0.0f, 1.0f, 0.25f};
        System.arraycopy(head, 0, w, 0, head.length);
        QuantState4bit s = Quant4bit.quantize(w, new int[] {2, 64}, QuantType.FP4, 64, false);
        byte[] p = bytes(s.weight());
        // 1 -> 0b011, -1 -> 0b1011, on pivot 3 -> 0b111 (3/12), above -> 0b100 (4/12), negative -> 0b1111,
        // -0 -> 0 (no sign bit), 0.5 -> 0b101, 0.125 -> 0b110 (2/12)
        assertBytes(ub(0x3B, 0x74, 0xF0, 0x56), p, 0);
        for (int i = 4; i < 32; i++) assertEquals(0x00, p[i] & 0xFF);
        for (int i = 32; i < 64; i++) assertEquals(0x00, p[i] & 0xFF, "all-zero block: NaN -> code 0");
        float[] d = Quant4bit.dequantizeToF32(s);
        assertEquals(2.0f, d[0]);
        assertEquals(-2.0f, d[1]);
        assertEquals(0.25f * 2, d[2], 0f);
        assertEquals(Float.floatToRawIntBits(0.0f), Float.floatToRawIntBits(d[5]));
        assertEquals(Float.floatToRawIntBits(0.0f), Float.floatToRawIntBits(d[100]), "FP4 code 0 is +0");
    }

    @Test
    void sixteenBitInputsAndOutputs() {
        float[] w = QuantBench.gaussian(3 * 96, 0.02, 11);
        Tensor bf = Tensor.fromFloats(w, DType.BF16, 3, 96);
        QuantState4bit s = Quant4bit.quantize(bf, QuantType.NF4, 32, false);
        assertEquals(DType.BF16, s.dtype());
        QuantState4bit sf = Quant4bit.quantize(bf.toFloatArray(), new int[] {3, 96}, QuantType.NF4, 32, false);
        assertArrayEquals(bytes(sf.weight()), bytes(s.weight()), "same values, same codes whatever the input dtype");
        assertArrayEquals(sf.absmax().toFloatArray(), s.absmax().toFloatArray());

        float[] f32 = Quant4bit.dequantizeToF32(s);
        Tensor b16 = Quant4bit.dequantize(s, DType.BF16);
        Tensor h16 = Quant4bit.dequantize(s, DType.F16);
        Tensor t32 = Quant4bit.dequantize(s, DType.F32);
        assertArrayEquals(new int[] {3, 96}, b16.shape());
        for (int i = 0; i < f32.length; i++) {
            assertEquals(Half.roundBf16(f32[i]), b16.getFloat(i), 0f);
            assertEquals(Half.roundF16(f32[i]), h16.getFloat(i), 0f);
            assertEquals(f32[i], t32.getFloat(i), 0f);
        }
    }

    @Test
    void dequantizeMatchesTableTimesAbsmaxEverywhere() {
        float[] w = QuantBench.gaussian(10_001, 1.0, 5);
        for (QuantType t : QuantType.values()) {
            QuantState4bit s = Quant4bit.quantize(w, new int[] {10_001}, t, 128, false);
            byte[] p = bytes(s.weight());
            float[] a = s.absmax().toFloatArray();
            float[] d = Quant4bit.dequantizeToF32(s);
            for (int i = 0; i < w.length; i++) {
                int code = (i % 2 == 0) ? (p[i / 2] & 0xFF) >>> 4 : p[i / 2] & 0x0F;
                assertEquals(t.quantize(w[i] * (1.0f / a[i / 128])), code, "code of element " + i);
                assertEquals(t.dequantValue(code) * a[i / 128], d[i], 0f);
            }
        }
    }

    @Test
    void blocksizeMustBeAPowerOfTwoIn32To4096() {
        float[] w = new float[64];
        assertThrows(IllegalArgumentException.class, () -> Quant4bit.quantize(w, new int[] {64}, QuantType.NF4, 48, false));
        assertThrows(IllegalArgumentException.class, () -> Quant4bit.quantize(w, new int[] {64}, QuantType.NF4, 16, false));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Quant4bit.quantize(w, new int[] {64}, QuantType.NF4, 8192, false));
        assertTrue(e.getMessage().contains("32..4096"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> Quant4bit.quantize(w, new int[] {65}, QuantType.NF4, 64, false));
        assertThrows(IllegalArgumentException.class,
                () -> Quant4bit.quantize(Tensor.zeros(DType.I32, 64), QuantType.NF4, 64, false));
    }

    @Test
    void doubleQuantHandWorked() {
        // three blocks with absmax 1, 2, 3: offset = 2, centered = -1, 0, 1, nested absmax = 1
        float[] w = new float[192];
        w[5] = -1f;
        w[64] = 2f;
        w[130] = 3f;
        QuantState4bit s = Quant4bit.quantize(w, new int[] {3, 64}, QuantType.NF4, 64, true);
        assertTrue(s.nested());
        assertEquals(2f, s.offset());
        assertEquals(DType.U8, s.absmax().dtype());
        assertArrayEquals(new byte[] {0, 127, (byte) 255}, bytes(s.absmax()));
        assertArrayEquals(new float[] {1f}, s.state2().absmax().toFloatArray());
        assertEquals(256, s.state2().blocksize());
        assertArrayEquals(DynamicMap.signed(), s.state2().code());
        // absmax_i = code[q] * nested_absmax + offset in float32: code[0] = -0.99296874f
        float[] eff = s.dequantizedAbsmax();
        assertEquals(-0.99296874f + 2f, eff[0], 0f);
        assertEquals(2f, eff[1]);
        assertEquals(3f, eff[2]);
        float[] d = Quant4bit.dequantizeToF32(s);
        assertEquals(-eff[0], d[5], 0f, "-1 is the block max: code 0 (-1.0) times the decoded absmax");
    }

    @Test
    void doubleQuantMatchesAnIndependentRecomputation() {
        int blocks = 600; // three nested blocks, the last one partial
        float[] w = QuantBench.gaussian(blocks * 64, 0.02, 3);
        QuantState4bit plain = Quant4bit.quantize(w, new int[] {blocks, 64}, QuantType.NF4, 64, false);
        QuantState4bit dq = Quant4bit.quantize(w, new int[] {blocks, 64}, QuantType.NF4, 64, true);
        assertArrayEquals(bytes(plain.weight()), bytes(dq.weight()), "double quantization does not change the 4-bit codes");
        float[] absmax = plain.absmax().toFloatArray();
        double sum = 0;
        for (float a : absmax) sum += a;
        assertEquals((float) (sum / blocks), dq.offset(), 0f);
        float[] code = DynamicMap.signed();
        float[] nested = dq.state2().absmax().toFloatArray();
        assertEquals(3, nested.length);
        byte[] q = bytes(dq.absmax());
        float[] eff = dq.dequantizedAbsmax();
        for (int nb = 0; nb < 3; nb++) {
            float m = 0;
            for (int i = nb * 256; i < Math.min(blocks, nb * 256 + 256); i++) m = Math.max(m, Math.abs(absmax[i] - dq.offset()));
            assertEquals(m, nested[nb], 0f, "nested absmax " + nb);
        }
        double worst = 0;
        for (int i = 0; i < blocks; i++) {
            float scaled = (absmax[i] - dq.offset()) * (1.0f / nested[i / 256]);
            assertEquals(DynamicMap.quantize(code, scaled), q[i] & 0xFF, "nested code " + i);
            assertEquals(code[q[i] & 0xFF] * nested[i / 256] + dq.offset(), eff[i], 0f);
            worst = Math.max(worst, Math.abs(eff[i] - absmax[i]) / absmax[i]);
        }
        assertTrue(worst < 0.02, "8-bit dynamic absmax keeps relative error small: " + worst);
    }

    @Test
    void vectorDecoderEqualsTheScalarTable() {
        byte[] packed = new byte[64];
        new java.util.Random(3).nextBytes(packed);
        packed[0] = 0; // NF4 code 0 times a zero absmax gives -0, FP4 code 8 gives -0
        packed[1] = (byte) 0x88;
        java.lang.foreign.MemorySegment seg = java.lang.foreign.MemorySegment.ofArray(packed);
        for (QuantType t : QuantType.values()) {
            for (float amax : new float[] {0f, 0.37f, 3.5e-3f}) {
                float[] out = new float[128 + 5];
                VectorDecode.decode(t, seg, 32, 128, amax, out, 5);
                for (int e = 32; e < 128; e++) {
                    int code = (e % 2 == 0) ? (packed[e / 2] & 0xFF) >>> 4 : packed[e / 2] & 0x0F;
                    float want = t.dequantValue(code) * amax;
                    assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(out[5 + e - 32]), t + " element " + e);
                }
            }
        }
    }
}
