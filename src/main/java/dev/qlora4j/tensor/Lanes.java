package dev.qlora4j.tensor;

import jdk.incubator.vector.FloatVector;

/**
 * Deterministic lane reductions. {@code FloatVector.reduceLanes(ADD)} leaves the order of the
 * additions unspecified, and the interpreter, C1 and C2 do pick different orders, so the same
 * computation gave different float results before and after JIT compilation. Summing lanes
 * in index order costs a few adds per reduction (once per dot product) and makes every run of a
 * CPU kernel bit-identical.
 */
public final class Lanes {
    private Lanes() {}

    /**
     * Lane-wise exp through Math.exp: lanewise(VectorOperators.EXP) uses SVML in C2 but Math.exp in
     * the interpreter, so its results changed by an ulp after JIT compilation; Math.exp is the same
     * stub in every tier.
     */
    public static FloatVector exp(FloatVector v) {
        float[] t = v.toArray();
        for (int i = 0; i < t.length; i++) t[i] = (float) Math.exp(t[i]);
        return FloatVector.fromArray(v.species(), t, 0);
    }

    public static float sum(FloatVector v) {
        float s = 0f;
        for (int i = 0; i < v.length(); i++) s += v.lane(i);
        return s;
    }
}
