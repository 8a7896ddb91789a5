package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Training attention (flash-style forward with LSE, backward recomputing P) against the CPU's TrainAttention on
 * fresh random data: GQA, packed segments, sliding windows, T not a multiple of the 32-row tile, head dims of
 * each kernel variant. F32: out, lse, dQ, dK, dV within 1e-5 relative (float32 summation order only);
 * BF16: 2e-2 (every input and output rounded to bf16).
 */
@Tag("gpu")
class CudaTrainAttentionGpuTest {
    @ParameterizedTest
    @CsvSource({
            "F32, 2, 45, 4, 2, 16, 0, true",
            "F32, 1, 100, 8, 2, 64, 0, true",
            "F32, 2, 70, 4, 4, 128, 17, false",
            "F32, 1, 67, 6, 3, 32, 40, true",
            "F32, 1, 40, 2, 1, 256, 0, false",
            "BF16, 2, 77, 8, 2, 128, 0, true",
    })
    void forwardAndBackwardMatchCpu(DType act, int batch, int tokens, int heads, int kvHeads, int headDim, int window,
                                    boolean packed) {
        Random r = random("train attention " + act + " T=" + tokens + " D=" + headDim);
        double tol = act == DType.F32 ? 1e-5 : 2e-2;
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            int n = batch * tokens;
            float[] q = gaussian(r, n * heads * headDim, 1), k = gaussian(r, n * kvHeads * headDim, 1);
            float[] v = gaussian(r, n * kvHeads * headDim, 1), g = gaussian(r, n * heads * headDim, 1);
            int[] segs = null;
            if (packed) {   // examples of random lengths packed into each row
                segs = new int[n];
                for (int row = 0; row < batch; row++) {
                    int id = 0, left = 1 + r.nextInt(tokens);
                    for (int t = 0; t < tokens; t++) {
                        if (left-- == 0) { id++; left = r.nextInt(tokens); }
                        segs[row * tokens + t] = id;
                    }
                }
            }
            float scale = (float) (1 / Math.sqrt(headDim));
            Tensor qc = ref(q, act, n, heads * headDim), kc = ref(k, act, n, kvHeads * headDim), vc = ref(v, act, n, kvHeads * headDim);
            Tensor qd = b.upload(Tensor.fromFloats(q, act, n, heads * headDim));
            Tensor kd = b.upload(Tensor.fromFloats(k, act, n, kvHeads * headDim));
            Tensor vd = b.upload(Tensor.fromFloats(v, act, n, kvHeads * headDim));
            Tensor sc = segs == null ? null : Tensor.ofInts(segs, n), sd = sc == null ? null : b.upload(sc);
            poison(b, act, n, heads * headDim);
            poison(b, DType.F32, batch, heads, tokens);
            AttentionResult ours = b.attentionTrain(qd, kd, vd, sd, batch, heads, kvHeads, headDim, scale, window);
            AttentionResult want = cpu.attentionTrain(qc, kc, vc, sc, batch, heads, kvHeads, headDim, scale, window);
            assertClose(values(b, ours.out()), want.out().toFloatArray(), tol, "attention out");
            assertClose(values(b, ours.lse()), want.lse().toFloatArray(), act == DType.F32 ? 1e-6 : 1e-2, "attention lse");
            // The backward on the CPU from the GPU's forward values (as bf16 rounds them), so both see the same inputs.
            float[] out = values(b, ours.out());
            AttentionResult fwdCpu = new AttentionResult(Tensor.of(out, n, heads * headDim), want.lse());
            Tensor gc = ref(g, act, n, heads * headDim);
            poison(b, act, n, heads * headDim);
            poison(b, act, n, kvHeads * headDim);
            Tensor[] gOurs = b.attentionBackward(qd, kd, vd, sd, ours, b.upload(Tensor.fromFloats(g, act, n, heads * headDim)),
                    batch, heads, kvHeads, headDim, scale, window);
            Tensor[] gWant = cpu.attentionBackward(qc, kc, vc, sc, fwdCpu, gc, batch, heads, kvHeads, headDim, scale, window);
            String[] names = {"dQ", "dK", "dV"};
            for (int i = 0; i < 3; i++) assertClose(values(b, gOurs[i]), gWant[i].toFloatArray(), tol, "attention " + names[i]);
        }
    }

    private static Tensor ref(float[] v, DType dtype, int... shape) {
        return Tensor.of(Tensor.fromFloats(v, dtype, shape).toFloatArray(), shape);
    }
}
