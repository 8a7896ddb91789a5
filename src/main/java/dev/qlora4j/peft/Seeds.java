package dev.qlora4j.peft;

import java.nio.charset.StandardCharsets;

/** Deterministic seed derivation (SplitMix64 finalizer over a running hash), so masks and inits never depend on order. */
final class Seeds {
    private Seeds() {}

    static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        return z ^ (z >>> 31);
    }

    /** A seed for (base seed, parts...): changing any part gives an unrelated seed. */
    static long derive(long seed, String... parts) {
        long h = mix(seed + 0x9e3779b97f4a7c15L);
        for (String p : parts) {
            for (byte c : p.getBytes(StandardCharsets.UTF_8)) h = mix(h + (c & 0xFF) + 0x9e3779b97f4a7c15L);
            h = mix(h ^ 0x5bd1e995L);
        }
        return h;
    }
}
