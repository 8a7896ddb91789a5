package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The stored-dS backward (attn_wg_dkvs_* + attn_wg_dqs_*, Hopper) against the recomputing one on the same inputs:
 * the same bits for dQ, dK and dV. Both form dS from P rounded to bf16 and sum dS K over the same key tiles in the
 * same order, so which one a layer takes (TrainAttentionKernels.storedDsFits: it depends on the memory in use) never
 * shows in the gradients. T = 2,048 and 700 (a cut last tile), GQA, and segments (skipped tile pairs are neither
 * written nor read).
 */
@Tag("gpu")
class AttentionStoredDsGpuTest {

    @ParameterizedTest
    @CsvSource({"1, 2048, 4, 4, 0", "2, 700, 8, 2, 0", "2, 700, 8, 2, 150"})
    void storedDsMatchesRecomputedDs(int batch, int tokens, int heads, int kvHeads, int maxSegment) {
        int headDim = 128;
        Random r = random("stored dS B=" + batch + " T=" + tokens + " seg=" + maxSegment);
        try (CudaBackend b = backend(DType.BF16, false)) {
            CudaContext ctx = b.context();
            String prefix = TrainAttentionKernels.tcKernelPrefix(ctx, headDim);
            assumeTrue(prefix.equals("attn_wg_"), "the stored-dS kernels are in the Hopper (sm90a) build");
            assertEquals(true, TrainAttentionKernels.storesDs(ctx, prefix, 0, batch, heads, tokens));
            assertFalse(TrainAttentionKernels.storesDs(ctx, prefix, 64, batch, heads, tokens), "a window recomputes dS");
            DType act = DType.BF16;
            int n = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim;
            Tensor qd = b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw));
            Tensor kd = b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw));
            Tensor vd = b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw));
            Tensor gd = b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw));
            Tensor sd = maxSegment > 0 ? b.upload(Tensor.ofInts(CudaTrainAttentionTcGpuTest.segments(r, batch, tokens, maxSegment), n)) : null;
            float scale = (float) (1 / Math.sqrt(headDim));
            AttentionResult fwd = TrainAttentionKernels.forward(ctx, act, qd, kd, vd, sd, batch, heads, kvHeads, headDim,
                    scale, 0);
            Tensor[] stored = TrainAttentionKernels.backward(ctx, act, qd, kd, vd, sd, fwd.out(), fwd.lse(), gd, batch,
                    heads, kvHeads, headDim, scale, 0);
            Tensor[] recomputed = withProperty(TrainAttentionKernels.STORED_DS_PROPERTY, "false", () ->
                    TrainAttentionKernels.backward(ctx, act, qd, kd, vd, sd, fwd.out(), fwd.lse(), gd, batch, heads,
                            kvHeads, headDim, scale, 0));
            assertBitEqual(values(b, stored[0]), values(b, recomputed[0]), "dQ, stored vs recomputed dS");
            assertBitEqual(values(b, stored[1]), values(b, recomputed[1]), "dK, stored vs recomputed dS");
            assertBitEqual(values(b, stored[2]), values(b, recomputed[2]), "dV, stored vs recomputed dS");
        }
    }

    private static Tensor[] withProperty(String key, String value, java.util.function.Supplier<Tensor[]> run) {
        String saved = System.getProperty(key);
        System.setProperty(key, value);
        try {
            return run.get();
        } finally {
            if (saved == null) System.clearProperty(key);
            else System.setProperty(key, saved);
        }
    }
}
