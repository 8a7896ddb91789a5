package dev.qlora4j.model;

import dev.qlora4j.CausalLM;
import dev.qlora4j.Golden;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * TransformerLM.setEmbeddingInHostMemory off the GPU: a no-op on the CPU backend (its tables are in host memory
 * already: the same tensor stays), and refused with a message for a tied LM head. The GPU behaviour (same bits, GPU
 * memory given back) is EmbeddingInHostMemoryGpuTest.
 */
class EmbeddingInHostMemoryTest {
    @Test
    void cpuBackendKeepsItsTableAndATiedHeadIsRefused() throws Exception {
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("mistral-f32"), LoadOptions.cpu())) {
            TransformerLM m = lm.model();
            assertFalse(m.lmHeadIsEmbedding(), "mistral-f32 has its own head");
            Tensor before = m.embedTokens();
            m.setEmbeddingInHostMemory(true);
            assertSame(before, m.embedTokens(), "nothing moves on the CPU backend");
            assertFalse(m.embeddingInHostMemory());
        }
        try (CausalLM lm = CausalLM.fromPretrained(Golden.dir("llama-f32"), LoadOptions.cpu())) {
            assertTrue(lm.model().lmHeadIsEmbedding(), "llama-f32 ties its head to the embedding");
            var e = assertThrows(IllegalStateException.class, () -> lm.model().setEmbeddingInHostMemory(true));
            assertEquals("the LM head is tied to the token embedding (tie_word_embeddings): keeping the table in host memory "
                    + "would stream all of it per step; leave the embedding on the GPU", e.getMessage());
        }
    }
}
