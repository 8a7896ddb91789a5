package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** LoRA / rsLoRA / DoRA forward on dense, NF4 and int8 bases against float64 references; disable; merge. */
class LoraLinearTest {
    static final String PATH = "model.layers.0.self_attn.q_proj";
    static final int N = 5, IN = 64, OUT = 24;
    static final InitLoraWeights RANDOM = InitLoraWeights.of(false);

    static java.util.stream.Stream<org.junit.jupiter.api.Named<Backend>> backends() { return TestBackends.all(); }

    record Fixture(float[] x, float[] w, float[] bias) {}

    static Fixture fixture(long seed, boolean withBias) {
        SplittableRandom rng = new SplittableRandom(seed);
        return new Fixture(Ref.randomFloats(rng, N * IN, 1), Ref.randomFloats(rng, OUT * IN, 0.2),
                withBias ? Ref.randomFloats(rng, OUT, 0.5) : null);
    }

    static Ref.Adapter ref(Backend b, LoraAdapter a, double[] mask) {
        return new Ref.Adapter(Ref.d(a.a().hostValues(b)), Ref.d(a.b().hostValues(b)), a.rank(), a.scaling(),
                a.magnitude() == null ? null : Ref.d(a.magnitude().hostValues(b)), mask);
    }

    static float[] run(Backend b, Linear l, float[] x) {
        return b.toHost(l.forward(b, b.upload(Tensor.of(x.clone(), N, IN)))).toFloatArray();
    }

    @ParameterizedTest
    @MethodSource("backends")
    void denseBaseTwoAdaptersWithRsLora(Backend b) {
        TestBackends.assumeTrainingOps(b);
        Fixture f = fixture(1, true);
        LoraLinear l = new LoraLinear(PATH, new DenseLinear(Tensor.of(f.w().clone(), OUT, IN), Tensor.of(f.bias().clone(), OUT)), false);
        LoraAdapter a = l.addAdapter(b, "a", 4, 8, 8.0 / 4, 0.1, false, RANDOM, 11);
        LoraAdapter c = l.addAdapter(b, "c", 2, 3, 3 / Math.sqrt(2), 0.0, false, RANDOM, 12);   // rsLoRA scale alpha/sqrt(r)
        l.setActiveAdapters(List.of("a", "c"));
        double[] expected = Ref.forward(Ref.d(f.x()), N, IN, Ref.d(f.w()), OUT, Ref.d(f.bias()),
                List.of(ref(b, a, null), ref(b, c, null)), null);
        float[] got = run(b, l, f.x());
        assertTrue(Ref.relErr(got, expected) < 2e-6, "rel err " + Ref.relErr(got, expected));
        // eval mode: dropout 0.1 of adapter "a" is not applied (nn.Dropout is the identity in eval)
        assertEquals(0.1, a.dropout());
    }

    @ParameterizedTest
    @MethodSource("backends")
    void nf4BaseUsesTheDequantizedWeight(Backend b) {
        TestBackends.assumeTrainingOps(b);
        Fixture f = fixture(2, true);
        var state = Quant4bit.quantize(f.w(), new int[] {OUT, IN}, QuantType.NF4, 64, true);
        float[] deq = Quant4bit.dequantizeToF32(state);
        LoraLinear l = new LoraLinear(PATH, new QuantizedLinear(b.prepare4bit(state, DType.F32), Tensor.of(f.bias().clone(), OUT)), false);
        LoraAdapter a = l.addAdapter(b, "default", 8, 16, 2, 0, false, RANDOM, 3);
        l.setActiveAdapters(List.of("default"));
        double[] expected = Ref.forward(Ref.d(f.x()), N, IN, Ref.d(deq), OUT, Ref.d(f.bias()), List.of(ref(b, a, null)), null);
        float[] got = run(b, l, f.x());
        assertTrue(Ref.relErr(got, expected) < 1e-5, "rel err " + Ref.relErr(got, expected));
    }

    @ParameterizedTest
    @MethodSource("backends")
    void int8BaseAddsTheSameDelta(Backend b) {
        TestBackends.assumeTrainingOps(b);
        Fixture f = fixture(3, false);
        QuantizedLinear q = new QuantizedLinear(b.prepare8bit(Int8Weight.quantize(f.w(), OUT, IN), 0f), null);
        float[] baseOut = run(b, q, f.x());
        LoraLinear l = new LoraLinear(PATH, q, false);
        LoraAdapter a = l.addAdapter(b, "default", 4, 4, 1, 0, false, RANDOM, 4);
        l.setActiveAdapters(List.of("default"));
        // LLM.int8 rounds the activations too, so the reference is the layer's own base output plus the float64 delta
        Ref.Adapter ra = ref(b, a, null);
        double[] delta = Ref.linear(Ref.linear(Ref.d(f.x()), N, IN, ra.a(), 4, null), N, 4, ra.b(), OUT, null);
        double[] expected = new double[N * OUT];
        for (int i = 0; i < expected.length; i++) expected[i] = baseOut[i] + ra.s() * delta[i];
        float[] got = run(b, l, f.x());
        assertTrue(Ref.relErr(got, expected) < 2e-6, "rel err " + Ref.relErr(got, expected));
    }

    @ParameterizedTest
    @MethodSource("backends")
    void doraForwardDenseWithBiasAndNf4(Backend b) {
        TestBackends.assumeTrainingOps(b);
        Fixture f = fixture(4, true);
        LoraLinear dense = new LoraLinear(PATH, new DenseLinear(Tensor.of(f.w().clone(), OUT, IN), Tensor.of(f.bias().clone(), OUT)), false);
        LoraAdapter a = dense.addAdapter(b, "default", 4, 8, 2, 0, true, RANDOM, 5);
        // the magnitude starts as ||W + s B A|| per row
        Ref.Adapter ra = ref(b, a, null);
        double[] norm = Ref.doraNorm(Ref.d(f.w()), ra, OUT, IN);
        double[] m = ra.m();
        for (int j = 0; j < OUT; j++) assertEquals(norm[j], m[j], 1e-5 * norm[j]);
        // change m so that m / norm != 1 and check peft's formula
        float[] newM = new float[OUT];
        for (int j = 0; j < OUT; j++) newM[j] = (float) (m[j] * (0.5 + j / (double) OUT));
        a.magnitude().setHostValues(b, newM);
        dense.setActiveAdapters(List.of("default"));
        double[] expected = Ref.forward(Ref.d(f.x()), N, IN, Ref.d(f.w()), OUT, Ref.d(f.bias()), List.of(ref(b, a, null)), null);
        float[] got = run(b, dense, f.x());
        assertTrue(Ref.relErr(got, expected) < 5e-6, "dense rel err " + Ref.relErr(got, expected));

        var state = Quant4bit.quantize(f.w(), new int[] {OUT, IN}, QuantType.NF4, 64, false);
        double[] deq = Ref.d(Quant4bit.dequantizeToF32(state));
        LoraLinear nf4 = new LoraLinear(PATH, new QuantizedLinear(b.prepare4bit(state, DType.F32), null), false);
        LoraAdapter q = nf4.addAdapter(b, "default", 4, 8, 2, 0, true, RANDOM, 6);
        double[] qNorm = Ref.doraNorm(deq, ref(b, q, null), OUT, IN);
        for (int j = 0; j < OUT; j++) assertEquals(qNorm[j], q.magnitude().hostValues(b)[j], 1e-5 * qNorm[j]);
        q.magnitude().setHostValues(b, newM);
        nf4.setActiveAdapters(List.of("default"));
        double[] qExpected = Ref.forward(Ref.d(f.x()), N, IN, deq, OUT, null, List.of(ref(b, q, null)), null);
        float[] qGot = run(b, nf4, f.x());
        assertTrue(Ref.relErr(qGot, qExpected) < 5e-6, "nf4 rel err " + Ref.relErr(qGot, qExpected));
    }

    @ParameterizedTest
    @MethodSource("backends")
    void disabledAndInactiveGiveTheBaseOutputExactly(Backend b) {
        TestBackends.assumeTrainingOps(b);
        Fixture f = fixture(5, true);
        DenseLinear base = new DenseLinear(Tensor.of(f.w().clone(), OUT, IN), Tensor.of(f.bias().clone(), OUT));
        float[] baseOut = run(b, base, f.x());
        LoraLinear l = new LoraLinear(PATH, base, false);
        l.addAdapter(b, "a", 4, 8, 2, 0, false, RANDOM, 7);
        l.addAdapter(b, "c", 4, 8, 2, 0, true, RANDOM, 8);
        assertArrayEquals(baseOut, run(b, l, f.x()), "no active adapter");
        l.setActiveAdapters(List.of("a"));
        float[] withA = run(b, l, f.x());
        assertFalse(java.util.Arrays.equals(baseOut, withA));
        l.setDisabled(true);
        assertArrayEquals(baseOut, run(b, l, f.x()), "disabled");
        l.setDisabled(false);
        assertArrayEquals(withA, run(b, l, f.x()));
        l.setActiveAdapters(List.of("missing-here"));   // names this layer lacks are skipped, as in peft
        assertArrayEquals(baseOut, run(b, l, f.x()));
        l.setActiveAdapters(List.of("a"));
        l.deleteAdapter(b, "a");
        assertArrayEquals(baseOut, run(b, l, f.x()), "deleted");
        assertEquals(List.of("c"), l.adapterNames());
    }

    @ParameterizedTest
    @MethodSource("backends")
    void mergeMatchesAdapterForwardAndUnmergeRestoresExactly(Backend b) {
        TestBackends.assumeTrainingOps(b);
        Fixture f = fixture(6, true);
        LoraLinear l = new LoraLinear(PATH, new DenseLinear(Tensor.of(f.w().clone(), OUT, IN), Tensor.of(f.bias().clone(), OUT)), false);
        LoraAdapter a = l.addAdapter(b, "a", 4, 8, 2, 0, false, RANDOM, 9);
        LoraAdapter d = l.addAdapter(b, "d", 2, 2, 1, 0, true, RANDOM, 10);
        float[] m = d.magnitude().hostValues(b);
        for (int j = 0; j < m.length; j++) m[j] *= 1.3f;
        d.magnitude().setHostValues(b, m);
        for (String single : List.of("a", "d")) {
            l.setActiveAdapters(List.of(single));
            float[] unmerged = run(b, l, f.x());
            l.merge(b, null);
            float[] merged = run(b, l, f.x());
            assertTrue(Ref.relErr(merged, Ref.d(unmerged)) < 1e-5, single + ": merged vs adapter " + Ref.relErr(merged, Ref.d(unmerged)));
            l.unmerge(b);
            assertArrayEquals(unmerged, run(b, l, f.x()), single + ": unmerge restores the base exactly");
        }
        // both: peft merges in order, so DoRA's norm sees W + delta_a (its forward would use W alone: peft's merge of a
        // plain adapter followed by a DoRA one is not the forward of both; we match peft's merge)
        l.setActiveAdapters(List.of("a", "d"));
        float[] unmerged = run(b, l, f.x());
        l.merge(b, null);
        assertTrue(l.merged());
        assertEquals(List.of("a", "d"), l.mergedAdapters());
        float[] merged = run(b, l, f.x());
        // the merged weight is W + s B A, then DoRA's row scaling (float64 check)
        double[] w = Ref.d(f.w());
        Ref.Adapter ra = ref(b, a, null), rd = ref(b, d, null);
        double[] da = Ref.ba(ra.a(), ra.b(), OUT, 4, IN);
        for (int i = 0; i < w.length; i++) w[i] += 2 * da[i];
        double[] norm = Ref.doraNorm(w, rd, OUT, IN);
        double[] dd = Ref.ba(rd.a(), rd.b(), OUT, 2, IN);
        for (int i = 0; i < OUT; i++) for (int j = 0; j < IN; j++) w[i * IN + j] = rd.m()[i] / norm[i] * (w[i * IN + j] + dd[i * IN + j]);
        double[] expected = Ref.linear(Ref.d(f.x()), N, IN, w, OUT, Ref.d(f.bias()));
        assertTrue(Ref.relErr(merged, expected) < 2e-6, "merged vs float64 " + Ref.relErr(merged, expected));
        l.unmerge(b);
        assertFalse(l.merged());
        assertArrayEquals(unmerged, run(b, l, f.x()), "unmerge restores the base exactly");
    }

    @ParameterizedTest
    @MethodSource("backends")
    void quantizedBaseCannotMergeInPlace(Backend b) {
        Fixture f = fixture(7, false);
        var state = Quant4bit.quantize(f.w(), new int[] {OUT, IN}, QuantType.NF4, 64, false);
        LoraLinear l = new LoraLinear(PATH, new QuantizedLinear(b.prepare4bit(state, DType.F32), null), false);
        l.addAdapter(b, "default", 4, 8, 2, 0, false, RANDOM, 1);
        l.setActiveAdapters(List.of("default"));
        var e = assertThrows(UnsupportedOperationException.class, () -> l.merge(b, null));
        assertTrue(e.getMessage().contains("mergeAndUnload"), e.getMessage());
        var p = assertThrows(IllegalArgumentException.class,
                () -> l.addAdapter(b, "p", 4, 8, 2, 0, false, InitLoraWeights.of("pissa"), 1));
        assertTrue(p.getMessage().contains("16/32-bit"), p.getMessage());
    }

    @ParameterizedTest
    @MethodSource("backends")
    void deltaWeightIsScalingTimesBA(Backend b) {
        Fixture f = fixture(8, false);
        LoraLinear l = new LoraLinear(PATH, new DenseLinear(Tensor.of(f.w().clone(), OUT, IN), null), false);
        LoraAdapter a = l.addAdapter(b, "default", 3, 6, 2, 0, false, RANDOM, 2);
        Ref.Adapter ra = ref(b, a, null);
        double[] expected = Ref.ba(ra.a(), ra.b(), OUT, 3, IN);
        double[] got = l.deltaWeight(b, "default");
        for (int i = 0; i < got.length; i++) assertEquals(2 * expected[i], got[i], 1e-12);
        List<String> names = new ArrayList<>();
        l.setActiveAdapters(List.of("default"));
        l.trainableParameters().forEach(p -> names.add(p.name()));
        assertEquals(List.of("base_model.model." + PATH + ".lora_A.default.weight", "base_model.model." + PATH + ".lora_B.default.weight"), names);
    }
}
