package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.AdamW;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.GradClip;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;

import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * LoRA training of the golden llama-f32 on the GPU (F32 activations) against the CPU: r = 4 on every linear
 * layer with random (non-zero) A and B so every gradient is non-trivial; the loss within 1e-5 relative, every
 * adapter gradient within 1e-4 of the CPU's (||gpu - cpu|| / ||cpu|| per tensor); then clipping and 3 AdamW steps
 * (CudaGradClip + CudaAdamW vs GradClip + AdamW) on those gradients leave the parameters within 1e-4 relative
 * (the gradients' float32 differences pass through m / sqrt(v)). CudaAdamW alone, on identical gradients,
 * equals the host AdamW within 1e-6 (its kernel rounds as AdamWKernel does: bit-identical by construction).
 */
@Tag("gpu")
class CudaTrainEndToEndGpuTest {
    private static final LoraConfig CFG = LoraConfig.builder().r(4).loraAlpha(8)
            .targetModules(new ModuleSelector.AllLinear())
            .initLoraWeights(new InitLoraWeights.Flag(false)).build();

    private static CausalLM load(String device) {
        try (var a = TemporaryProperty.set(CudaBackend.ACTIVATIONS_PROPERTY, "f32")) {
            return CausalLM.fromPretrained(Golden.dir("llama-f32"), device.equals("cpu") ? LoadOptions.cpu()
                    : LoadOptions.defaults().withDevice(device));
        }
    }

    /** Two packed examples in one row of 24 tokens plus a second row: segments, batch 2, ignored targets. */
    private static TransformerLM.StepResult step(TransformerLM m, int vocab) {
        int batch = 2, t = 24;
        int[][] b = dev.qlora4j.model.PackedTestBatch.of(vocab, batch, t, 10, 7);
        int[] ids = b[0], pos = b[1], segs = b[2], targets = b[3];
        return m.trainStep(ids, pos, segs, targets, batch, false, 1f / 40);
    }

    @Test
    void loraGradientsAndAdamWStepsMatchTheCpu() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        try (CausalLM cpuLm = load("cpu"); CausalLM gpuLm = load("cuda")) {
            assertTrue(gpuLm.backend() instanceof CudaBackend, "loaded on " + gpuLm.backend());
            CudaBackend b = (CudaBackend) gpuLm.backend();
            PeftModel pc = PeftModel.wrap(cpuLm, CFG, PeftModel.DEFAULT_ADAPTER, 99);
            PeftModel pg = PeftModel.wrap(gpuLm, CFG, PeftModel.DEFAULT_ADAPTER, 99);
            pc.train(true);
            pg.train(true);
            List<Param> cp = pc.trainableParameters(), gp = pg.trainableParameters();
            assertEquals(cp.size(), gp.size());
            for (int i = 0; i < cp.size(); i++) {   // same initial adapters
                assertEquals(cp.get(i).name(), gp.get(i).name());
                CudaCoreTestSupport.assertBitEqual(b.toHost(gp.get(i).value()).toFloatArray(), cp.get(i).value().toFloatArray(),
                        "initial " + cp.get(i).name());
            }
            int vocab = 512;
            AdamWConfig cfg = new AdamWConfig(1e-2, 0.9, 0.999, 1e-8, 0.01, StateStorage.DEVICE);
            AdamW cpuOpt = AdamW.of(cp, cfg);
            CudaAdamW gpuOpt = CudaAdamW.of(b, gp, cfg);
            CudaGradClip clip = new CudaGradClip(b);
            for (int s = 0; s < 3; s++) {
                pc.zeroGrad();
                pg.zeroGrad();
                double lc = step(cpuLm.model(), vocab).lossSum(), lg = step(gpuLm.model(), vocab).lossSum();
                assertEquals(lc, lg, 1e-5 * Math.abs(lc), "loss of step " + s);
                double worst = 0;
                for (int i = 0; i < cp.size(); i++) {
                    double e = CudaCoreTestSupport.relError(b.toHost(gp.get(i).grad()).toFloatArray(),
                            cp.get(i).grad().toFloatArray(), cp.get(i).name());
                    worst = Math.max(worst, e);
                    assertTrue(e <= 1e-4, "step " + s + " gradient of " + cp.get(i).name() + ": rel error " + e);
                }
                System.out.printf("step %d: loss %.6f, %d gradients, worst rel error %.3g%n", s, lc, cp.size(), worst);
                float nc = GradClip.clipByGlobalNorm(cp, 0.5), ng = clip.clip(gp, 0.5);
                assertEquals(nc, ng, 1e-5 * nc, "grad norm of step " + s);
                cpuOpt.step();
                gpuOpt.step();
                for (int i = 0; i < cp.size(); i++) {
                    CudaCoreTestSupport.assertClose(b.toHost(gp.get(i).value()).toFloatArray(), cp.get(i).value().toFloatArray(),
                            1e-4, "step " + s + " " + cp.get(i).name());
                }
            }
            gpuOpt.close();
        }
    }

    @Test
    void cudaAdamWEqualsHostAdamWOnTheSameGradients() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        java.util.Random r = CudaCoreTestSupport.random("CudaAdamW");
        try (CudaBackend b = CudaBackend.create(0, dev.qlora4j.tensor.DType.F32, false)) {
            int[] sizes = {1, 1000, 4097};
            List<Param> host = new java.util.ArrayList<>(), gpu = new java.util.ArrayList<>();
            for (int i = 0; i < sizes.length; i++) {
                float[] v = CudaCoreTestSupport.gaussian(r, sizes[i], 0.1), g = new float[sizes[i]];
                host.add(Param.of("p" + i, v, g));
                gpu.add(new Param.TensorParam("p" + i, b.upload(dev.qlora4j.tensor.Tensor.of(v.clone(), sizes[i])),
                        b.upload(dev.qlora4j.tensor.Tensor.of(g.clone(), sizes[i]))));
            }
            AdamWConfig cfg = new AdamWConfig(3e-3, 0.9, 0.999, 1e-8, 0.05, StateStorage.DEVICE);
            AdamW hostOpt = AdamW.of(host, cfg);
            try (CudaAdamW gpuOpt = CudaAdamW.of(b, gpu, cfg)) {
                for (int s = 0; s < 3; s++) {
                    for (int i = 0; i < sizes.length; i++) {   // fresh gradients, the same on both sides
                        float[] g = CudaCoreTestSupport.gaussian(r, sizes[i], 1);
                        host.get(i).grad().segment().copyFrom(dev.qlora4j.tensor.Tensor.of(g, sizes[i]).segment());
                        b.context().driver().copyToDevice(CudaContext.ptr(gpu.get(i).grad()),
                                java.lang.foreign.MemorySegment.ofArray(g));
                    }
                    hostOpt.step();
                    gpuOpt.step();
                    for (int i = 0; i < sizes.length; i++) {
                        CudaCoreTestSupport.assertClose(b.toHost(gpu.get(i).value()).toFloatArray(),
                                host.get(i).value().toFloatArray(), 1e-6, "CudaAdamW step " + s + " p" + i);
                    }
                }
                var sd = gpuOpt.stateDict();
                var hd = hostOpt.stateDict();
                assertEquals(hd.keySet(), sd.keySet(), "state dict keys");
                for (var e : hd.entrySet()) {
                    CudaCoreTestSupport.assertClose(sd.get(e.getKey()).toFloatArray(), e.getValue().toFloatArray(), 1e-6,
                            e.getKey());
                }
            }
        }
    }
}
