package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
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
            int n = batch * tokens;
            Tensor[] in = inputs(b, r, n, heads * headDim, kvHeads * headDim);
            Tensor qd = in[0], kd = in[1], vd = in[2], gd = in[3];
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

    /**
     * Out of memory for the scratch (storedDsFits allows it, the driver has no room): the backward recomputes dS
     * instead of failing, with the same bits. The memory is taken by raw driver allocations outside the caching
     * allocator, so its own counts (which storedDsFits reads) still allow the scratch and the allocation itself fails.
     */
    @org.junit.jupiter.api.Test
    void outOfMemoryForTheScratchRecomputesDs() {
        int batch = 1, tokens = 6144, heads = 32, kvHeads = 8, headDim = 128;
        Random r = random("stored dS out of memory");
        try (CudaBackend b = backend(DType.BF16, false)) {
            CudaContext ctx = b.context();
            String prefix = TrainAttentionKernels.tcKernelPrefix(ctx, headDim);
            assumeTrue(prefix.equals("attn_wg_"), "the stored-dS kernels are in the Hopper (sm90a) build");
            assumeTrue(TrainAttentionKernels.storesDs(ctx, prefix, 0, batch, heads, tokens), "the scratch fits the budget");
            DType act = DType.BF16;
            Tensor[] in = inputs(b, r, batch * tokens, heads * headDim, kvHeads * headDim);
            Tensor qd = in[0], kd = in[1], vd = in[2], gd = in[3];
            float scale = (float) (1 / Math.sqrt(headDim));
            AttentionResult fwd = TrainAttentionKernels.forward(ctx, act, qd, kd, vd, null, batch, heads, kvHeads, headDim,
                    scale, 0);
            Tensor[] want = withProperty(TrainAttentionKernels.STORED_DS_PROPERTY, "false", () ->
                    TrainAttentionKernels.backward(ctx, act, qd, kd, vd, null, fwd.out(), fwd.lse(), gd, batch, heads,
                            kvHeads, headDim, scale, 0));
            // the backward's own buffers (dq, dk, dv, delta: ~80 MB) must still fit, the scratch (1.2 GB) must not
            long keepFree = 384L << 20, scratch = TrainAttentionKernels.storedDsBytes(batch, heads, tokens);
            assertTrue(scratch > 2 * keepFree, "the scratch is larger than what is left free");
            java.util.List<Long> hog = new java.util.ArrayList<>();
            try {
                ctx.synchronize();
                ctx.allocator().emptyCache();
                for (long chunk = 1L << 30; chunk >= 16L << 20; chunk >>= 1) {
                    while (ctx.driver().memGetInfo().freeBytes() > keepFree + chunk) hog.add(ctx.driver().memAlloc(chunk));
                }
                Tensor[] got = TrainAttentionKernels.backward(ctx, act, qd, kd, vd, null, fwd.out(), fwd.lse(), gd, batch,
                        heads, kvHeads, headDim, scale, 0);
                assertBitEqual(values(b, got[0]), values(b, want[0]), "dQ after the scratch ran out of memory");
                assertBitEqual(values(b, got[1]), values(b, want[1]), "dK after the scratch ran out of memory");
                assertBitEqual(values(b, got[2]), values(b, want[2]), "dV after the scratch ran out of memory");
            } finally {
                for (long p : hog) ctx.driver().memFree(p);
            }
        }
    }

    /** Random BF16 q [n, qw], k and v [n, kw] and the output gradient [n, qw] on the GPU. */
    private static Tensor[] inputs(CudaBackend b, Random r, int n, int qw, int kw) {
        DType act = DType.BF16;
        return new Tensor[] {b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw)),
                b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw)),
                b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw)),
                b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw))};
    }

    private static Tensor[] withProperty(String key, String value, java.util.function.Supplier<Tensor[]> run) {
        try (var p = TemporaryProperty.set(key, value)) {
            return run.get();
        }
    }
}
