package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The warp-specialized Hopper forward (native/attention_fwd_ws.cuh, TrainAttentionWsForward) against the CPU's
 * TrainAttention on fresh random data (causal, no window, no segments, head dim 128): T = 1 (one query, one key), 17,
 * 129 and 200 (tiles cut by T), 384 (three whole tiles; more tiles than ring stages), 2,048 (16 tiles; the diagonal
 * tile masked); batch 2 and 3; GQA. Tolerances as CudaTrainAttentionTcGpuTest's (out 1e-2 relative L2: P and the
 * output rounded to bf16, 2^-9 each; lse 1e-4). Also: the same bits run to run, and close to attn_wg_fwd. Skipped off
 * Hopper (no sm90a build).
 */
@Tag("gpu")
class CudaTrainAttentionWsForwardGpuTest {
    private TemporaryProperty saved;

    @BeforeEach   // the tests set the property; this only remembers its value
    void save() { saved = TemporaryProperty.save(TrainAttentionWsForward.PROPERTY); }

    @AfterEach
    void restore() {
        if (saved != null) saved.close();
    }

    @ParameterizedTest
    @CsvSource({
            // act, batch, T, heads, kvHeads
            "BF16, 2, 1, 4, 4",
            "BF16, 2, 17, 8, 2",
            "BF16, 2, 200, 8, 2",
            "BF16, 1, 384, 4, 1",
            "BF16, 3, 300, 2, 2",
            "BF16, 1, 2048, 2, 1",
            "F16, 1, 2048, 2, 2",
            "F16, 1, 129, 2, 2",
    })
    void forwardMatchesCpu(DType act, int batch, int tokens, int heads, int kvHeads) {
        System.setProperty(TrainAttentionWsForward.PROPERTY, "true");
        int headDim = 128;
        Random r = random("ws attention forward " + act + " B=" + batch + " T=" + tokens);
        try (CudaBackend b = backend(DType.BF16, false); CpuBackend cpu = new CpuBackend()) {
            CudaContext ctx = b.context();
            assumeTrue(ctx.hopperBuild("attention_tc"), "the warp-specialized forward is in the sm90a build only");
            assertTrue(TrainAttentionWsForward.applies(ctx, TrainAttentionKernels.tcKernelPrefix(ctx, headDim), headDim,
                    null, 0), "the warp-specialized forward must run");
            int n = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim;
            float[] q = gaussian(r, n * qw, 1), k = gaussian(r, n * kw, 1), v = gaussian(r, n * kw, 1);
            float scale = (float) (1 / Math.sqrt(headDim));
            assertNull(TrainAttentionKernels.tcUnsupportedReason(ctx, act, headDim, scale), "the tc kernels must apply");
            Tensor qd = b.upload(Tensor.fromFloats(q, act, n, qw));
            Tensor kd = b.upload(Tensor.fromFloats(k, act, n, kw));
            Tensor vd = b.upload(Tensor.fromFloats(v, act, n, kw));
            poison(b, act, n, qw);
            poison(b, DType.F32, batch, heads, tokens);
            AttentionResult ours = TrainAttentionKernels.forward(ctx, act, qd, kd, vd, null, batch, heads, kvHeads,
                    headDim, scale, 0);
            AttentionResult want = cpu.attentionTrain(ref(q, act, n, qw), ref(k, act, n, kw), ref(v, act, n, kw), null,
                    batch, heads, kvHeads, headDim, scale, 0);
            assertEquals(act, ours.out().dtype(), "out dtype");
            assertClose(values(b, ours.out()), want.out().toFloatArray(), 1e-2, "ws attention out");
            assertClose(values(b, ours.lse()), want.lse().toFloatArray(), 1e-4, "ws attention lse");

            // Run to run the same bits (a race between the producer's copies and the consumers' products, or a
            // stage reused too early, would change them), and close to attn_wg_fwd's result.
            AttentionResult again = TrainAttentionKernels.forward(ctx, act, qd, kd, vd, null, batch, heads, kvHeads,
                    headDim, scale, 0);
            assertBitEqual(values(b, again.out()), values(b, ours.out()), "ws attention forward, run to run: out");
            assertBitEqual(values(b, again.lse()), values(b, ours.lse()), "ws attention forward, run to run: lse");
            System.setProperty(TrainAttentionWsForward.PROPERTY, "false");
            AttentionResult wg = TrainAttentionKernels.forward(ctx, act, qd, kd, vd, null, batch, heads, kvHeads, headDim,
                    scale, 0);
            assertClose(values(b, ours.out()), values(b, wg.out()), 1e-2, "ws against attn_wg_fwd: out");
            assertClose(values(b, ours.lse()), values(b, wg.lse()), 1e-5, "ws against attn_wg_fwd: lse");
        }
    }

    private static Tensor ref(float[] v, DType dtype, int... shape) {
        return Tensor.of(Tensor.fromFloats(v, dtype, shape).toFloatArray(), shape);
    }
}
