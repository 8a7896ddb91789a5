package dev.qlora4j.model;

import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.LinearGroup;
import dev.qlora4j.peft.LoraGroup;
import dev.qlora4j.peft.LoraLinear;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * LinearGroup.backward off the CUDA BF16 path (here the CPU backend, where LoraGroup never applies): the sum of the
 * layers' own backward results, added in layer order into the first one's grad_x, bit for bit, with the adapters'
 * gradients accumulated as by the per-layer calls (the route DecoderLayer.backwardTrain took before).
 */
class LinearGroupBackwardTest {
    @Test
    void sumsTheLayersBackwardsBitForBitOffTheCudaPath() {
        try (CpuBackend b = new CpuBackend()) {
            Random r = new Random(17);
            Linear[] grouped = DecoderLayerGroupTest.projections(b, 5, "lora", false);
            Linear[] single = DecoderLayerGroupTest.projections(b, 5, "lora", false);
            int n = 3, hidden = DecoderLayerGroupTest.HIDDEN;
            Tensor x = b.upload(Tensor.of(DecoderLayerGroupTest.random(r, n * hidden, 1.0), n, hidden));
            int[] qkv = {0, 1, 2};
            Tensor[] g = new Tensor[3];
            for (int i = 0; i < 3; i++) {
                int out = grouped[qkv[i]].outFeatures();
                g[i] = b.upload(Tensor.of(DecoderLayerGroupTest.random(r, n * out, 1.0), n, out));
            }
            Linear[] gl = {grouped[0], grouped[1], grouped[2]};
            assertNull(LoraGroup.backward(b, x, g, gl), "no CUDA BF16 path: LoraGroup declines");
            float[] viaGroup = LinearGroup.backward(b, x, g, gl).toFloatArray();
            Tensor want = single[0].backward(b, x, g[0]);
            b.addInPlace(want, single[1].backward(b, x, g[1]));
            b.addInPlace(want, single[2].backward(b, x, g[2]));
            assertArrayEquals(want.toFloatArray(), viaGroup);
            for (int i = 0; i < 3; i++) {
                LoraLinear a = (LoraLinear) grouped[i], c = (LoraLinear) single[i];
                assertArrayEquals(c.adapter("a").a().grad().toFloatArray(), a.adapter("a").a().grad().toFloatArray());
                assertArrayEquals(c.adapter("a").b().grad().toFloatArray(), a.adapter("a").b().grad().toFloatArray());
            }
            assertThrows(IllegalArgumentException.class, () -> LinearGroup.backward(b, x, new Tensor[] {g[0]}, gl));
            for (Linear l : grouped) l.close();
            for (Linear l : single) l.close();
        }
    }
}
