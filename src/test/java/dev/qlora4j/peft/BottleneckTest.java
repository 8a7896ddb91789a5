package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.BottleneckConfig;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeSet;
import java.util.function.Supplier;

import static org.junit.jupiter.api.Assertions.*;

/** Bottleneck adapters through LayerHooks: forward and backward vs float64, save/load. */
class BottleneckTest {
    static final int N = 3, H = 16, LAYERS = 2;

    static java.util.stream.Stream<org.junit.jupiter.api.Named<Backend>> backends() { return TestBackends.all(); }

    static BottleneckConfig config(String act, boolean parallel, BottleneckConfig.Scaling scaling, double dropout) {
        return new BottleneckConfig(4, 16, act, true, true, parallel, scaling, false, true, true, false, false, "bert", dropout,
                null, "CAUSAL_LM", null, null, false, Map.of());
    }

    /** input, sublayer output -> result, in float64, with the dropout mask (or null) on s*u. */
    static double[] ref(BottleneckAdapter a, Backend b, String act, double[] in, double[] out, double[] mask) {
        double[] x = a.parallel() ? in : out;
        double[] z = Ref.linear(x, N, H, Ref.d(a.down().hostValues(b)), 4, Ref.d(a.downBias().hostValues(b)));
        for (int i = 0; i < z.length; i++) z[i] = Activation.of(act).f(z[i]);
        double[] u = Ref.linear(z, N, 4, Ref.d(a.up().hostValues(b)), H, Ref.d(a.upBias().hostValues(b)));
        double s = a.scaling(b);
        double[] r = out.clone();
        for (int i = 0; i < r.length; i++) r[i] += s * u[i] * (mask == null ? 1 : mask[i]);
        return r;
    }

    @ParameterizedTest
    @MethodSource("backends")
    void forwardMatchesFloat64ForEachActivationAndPlacement(Backend b) {
        TestBackends.assumeTrainingOps(b);
        SplittableRandom rng = new SplittableRandom(1);
        float[] in = Ref.randomFloats(rng, N * H, 1), out = Ref.randomFloats(rng, N * H, 1);
        for (String act : List.of("relu", "silu", "gelu", "gelu_new", "tanh")) {
            for (boolean parallel : List.of(false, true)) {
                try (BottleneckModel m = BottleneckModel.create(config(act, parallel, BottleneckConfig.Scaling.fixed(2.5), 0), b, LAYERS, H, 3)) {
                    BottleneckAdapter a = m.attentionAdapter(1);
                    // bert init gives small weights; make them larger so the non-linearity matters
                    a.down().setHostValues(b, Ref.randomFloats(rng, 4 * H, 1));
                    a.up().setHostValues(b, Ref.randomFloats(rng, H * 4, 1));
                    a.downBias().setHostValues(b, Ref.randomFloats(rng, 4, 0.5));
                    float[] got = b.toHost(m.afterAttention(1, Tensor.of(in.clone(), N, H), Tensor.of(out.clone(), N, H))).toFloatArray();
                    double[] expected = ref(a, b, act, Ref.d(in), Ref.d(out), null);
                    assertTrue(Ref.relErr(got, expected) < 1e-5, act + " parallel=" + parallel + ": " + Ref.relErr(got, expected));
                }
            }
        }
        Tensor o = Tensor.of(out.clone(), N, H);
        assertSame(o, LayerHooks.NONE.afterMlp(0, Tensor.of(in.clone(), N, H), o));
    }

    @ParameterizedTest
    @MethodSource("backends")
    void backwardMatchesFiniteDifferences(Backend b) {
        TestBackends.assumeTrainingOps(b);
        for (boolean parallel : List.of(false, true)) {
            SplittableRandom rng = new SplittableRandom(2);
            float[] in = Ref.randomFloats(rng, N * H, 1), out = Ref.randomFloats(rng, N * H, 1), g = Ref.randomFloats(rng, N * H, 1);
            try (BottleneckModel m = BottleneckModel.create(config("gelu", parallel, BottleneckConfig.Scaling.learnedScalar(), 0.2), b, LAYERS, H, 4)) {
                m.train(true);
                m.setStep(99);
                BottleneckAdapter a = m.outputAdapter(0);
                a.down().setHostValues(b, Ref.randomFloats(rng, 4 * H, 1));
                a.up().setHostValues(b, Ref.randomFloats(rng, H * 4, 1));
                a.learnedScaling().setHostValues(b, new float[] {1.7f});
                double[] mask = Ref.mask(b, N, H, 0.2f, Seeds.derive(99, "bottleneck", BottleneckModel.OUTPUT, "0"));
                float[] got = b.toHost(m.afterMlp(0, Tensor.of(in.clone(), N, H), Tensor.of(out.clone(), N, H))).toFloatArray();
                assertTrue(Ref.relErr(got, ref(a, b, "gelu", Ref.d(in), Ref.d(out), mask)) < 1e-5);
                LayerHooks.HookGrads grads = m.afterMlpBackward(0, Tensor.of(in.clone(), N, H), Tensor.of(out.clone(), N, H), Tensor.of(g.clone(), N, H));
                double[] gd = Ref.d(g);
                double[] inD = Ref.d(in), outD = Ref.d(out);
                Supplier<Double> loss = () -> Ref.dot(gd, ref(a, b, "gelu", inD, outD, mask));
                // parameters: perturb through the adapter's own tensors
                for (TrainableTensor t : List.of(a.down(), a.downBias(), a.up(), a.upBias(), a.learnedScaling())) {
                    float[] v = t.hostValues(b);
                    float[] grad = b.toHost(t.grad()).toFloatArray();
                    for (int i = 0; i < v.length; i += Math.max(1, v.length / 7)) {
                        float keep = v[i], h = 1e-2f;
                        v[i] = keep + h; t.setHostValues(b, v); double up = loss.get();
                        v[i] = keep - h; t.setHostValues(b, v); double down = loss.get();
                        v[i] = keep; t.setHostValues(b, v);
                        double fd = (up - down) / (2 * (double) h);
                        assertEquals(fd, grad[i], 2e-3 * (1 + Math.abs(fd)), "param grad " + i + " parallel=" + parallel);
                    }
                }
                double[] gOut = fdInput(loss, outD), gIn = fdInput(loss, inD);
                float[] gotOut = b.toHost(grads.gradSublayerOut()).toFloatArray();
                for (int i = 0; i < gOut.length; i++) assertEquals(gOut[i], gotOut[i], 2e-3 * (1 + Math.abs(gOut[i])));
                if (parallel) {
                    float[] gotIn = b.toHost(grads.gradSublayerIn()).toFloatArray();
                    for (int i = 0; i < gIn.length; i++) assertEquals(gIn[i], gotIn[i], 2e-3 * (1 + Math.abs(gIn[i])));
                } else {
                    assertNull(grads.gradSublayerIn());
                    for (double v : gIn) assertEquals(0, v, 1e-9);
                }
            }
        }
    }

    private static double[] fdInput(Supplier<Double> loss, double[] x) {
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double keep = x[i], h = 1e-4;
            x[i] = keep + h; double up = loss.get();
            x[i] = keep - h; double down = loss.get();
            x[i] = keep;
            g[i] = (up - down) / (2 * h);
        }
        return g;
    }

    @Test
    void saveLoadRoundTripWithPeftStyleKeys(@TempDir Path tmp) {
        Backend b = new RefOpsBackend();
        BottleneckConfig cfg = new BottleneckConfig(null, 4, "swish", true, true, false, BottleneckConfig.Scaling.learnedScalar(),
                false, true, true, false, false, "mam_adapter", 0, List.of(1), "CAUSAL_LM", null, null, false, Map.of());
        try (BottleneckModel m = BottleneckModel.create(cfg, b, LAYERS, H, 5)) {
            assertNull(m.attentionAdapter(0), "layers_to_transform [1]");
            BottleneckAdapter a = m.attentionAdapter(1);
            double bound = 1 / Math.sqrt(H);
            for (float v : a.down().hostValues(b)) assertTrue(Math.abs(v) <= bound);
            for (float v : a.up().hostValues(b)) assertEquals(0f, v, "mam_adapter: up starts at zero");
            a.up().setHostValues(b, Ref.randomFloats(new SplittableRandom(1), H * 4, 1));
            assertEquals(List.of("base_model.model.model.layers.1.attention_adapter.down.weight",
                    "base_model.model.model.layers.1.attention_adapter.down.bias",
                    "base_model.model.model.layers.1.attention_adapter.up.weight",
                    "base_model.model.model.layers.1.attention_adapter.up.bias",
                    "base_model.model.model.layers.1.attention_adapter.scaling"), a.keys());
            m.save(tmp, "tiny-llama");
            try (SafetensorsFile f = SafetensorsFile.open(tmp.resolve("adapter_model.safetensors"))) {
                assertEquals(10, f.names().size());
                assertArrayEquals(new int[] {4, H}, f.info("base_model.model.model.layers.1.output_adapter.down.weight").shape());
                assertArrayEquals(new int[] {H, 4}, f.info("base_model.model.model.layers.1.output_adapter.up.weight").shape());
            }
            try (BottleneckModel back = BottleneckModel.load(tmp, b, LAYERS, H)) {
                assertEquals(cfg.withBaseModel("tiny-llama", null).withInferenceMode(true), back.config());
                List<Param> p1 = m.trainableParameters(), p2 = back.trainableParameters();
                assertEquals(p1.stream().map(Param::name).toList(), p2.stream().map(Param::name).toList());
                for (int i = 0; i < p1.size(); i++) {
                    assertArrayEquals(b.toHost(p1.get(i).value()).toFloatArray(), b.toHost(p2.get(i).value()).toFloatArray());
                }
            }
            var e = assertThrows(IllegalArgumentException.class, () -> BottleneckModel.load(tmp, b, LAYERS, 32));
            assertTrue(e.getMessage().contains("has shape [4, 16] but this model expects [8, 32]"), e.getMessage());
        }
    }
}
