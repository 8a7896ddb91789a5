package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.host;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
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
 * The fused decoder ops of native/fused.cu (addInPlaceRmsNorm, ropeQkInPlace, ropeQkBackwardInPlace) on fresh random inputs, outputs
 * poisoned before launch: against the CPU backend (the reference; tolerances as CudaOpsCoreGpuTest states them:
 * 1e-6 / 1e-5 in F32 for reduction order and FMA contraction, 8e-3 in BF16 for one rounding of each output) and
 * bit for bit against the unfused CUDA kernels they replace (same arithmetic in the same order, by construction).
 */
@Tag("gpu")
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaFusedOpsGpuTest {
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

    private CudaBackend gpu(DType act) { return act == DType.F32 ? f32 : bf16; }

    private static float[] held(float[] x, DType act) { return host(x, act, x.length).toFloatArray(); }

    @ParameterizedTest
    // 4096 / 8192 (16-bit) and 4096 (f32): rows in registers; 8200 (16-bit) and 4100 (f32): one pack per row more than
    // the registers hold (the read-back path); 203: not a multiple of the 16-byte pack
    @CsvSource({"F32, F32, 72, 37", "F32, BF16, 200, 5", "F32, F16, 4096, 1", "BF16, BF16, 4096, 1", "BF16, BF16, 72, 37",
            "BF16, F32, 203, 9", "BF16, BF16, 8192, 2", "BF16, F16, 8200, 3", "F32, F32, 4100, 2",
            // many rows: the narrower blocks (RmsNormKernels.rowThreads), the fused and the plain kernel alike
            "BF16, BF16, 4096, 300", "BF16, F32, 2048, 256"})
    void addRmsNormEqualsAddThenNorm(DType act, DType wType, int hidden, int n) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("addRmsNorm " + act + wType + hidden);
        float[] a = held(gaussian(r, n * hidden, 2), act), y = held(gaussian(r, n * hidden, 2), act);
        Tensor w = host(gaussian(r, hidden, 1), wType, hidden);
        // The CPU backend computes in F32: on the values the GPU holds, its sum rounded to act is the GPU's sum.
        Tensor cpuResid = Tensor.of(a.clone(), n, hidden);
        Tensor cpuNormed = cpu.addInPlaceRmsNorm(cpuResid, Tensor.of(y, n, hidden), w, 1e-5f);
        try (Tensor wd = g.upload(w); Tensor yd = g.upload(host(y, act, n, hidden));
             Tensor fused = g.upload(host(a, act, n, hidden)); Tensor plain = g.upload(host(a, act, n, hidden))) {
            poison(g, act, n, hidden);
            try (Tensor normed = g.addInPlaceRmsNorm(fused, yd, wd, 1e-5f)) {
                g.addInPlace(plain, yd);
                try (Tensor plainNormed = g.rmsNorm(plain, wd, 1e-5f)) {
                    String what = "addInPlaceRmsNorm " + act + " w " + wType + " h=" + hidden + " n=" + n;
                    assertBitEqual(values(g, fused), values(g, plain), what + " (sum vs addInPlace)");
                    assertBitEqual(values(g, normed), values(g, plainNormed), what + " (norm vs rmsNorm)");
                    assertBitEqual(values(g, fused), held(cpuResid.toFloatArray(), act), what + " (sum vs CPU)");
                    assertClose(values(g, normed), cpuNormed.toFloatArray(), act == DType.F32 ? 1e-6 : 8e-3, what + " (vs CPU)");
                }
            }
        }
    }

    // rows x head_dim / 2 >= 65536 (the last three here and in the backward's list) take the 16-byte kernel
    // (fused.cu rope_qk_vec_impl); 72 heads are more than its grid covers in one pass
    @ParameterizedTest
    @CsvSource({"F32, 32, 8, 64, 1", "F32, 4, 2, 16, 37", "BF16, 32, 32, 128, 1", "BF16, 32, 8, 128, 19", "BF16, 3, 1, 6, 5",
                "BF16, 32, 8, 128, 300", "BF16, 32, 32, 128, 2048", "BF16, 64, 8, 128, 1100", "F32, 8, 2, 64, 2100"})
    void ropeQkEqualsTwoRopes(DType act, int heads, int kvHeads, int headDim, int n) {
        checkRopeQk(act, heads, kvHeads, headDim, n, false);
    }

    /** ropeQkBackwardInPlace (rope_qk_bwd) against two ropeBackwardInPlace calls (train_elementwise.cu rope_bwd). */
    @ParameterizedTest
    @CsvSource({"F32, 32, 8, 64, 1", "F32, 4, 2, 16, 37", "BF16, 32, 32, 128, 1", "BF16, 32, 8, 128, 2048", "BF16, 3, 1, 6, 5",
                "BF16, 32, 8, 128, 300", "BF16, 64, 8, 128, 1100", "F32, 8, 2, 64, 2100"})
    void ropeQkBackwardEqualsTwoRopeBackwards(DType act, int heads, int kvHeads, int headDim, int n) {
        checkRopeQk(act, heads, kvHeads, headDim, n, true);
    }

    /** The fused q/k rotation (or its backward) bit for bit against two single rotations, and against the CPU's. */
    private void checkRopeQk(DType act, int heads, int kvHeads, int headDim, int n, boolean backward) {
        CudaBackend g = gpu(act);
        String op = backward ? "ropeQkBackward" : "ropeQk";
        Random r = CudaCoreTestSupport.random(op + " " + act + heads + kvHeads + headDim + n);
        float[] q = held(gaussian(r, n * heads * headDim, 1), act), k = held(gaussian(r, n * kvHeads * headDim, 1), act);
        int[] pos = r.ints(n, 0, 5000).toArray();
        float[] inv = new float[headDim / 2];
        for (int i = 0; i < inv.length; i++) inv[i] = (float) Math.pow(10000, -2.0 * i / headDim);
        Tensor cq = Tensor.of(q.clone(), n, heads * headDim), ck = Tensor.of(k.clone(), n, kvHeads * headDim); // CPU: F32
        Tensor cpuPos = Tensor.ofInts(pos, n), cpuInv = Tensor.of(inv, inv.length);
        if (backward) cpu.ropeQkBackwardInPlace(cq, ck, cpuPos, cpuInv, heads, kvHeads, headDim, 1.25f);
        else cpu.ropeQkInPlace(cq, ck, cpuPos, cpuInv, heads, kvHeads, headDim, 1.25f);
        try (Tensor p = g.upload(Tensor.ofInts(pos, n)); Tensor f = g.upload(Tensor.of(inv, inv.length));
             Tensor fq = g.upload(host(q, act, n, heads * headDim)); Tensor fk = g.upload(host(k, act, n, kvHeads * headDim));
             Tensor pq = g.upload(host(q, act, n, heads * headDim)); Tensor pk = g.upload(host(k, act, n, kvHeads * headDim))) {
            if (backward) {
                g.ropeQkBackwardInPlace(fq, fk, p, f, heads, kvHeads, headDim, 1.25f);
                g.ropeBackwardInPlace(pq, p, f, heads, headDim, 1.25f);
                g.ropeBackwardInPlace(pk, p, f, kvHeads, headDim, 1.25f);
            } else {
                g.ropeQkInPlace(fq, fk, p, f, heads, kvHeads, headDim, 1.25f);
                g.ropeInPlace(pq, p, f, heads, headDim, 1.25f);
                g.ropeInPlace(pk, p, f, kvHeads, headDim, 1.25f);
            }
            String what = op + " " + act + " heads " + heads + "/" + kvHeads + " d " + headDim + " n " + n;
            String single = backward ? "ropeBackward" : "rope";
            assertBitEqual(values(g, fq), values(g, pq), what + " q vs " + single);
            assertBitEqual(values(g, fk), values(g, pk), what + " k vs " + single);
            double tol = act == DType.F32 ? 1e-5 : 8e-3;
            assertClose(values(g, fq), cq.toFloatArray(), tol, what + " q vs CPU");
            assertClose(values(g, fk), ck.toFloatArray(), tol, what + " k vs CPU");
        }
    }
}
