package dev.qlora4j.peft;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Test;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * TrainableTensor's version counter and its cached cast (what the CUDA LoRA path uses for the BF16 copies of A
 * and B): the copy is made once and reused while the values are unchanged, and re-made (with the new values)
 * after each way of changing them: the optimizer view's value(), setHostValues, markModified; a different
 * dtype also re-makes it. Runs on the CPU backend, counting its casts.
 */
class TrainableTensorVersionTest {

    @Test
    void theCastCopyIsReusedUntilTheValuesMayHaveChanged() {
        AtomicInteger casts = new AtomicInteger();
        Backend b = countingCasts(new CpuBackend(1), casts);
        Random r = new Random(7);
        float[] v = randomFloats(r, 24);
        TrainableTensor t = TrainableTensor.of(b, v, 4, 6);
        long v0 = t.version();

        Tensor c1 = t.castCopy(b, DType.BF16);
        assertBf16Of(t, c1);
        assertSame(c1, t.castCopy(b, DType.BF16), "unchanged values: the same copy");
        t.value();          // reading the values is not a change
        t.grad();
        assertSame(c1, t.castCopy(b, DType.BF16));
        assertEquals(1, casts.get());
        assertEquals(v0, t.version());

        // the optimizer view: an in-place update through Param.value()
        Param p = t.param("base_model.model.x.lora_A.default.weight");
        Tensor master = p.value();
        assertTrue(t.version() > v0);
        float[] next = randomFloats(r, 24);
        for (int i = 0; i < next.length; i++) master.setFloat(i, next[i]);
        Tensor c2 = t.castCopy(b, DType.BF16);
        assertNotSame(c1, c2);
        assertBf16Of(t, c2);
        assertSame(c2, t.castCopy(b, DType.BF16));
        assertEquals(2, casts.get());

        // setHostValues replaces the value tensor
        long before = t.version();
        t.setHostValues(b, randomFloats(r, 24));
        assertTrue(t.version() > before);
        Tensor c3 = t.castCopy(b, DType.BF16);
        assertBf16Of(t, c3);
        assertEquals(3, casts.get());

        // a write through value() announced with markModified
        t.value().setFloat(5, 123.5f);
        t.markModified();
        Tensor c4 = t.castCopy(b, DType.BF16);
        assertEquals(123.5f, c4.getFloat(5));
        assertBf16Of(t, c4);
        assertEquals(4, casts.get());

        // another dtype is another copy; asking for the first again re-makes it (one dtype cached at a time)
        Tensor h = t.castCopy(b, DType.F16);
        assertEquals(DType.F16, h.dtype());
        assertSame(h, t.castCopy(b, DType.F16));
        assertEquals(DType.BF16, t.castCopy(b, DType.BF16).dtype());
        assertEquals(6, casts.get());
        t.close();
    }

    /**
     * The optimizer view's refreshable copy (what the CUDA AdamW rewrites with its update): it is the BF16 cast copy
     * when one of the current value exists; after value() (the update) and copyRefreshed() the copy counts as current
     * and is not re-cast; without copyRefreshed it is re-made; a copy in another dtype or of a replaced value is not
     * offered.
     */
    @Test
    void anOptimizerThatRewritesTheCopyKeepsItCurrent() {
        AtomicInteger casts = new AtomicInteger();
        Backend b = countingCasts(new CpuBackend(1), casts);
        Random r = new Random(11);
        TrainableTensor t = TrainableTensor.of(b, randomFloats(r, 12), 3, 4);
        Param p = t.param("w");
        assertEquals(null, p.refreshableCopy(), "no copy made yet");
        Tensor c = t.castCopy(b, DType.BF16);
        assertSame(c, p.refreshableCopy());

        // an optimizer step that writes the value and the copy, then says so
        Tensor master = p.value();
        float[] next = randomFloats(r, 12);
        for (int i = 0; i < next.length; i++) master.setFloat(i, next[i]);
        Tensor rewritten = Tensor.fromFloats(next, DType.BF16, 3, 4);
        for (int i = 0; i < next.length; i++) c.setFloat(i, rewritten.getFloat(i));
        p.copyRefreshed();
        assertSame(c, t.castCopy(b, DType.BF16), "refreshed by the optimizer: not re-cast");
        assertBf16Of(t, c);
        assertEquals(1, casts.get());

        // an optimizer that does not rewrite it: the next use re-makes it
        p.value();
        Tensor remade = t.castCopy(b, DType.BF16);
        assertNotSame(c, remade);
        assertEquals(2, casts.get());

        // only the BF16 copy of the current value is offered
        t.castCopy(b, DType.F16);
        assertEquals(null, p.refreshableCopy(), "an F16 copy is not the BF16 copy an optimizer writes");
        t.castCopy(b, DType.BF16);
        t.setHostValues(b, randomFloats(r, 12));
        assertEquals(null, p.refreshableCopy(), "a copy of a replaced value is not offered");
        t.close();
    }

    @Test
    void versionsOnlyGrow() {
        Backend b = new CpuBackend(1);
        TrainableTensor t = TrainableTensor.of(b, new float[] {1, 2, 3}, 3);
        long last = t.version();
        Param p = t.param("w");
        for (int i = 0; i < 5; i++) {
            if (i % 2 == 0) p.value(); else t.markModified();
            assertTrue(t.version() > last);
            last = t.version();
        }
        t.close();
    }

    private static void assertBf16Of(TrainableTensor t, Tensor copy) {
        assertEquals(DType.BF16, copy.dtype());
        assertArrayEquals(t.shape(), copy.shape());
        float[] expect = Tensor.fromFloats(t.value().toFloatArray(), DType.BF16, t.shape()).toFloatArray();
        assertArrayEquals(expect, copy.toFloatArray());
    }

    private static float[] randomFloats(Random r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) r.nextGaussian();
        return a;
    }

    /** The backend, with its cast calls counted. */
    private static Backend countingCasts(Backend delegate, AtomicInteger casts) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    if (method.getName().equals("cast")) casts.incrementAndGet();
                    try {
                        return method.invoke(delegate, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
    }
}
