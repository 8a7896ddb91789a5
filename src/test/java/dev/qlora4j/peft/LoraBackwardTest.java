package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.function.Function;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Backward of LoRA layers: grads of A, B, DoRA's magnitude and grad_x against central finite
 * differences of the float64 reference forward (exact here: the loss sum(G * out) is linear in
 * each single entry once DoRA's norm is held constant, as peft's detach() does). Needs the
 * backend's training ops: on the real CPU backend these run once branch cpu-backward is merged.
 */
@Tag("needs-cpu-backward")
class LoraBackwardTest {
    static final String PATH = "model.layers.1.mlp.up_proj";
    static final int N = 4, IN = 10, OUT = 6;

    static java.util.stream.Stream<org.junit.jupiter.api.Named<Backend>> backends() { return TestBackends.all(); }

    /** The pieces the reference loss depends on; mutated entry by entry by the finite differences. */
    record State(double[] x, double[] w, double[] bias, List<double[]> a, List<double[]> b, List<double[]> m) {}

    @ParameterizedTest
    @MethodSource("backends")
    void plainLoraWithDropoutAndTwoAdapters(Backend b) {
        check(b, false, false, 0.3, false);
    }

    @ParameterizedTest
    @MethodSource("backends")
    void doraWithoutDropoutAfterAPlainAdapter(Backend b) {
        check(b, true, false, 0.0, true);
    }

    @ParameterizedTest
    @MethodSource("backends")
    void doraWithDropout(Backend b) {
        check(b, true, false, 0.25, true);
    }

    @ParameterizedTest
    @MethodSource("backends")
    void doraOnNf4BaseWithDropout(Backend b) {
        check(b, true, true, 0.25, false);
    }

    /** Adapter "p" (plain, r=3) then "q" (plain or DoRA, r=2), both active, training mode. */
    private void check(Backend b, boolean dora, boolean nf4, double dropout, boolean withBias) {
        TestBackends.assumeTrainingOps(b);
        SplittableRandom rng = new SplittableRandom(42);
        float[] x = Ref.randomFloats(rng, N * IN, 1), w = Ref.randomFloats(rng, OUT * IN, 0.3);
        float[] bias = withBias ? Ref.randomFloats(rng, OUT, 0.5) : null;
        float[] g = Ref.randomFloats(rng, N * OUT, 1);
        double[] wRef;
        LoraLinear l;
        if (nf4) {
            var st = Quant4bit.quantize(w, new int[] {OUT, IN}, QuantType.NF4, 64, false);
            wRef = Ref.d(Quant4bit.dequantizeToF32(st));
            l = new LoraLinear(PATH, new QuantizedLinear(b.prepare4bit(st, DType.F32), bias == null ? null : Tensor.of(bias.clone(), OUT)), false);
        } else {
            wRef = Ref.d(w);
            l = new LoraLinear(PATH, new DenseLinear(Tensor.of(w.clone(), OUT, IN), bias == null ? null : Tensor.of(bias.clone(), OUT)), false);
        }
        LoraAdapter p = l.addAdapter(b, "p", 3, 6, 2, dropout, false, InitLoraWeights.of(false), 1);
        LoraAdapter q = l.addAdapter(b, "q", 2, 3, 1.5, dropout, dora, InitLoraWeights.of(false), 2);
        if (dora) {
            float[] m = q.magnitude().hostValues(b);
            for (int j = 0; j < OUT; j++) m[j] *= (float) (0.7 + 0.1 * j);
            q.magnitude().setHostValues(b, m);
        }
        l.setActiveAdapters(List.of("p", "q"));
        l.setTraining(true);
        l.setStep(777);
        List<LoraAdapter> ads = List.of(p, q);
        List<double[]> masks = new ArrayList<>();
        for (LoraAdapter a : ads) {
            masks.add(dropout > 0 ? Ref.mask(b, N, IN, (float) dropout, Seeds.derive(777, PATH, a.name())) : null);
        }
        if (dropout > 0) assertFalse(java.util.Arrays.equals(masks.get(0), masks.get(1)), "each adapter gets its own mask");

        State s = new State(Ref.d(x), wRef, bias == null ? null : Ref.d(bias), new ArrayList<>(), new ArrayList<>(), new ArrayList<>());
        List<double[]> norms = new ArrayList<>();
        for (LoraAdapter a : ads) {
            s.a().add(Ref.d(a.a().hostValues(b)));
            s.b().add(Ref.d(a.b().hostValues(b)));
            s.m().add(a.magnitude() == null ? null : Ref.d(a.magnitude().hostValues(b)));
        }
        for (int k = 0; k < ads.size(); k++) norms.add(s.m().get(k) == null ? null : Ref.doraNorm(s.w(), refAdapter(s, ads, masks, k), OUT, IN));
        double[] gd = Ref.d(g);
        Function<State, Double> loss = st -> {
            List<Ref.Adapter> list = new ArrayList<>();
            for (int k = 0; k < ads.size(); k++) list.add(refAdapter(st, ads, masks, k));
            return Ref.dot(gd, Ref.forward(st.x(), N, IN, st.w(), OUT, st.bias(), list, norms));
        };

        // the forward in training mode matches the reference with the same masks
        float[] out = b.toHost(l.forward(b, Tensor.of(x.clone(), N, IN))).toFloatArray();
        List<Ref.Adapter> list = new ArrayList<>();
        for (int k = 0; k < ads.size(); k++) list.add(refAdapter(s, ads, masks, k));
        double[] expected = Ref.forward(s.x(), N, IN, s.w(), OUT, s.bias(), list, norms);
        assertTrue(Ref.relErr(out, expected) < 1e-5, "forward rel err " + Ref.relErr(out, expected));

        float[] gx = b.toHost(l.backward(b, Tensor.of(x.clone(), N, IN), Tensor.of(g.clone(), N, OUT))).toFloatArray();
        assertClose("grad_x", gx, fd(loss, s, s.x()));
        for (int k = 0; k < ads.size(); k++) {
            LoraAdapter a = ads.get(k);
            assertClose(a.name() + ".lora_A", b.toHost(a.a().grad()).toFloatArray(), fd(loss, s, s.a().get(k)));
            assertClose(a.name() + ".lora_B", b.toHost(a.b().grad()).toFloatArray(), fd(loss, s, s.b().get(k)));
            if (a.useDora()) assertClose(a.name() + ".magnitude", b.toHost(a.magnitude().grad()).toFloatArray(), fd(loss, s, s.m().get(k)));
        }
        // a second backward accumulates
        float[] before = b.toHost(p.b().grad()).toFloatArray();
        l.backward(b, Tensor.of(x.clone(), N, IN), Tensor.of(g.clone(), N, OUT)).close();
        float[] after = b.toHost(p.b().grad()).toFloatArray();
        for (int i = 0; i < before.length; i++) assertEquals(2 * before[i], after[i], 1e-5 * (1 + Math.abs(before[i])));
        l.zeroGrad();
        assertNull(p.a().grad());
    }

    private static Ref.Adapter refAdapter(State s, List<LoraAdapter> ads, List<double[]> masks, int k) {
        LoraAdapter a = ads.get(k);
        return new Ref.Adapter(s.a().get(k), s.b().get(k), a.rank(), a.scaling(), s.m().get(k), masks.get(k));
    }

    /** Central differences of the loss in every entry of {@code target} (an array inside the state). */
    private static double[] fd(Function<State, Double> loss, State s, double[] target) {
        double[] grad = new double[target.length];
        for (int i = 0; i < target.length; i++) {
            double keep = target[i], h = 1e-3;
            target[i] = keep + h;
            double up = loss.apply(s);
            target[i] = keep - h;
            double down = loss.apply(s);
            target[i] = keep;
            grad[i] = (up - down) / (2 * h);
        }
        return grad;
    }

    private static void assertClose(String what, float[] got, double[] expected) {
        double scale = Math.max(1e-3, Ref.maxAbs(expected));
        for (int i = 0; i < expected.length; i++) {
            assertEquals(expected[i], got[i], 2e-5 * scale, what + "[" + i + "]");
        }
    }
}
