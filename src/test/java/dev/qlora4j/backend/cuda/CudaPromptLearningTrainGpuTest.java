package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.peft.config.PromptTuningConfig;
import dev.qlora4j.peft.prefix.TrainablePrefixTuning;
import dev.qlora4j.peft.prefix.TrainablePromptTuning;
import dev.qlora4j.train.Batch;
import dev.qlora4j.train.Collator;
import dev.qlora4j.train.Example;
import dev.qlora4j.train.PrefixTuningTrainableModel;
import dev.qlora4j.train.PromptTuningTrainableModel;
import dev.qlora4j.train.TrainRow;
import dev.qlora4j.train.TrainableModel;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.List;
import java.util.Map;
import java.util.function.Function;

/**
 * Prefix tuning (with and without the projection MLP) and prompt tuning trained on the GPU (F32
 * activations) against the CPU on llama-f32, same init: loss and every parameter gradient of one
 * step over a batch with a packed row and padding, within 1e-4 relative.
 */
@Tag("gpu")
class CudaPromptLearningTrainGpuTest {
    private static CausalLM load(String device) {
        try (var a = TemporaryProperty.set(CudaBackend.ACTIVATIONS_PROPERTY, "f32")) {
            return CausalLM.fromPretrained(Golden.dir("llama-f32"), device.equals("cpu") ? LoadOptions.cpu()
                    : LoadOptions.defaults().withDevice(device));
        }
    }

    static Batch batch() {
        int[] a = {1, 292, 398, 286, 332}, c = {305, 294, 386, 226, 301, 287}, d = {1, 299, 300, 310, 320, 330, 340, 350, 360, 370};
        return new Collator(2).collate(List.of(new TrainRow(List.of(Example.allTrained(a, 0), Example.allTrained(c, 0))),
                TrainRow.of(Example.allTrained(d, 0)), TrainRow.of(Example.allTrained(a, 0))));
    }

    @Test
    void prefixAndPromptGradientsMatchTheCpu() {
        assumeTrue(CudaBackend.isAvailable(), "no GPU");
        Map<String, Function<CausalLM, TrainableModel>> kinds = Map.of(
                "prefix", lm -> new PrefixTuningTrainableModel(lm.model(),
                        TrainablePrefixTuning.create(PrefixTuningConfig.of(4, false), lm.model(), 3), "llama-f32"),
                "prefix-projection", lm -> new PrefixTuningTrainableModel(lm.model(), TrainablePrefixTuning.create(
                        new PrefixTuningConfig(4, null, null, null, null, 24, true, null, "CAUSAL_LM", null, null, false, Map.of()),
                        lm.model(), 3), "llama-f32"),
                "prompt", lm -> new PromptTuningTrainableModel(lm.model(),
                        TrainablePromptTuning.create(PromptTuningConfig.random(3), lm.model(), null, 3), "llama-f32"));
        Batch b = batch();
        for (var kind : kinds.entrySet()) {
            try (CausalLM cpuLm = load("cpu"); CausalLM gpuLm = load("cuda")) {
                TrainableModel cpu = kind.getValue().apply(cpuLm), gpu = kind.getValue().apply(gpuLm);
                double lc = cpu.trainStep(b, false, 1f / b.tokens()).lossSum(), lg = gpu.trainStep(b, false, 1f / b.tokens()).lossSum();
                System.out.printf("%s: loss sum cpu %.6f gpu %.6f%n", kind.getKey(), lc, lg);
                assertTrue(Math.abs(lc - lg) <= 1e-4 * Math.abs(lc), kind.getKey() + " loss");
                List<Param> pc = cpu.trainableParameters(), pg = gpu.trainableParameters();
                for (int i = 0; i < pc.size(); i++) {
                    float[] want = pc.get(i).grad().toFloatArray(), got = gpuLm.backend().toHost(pg.get(i).grad()).toFloatArray();
                    CudaCoreTestSupport.assertClose(got, want, 1e-4, kind.getKey() + " grad " + pc.get(i).name());
                }
                assertTrue(Math.abs(cpu.eval(b).sum() - gpu.eval(b).sum()) <= 1e-4 * Math.abs(lc), kind.getKey() + " eval");
            }
        }
    }
}
