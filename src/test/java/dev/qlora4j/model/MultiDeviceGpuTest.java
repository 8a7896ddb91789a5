package dev.qlora4j.model;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.DeviceTransfer;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.placement.PlacementOptions;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.nio.file.Path;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The split model on CUDA: two CudaBackends on cuda:0 (two contexts objects, two streams, two allocators over one
 * GPU: every cross-backend path runs, device-to-device copies ordered by events) and, when the machine has two GPUs,
 * cuda:0 + cuda:1 (cuMemcpyPeerAsync), against the model on one backend of cuda:0. Compared: prefill logits, greedy
 * tokens (prefill + decode with each layer's KV cache on its device; decode graphs are off on the split model and on
 * for the single one), losses, LoRA gradients with checkpointing off and on, one clipped AdamW step (per-device
 * CudaAdamW, global-norm clipping), eval loss, saved adapter; dense and NF4 bases, F32 activations.
 *
 * <p>Tolerance 1e-6 of each array's largest magnitude: the same kernels run on the same data on identical GPUs, so
 * the results are expected bit-identical, except the clipped gradients (the split run's global norm adds per-device
 * float totals, and scales by g += (c - 1) g instead of c * g: an ulp or two) and what the step derives from them.
 */
@Tag("gpu")
class MultiDeviceGpuTest {
    private static final double REL = 1e-6;

    private static CudaBackend gpu(int ordinal) {
        return CudaBackend.create(ordinal, DType.F32, true);
    }

    @ParameterizedTest(name = "{0} on cuda:0 twice, split after layer {1}, {2}, checkpointing {3}")
    @CsvSource({"llama-f32, 1, dense, true", "llama-f32, 2, nf4, false", "qwen2-f32, 1, nf4, true", "mistral-f32, 1, dense, false"})
    void twoBackendsOnOneGpuEqualOne(String golden, int split, String weights, boolean checkpointing, @TempDir Path tmp) throws Exception {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        compare(golden, split, weights, checkpointing, 0, tmp);
    }

    @ParameterizedTest(name = "{0} on cuda:0 + cuda:1, split after layer {1}, {2}, checkpointing {3}")
    @CsvSource({"llama-f32, 1, dense, true", "llama-f32, 2, nf4, false", "qwen2-f32, 1, nf4, true"})
    void twoGpusEqualOne(String golden, int split, String weights, boolean checkpointing, @TempDir Path tmp) throws Exception {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        assumeTrue(CudaDriver.get().deviceCount() >= 2, "needs two GPUs");
        compare(golden, split, weights, checkpointing, 1, tmp);
    }

    private static void compare(String golden, int split, String weights, boolean checkpointing, int second, Path tmp) throws Exception {
        LinearFactory linears = weights.equals("nf4") ? MultiDeviceHarness.nf4() : LinearFactory.DENSE;
        int layers = ModelConfig.load(Golden.dir(golden)).numHiddenLayers();
        MultiDeviceHarness.Run one, two;
        try (CudaBackend a = gpu(0)) {
            one = MultiDeviceHarness.run(golden, ModelDevices.single(a, layers), linears, tmp.resolve("one"), checkpointing);
        }
        try (CudaBackend a = gpu(0); CudaBackend b = gpu(second)) {
            two = MultiDeviceHarness.run(golden, ModelDevices.split(a, b, layers, split), linears, tmp.resolve("two"), checkpointing);
        }
        MultiDeviceHarness.assertSameRun(one, two, REL);
    }

    /** Every pairing of DeviceTransfer, right after the producing kernel, with the source closed and reused at once. */
    @Test
    void transfersBetweenEveryPairing() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        int second = CudaDriver.get().deviceCount() >= 2 ? 1 : 0;
        try (CudaBackend a = gpu(0); CudaBackend b = gpu(second)) {
            Backend cpu = new CpuBackend();
            float[] v = new float[1 << 20];
            Random r = new Random(1);
            for (int i = 0; i < v.length; i++) v[i] = (float) r.nextGaussian();
            Tensor host = Tensor.of(v, 1024, 1024);
            for (int round = 0; round < 3; round++) {
                Tensor onA = a.upload(host);
                Tensor scaled = a.scale(onA, 2f);          // queued on a's stream just before the copy
                onA.close();
                Tensor onB = DeviceTransfer.copy(scaled, a, b);
                scaled.close();
                try (Tensor again = a.upload(host); Tensor overwrite = a.scale(again, -7f)) { // may reuse scaled's block
                    a.synchronize();
                }
                Tensor back = DeviceTransfer.copy(onB, b, cpu);
                onB.close();
                float[] got = back.toFloatArray();
                for (int i = 0; i < v.length; i++) assertEquals(2f * v[i], got[i], 0f, "element " + i + " round " + round);
                Tensor up = DeviceTransfer.copy(back, cpu, b);
                assertArrayEquals(got, b.toHost(up).toFloatArray());
                up.close();
            }
        }
    }

    /** The CLI path: a balanced device map over two GPUs generates what one GPU generates. */
    @Test
    void balancedDeviceMapOverTwoGpusGeneratesTheSameTokens() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        assumeTrue(CudaDriver.get().deviceCount() >= 2, "needs two GPUs");
        try (var before = TemporaryProperty.set(CudaBackend.ACTIVATIONS_PROPERTY, "f32");
             CausalLM one = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.defaults().withDevice("cuda:0"));
             CausalLM two = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.defaults().withDevice("cuda:0"),
                     PlacementOptions.of("balanced", null, null))) {
            assertTrue(!two.model().devices().isSingle(), "balanced over two GPUs: " + two.placementPlan().table());
            int[][] prompts = {{1, 5, 9, 13, 2}, {4, 4, 8}};
            var g1 = one.generateIds(prompts, SamplingParams.greedy(8), TokenListener.NONE);
            var g2 = two.generateIds(prompts, SamplingParams.greedy(8), TokenListener.NONE);
            for (int i = 0; i < prompts.length; i++) assertArrayEquals(g1.outputIds()[i], g2.outputIds()[i], "row " + i);
            assertEquals(one.loss(new int[] {3, 1, 4, 1, 5, 9, 2, 6}).sum(), two.loss(new int[] {3, 1, 4, 1, 5, 9, 2, 6}).sum(), 1e-5);
        }
    }
}
