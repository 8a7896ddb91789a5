package dev.qlora4j.model;

import dev.qlora4j.Golden;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.peft.PeftModel;
import org.junit.jupiter.api.Test;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * TransformerLM.setCheckpointKeepDequantized: with checkpointing (default on) the model asks its backend to keep the
 * recompute's dequantized weights around each layer's recompute and backward (Backend#keepDequantizedWeights true,
 * then false, once per layer, from the last layer to the first, never left open); off, or without checkpointing, it
 * never asks. The CPU backend ignores the request, so here only the calls are checked (a counting proxy); the GPU test
 * DequantCacheGpuTest checks the kept weights and the bit-identical gradients.
 */
class CheckpointKeepDequantizedTest {
    @Test
    void theModelOpensAndClosesTheKeepAroundEachLayersRecomputeAndBackward() throws Exception {
        Path dir = Golden.dir("llama-f32");
        List<Boolean> calls = new ArrayList<>();
        CpuBackend cpu = new CpuBackend(1);
        Backend counting = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, m, args) -> {
                    switch (m.getName()) {
                        case "equals": return proxy == args[0];
                        case "hashCode": return System.identityHashCode(proxy);
                        case "toString": return "counting " + cpu;
                        case "keepDequantizedWeights": calls.add((Boolean) args[0]); break;
                        default: break;
                    }
                    try {
                        return m.invoke(cpu, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
        try (CheckpointReader r = CheckpointReader.open(dir)) {
            TransformerLM model = TransformerLM.load(ModelConfig.load(dir), new CheckpointWeights(r, dir.toString()), counting,
                    LinearFactory.DENSE);
            PeftModel peft = PeftModel.wrap(model, "llama-f32", CheckpointKeepAttentionTest.LORA, PeftModel.DEFAULT_ADAPTER, 7);
            peft.train(true);
            int layers = model.numLayers();
            int[][] b = CheckpointKeepAttentionTest.batch(model.config().vocabSize());
            assertTrue(model.checkpointKeepDequantized(), "on by default");

            model.trainStep(b[0], b[1], b[2], b[3], 2, true, 1f / 40);
            List<Boolean> expected = new ArrayList<>();
            for (int i = 0; i < layers; i++) {
                expected.add(true);
                expected.add(false);
            }
            assertEquals(expected, calls, "checkpointing: opened and closed once per layer");

            calls.clear();
            peft.zeroGrad();
            model.trainStep(b[0], b[1], b[2], b[3], 2, false, 1f / 40);
            assertEquals(List.of(), calls, "without checkpointing there is no recompute to keep from");

            model.setCheckpointKeepDequantized(false);
            peft.zeroGrad();
            model.trainStep(b[0], b[1], b[2], b[3], 2, true, 1f / 40);
            assertEquals(List.of(), calls, "turned off");
            peft.close();   // closes the model
        } finally {
            cpu.close();
        }
    }
}
