package dev.qlora4j.peft;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * modules_to_save=["embed_tokens"]: the model embeds with the adapter's trainable copy (a change to
 * the copy changes the logits; disabling the adapter restores the base) and training sends the
 * embedding gradient to exactly the rows of the tokens that were used.
 */
class EmbeddingModulesToSaveTest {
    @Test
    void theTrainableEmbeddingCopyIsUsedAndTrained() {
        int[] ids = Golden.ints(Golden.json("qwen2-f32").get("prompts").get(0).get("input_ids"));
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("qwen2-f32"), LoadOptions.cpu())) {
            float[] base = lm.logits(ids)[ids.length - 1];
            PeftModel peft = PeftModel.wrap(lm, LoraConfig.builder().r(4).loraAlpha(8)
                    .targetModules(new ModuleSelector.Names(List.of("q_proj")))
                    .modulesToSave(List.of("embed_tokens")).build(), PeftModel.DEFAULT_ADAPTER, 3);
            assertNotNull(peft.embeddingOverride(), "embed_tokens copy exists");
            assertArrayEquals(base, lm.logits(ids)[ids.length - 1], "a fresh copy equals the base table (B of LoRA is zero)");
            // perturb one used row of the copy: logits move; disabling the adapters restores the base
            var table = peft.embeddingOverride().weight().value();
            int row = ids[1], hidden = table.dim(1);
            for (int j = 0; j < hidden; j++) table.setFloat((long) row * hidden + j, table.getFloat((long) row * hidden + j) + 0.5f);
            assertFalse(java.util.Arrays.equals(base, lm.logits(ids)[ids.length - 1]), "the copy is what the model embeds with");
            try (var off = peft.disabledAdapters()) {
                assertArrayEquals(base, lm.logits(ids)[ids.length - 1], "disabled adapters use the frozen table");
            }
            // training: gradient only on the rows of used tokens
            peft.train(true);
            peft.zeroGrad();
            int n = ids.length;
            int[] pos = new int[n], targets = new int[n];
            for (int i = 0; i < n; i++) {
                pos[i] = i;
                targets[i] = i + 1 < n ? ids[i + 1] : -100;
            }
            lm.model().trainStep(ids, pos, null, targets, 1, false, 1f / (n - 1));
            Param embed = peft.trainableParameters().stream().filter(p -> p.name().contains("embed_tokens")).findFirst().orElseThrow();
            assertTrue(embed.name().endsWith("embed_tokens.modules_to_save.default.weight"), embed.name());
            float[] g = embed.grad().toFloatArray();
            java.util.Set<Integer> used = new java.util.HashSet<>();
            // the last token only predicts an ignored target: its row gets no gradient
            for (int i = 0; i < n - 1; i++) used.add(ids[i]);
            int vocab = g.length / hidden;
            for (int r = 0; r < vocab; r++) {
                double norm = 0;
                for (int j = 0; j < hidden; j++) norm += Math.abs(g[r * hidden + j]);
                if (used.contains(r)) assertTrue(norm > 0, "row " + r + " of a used token gets a gradient");
                else assertEquals(0.0, norm, "row " + r + " fed no trained prediction");
            }
        }
    }
}
