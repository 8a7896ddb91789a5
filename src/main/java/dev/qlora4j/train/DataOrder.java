package dev.qlora4j.train;

import java.util.Random;

/**
 * Every random choice of a run as a pure function of the seed and where the run is: the shuffle
 * of epoch e depends on (data_seed, e) only and the dropout seed of a micro-batch on (seed,
 * global step, micro-batch index). A resumed run therefore needs no saved generator state to
 * see exactly the data order and dropout masks of an uninterrupted one.
 */
public final class DataOrder {
    private DataOrder() {}

    /** The order of rows 0..n-1 in epoch {@code epoch} (Fisher-Yates over java.util.Random, whose algorithm is specified). */
    public static int[] permutation(int n, long dataSeed, int epoch) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        Random r = new Random(mix(dataSeed, epoch));
        for (int i = n - 1; i > 0; i--) {
            int j = r.nextInt(i + 1);
            int t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        return p;
    }

    /** The seed handed to {@link TrainableModel#setStep} before micro-batch {@code micro} of optimizer step {@code step}. */
    public static long stepSeed(long seed, long step, int micro) {
        return mix(mix(seed, step), micro);
    }

    /** SplitMix64 of a combination: well-spread seeds from small, similar inputs. */
    static long mix(long a, long b) {
        long z = a * 0x9E3779B97F4A7C15L + b + 0x632BE59BD9B4E019L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }
}
