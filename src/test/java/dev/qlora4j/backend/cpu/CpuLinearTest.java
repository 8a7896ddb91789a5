package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.Arena;
import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import java.util.stream.Stream;

/**
 * linear against a float64 reference. Tolerance: |y - ref| <= 1e-5 * sum_i |x_i w_i| + 1e-30.
 * Reason: float32 FMA accumulation of a length-k dot product split over vector lanes has a
 * worst-case error of about (k / lanes + log2 lanes) * 2^-24 times sum |x_i w_i|, below 1e-5
 * for the k used here; 16-bit weights decode exactly, so they get the same bound.
 */
class CpuLinearTest {
    private static CpuBackend cpu;

    @BeforeAll
    static void start() { cpu = new CpuBackend(2); }

    @AfterAll
    static void stop() { cpu.close(); }

    static Stream<Arguments> cases() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16}) {
            for (int n : new int[] {1, 3, 17}) {
                for (boolean bias : new boolean[] {false, true}) {
                    b.add(Arguments.of(dt, n, 131, 37, bias));
                }
            }
            b.add(Arguments.of(dt, 4, 1, 5, false));     // k shorter than a vector
            b.add(Arguments.of(dt, 8, 1029, 33, true));  // k over two K slices, odd m
        }
        return b.build();
    }

    @ParameterizedTest(name = "{0} n={1} k={2} m={3} bias={4}")
    @MethodSource("cases")
    void matchesFloat64Reference(DType dtype, int n, int k, int m, boolean withBias) {
        Random r = TestData.random("linear " + dtype + " n=" + n + " k=" + k + " m=" + m);
        Tensor x = Tensor.of(TestData.gaussian(r, n * k, 1.0), n, k);
        Tensor w = TestData.tensor(TestData.gaussian(r, m * k, 0.5), dtype, m, k);
        Tensor bias = withBias ? Tensor.of(TestData.gaussian(r, m, 1.0), m) : null;
        check(x, w, bias, cpu.linear(x, w, bias), "linear " + dtype);
    }

    @Test
    void readsWeightsInPlaceFromUnalignedNativeMemory() {
        Random r = TestData.random("linear native");
        try (Arena arena = Arena.ofConfined()) {
            for (DType dtype : new DType[] {DType.F32, DType.BF16, DType.F16}) {
                for (int n : new int[] {1, 5}) {
                    int k = 77, m = 21;
                    Tensor x = Tensor.of(TestData.gaussian(r, n * k, 1.0), n, k);
                    Tensor heap = TestData.tensor(TestData.gaussian(r, m * k, 0.5), dtype, m, k);
                    Tensor mapped = TestData.nativeView(heap, arena);
                    Tensor bias = TestData.tensor(TestData.gaussian(r, m, 1.0), dtype, m);
                    check(x, heap, bias, cpu.linear(x, mapped, TestData.nativeView(bias, arena)), "native " + dtype);
                }
            }
        }
    }

    @Test
    void resultDoesNotDependOnTheThreadCount() {
        Random r = TestData.random("linear threads");
        int n = 17, k = 515, m = 150;
        Tensor x = Tensor.of(TestData.gaussian(r, n * k, 1.0), n, k);
        Tensor w = TestData.tensor(TestData.gaussian(r, m * k, 0.5), DType.BF16, m, k);
        Tensor x1 = Tensor.of(TestData.gaussian(r, k, 1.0), 1, k);
        try (CpuBackend single = new CpuBackend(1); CpuBackend four = new CpuBackend(4)) {
            assertArrayEquals(single.linear(x, w, null).toFloatArray(), four.linear(x, w, null).toFloatArray());
            assertArrayEquals(single.linear(x1, w, null).toFloatArray(), four.linear(x1, w, null).toFloatArray());
        }
    }

    private static void check(Tensor x, Tensor w, Tensor bias, Tensor y, String what) {
        int n = x.dim(0), k = x.dim(1), m = w.dim(0);
        assertArrayEquals(new int[] {n, m}, y.shape(), what + " shape");
        double[] xs = TestData.doubles(x), ws = TestData.doubles(w);
        double[] bs = bias == null ? null : TestData.doubles(bias);
        double[] ref = new double[n * m];
        double[] tol = new double[n * m];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < m; j++) {
                double s = 0, mag = 0;
                for (int c = 0; c < k; c++) {
                    double p = xs[i * k + c] * ws[j * k + c];
                    s += p;
                    mag += Math.abs(p);
                }
                if (bs != null) {
                    s += bs[j];
                    mag += Math.abs(bs[j]);
                }
                ref[i * m + j] = s;
                tol[i * m + j] = 1e-5 * mag + 1e-30;
            }
        }
        TestData.assertWithin(ref, y.toFloatArray(), tol, what);
    }
}
