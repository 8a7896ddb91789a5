package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.host;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;

import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * ropeQkBackwardInPlace (native/fused.cu rope_qk_bwd) on fresh random gradients: bit for bit against the two
 * ropeBackwardInPlace calls it replaces (train_elementwise.cu rope_bwd: same arithmetic in the same order), and
 * against the CPU backend's two calls (1e-5 in F32 for FMA contraction, 8e-3 in BF16 for one rounding).
 */
@Tag("gpu")
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaRopeQkBackwardGpuTest {
    private final CpuBackend cpu = new CpuBackend(2);
    private CudaBackend f32;
    private CudaBackend bf16;

    @BeforeAll
    void open() {
        f32 = CudaCoreTestSupport.backend(DType.F32, false);
        bf16 = CudaBackend.create(0, DType.BF16, false);
    }

    @AfterAll
    void close() {
        if (bf16 != null) bf16.close();
        if (f32 != null) f32.close();
        cpu.close();
    }

    private static float[] held(float[] x, DType act) { return host(x, act, x.length).toFloatArray(); }

    @ParameterizedTest
    @CsvSource({"F32, 32, 8, 64, 1", "F32, 4, 2, 16, 37", "BF16, 32, 32, 128, 1", "BF16, 32, 8, 128, 2048", "BF16, 3, 1, 6, 5"})
    void ropeQkBackwardEqualsTwoRopeBackwards(DType act, int heads, int kvHeads, int headDim, int n) {
        CudaBackend g = act == DType.F32 ? f32 : bf16;
        Random r = CudaCoreTestSupport.random("ropeQkBackward " + act + heads + kvHeads + headDim + n);
        float[] q = held(gaussian(r, n * heads * headDim, 1), act), k = held(gaussian(r, n * kvHeads * headDim, 1), act);
        int[] pos = r.ints(n, 0, 5000).toArray();
        float[] inv = new float[headDim / 2];
        for (int i = 0; i < inv.length; i++) inv[i] = (float) Math.pow(10000, -2.0 * i / headDim);
        Tensor cq = Tensor.of(q.clone(), n, heads * headDim), ck = Tensor.of(k.clone(), n, kvHeads * headDim); // CPU: F32
        cpu.ropeQkBackwardInPlace(cq, ck, Tensor.ofInts(pos, n), Tensor.of(inv, inv.length), heads, kvHeads, headDim, 1.25f);
        try (Tensor p = g.upload(Tensor.ofInts(pos, n)); Tensor f = g.upload(Tensor.of(inv, inv.length));
             Tensor fq = g.upload(host(q, act, n, heads * headDim)); Tensor fk = g.upload(host(k, act, n, kvHeads * headDim));
             Tensor pq = g.upload(host(q, act, n, heads * headDim)); Tensor pk = g.upload(host(k, act, n, kvHeads * headDim))) {
            g.ropeQkBackwardInPlace(fq, fk, p, f, heads, kvHeads, headDim, 1.25f);
            g.ropeBackwardInPlace(pq, p, f, heads, headDim, 1.25f);
            g.ropeBackwardInPlace(pk, p, f, kvHeads, headDim, 1.25f);
            String what = "ropeQkBackward " + act + " heads " + heads + "/" + kvHeads + " d " + headDim + " n " + n;
            assertBitEqual(values(g, fq), values(g, pq), what + " q vs ropeBackward");
            assertBitEqual(values(g, fk), values(g, pk), what + " k vs ropeBackward");
            double tol = act == DType.F32 ? 1e-5 : 8e-3;
            assertClose(values(g, fq), cq.toFloatArray(), tol, what + " q vs CPU");
            assertClose(values(g, fk), ck.toFloatArray(), tol, what + " k vs CPU");
        }
    }
}
