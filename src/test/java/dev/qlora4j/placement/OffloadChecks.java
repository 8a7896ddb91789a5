package dev.qlora4j.placement;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.ActivationStore;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;

import java.util.ArrayList;
import java.util.List;
import java.util.function.Function;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/** What the offload tests compare between a placed model and the all-on-device one: logits, greedy tokens, LoRA gradients. */
final class OffloadChecks {
    private OffloadChecks() {}

    static final String MODEL = "llama-f32"; // 3 layers: offloading all of them alternates the two slots and reuses slot 0

    /** Everything the model produces, for exact comparison. */
    record Outputs(float[][] logits, int[][] greedy, List<float[]> grads, double loss) {}

    static Outputs run(LoadOptions load, PlacementOptions placement, boolean checkpointing,
                       Function<CausalLM, ActivationStore> store) {
        int[] prompt = Golden.ints(Golden.json(MODEL).get("prompts").get(2).get("input_ids"));
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir(MODEL), load, placement)) {
            float[][] logits = lm.logits(prompt);
            int[][] greedy = lm.generateIds(new int[][] {prompt, java.util.Arrays.copyOf(prompt, 5)}, SamplingParams.greedy(6),
                    TokenListener.NONE).outputIds();
            PeftModel peft = PeftModel.wrap(lm, LoraConfig.builder().r(4).loraAlpha(8).targetModules(new ModuleSelector.AllLinear())
                    .initLoraWeights(new InitLoraWeights.Flag(false)).build(), PeftModel.DEFAULT_ADAPTER, 7);
            peft.train(true);
            if (store != null) lm.model().setActivationStore(store.apply(lm));
            int t = prompt.length, batch = 2;
            int[] tokens = new int[batch * t], pos = new int[batch * t], targets = new int[batch * t];
            for (int r = 0; r < batch; r++) {
                for (int i = 0; i < t; i++) {
                    tokens[r * t + i] = prompt[(i + 3 * r) % t];
                    pos[r * t + i] = i;
                    targets[r * t + i] = i + 1 < t ? prompt[(i + 1 + 3 * r) % t] : -100;
                }
            }
            TransformerLM.StepResult s = lm.model().trainStep(tokens, pos, null, targets, batch, checkpointing, 1f / (batch * (t - 1)));
            List<float[]> grads = new ArrayList<>();
            for (Param p : peft.trainableParameters()) grads.add(lm.backend().toHost(p.grad()).toFloatArray());
            return new Outputs(logits, greedy, grads, s.lossSum());
        }
    }

    /** Bit-identical: the same kernels run on the same values, only where the weights wait between uses differs. */
    static void assertSame(Outputs expected, Outputs actual) {
        for (int i = 0; i < expected.logits().length; i++) assertArrayEquals(expected.logits()[i], actual.logits()[i], "logits row " + i);
        for (int i = 0; i < expected.greedy().length; i++) assertArrayEquals(expected.greedy()[i], actual.greedy()[i], "greedy tokens " + i);
        assertEquals(expected.loss(), actual.loss(), 0.0, "loss");
        assertEquals(expected.grads().size(), actual.grads().size());
        for (int i = 0; i < expected.grads().size(); i++) assertArrayEquals(expected.grads().get(i), actual.grads().get(i), "gradient " + i);
    }
}
