package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.foreign.MemorySegment;
import java.util.Random;

/** Shared setup of the gpu-tagged tests: skip without a GPU, make the primary context current, move arrays. */
final class GpuSupport {
    private GpuSupport() {}

    /** The binding ("ffm" / "jcuda") with device 0's primary context current on this thread; skips the test without a GPU. */
    static CudaDriver driver(String binding) {
        CudaDriver d = CudaDrivers.byName(binding);
        assumeTrue(CudaDrivers.isAvailable(d), () -> "no GPU through " + binding + ": " + CudaDrivers.unavailableReason(d));
        d.usePrimaryContext(0);
        return d;
    }

    /** A device allocation freed on close (tests use the raw driver so that the allocator is not under test here). */
    record Dev(CudaDriver d, long ptr, long bytes) implements AutoCloseable {
        static Dev alloc(CudaDriver d, long bytes) { return new Dev(d, d.memAlloc(bytes), bytes); }

        @Override public void close() { d.memFree(ptr); }
    }

    static Dev upload(CudaDriver d, float[] a) {
        Dev dev = Dev.alloc(d, 4L * a.length);
        d.copyToDevice(dev.ptr(), MemorySegment.ofArray(a));
        return dev;
    }

    static Dev upload(CudaDriver d, short[] a) {
        Dev dev = Dev.alloc(d, 2L * a.length);
        d.copyToDevice(dev.ptr(), MemorySegment.ofArray(a));
        return dev;
    }

    static float[] downloadFloats(CudaDriver d, long ptr, int n) {
        float[] out = new float[n];
        d.copyToHost(MemorySegment.ofArray(out), ptr);
        return out;
    }

    static short[] downloadShorts(CudaDriver d, long ptr, int n) {
        short[] out = new short[n];
        d.copyToHost(MemorySegment.ofArray(out), ptr);
        return out;
    }

    /** A 1-D launch of 256-thread blocks with the grid capped at 64 blocks, so large n exercises the grid-stride loop. */
    static void launch1d(CudaDriver d, long function, long n, long stream, KernelArgs args) {
        int grid = (int) Math.max(1, Math.min((n + 255) / 256, 64));
        d.launchKernel(function, Dim3.of(grid), Dim3.of(256), 0, stream, args);
    }

    /**
     * float32 test values that reach every rounding case: random bit patterns (all exponents,
     * subnormals, infinities, some NaNs), ordinary magnitudes, exact ties for bf16 (low 16 bits 0x8000)
     * and values around the float16 overflow and subnormal thresholds.
     */
    static float[] interestingFloats(Random rnd, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = switch (rnd.nextInt(6)) {
                case 0 -> Float.intBitsToFloat(rnd.nextInt());
                case 1 -> (float) (rnd.nextGaussian() * Math.pow(10, rnd.nextInt(-8, 9)));
                case 2 -> Float.intBitsToFloat((rnd.nextInt() & 0xFFFF0000) | 0x8000);
                case 3 -> (float) ((rnd.nextBoolean() ? 1 : -1) * (65504 + rnd.nextDouble() * 64));
                case 4 -> (float) ((rnd.nextBoolean() ? 1 : -1) * rnd.nextDouble() * 1.2e-4);
                default -> (float) rnd.nextGaussian();
            };
        }
        return x;
    }

    /** ||a - b|| / ||b|| over all elements. */
    static double relativeError(float[] a, double[] ref) {
        double num = 0, den = 0;
        for (int i = 0; i < ref.length; i++) {
            double diff = a[i] - ref[i];
            num += diff * diff;
            den += ref[i] * ref[i];
        }
        return Math.sqrt(num / den);
    }
}
