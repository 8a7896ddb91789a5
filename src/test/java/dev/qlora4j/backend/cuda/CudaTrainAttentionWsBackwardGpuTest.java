package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The warp-specialized dK/dV backward (native/attention_bwd_ws.cuh, TrainAttentionWsBackward) against the kernels it
 * replaces (attn_wg_dkv with dS recomputed, attn_wg_dkvs with dS stored) on fresh random data: the same bits for dQ,
 * dK and dV, since every tile pair is formed and summed as they do it, and the same bits run to run (a stage reused
 * before the consumers are done with it, or read before it landed, would change them). The outputs are poisoned
 * before each launch. T = 1, 17, 130 (one key block whose second warpgroup has 2 keys), 200, 384 (three key blocks;
 * more query tiles than ring stages), 2,048; batch 1-3; GQA (the group's query heads summed in one block). Against
 * the CPU reference it runs through CudaTrainAttentionWgmmaGpuTest's causal head-dim-128 cases. Skipped off Hopper.
 */
@Tag("gpu")
class CudaTrainAttentionWsBackwardGpuTest {

    @ParameterizedTest
    @CsvSource({
            // act, batch, T, heads, kvHeads, stored dS
            "BF16, 2, 1, 4, 4, true",
            "BF16, 2, 17, 8, 2, false",
            "BF16, 1, 130, 2, 1, true",
            "BF16, 2, 200, 8, 2, true",
            "BF16, 2, 200, 8, 2, false",
            "BF16, 1, 384, 4, 1, true",
            "BF16, 3, 300, 2, 2, false",
            "BF16, 1, 2048, 4, 4, true",
            "BF16, 1, 2048, 4, 2, false",
            "F16, 1, 700, 4, 2, true",
            "F16, 1, 129, 2, 2, false",
    })
    void sameBitsAsTheKernelsItReplaces(DType act, int batch, int tokens, int heads, int kvHeads, boolean storedDs) {
        int headDim = 128;
        Random r = random("ws attention backward " + act + " B=" + batch + " T=" + tokens + " stored=" + storedDs);
        try (CudaBackend b = backend(DType.BF16, false);
             var stored = TemporaryProperty.set(TrainAttentionKernels.STORED_DS_PROPERTY, Boolean.toString(storedDs));
             var ws = TemporaryProperty.set(TrainAttentionWsBackward.PROPERTY, "true")) {
            CudaContext ctx = b.context();
            assumeTrue(ctx.hopperBuild("attention_tc"), "the warp-specialized backward is in the sm90a build only");
            String prefix = TrainAttentionKernels.tcKernelPrefix(ctx, headDim);
            assertTrue(TrainAttentionWsBackward.applies(ctx, prefix, headDim, null, 0), "the ws backward must run");
            assertEquals(storedDs, TrainAttentionKernels.storesDs(ctx, prefix, 0, batch, heads, tokens), "stored dS");
            int n = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim;
            Tensor qd = b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw));
            Tensor kd = b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw));
            Tensor vd = b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw));
            Tensor gd = b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw));
            float scale = (float) (1 / Math.sqrt(headDim));
            AttentionResult fwd = TrainAttentionKernels.forward(ctx, act, qd, kd, vd, null, batch, heads, kvHeads,
                    headDim, scale, 0);
            Tensor[] ours = backward(b, ctx, act, qd, kd, vd, gd, fwd, batch, heads, kvHeads, scale);
            Tensor[] again = backward(b, ctx, act, qd, kd, vd, gd, fwd, batch, heads, kvHeads, scale);
            Tensor[] wg;
            try (var off = TemporaryProperty.set(TrainAttentionWsBackward.PROPERTY, "false")) {
                wg = backward(b, ctx, act, qd, kd, vd, gd, fwd, batch, heads, kvHeads, scale);
            }
            String[] names = {"dQ", "dK", "dV"};
            for (int i = 0; i < 3; i++) {
                float[] got = values(b, ours[i]);
                for (float x : got) assertTrue(Float.isFinite(x), names[i] + " has a non-finite value (poison kept?)");
                assertBitEqual(values(b, again[i]), got, "ws backward run to run: " + names[i]);
                assertBitEqual(got, values(b, wg[i]), "ws backward against attn_wg_dkv" + (storedDs ? "s: " : ": ")
                        + names[i]);
            }
        }
    }

    private static Tensor[] backward(CudaBackend b, CudaContext ctx, DType act, Tensor q, Tensor k, Tensor v,
                                     Tensor gradOut, AttentionResult fwd, int batch, int heads, int kvHeads,
                                     float scale) {
        int n = q.dim(0), qw = q.dim(1), kw = k.dim(1);
        poison(b, act, n, qw);
        poison(b, act, n, kw);
        return TrainAttentionKernels.backward(ctx, act, q, k, v, null, fwd.out(), fwd.lse(), gradOut, batch, heads,
                kvHeads, 128, scale, 0);
    }
}
