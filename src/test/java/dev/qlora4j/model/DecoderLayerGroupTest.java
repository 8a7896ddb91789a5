package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.LinearGroup;
import dev.qlora4j.nn.QuantizedBaseLinear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.peft.LoraLinear;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;

/**
 * DecoderLayer.forward computes q/k/v and gate/up through {@link LinearGroup} (one Backend.linearQuantizedGroup call
 * per group): a tiny random Llama layer with NF4 projections, bare or under LoRA / DoRA adapters, gives bit-identical
 * outputs to the same layer whose projections are forced through their own forward (prefill then a decode step).
 */
class DecoderLayerGroupTest {
    static final int HIDDEN = 64, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 16, INTER = 96;

    static ModelConfig config() {
        return ModelConfig.parse("""
                {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 64,
                 "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"}
                """);
    }

    /** A projection only reachable through its own forward (never grouped). */
    record Opaque(Linear inner) implements Linear {
        @Override public Tensor forward(Backend b, Tensor x) { return inner.forward(b, x); }
        @Override public Tensor backward(Backend b, Tensor x, Tensor g) { return inner.backward(b, x, g); }
        @Override public int inFeatures() { return inner.inFeatures(); }
        @Override public int outFeatures() { return inner.outFeatures(); }
        @Override public long weightBytes() { return inner.weightBytes(); }
    }

    /** A groupable projection that counts which route ran; its own forward must not run inside a group. */
    static final class Tracking implements QuantizedBaseLinear {
        final QuantizedBaseLinear inner;
        int fromBase, own;

        Tracking(QuantizedBaseLinear inner) { this.inner = inner; }

        @Override public QuantizedLinear quantizedBase() { return inner.quantizedBase(); }
        @Override public Tensor forwardFromBase(Backend b, Tensor x, Tensor baseOut) { fromBase++; return inner.forwardFromBase(b, x, baseOut); }
        @Override public Tensor forward(Backend b, Tensor x) { own++; return inner.forward(b, x); }
        @Override public Tensor backward(Backend b, Tensor x, Tensor g) { return inner.backward(b, x, g); }
        @Override public int inFeatures() { return inner.inFeatures(); }
        @Override public int outFeatures() { return inner.outFeatures(); }
        @Override public long weightBytes() { return inner.weightBytes(); }
    }

    static float[] random(Random r, int n, double scale) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) (r.nextGaussian() * scale);
        return v;
    }

    static QuantizedLinear nf4(Backend b, Random r, int out, int in, boolean bias, boolean doubleQuant, DType compute) {
        var state = Quant4bit.quantize(random(r, out * in, 0.1), new int[] {out, in}, QuantType.NF4, 64, doubleQuant);
        return new QuantizedLinear(b.prepare4bit(state, compute), bias ? b.upload(Tensor.of(random(r, out, 0.1), out)) : null);
    }

    /** q k v o gate up down: NF4 (q/k/v with a bias, as Qwen2), optionally each under a LoRA or DoRA adapter. */
    static Linear[] projections(Backend b, long seed, String adapter, boolean doubleQuant) {
        return projections(b, seed, adapter, doubleQuant, DType.F32);
    }

    static Linear[] projections(Backend b, long seed, String adapter, boolean doubleQuant, DType compute) {
        Random r = new Random(seed);
        int[][] shapes = {{HEADS * HEAD_DIM, HIDDEN}, {KV_HEADS * HEAD_DIM, HIDDEN}, {KV_HEADS * HEAD_DIM, HIDDEN},
                {HIDDEN, HEADS * HEAD_DIM}, {INTER, HIDDEN}, {INTER, HIDDEN}, {HIDDEN, INTER}};
        Linear[] p = new Linear[7];
        for (int i = 0; i < 7; i++) {
            QuantizedLinear q = nf4(b, r, shapes[i][0], shapes[i][1], i < 3, doubleQuant, compute);
            if (adapter.equals("none")) {
                p[i] = q;
                continue;
            }
            LoraLinear l = new LoraLinear("model.layers.0.p" + i, q, false);
            l.addAdapter(b, "a", 4, 8, 2.0, 0.0, adapter.equals("dora"), InitLoraWeights.of(false), seed + i);
            l.setActiveAdapters(List.of("a"));
            p[i] = l;
        }
        return p;
    }

    static DecoderLayer layer(Backend b, Linear[] p, long seed) {
        Random r = new Random(seed ^ 0x5eed);
        float[] w1 = random(r, HIDDEN, 0.2), w2 = random(r, HIDDEN, 0.2);
        for (int i = 0; i < HIDDEN; i++) { w1[i] += 1; w2[i] += 1; }  // norm weights around 1
        Tensor n1 = b.upload(Tensor.of(w1, HIDDEN)), n2 = b.upload(Tensor.of(w2, HIDDEN));
        return new DecoderLayer(0, n1, n2, p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    }

    /** Prefill of 3 tokens then one decode step; the outputs of both, flattened. */
    static float[] run(Backend b, DecoderLayer layer, ModelConfig c) {
        Random r = new Random(42);
        KvCache cache = b.newKvCache(1, 1, KV_HEADS, 8, HEAD_DIM);
        float[] inv = new float[HEAD_DIM / 2];
        for (int i = 0; i < inv.length; i++) inv[i] = (float) Math.pow(10000.0, -2.0 * i / HEAD_DIM);
        Tensor invFreq = b.upload(Tensor.of(inv, inv.length)), pad = b.upload(Tensor.ofInts(new int[] {0}, 1));
        Tensor x1 = b.upload(Tensor.of(random(r, 3 * HIDDEN, 1.0), 3, HIDDEN));
        Tensor p1 = b.upload(Tensor.ofInts(new int[] {0, 1, 2}, 3));
        DecoderLayer.Output o1 = layer.forward(b, c, x1, null, null, p1, invFreq, 1f, cache, 0, 0, pad);
        Tensor x2 = b.upload(Tensor.of(random(r, HIDDEN, 1.0), 1, HIDDEN));
        Tensor p2 = b.upload(Tensor.ofInts(new int[] {3}, 1));
        DecoderLayer.Output o2 = layer.forward(b, c, x2, null, layer.inputNorm, p2, invFreq, 1f, cache, 0, 3, pad);
        float[] a = b.toHost(o1.out()).toFloatArray(), d = b.toHost(o2.out()).toFloatArray(), n = b.toHost(o2.normed()).toFloatArray();
        float[] all = new float[a.length + d.length + n.length];
        System.arraycopy(a, 0, all, 0, a.length);
        System.arraycopy(d, 0, all, a.length, d.length);
        System.arraycopy(n, 0, all, a.length + d.length, n.length);
        cache.close();
        return all;
    }

    @ParameterizedTest
    @CsvSource({"none,false", "none,true", "lora,false", "lora,true", "dora,true"})
    void groupedProjectionsGiveTheSameLayerOutputBitForBit(String adapter, boolean doubleQuant) {
        try (CpuBackend b = new CpuBackend()) {
            assertGroupedEqualsPerProjection(b, adapter, doubleQuant, DType.F32);
        }
    }

    /**
     * The layer with q/k/v and gate/up grouped against the same projections forced through their own forward:
     * bit-identical outputs, and the grouped route really taken (o and down always run alone).
     */
    static void assertGroupedEqualsPerProjection(Backend b, String adapter, boolean doubleQuant, DType compute) {
        ModelConfig c = config();
        Linear[] p = projections(b, 7, adapter, doubleQuant, compute);
        Tracking[] t = new Tracking[7];
        Linear[] grouped = new Linear[7], single = new Linear[7];
        for (int i = 0; i < 7; i++) {
            t[i] = new Tracking((QuantizedBaseLinear) p[i]);
            grouped[i] = t[i];
            single[i] = new Opaque(p[i]);
        }
        float[] viaGroups = run(b, layer(b, grouped, 7), c);
        float[] perProjection = run(b, layer(b, single, 7), c);
        assertArrayEquals(perProjection, viaGroups, adapter + " dq=" + doubleQuant + " compute=" + compute
                + ": grouped q/k/v and gate/up must not change a bit");
        // q, k, v, gate, up went through the group (2 forwards each), o and down through their own forward
        for (int i : new int[] {0, 1, 2, 4, 5}) {
            assertEquals(2, t[i].fromBase, "projection " + i + " computed from the group's base output");
            assertEquals(0, t[i].own, "projection " + i + " never ran alone");
        }
        assertEquals(0, t[3].fromBase);
        assertEquals(2, t[3].own);
        assertEquals(2, t[6].own);
        for (Linear l : p) l.close();
    }

    /** One projection that cannot group (dense) sends its whole group through the per-layer forwards. */
    @Test
    void aGroupWithANonQuantizedMemberRunsEachForward() {
        try (CpuBackend b = new CpuBackend()) {
            Random r = new Random(3);
            Linear[] p = projections(b, 11, "lora", false);
            Tracking q = new Tracking((QuantizedBaseLinear) p[0]), k = new Tracking((QuantizedBaseLinear) p[1]);
            Linear dense = new dev.qlora4j.nn.DenseLinear(b.upload(Tensor.of(random(r, 32 * HIDDEN, 0.1), 32, HIDDEN)), null);
            Tensor x = b.upload(Tensor.of(random(r, 2 * HIDDEN, 1.0), 2, HIDDEN));
            Tensor[] y = LinearGroup.forward(b, x, q, k, dense);
            assertEquals(1, q.own);
            assertEquals(1, k.own);
            assertEquals(0, q.fromBase + k.fromBase);
            assertArrayEquals(p[0].forward(b, x).toFloatArray(), y[0].toFloatArray());
            assertArrayEquals(dense.forward(b, x).toFloatArray(), y[2].toFloatArray());
        }
    }

    @Test
    void loraExposesItsQuantizedBaseAndAddsItsAdapterFromTheBaseOutput() {
        try (CpuBackend b = new CpuBackend()) {
            Random r = new Random(5);
            Linear[] p = projections(b, 13, "lora", true);
            LoraLinear l = (LoraLinear) p[4];
            assertSame(l.base(), l.quantizedBase());
            Tensor x = b.upload(Tensor.of(random(r, 3 * HIDDEN, 1.0), 3, HIDDEN));
            float[] whole = l.forward(b, x).toFloatArray();
            float[] viaBase = l.forwardFromBase(b, x, l.base().forward(b, x)).toFloatArray();
            assertArrayEquals(whole, viaBase);
            l.setDisabled(true);
            assertArrayEquals(l.base().forward(b, x).toFloatArray(), l.forwardFromBase(b, x, l.base().forward(b, x)).toFloatArray(),
                    "disabled: the base output unchanged");
            LoraLinear dense = new LoraLinear("d", new dev.qlora4j.nn.DenseLinear(
                    b.upload(Tensor.of(random(r, 8 * HIDDEN, 0.1), 8, HIDDEN)), null), false);
            assertNull(dense.quantizedBase(), "a dense base is not grouped");
        }
    }
}
