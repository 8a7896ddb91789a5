package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Lanes;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/** Float32 building blocks on array slices, with the Vector API and scalar tails. */
final class VectorMath {
    private VectorMath() {}

    private static final VectorSpecies<Float> F = HalfVectors.F;

    /** sum a[ao+i] * b[bo+i] for i < len, fused multiply-adds in float32. */
    static float dot(float[] a, int ao, float[] b, int bo, int len) {
        int lanes = F.length();
        int bound = len - len % lanes;
        FloatVector acc = FloatVector.zero(F);
        int i = 0;
        for (; i < bound; i += lanes) {
            acc = FloatVector.fromArray(F, a, ao + i).fma(FloatVector.fromArray(F, b, bo + i), acc);
        }
        float s = Lanes.sum(acc);
        for (; i < len; i++) s = Math.fma(a[ao + i], b[bo + i], s);
        return s;
    }

    /** y[yo+i] += alpha * x[xo+i] for i < len. */
    static void axpy(float alpha, float[] x, int xo, float[] y, int yo, int len) {
        int lanes = F.length();
        int bound = len - len % lanes;
        FloatVector a = FloatVector.broadcast(F, alpha);
        int i = 0;
        for (; i < bound; i += lanes) {
            FloatVector.fromArray(F, x, xo + i)
                    .fma(a, FloatVector.fromArray(F, y, yo + i))
                    .intoArray(y, yo + i);
        }
        for (; i < len; i++) y[yo + i] = Math.fma(alpha, x[xo + i], y[yo + i]);
    }

    /** max of a[ao..ao+len), len >= 1. */
    static float max(float[] a, int ao, int len) {
        int lanes = F.length();
        int bound = len - len % lanes;
        float m = Float.NEGATIVE_INFINITY;
        int i = 0;
        if (bound > 0) {
            FloatVector acc = FloatVector.broadcast(F, Float.NEGATIVE_INFINITY);
            for (; i < bound; i += lanes) acc = acc.max(FloatVector.fromArray(F, a, ao + i));
            m = acc.reduceLanes(VectorOperators.MAX);
        }
        for (; i < len; i++) m = Math.max(m, a[ao + i]);
        return m;
    }

    /** Replaces a[ao+i] with exp(a[ao+i] - shift) and returns their float32 sum. */
    static float expShiftedInPlace(float[] a, int ao, int len, float shift) {
        int lanes = F.length();
        int bound = len - len % lanes;
        FloatVector acc = FloatVector.zero(F);
        int i = 0;
        for (; i < bound; i += lanes) {
            FloatVector e = Lanes.exp(FloatVector.fromArray(F, a, ao + i).sub(shift));
            e.intoArray(a, ao + i);
            acc = acc.add(e);
        }
        float s = Lanes.sum(acc);
        for (; i < len; i++) {
            float e = (float) Math.exp(a[ao + i] - shift);
            a[ao + i] = e;
            s += e;
        }
        return s;
    }

    /** sum exp(a[ao+i] - shift) in float32, a unchanged. */
    static float sumExpShifted(float[] a, int ao, int len, float shift) {
        int lanes = F.length();
        int bound = len - len % lanes;
        FloatVector acc = FloatVector.zero(F);
        int i = 0;
        for (; i < bound; i += lanes) {
            acc = acc.add(Lanes.exp(FloatVector.fromArray(F, a, ao + i).sub(shift)));
        }
        float s = Lanes.sum(acc);
        for (; i < len; i++) s += (float) Math.exp(a[ao + i] - shift);
        return s;
    }

    /** sum a[ao+i]^2 in float32. */
    static float sumSquares(float[] a, int ao, int len) {
        return dot(a, ao, a, ao, len);
    }
}
