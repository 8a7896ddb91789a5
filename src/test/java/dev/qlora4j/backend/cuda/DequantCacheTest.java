package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * DequantCache's bookkeeping (no GPU needed: host tensors stand in for the dequantized buffers): it keeps nothing
 * while closed, one buffer per weight, within the budget of -Dqlora4j.cuda.dequantCacheMiB, finds a weight only in
 * the dtype it was kept in, and forgets everything when closed.
 */
class DequantCacheTest {
    /** A weight identity for the cache (its contents do not matter here). */
    private record FakeWeight(int outFeatures, int inFeatures) implements QuantizedWeight {
        @Override public long deviceBytes() { return 0; }
        @Override public void close() {}
    }

    @AfterEach
    void clearBudget() { System.clearProperty(DequantCache.BUDGET_PROPERTY); }

    @Test
    void keepsWithinTheBudgetWhileOpen() {
        System.setProperty(DequantCache.BUDGET_PROPERTY, "1");   // 1 MiB
        DequantCache cache = new DequantCache();
        QuantizedWeight a = new FakeWeight(256, 1024), b = new FakeWeight(512, 1024), c = new FakeWeight(64, 64);
        Tensor half = Tensor.zeros(DType.BF16, 256, 1024);        // 0.5 MiB
        assertFalse(cache.offer(a, half, 1024, DType.F32), "closed: nothing is kept");
        cache.open();
        assertTrue(cache.offer(a, half, 1024, DType.F32));
        assertFalse(cache.offer(a, Tensor.zeros(DType.BF16, 256, 1024), 1024, DType.F32), "one buffer per weight");
        assertFalse(cache.offer(b, Tensor.zeros(DType.BF16, 512, 1024), 1024, DType.F32), "1 MiB more would pass the budget");
        Tensor small = Tensor.zeros(DType.BF16, 64, 72);
        assertTrue(cache.offer(c, small, 72, DType.F32), "a small one still fits");
        assertEquals(half.byteSize() + small.byteSize(), cache.bytes());
        assertSame(half, cache.get(a, DType.BF16).buffer());
        assertEquals(72, cache.get(c, DType.BF16).ld());
        assertNull(cache.get(a, DType.F16), "kept as BF16 only");
        assertNull(cache.get(b, DType.BF16), "b was refused");
        cache.close();
        assertFalse(cache.isOpen());
        assertEquals(0, cache.bytes());
        assertNull(cache.get(a, DType.BF16), "closing forgets every weight");
    }

    @Test
    void budgetZeroKeepsNothingAndNegativeIsAnError() {
        System.setProperty(DequantCache.BUDGET_PROPERTY, "0");
        DequantCache cache = new DequantCache();
        cache.open();
        assertFalse(cache.offer(new FakeWeight(8, 8), Tensor.zeros(DType.BF16, 8, 8), 8, DType.F32));
        System.setProperty(DequantCache.BUDGET_PROPERTY, "-3");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> cache.offer(new FakeWeight(8, 8), Tensor.zeros(DType.BF16, 8, 8), 8, DType.F32));
        assertTrue(e.getMessage().contains("0 to turn it off"), e.getMessage());
        cache.close();
    }
}
