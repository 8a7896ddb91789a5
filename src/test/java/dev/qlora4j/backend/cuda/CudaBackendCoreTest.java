package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.Backends;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

/** What of the CUDA backend can be checked without a GPU: options, launch arithmetic, names, synthetic shapes. */
class CudaBackendCoreTest {

    @Test
    void activationOptionParsesAndRejectsOtherDtypes() {
        assertEquals(DType.F32, CudaBackend.parseActivations("f32"));
        assertEquals(DType.F32, CudaBackend.parseActivations(" Float32 "));
        assertEquals(DType.BF16, CudaBackend.parseActivations("bf16"));
        assertEquals(DType.BF16, CudaBackend.parseActivations("BFLOAT16"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> CudaBackend.parseActivations("f16"));
        assertTrue(e.getMessage().contains("qlora4j.cuda.activations"), e.getMessage());
    }

    @Test
    void withoutAGpuTheBackendIsUnavailableAndAutoFallsBackToTheCpu() {
        if (CudaBackend.isAvailable()) return; // on a GPU machine this says nothing
        assertFalse(Backends.cudaAvailable());
        try (var b = Backends.create("auto")) {
            assertTrue(b instanceof CpuBackend);
        }
    }

    @Test
    void kernelNamesCarryTheDtypes() {
        assertEquals("f32", KernelTypes.act(DType.F32));
        assertEquals("bf16", KernelTypes.act(DType.BF16));
        assertThrows(IllegalArgumentException.class, () -> KernelTypes.act(DType.F16));
        assertEquals("wf16", KernelTypes.weight(Tensor.zeros(DType.F16, 2), "w"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> KernelTypes.weight(Tensor.zeros(DType.I32, 2), "rmsNorm weight"));
        assertTrue(e.getMessage().startsWith("rmsNorm weight has dtype I32"), e.getMessage());
    }

    @Test
    void hostTensorsAreRejectedWithAHint() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> KernelTypes.requireIndices(Tensor.ofInts(new int[] {1}, 1), "embedding ids"));
        assertTrue(e.getMessage().contains("upload it with the CUDA backend"), e.getMessage());
    }

    @ParameterizedTest
    @CsvSource({"160, 1, 4, 32, 132, 1", "256, 1, 32, 32, 132, 1", "257, 1, 32, 32, 132, 5", "1500, 1, 2, 4, 132, 24", "4096, 8, 32, 32, 132, 2", "100000, 1, 8, 64, 132, 33",
            "1000000, 1, 1, 1, 132, 64", "300, 64, 8, 32, 132, 1"})
    void decodeSplitsFollowCapacityAndGpuSizeOnly(int capacity, int batch, int kvHeads, int heads, int sms, int expected) {
        int s = AttentionKernels.decodeSplits(capacity, batch, kvHeads, heads, sms);
        assertEquals(expected, s);
        assertTrue(s >= 1 && s <= AttentionKernels.MAX_SPLITS);
    }

    @Test
    void oneSplitOverMoreThanFourGroupsTakesEightWarps() {
        assertEquals(8, AttentionKernels.decodeWarps(1, 160, 128));
        assertEquals(4, AttentionKernels.decodeWarps(1, 128, 128), "four warps cover 128 slots in one pass");
        assertEquals(4, AttentionKernels.decodeWarps(1, 160, 256), "no 8-warp kernels above head dim 128");
        assertEquals(4, AttentionKernels.decodeWarps(3, 1024, 128));
    }

    @Test
    void oneSplitBf16DecodesScoreEachSlotOnFourLanesOfSixteenWarps() {
        assertEquals(new AttentionKernels.DecodeForm(16, "_l4"), AttentionKernels.decodeForm(1, 160, 128, 1, true));
        assertEquals(new AttentionKernels.DecodeForm(16, "_l4"), AttentionKernels.decodeForm(1, 40, 64, 4, true));
        assertEquals(new AttentionKernels.DecodeForm(8, "_l4w8"), AttentionKernels.decodeForm(1, 160, 128, 8, true),
                "eight query heads a block: the merge buffers of 16 warps would not fit");
        assertEquals(new AttentionKernels.DecodeForm(8, "_w8"), AttentionKernels.decodeForm(1, 160, 128, 1, false), "float32");
        assertEquals(new AttentionKernels.DecodeForm(8, "_l4w8"), AttentionKernels.decodeForm(3, 1024, 128, 1, true), "splits");
        assertEquals(new AttentionKernels.DecodeForm(4, ""), AttentionKernels.decodeForm(3, 1024, 128, 1, false), "splits, float32");
        assertEquals(new AttentionKernels.DecodeForm(8, "_w8"), AttentionKernels.decodeForm(1, 160, 96, 1, true), "head dim 96");
        try (var p = dev.qlora4j.TemporaryProperty.set(AttentionKernels.LANES_PER_SLOT_PROPERTY, "1")) {
            assertEquals(new AttentionKernels.DecodeForm(8, "_w8"), AttentionKernels.decodeForm(1, 160, 128, 1, true));
        }
        try (var p = dev.qlora4j.TemporaryProperty.set(AttentionKernels.LANES_PER_SLOT_PROPERTY, "2")) {
            assertThrows(IllegalArgumentException.class, () -> AttentionKernels.decodeForm(1, 160, 128, 1, true));
        }
    }

    @Test
    void prefillSharedMemoryFitsHopperAndNeedsTheOptInAboveHeadDim96() {
        assertEquals(4 * (32 * 16 + 32 * 20 + 32 * 16), AttentionKernels.prefillSharedBytes(16));
        assertTrue(AttentionKernels.prefillSharedBytes(96) <= 48 * 1024);
        assertTrue(AttentionKernels.prefillSharedBytes(128) > 48 * 1024);
        assertTrue(AttentionKernels.prefillSharedBytes(256) <= 227 * 1024);
    }

    @Test
    void deviceStatusMessagesNameTheProblem() {
        assertTrue(DeviceStatus.error(1, 600, 512).getMessage().contains("token id 600 is outside the embedding table (vocab size 512)"));
        assertTrue(DeviceStatus.error(2, -1, 4).getMessage().contains("row -1"));
        assertTrue(DeviceStatus.error(3, 9, 8).getMessage().contains("use -100"));
    }

    @ParameterizedTest
    @ValueSource(strings = {"llama-1b", "llama-7b", "llama3-8b", "llama-13b", "llama-70b", "llama-tiny"})
    void syntheticShapesGiveTheirConfigs(String name) {
        SyntheticWeights.Shape s = SyntheticWeights.shape(name);
        ModelConfig c = SyntheticWeights.config(name);
        assertEquals("LlamaForCausalLM", c.architecture());
        assertEquals(s.hidden(), c.hiddenSize());
        assertEquals(s.intermediate(), c.intermediateSize());
        assertEquals(s.layers(), c.numHiddenLayers());
        assertEquals(s.heads(), c.numAttentionHeads());
        assertEquals(s.kvHeads(), c.numKeyValueHeads());
        assertEquals(s.vocab(), c.vocabSize());
        assertFalse(c.tieWordEmbeddings());
        assertEquals(DType.BF16, c.torchDtype());
        assertTrue(java.util.Arrays.stream(AttentionKernels.HEAD_DIMS).anyMatch(d -> d == c.headDim()), "head dim " + c.headDim());
        SyntheticWeights w = SyntheticWeights.onHost(c, 1);
        Map<String, int[]> shapes = w.shapes();
        assertEquals(3 + 9 * s.layers(), shapes.size());
        assertArrayEquals(new int[] {s.vocab(), s.hidden()}, shapes.get("lm_head.weight"));
        assertArrayEquals(new int[] {s.kvHeads() * c.headDim(), s.hidden()}, shapes.get("model.layers.0.self_attn.k_proj.weight"));
        assertTrue(w.has("model.layers." + (s.layers() - 1) + ".mlp.down_proj.weight"));
        assertFalse(w.has("model.layers." + s.layers() + ".mlp.down_proj.weight"));
    }

    @Test
    void knownShapesMatchThePublishedModels() {
        assertEquals(s(2048, 5632, 22, 32, 4, 32000), dims("llama-1b"));
        assertEquals(s(4096, 11008, 32, 32, 32, 32000), dims("llama-7b"));
        assertEquals(s(4096, 14336, 32, 32, 8, 128256), dims("llama3-8b"));
        assertEquals(s(5120, 13824, 40, 40, 40, 32000), dims("llama-13b"));
        assertEquals(s(8192, 28672, 80, 64, 8, 128256), dims("llama-70b"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> SyntheticWeights.shape("gpt-2"));
        assertTrue(e.getMessage().contains("llama-7b"), e.getMessage());
    }

    @Test
    void shapeWithALayerCountKeepsEveryLayersSize() {
        assertEquals(s(4096, 14336, 2, 32, 8, 128256), dims("llama3-8b@2"));
        assertEquals(2, SyntheticWeights.config("llama3-8b@2").numHiddenLayers());
        for (String bad : new String[] {"llama3-8b@0", "llama3-8b@x", "llama3-8b@"}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> SyntheticWeights.shape(bad));
            assertTrue(e.getMessage().contains("number of layers"), e.getMessage());
        }
    }

    private static String s(int... d) { return java.util.Arrays.toString(d); }

    private static String dims(String name) {
        SyntheticWeights.Shape x = SyntheticWeights.shape(name);
        return s(x.hidden(), x.intermediate(), x.layers(), x.heads(), x.kvHeads(), x.vocab());
    }

    @Test
    void hostSyntheticWeightsAreReproducibleNormalAndNamedApart() {
        ModelConfig c = SyntheticWeights.config("llama-tiny");
        Tensor a = SyntheticWeights.onHost(c, 5).get("model.layers.0.mlp.up_proj.weight");
        Tensor b = SyntheticWeights.onHost(c, 5).get("model.layers.0.mlp.up_proj.weight");
        Tensor other = SyntheticWeights.onHost(c, 5).get("model.layers.1.mlp.up_proj.weight");
        assertEquals(DType.BF16, a.dtype());
        float[] av = a.toFloatArray();
        assertArrayEquals(av, b.toFloatArray());
        assertNotEquals(java.util.Arrays.toString(av), java.util.Arrays.toString(other.toFloatArray()));
        double sum = 0, sq = 0;
        for (float v : av) {
            sum += v;
            sq += v * v;
        }
        double mean = sum / av.length, std = Math.sqrt(sq / av.length - mean * mean);
        // 10240 values: standard error of the std ~ 0.02 / sqrt(2 * 10240) = 1.4e-4
        assertEquals(SyntheticWeights.STD, std, 1e-3);
        assertEquals(0, mean, 1e-3);
        Tensor norm = SyntheticWeights.onHost(c, 5).get("model.norm.weight");
        for (float v : norm.toFloatArray()) assertEquals(1f, v);
        assertThrows(IllegalArgumentException.class, () -> SyntheticWeights.onHost(c, 5).get("model.layers.9.mlp.up_proj.weight"));
    }

    @Test
    void normalTwinHasUnitVarianceOverManyIndices() {
        double sum = 0, sq = 0;
        int n = 200_000;
        for (int i = 0; i < n; i++) {
            float z = RandomKernels.normalAt(123, i);
            sum += z;
            sq += (double) z * z;
        }
        double mean = sum / n, var = sq / n - mean * mean;
        assertEquals(0, mean, 5 / Math.sqrt(n));
        assertEquals(1, var, 5 * Math.sqrt(2.0 / n));
    }

    @Test
    void hostSyntheticTinyModelRunsOnTheCpuBackend() {
        try (CpuBackend cpu = new CpuBackend(2); TransformerLM m = SyntheticWeights.hostModel("llama-tiny", cpu, 9)) {
            var r = new dev.qlora4j.infer.Generator(m, new int[] {2}, 0, ids -> "")
                    .generate(new int[][] {{1, 10, 20}}, dev.qlora4j.infer.SamplingParams.greedy(5).withMinNewTokens(5),
                            dev.qlora4j.infer.TokenListener.NONE);
            assertEquals(5, r.outputIds()[0].length);
            for (int t : r.outputIds()[0]) assertTrue(t >= 0 && t < 512);
        }
    }
}
