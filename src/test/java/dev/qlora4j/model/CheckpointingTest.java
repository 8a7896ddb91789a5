package dev.qlora4j.model;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Gradient checkpointing recomputes each layer's forward during backward: the gradients must be
 * the same (to 1e-6 relative: the recomputed forward can run in another JIT tier, and the Vector API's
 * exp differs by an ulp between the interpreter and compiled code), and the activations held between forward and backward shrink to the layer
 * inputs. The saving is printed for the tiny golden Llama (3 layers, hidden 64, 2 x 48 tokens).
 */
class CheckpointingTest {
    @Test
    void checkpointingGivesTheSameGradientsWithFewerSavedActivations() {
        int[] ids = Golden.ints(Golden.json("llama-f32").get("prompts").get(2).get("input_ids"));
        int t = ids.length, batch = 2;
        int[] tokens = new int[batch * t], pos = new int[batch * t], targets = new int[batch * t];
        for (int r = 0; r < batch; r++) {
            for (int i = 0; i < t; i++) {
                tokens[r * t + i] = ids[i];
                pos[r * t + i] = i;
                targets[r * t + i] = i + 1 < t ? ids[i + 1] : -100;
            }
        }
        long[] bytes = new long[2];
        List<List<float[]>> grads = new ArrayList<>();
        for (int c = 0; c < 2; c++) {
            try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
                PeftModel peft = PeftModel.wrap(lm, LoraConfig.builder().r(4).loraAlpha(8).targetModules(new ModuleSelector.AllLinear())
                        .initLoraWeights(new InitLoraWeights.Flag(false)).build(), PeftModel.DEFAULT_ADAPTER, 7);
                peft.train(true);
                lm.model().setCheckpointKeepAttention(false);   // only the layer inputs: what this test counts
                lm.model().setCheckpointKeepResidual(false);
                TransformerLM.StepResult r = lm.model().trainStep(tokens, pos, null, targets, batch, c == 1, 1f / (batch * (t - 1)));
                bytes[c] = r.activationBytes();
                List<float[]> g = new ArrayList<>();
                for (Param p : peft.trainableParameters()) g.add(p.grad().toFloatArray());
                grads.add(g);
            }
        }
        System.out.printf("activations kept for backward: %,d bytes without checkpointing, %,d with (%.1fx less)%n",
                bytes[0], bytes[1], bytes[0] / (double) bytes[1]);
        assertTrue(bytes[1] * 5 < bytes[0], "checkpointing keeps only the layer inputs");
        assertEquals(grads.get(0).size(), grads.get(1).size());
        for (int i = 0; i < grads.get(0).size(); i++) {
            float[] a = grads.get(0).get(i), b = grads.get(1).get(i);
            double scale = 0;
            for (float v : a) scale = Math.max(scale, Math.abs(v));
            for (int j = 0; j < a.length; j++) assertEquals(a[j], b[j], 1e-6 * scale, "gradient " + i + "[" + j + "]");
        }
    }
}
