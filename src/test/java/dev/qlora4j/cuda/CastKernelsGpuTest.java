package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.cuda.GpuSupport.Dev;
import dev.qlora4j.tensor.Half;
import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * native/cast.cu against the CPU conversions of dev.qlora4j.tensor.Half: bit-exact for every
 * non-NaN input (both round to nearest even in IEEE arithmetic); NaN in gives NaN out (payload
 * bits may differ: the hardware writes the canonical NaN). Fresh random inputs each run; outputs
 * poisoned with NaN before each launch; n is odd and far larger than the capped grid, so the
 * grid-stride loop and the tail are exercised.
 */
@Tag("gpu")
class CastKernelsGpuTest {

    private static final int N = 1_000_003;

    private static boolean isBf16NaN(short b) { return (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0; }

    private static boolean isF16NaN(short b) { return (b & 0x7C00) == 0x7C00 && (b & 0x3FF) != 0; }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void f32ToBf16MatchesHalfBitForBit(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        long fn = PtxModules.forCurrentContext(d).function("cast", "cast_f32_to_bf16");
        float[] x = GpuSupport.interestingFloats(new Random(), N);
        short[] y;
        try (Dev dx = GpuSupport.upload(d, x); Dev dy = Dev.alloc(d, 2L * N)) {
            d.memsetD8(dy.ptr(), (byte) 0xFF, 2L * N);       // 0xFFFF: a NaN in bf16
            GpuSupport.launch1d(d, fn, N, 0, KernelArgs.of().ptr(dx.ptr()).ptr(dy.ptr()).i64(N));
            d.contextSynchronize();
            y = GpuSupport.downloadShorts(d, dy.ptr(), N);
        }
        for (int i = 0; i < N; i++) {
            if (Float.isNaN(x[i])) {
                if (!isBf16NaN(y[i])) fail("element " + i + ": NaN in, bits 0x" + Integer.toHexString(y[i] & 0xFFFF) + " out");
            } else if (y[i] != Half.floatToBf16(x[i])) {
                fail(String.format("element %d: %s (0x%08x) -> gpu 0x%04x, cpu 0x%04x", i, x[i],
                        Float.floatToRawIntBits(x[i]), y[i] & 0xFFFF, Half.floatToBf16(x[i]) & 0xFFFF));
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void f32ToF16MatchesHalfBitForBit(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        long fn = PtxModules.forCurrentContext(d).function("cast", "cast_f32_to_f16");
        float[] x = GpuSupport.interestingFloats(new Random(), N);
        short[] y;
        try (Dev dx = GpuSupport.upload(d, x); Dev dy = Dev.alloc(d, 2L * N)) {
            d.memsetD8(dy.ptr(), (byte) 0xFF, 2L * N);       // 0xFFFF: a NaN in f16
            GpuSupport.launch1d(d, fn, N, 0, KernelArgs.of().ptr(dx.ptr()).ptr(dy.ptr()).i64(N));
            d.contextSynchronize();
            y = GpuSupport.downloadShorts(d, dy.ptr(), N);
        }
        for (int i = 0; i < N; i++) {
            if (Float.isNaN(x[i])) {
                if (!isF16NaN(y[i])) fail("element " + i + ": NaN in, bits 0x" + Integer.toHexString(y[i] & 0xFFFF) + " out");
            } else if (y[i] != Half.floatToF16(x[i])) {
                fail(String.format("element %d: %s (0x%08x) -> gpu 0x%04x, cpu 0x%04x", i, x[i],
                        Float.floatToRawIntBits(x[i]), y[i] & 0xFFFF, Half.floatToF16(x[i]) & 0xFFFF));
            }
        }
    }

    /** Every 16-bit pattern once (65536), then random patterns, shuffled; widening must be exact. */
    private static short[] all16BitPatternsAndMore(Random rnd, int n) {
        short[] x = new short[n];
        for (int i = 0; i < n; i++) x[i] = i < 65536 ? (short) i : (short) rnd.nextInt();
        for (int i = n - 1; i > 0; i--) {
            int j = rnd.nextInt(i + 1);
            short t = x[i];
            x[i] = x[j];
            x[j] = t;
        }
        return x;
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void bf16AndF16ToF32AreExact(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        PtxModules m = PtxModules.forCurrentContext(d);
        long fill = m.function("cast", "fill_f32");
        Random rnd = new Random();
        short[] x = all16BitPatternsAndMore(rnd, N);
        for (String kernel : new String[] {"cast_bf16_to_f32", "cast_f16_to_f32"}) {
            boolean bf16 = kernel.startsWith("cast_bf16");
            float[] y;
            try (Dev dx = GpuSupport.upload(d, x); Dev dy = Dev.alloc(d, 4L * N)) {
                GpuSupport.launch1d(d, fill, N, 0, KernelArgs.of().ptr(dy.ptr()).f32(Float.NaN).i64(N));
                GpuSupport.launch1d(d, m.function("cast", kernel), N, 0, KernelArgs.of().ptr(dx.ptr()).ptr(dy.ptr()).i64(N));
                d.contextSynchronize();
                y = GpuSupport.downloadFloats(d, dy.ptr(), N);
            }
            for (int i = 0; i < N; i++) {
                float expected = bf16 ? Half.bf16ToFloat(x[i]) : Half.f16ToFloat(x[i]);
                if (Float.isNaN(expected)) {
                    if (!Float.isNaN(y[i])) fail(kernel + " element " + i + ": NaN pattern 0x" + Integer.toHexString(x[i] & 0xFFFF) + " gave " + y[i]);
                } else if (Float.floatToRawIntBits(expected) != Float.floatToRawIntBits(y[i])) {
                    fail(String.format("%s element %d: 0x%04x -> gpu %s, cpu %s", kernel, i, x[i] & 0xFFFF, y[i], expected));
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void fillWritesEveryElement(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        long fill = PtxModules.forCurrentContext(d).function("cast", "fill_f32");
        float v = (float) new Random().nextGaussian();
        try (Dev dy = Dev.alloc(d, 4L * N)) {
            d.memsetD32(dy.ptr(), 0x7FC00000, N);             // NaN first
            GpuSupport.launch1d(d, fill, N, 0, KernelArgs.of().ptr(dy.ptr()).f32(v).i64(N));
            d.contextSynchronize();
            float[] y = GpuSupport.downloadFloats(d, dy.ptr(), N);
            for (int i = 0; i < N; i++) {
                if (Float.floatToRawIntBits(y[i]) != Float.floatToRawIntBits(v)) fail("element " + i + " = " + y[i] + ", expected " + v);
            }
            // n = 0 writes nothing and is not an error.
            GpuSupport.launch1d(d, fill, 0, 0, KernelArgs.of().ptr(dy.ptr()).f32(1f).i64(0));
            d.contextSynchronize();
            assertEquals(Float.floatToRawIntBits(v), Float.floatToRawIntBits(GpuSupport.downloadFloats(d, dy.ptr(), 1)[0]));
        }
    }
}
