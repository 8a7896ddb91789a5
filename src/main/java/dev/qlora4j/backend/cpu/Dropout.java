package dev.qlora4j.backend.cpu;

/**
 * Inverted dropout with a counter-based mask: whether element i survives is a pure function of
 * (seed, i), so backward (and the CUDA backend, bit for bit) re-derives the mask from the seed
 * instead of storing it.
 *
 * <p>The exact function, for the flat row-major element index i (a 64-bit integer) and all
 * arithmetic on unsigned 64-bit integers modulo 2^64:
 * <pre>
 *   z = seed + (i + 1) * 0x9E3779B97F4A7C15        (the i-th state of a SplitMix64 stream)
 *   z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9
 *   z = (z ^ (z >>> 27)) * 0x94D049BB133111EB
 *   z =  z ^ (z >>> 31)                            (SplitMix64's finalizer, Stafford's Mix13)
 *   u = z >>> 40                                   (the top 24 bits, 0 <= u < 2^24)
 *   threshold = (uint32) truncate(p * 16777216.0f) (float32 product: exact, p * 2^24)
 *   keep = u >= threshold
 *   y = keep ? x * scale : 0, with scale = 1.0f / (1.0f - p) in float32
 * </pre>
 * hash(seed, i) is the i-th nextLong() of java.util.SplittableRandom(seed) (the tests check this);
 * hash(0, 0) = 0xE220A8397B1DCDAF, hash(0, 1) = 0x6E789E6AA1B965F4.
 * The keep probability is 1 - threshold / 2^24 (within 2^-24 of 1 - p). p = 0 keeps
 * everything (y = x exactly, scale 1); p = 1 drops everything.
 */
final class Dropout {
    private Dropout() {}

    static final long GOLDEN_GAMMA = 0x9E3779B97F4A7C15L;

    /** SplitMix64's output for counter i of the stream seeded with seed. */
    static long hash(long seed, long i) {
        long z = seed + (i + 1) * GOLDEN_GAMMA;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** Elements whose top-24-bit hash is below this are dropped. */
    static int threshold(float p) {
        return (int) (p * 16777216.0f);
    }

    static boolean keep(long seed, long i, int threshold) {
        return (int) (hash(seed, i) >>> 40) >= threshold;
    }

    /** out[i] = keep(i) ? x[i] * scale : 0 for i in [i0, i1). */
    static void apply(float[] x, float p, long seed, float[] out, int i0, int i1) {
        int threshold = threshold(p);
        float scale = 1.0f / (1.0f - p);
        for (int i = i0; i < i1; i++) out[i] = keep(seed, i, threshold) ? x[i] * scale : 0f;
    }
}
