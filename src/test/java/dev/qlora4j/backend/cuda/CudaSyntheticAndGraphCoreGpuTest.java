package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * native/random.cu against its CPU twin (RandomKernels.normalAt), synthetic models built on the GPU against
 * the same model built from host weights on the CPU, and CUDA-graph decode steps against direct ones.
 */
@Tag("gpu")
class CudaSyntheticAndGraphCoreGpuTest {

    @Test
    void randomKernelMatchesItsCpuTwinAndIsNormal() {
        try (CudaBackend g = CudaCoreTestSupport.backend(DType.F32, false)) {
            long seed = new Random().nextLong();
            int n = 1_000_003;
            float[] got;
            try (Tensor t = RandomKernels.normal(g.context(), DType.F32, seed, 0f, 1f, n)) {
                got = CudaCoreTestSupport.values(g, t);
            }
            double sum = 0, sq = 0, maxDiff = 0;
            for (int i = 0; i < n; i++) {
                assertFalse(Float.isNaN(got[i]) || Float.isInfinite(got[i]), "element " + i);
                sum += got[i];
                sq += (double) got[i] * got[i];
                if (i % 97 == 0) maxDiff = Math.max(maxDiff, Math.abs(got[i] - RandomKernels.normalAt(seed, i)));
            }
            double mean = sum / n, std = Math.sqrt(sq / n - mean * mean);
            System.out.printf("random: mean %.4g std %.5g, max |gpu - cpu twin| %.3g%n", mean, std, maxDiff);
            // 5 standard errors of the mean (1/sqrt(n) = 1e-3) and of the std (1/sqrt(2n) = 7e-4)
            assertEquals(0, mean, 5e-3);
            assertEquals(1, std, 3.5e-3);
            // logf / cospif on the device vs Math.log / Math.cos: a few float32 ulp of values up to ~5.5
            assertTrue(maxDiff < 1e-5, "max diff to the CPU twin " + maxDiff);
            // same seed, same values (bf16: the rounding of the same float)
            try (Tensor b = RandomKernels.normal(g.context(), DType.BF16, seed, 0f, 1f, 1000)) {
                float[] bf = CudaCoreTestSupport.values(g, b);
                for (int i = 0; i < 1000; i++) {
                    float expected = dev.qlora4j.tensor.Half.roundBf16(got[i]);
                    assertEquals(expected, bf[i], "bf16 element " + i);
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void syntheticTinyModelOnTheGpuMatchesTheHostBuiltOneOnTheCpu(DType act) {
        int[] ids = {1, 17, 300, 42, 5, 99, 511, 2};
        int[] pos = {0, 1, 2, 3, 4, 5, 6, 7};
        try (CudaBackend g = CudaCoreTestSupport.backend(act, false);
             CpuBackend cpu = new CpuBackend(2);
             TransformerLM onGpu = SyntheticWeights.model("llama-tiny", g, 7);
             TransformerLM onCpu = SyntheticWeights.hostModel("llama-tiny", cpu, 7)) {
            float[] gl, cl;
            try (KvCache c = onGpu.newCache(1, ids.length);
                 Tensor i = g.upload(Tensor.ofInts(ids, ids.length)); Tensor p = g.upload(Tensor.ofInts(pos, pos.length));
                 Tensor pad = g.upload(Tensor.ofInts(new int[] {0}, 1));
                 Tensor h = onGpu.forward(i, p, c, 0, pad); Tensor l = onGpu.logits(h)) {
                gl = CudaCoreTestSupport.values(g, l);
            }
            try (KvCache c = onCpu.newCache(1, ids.length)) {
                Tensor h = onCpu.forward(Tensor.ofInts(ids, ids.length), Tensor.ofInts(pos, pos.length), c, 0,
                        Tensor.ofInts(new int[] {0}, 1));
                cl = onCpu.logits(h).toFloatArray();
            }
            // a few weights may differ by one bf16 ulp (device logf vs Math.log before rounding); bf16
            // activations add their own rounding
            assertClose(gl, cl, act == DType.F32 ? 1e-2 : 3e-2, "synthetic llama-tiny " + act);
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void graphReplaysGiveTheDirectStepsTokensAndLogits(DType act) {
        int[][] prompts = {{1, 5, 9, 200, 300, 17}, {1, 44, 45}};
        int n = 24;
        SamplingParams greedy = SamplingParams.greedy(n).withMinNewTokens(n);
        int[][] withGraph, direct;
        try (CudaBackend g = CudaCoreTestSupport.backend(act, true); TransformerLM m = SyntheticWeights.model("llama-tiny", g, 3)) {
            withGraph = new Generator(m, new int[] {2}, 0, x -> "").generate(prompts, greedy, TokenListener.NONE).outputIds();
            // The same steps by hand: a graph and direct calls on two caches, logits compared step by step.
            compareStepByStep(g, m, act);
        }
        try (CudaBackend g = CudaBackend.create(0, act, false); TransformerLM m = SyntheticWeights.model("llama-tiny", g, 3)) {
            direct = new Generator(m, new int[] {2}, 0, x -> "").generate(prompts, greedy, TokenListener.NONE).outputIds();
        }
        for (int r = 0; r < prompts.length; r++) assertArrayEquals(direct[r], withGraph[r], "row " + r + " " + act);
    }

    private static void compareStepByStep(CudaBackend g, TransformerLM m, DType act) {
        int batch = 2, prompt = 4, steps = 6, cap = prompt + steps + 1;
        int[] ids = {1, 7, 8, 9, 0, 1, 30, 31};
        int[] pos = {0, 1, 2, 3, 1, 0, 1, 2};
        int[] pads = {0, 1};
        try (KvCache gc = m.newCache(batch, cap); KvCache dc = m.newCache(batch, cap);
             Tensor padT = g.upload(Tensor.ofInts(pads, batch));
             Tensor i = g.upload(Tensor.ofInts(ids, ids.length)); Tensor p = g.upload(Tensor.ofInts(pos, pos.length))) {
            for (KvCache c : new KvCache[] {gc, dc}) {
                try (Tensor h = m.forward(i, p, c, 0, padT)) { g.synchronize(); }
            }
            try (DecodeGraph graph = g.newDecodeGraph(batch, (x, y, start) -> {
                try (Tensor h = m.forward(x, y, gc, start, padT)) { return m.logits(h); }
            })) {
                Random r = new Random(11);
                for (int s = 0; s < steps; s++) {
                    int[] next = {r.nextInt(512), r.nextInt(512)};
                    int[] np = {prompt + s, prompt - 1 + s};
                    float[][] viaGraph = graph.step(next, np, prompt + s);
                    assertTrue(graph.isCaptured());
                    float[] ref;
                    try (Tensor x = g.upload(Tensor.ofInts(next, batch)); Tensor y = g.upload(Tensor.ofInts(np, batch));
                         Tensor h = m.forward(x, y, dc, prompt + s, padT); Tensor l = m.logits(h)) {
                        ref = CudaCoreTestSupport.values(g, l);
                    }
                    float[] flat = new float[ref.length];
                    System.arraycopy(viaGraph[0], 0, flat, 0, viaGraph[0].length);
                    System.arraycopy(viaGraph[1], 0, flat, viaGraph[0].length, viaGraph[1].length);
                    // same kernels, same launch shapes, same inputs: equal up to cuBLAS choosing another
                    // algorithm under capture (float32 summation order)
                    assertClose(flat, ref, act == DType.F32 ? 1e-6 : 1e-2, "graph step " + s + " " + act);
                }
            }
        }
    }
}
