package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertSame;

import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * SwiGLU over gate and up held as one buffer [n, 2 m] (the joined gate/up GEMM's output, silu_mul_halves_*): the
 * same bits as the two-tensor kernels on the halves, and the CPU backend's values, forward and backward, with 16-byte
 * packs (m a multiple of the pack) and without (odd m).
 */
@Tag("gpu")
class CudaSiluMulHalvesGpuTest {
    private static double tol(DType act) { return act == DType.F32 ? 1e-5 : 1e-2; }

    /** [n, 2 m]: row i is gate's row i, then up's. */
    private static float[] joined(float[] gate, float[] up, int n, int m) {
        float[] gu = new float[2 * n * m];
        for (int i = 0; i < n; i++) {
            System.arraycopy(gate, i * m, gu, 2 * i * m, m);
            System.arraycopy(up, i * m, gu, 2 * i * m + m, m);
        }
        return gu;
    }

    /** Half h (0: gate's columns, 1: up's) of [n, 2 m]. */
    private static float[] half(float[] gu, int n, int m, int h) {
        float[] out = new float[n * m];
        for (int i = 0; i < n; i++) System.arraycopy(gu, 2 * i * m + h * m, out, i * m, m);
        return out;
    }

    private static Tensor dev(CudaBackend b, float[] v, DType dtype, int... shape) {
        return b.upload(Tensor.fromFloats(v, dtype, shape));
    }

    @ParameterizedTest
    @CsvSource({"F32, 37, 203", "BF16, 37, 203", "F32, 64, 256", "BF16, 61, 11008"})
    void halvesMatchTheTwoTensorKernelsAndTheCpu(DType act, int n, int m) {
        Random r = random("silu mul halves " + act + " " + n + "x" + m);
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            // values as the GPU holds them (rounded to act), for the CPU reference
            float[] gate = Tensor.fromFloats(gaussian(r, n * m, 2), act, n, m).toFloatArray();
            float[] up = Tensor.fromFloats(gaussian(r, n * m, 1), act, n, m).toFloatArray();
            float[] g = Tensor.fromFloats(gaussian(r, n * m, 1), act, n, m).toFloatArray();
            float[] gu = joined(gate, up, n, m);
            Tensor gateDev = dev(b, gate, act, n, m), upDev = dev(b, up, act, n, m), guDev = dev(b, gu, act, n, 2 * m);

            poison(b, act, n, m);
            float[] fwd = values(b, b.siluMulHalves(guDev));
            assertBitEqual(fwd, values(b, b.siluMul(gateDev, upDev)), "siluMulHalves vs siluMul on the halves " + act);
            assertClose(fwd, cpu.siluMul(Tensor.of(gate, n, m), Tensor.of(up, n, m)).toFloatArray(), tol(act),
                    "siluMulHalves vs the CPU " + act);

            Tensor[] two = b.siluMulBackward(gateDev, upDev, dev(b, g, act, n, m));
            Tensor[] cpuTwo = cpu.siluMulBackward(Tensor.of(gate, n, m), Tensor.of(up, n, m), Tensor.of(g, n, m));
            Tensor back = b.siluMulHalvesBackwardInPlace(guDev, dev(b, g, act, n, m));
            assertSame(guDev, back, "the gradients are written over the joined buffer");
            float[] grads = values(b, back);
            assertBitEqual(half(grads, n, m, 0), values(b, two[0]), "grad_gate vs siluMulBackward " + act);
            assertBitEqual(half(grads, n, m, 1), values(b, two[1]), "grad_up vs siluMulBackward " + act);
            assertClose(half(grads, n, m, 0), cpuTwo[0].toFloatArray(), tol(act), "grad_gate vs the CPU " + act);
            assertClose(half(grads, n, m, 1), cpuTwo[1].toFloatArray(), tol(act), "grad_up vs the CPU " + act);
            back.close();
        }
    }
}
