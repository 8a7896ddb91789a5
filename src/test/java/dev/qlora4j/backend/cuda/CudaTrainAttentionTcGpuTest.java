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
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The tensor-core training attention (native/attention_tc.cu, forced with -Dqlora4j.attention.train=tc; on Hopper
 * the default kernels here, CudaTrainAttentionWgmmaGpuTest and CudaTrainAttentionMmaSyncGpuTest run the same cases
 * on the wgmma and on the mma.sync ones) against
 * the CPU's TrainAttention (float32 math on the same bf16/f16-rounded inputs), on fresh random data: head dims 64
 * and 128; T = 1, 17, 64 (one whole tile), 200 and 2048 (tiles cut by T, many causal tiles); batch 2; GQA 8 query
 * heads on 2 kv heads; sliding windows; packed segments, long (random lengths up to T) and short (lengths up to
 * 20, so most tile pairs have disjoint segment ranges and are skipped).
 *
 * <p>Tolerances (relative L2 error over the whole tensor): out 1e-2 and dQ, dK, dV 2e-2. Why: the kernels round
 * P (in [0, 1]) to bf16 before P V, and dS before dS K / dS^T Q (and P^T before dS^T in the dK/dV kernel), each
 * a relative error of at most 2^-9 = 2e-3 per element, independent between elements, so the sums' relative
 * errors stay of that order; the outputs are rounded to bf16 once more (2^-9). Expected ~3e-3 to 6e-3; the
 * bounds leave a margin of 3 and more. F16 rounds with 2^-11. lse: 1e-4 (scores are exact products summed in
 * float32 in another order, exp2 instead of exp: a few float32 ulps of lse, ~1e-6).
 */
@Tag("gpu")
class CudaTrainAttentionTcGpuTest {
    private TemporaryProperty savedMode;

    @BeforeEach
    void forceTensorCores() {
        savedMode = TemporaryProperty.set(TrainAttentionKernels.MODE_PROPERTY, "tc");   // an unsupported case fails, not falls back
    }

    @AfterEach
    void restoreMode() {
        if (savedMode != null) savedMode.close();
    }

    @ParameterizedTest
    @CsvSource({
            // act, batch, T, heads, kvHeads, D, window, max segment length (0: no segments)
            "BF16, 2, 1, 8, 2, 64, 0, 0",
            "BF16, 2, 1, 8, 2, 128, 0, 1",
            "BF16, 2, 17, 8, 2, 128, 0, 0",
            "BF16, 2, 17, 8, 2, 64, 5, 6",
            "BF16, 1, 64, 4, 4, 64, 0, 0",
            "BF16, 1, 64, 4, 4, 128, 0, 64",
            "BF16, 2, 200, 8, 2, 128, 0, 0",
            "BF16, 2, 200, 8, 2, 64, 0, 200",
            "BF16, 1, 200, 4, 2, 64, 37, 0",
            "BF16, 2, 200, 8, 2, 128, 70, 200",
            "BF16, 2, 200, 8, 2, 128, 0, 20",
            "BF16, 1, 2048, 2, 1, 128, 0, 0",
            "BF16, 1, 2048, 2, 2, 64, 300, 2048",
            "BF16, 1, 2048, 2, 1, 128, 0, 20",
            "F16, 2, 200, 8, 2, 128, 0, 200",
            "F16, 1, 77, 4, 1, 64, 16, 0",
            "F16, 1, 2048, 2, 1, 128, 0, 0",
    })
    void forwardAndBackwardMatchCpu(DType act, int batch, int tokens, int heads, int kvHeads, int headDim, int window,
                                    int maxSegment) {
        Random r = random("tc train attention " + act + " B=" + batch + " T=" + tokens + " D=" + headDim);
        try (CudaBackend b = backend(DType.BF16, false); CpuBackend cpu = new CpuBackend()) {
            CudaContext ctx = b.context();
            int n = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim;
            float[] q = gaussian(r, n * qw, 1), k = gaussian(r, n * kw, 1);
            float[] v = gaussian(r, n * kw, 1), g = gaussian(r, n * qw, 1);
            int[] segs = maxSegment > 0 ? segments(r, batch, tokens, maxSegment) : null;
            float scale = (float) (1 / Math.sqrt(headDim));
            assertNull(TrainAttentionKernels.tcUnsupportedReason(ctx, act, headDim, scale), "the tc kernels must apply");

            Tensor qc = ref(q, act, n, qw), kc = ref(k, act, n, kw), vc = ref(v, act, n, kw), gc = ref(g, act, n, qw);
            Tensor qd = b.upload(Tensor.fromFloats(q, act, n, qw));
            Tensor kd = b.upload(Tensor.fromFloats(k, act, n, kw));
            Tensor vd = b.upload(Tensor.fromFloats(v, act, n, kw));
            Tensor gd = b.upload(Tensor.fromFloats(g, act, n, qw));
            Tensor sc = segs == null ? null : Tensor.ofInts(segs, n), sd = sc == null ? null : b.upload(sc);

            poison(b, act, n, qw);
            poison(b, DType.F32, batch, heads, tokens);
            // BF16 goes through the backend (the training step's path); the backend's activations are never F16,
            // so F16 calls the launcher directly.
            AttentionResult ours = act == DType.BF16
                    ? b.attentionTrain(qd, kd, vd, sd, batch, heads, kvHeads, headDim, scale, window)
                    : TrainAttentionKernels.forward(ctx, act, qd, kd, vd, sd, batch, heads, kvHeads, headDim, scale, window);
            AttentionResult want = cpu.attentionTrain(qc, kc, vc, sc, batch, heads, kvHeads, headDim, scale, window);
            assertTrue(ours.out().dtype() == act, "out dtype");
            assertClose(values(b, ours.out()), want.out().toFloatArray(), 1e-2, "tc attention out");
            assertClose(values(b, ours.lse()), want.lse().toFloatArray(), 1e-4, "tc attention lse");

            // The CPU backward from the GPU's forward output (rounded as the GPU holds it), so both see the same O.
            AttentionResult fwdCpu = new AttentionResult(Tensor.of(values(b, ours.out()), n, qw), want.lse());
            poison(b, act, n, qw);
            poison(b, act, n, kw);
            Tensor[] gOurs = act == DType.BF16
                    ? b.attentionBackward(qd, kd, vd, sd, ours, gd, batch, heads, kvHeads, headDim, scale, window)
                    : TrainAttentionKernels.backward(ctx, act, qd, kd, vd, sd, ours.out(), ours.lse(), gd, batch, heads,
                            kvHeads, headDim, scale, window);
            Tensor[] gWant = cpu.attentionBackward(qc, kc, vc, sc, fwdCpu, gc, batch, heads, kvHeads, headDim, scale,
                    window);
            String[] names = {"dQ", "dK", "dV"};
            for (int i = 0; i < 3; i++) {
                assertClose(values(b, gOurs[i]), gWant[i].toFloatArray(), 2e-2, "tc attention " + names[i]);
            }
        }
    }

    /**
     * The tensor-core forward and backward are bit-identical from run to run (no atomics: every output element is summed by one
     * thread in a fixed order), on a case with many tiles per row and column, GQA, and masked (segment and
     * causal-diagonal) tiles.
     */
    @ParameterizedTest
    @CsvSource({"BF16, 128", "BF16, 64", "F16, 128"})
    void backwardIsBitReproducible(DType act, int headDim) {
        int batch = 2, tokens = 700, heads = 8, kvHeads = 2;
        Random r = random("tc train attention reproducible " + act + " D=" + headDim);
        try (CudaBackend b = backend(DType.BF16, false)) {
            int n = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim;
            Tensor qd = b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw));
            Tensor kd = b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw));
            Tensor vd = b.upload(Tensor.fromFloats(gaussian(r, n * kw, 1), act, n, kw));
            Tensor gd = b.upload(Tensor.fromFloats(gaussian(r, n * qw, 1), act, n, qw));
            Tensor sd = b.upload(Tensor.ofInts(segments(r, batch, tokens, 300), n));
            float scale = (float) (1 / Math.sqrt(headDim));
            AttentionResult fwd = TrainAttentionKernels.forward(b.context(), act, qd, kd, vd, sd, batch, heads, kvHeads,
                    headDim, scale, 0);
            // The forward too: the pipelined wgmma forward overlaps a tile's softmax with the previous tile's P V,
            // whose A fragments must not be rewritten before it completes; a race there shows up as changed bits.
            AttentionResult again = TrainAttentionKernels.forward(b.context(), act, qd, kd, vd, sd, batch, heads, kvHeads,
                    headDim, scale, 0);
            assertBitEqual(values(b, again.out()), values(b, fwd.out()), "tc attention forward, run to run: out");
            assertBitEqual(values(b, again.lse()), values(b, fwd.lse()), "tc attention forward, run to run: lse");
            Tensor[] first = TrainAttentionKernels.backward(b.context(), act, qd, kd, vd, sd, fwd.out(), fwd.lse(), gd,
                    batch, heads, kvHeads, headDim, scale, 0);
            Tensor[] second = TrainAttentionKernels.backward(b.context(), act, qd, kd, vd, sd, fwd.out(), fwd.lse(), gd,
                    batch, heads, kvHeads, headDim, scale, 0);
            String[] names = {"dQ", "dK", "dV"};
            for (int i = 0; i < 3; i++) {
                assertBitEqual(values(b, second[i]), values(b, first[i]), "tc attention backward, run to run: " + names[i]);
            }
        }
    }

    /**
     * Which tensor-core kernels a run tests: on Hopper the wgmma ones (attn_wg_*) when -Dqlora4j.attention.wgmma is
     * on (CudaTrainAttentionWgmmaGpuTest; off: CudaTrainAttentionMmaSyncGpuTest), elsewhere the mma.sync ones.
     */
    @Test
    void hopperRunsTheWgmmaKernelsWhenTurnedOn() {
        try (CudaBackend b = backend(DType.BF16, false)) {
            CudaContext ctx = b.context();
            boolean wgmma = ctx.properties().computeCapability() == 90
                    && Switches.on(TrainAttentionKernels.WGMMA_PROPERTY, TrainAttentionKernels.WGMMA_DEFAULT);
            assertEquals(wgmma ? "attn_wg_" : "attn_tc_", TrainAttentionKernels.tcKernelPrefix(ctx, 128));
            assertEquals("attn_tc_", TrainAttentionKernels.tcKernelPrefix(ctx, 64));
        }
    }

    /** Forcing tc where it cannot run says why instead of silently falling back. */
    @Test
    void forcedTensorCoresRejectUnsupportedHeadDim() {
        try (CudaBackend b = backend(DType.BF16, false)) {
            Tensor q = b.upload(Tensor.fromFloats(new float[2 * 4 * 32], DType.BF16, 2, 4 * 32));
            var e = assertThrows(IllegalArgumentException.class,
                    () -> b.attentionTrain(q, q, q, null, 1, 4, 4, 32, 0.17f, 0));
            assertTrue(e.getMessage().contains("head dim 32"), e.getMessage());
        }
    }

    /** Examples of random lengths in [1, maxLength] packed into each row; ids count up from 0 per row. */
    static int[] segments(Random r, int batch, int tokens, int maxLength) {
        int[] segs = new int[batch * tokens];
        for (int row = 0; row < batch; row++) {
            int id = 0, left = 1 + r.nextInt(maxLength);
            for (int t = 0; t < tokens; t++) {
                if (left-- == 0) { id++; left = r.nextInt(maxLength); }
                segs[row * tokens + t] = id;
            }
        }
        return segs;
    }

    private static Tensor ref(float[] v, DType dtype, int... shape) {
        return Tensor.of(Tensor.fromFloats(v, dtype, shape).toFloatArray(), shape);
    }
}
