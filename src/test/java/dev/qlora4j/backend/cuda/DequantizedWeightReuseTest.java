package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Storage;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.concurrent.atomic.AtomicInteger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The bookkeeping of the CUDA backend's weight-reuse scope (no GPU needed: tensors with a counting storage stand in
 * for device workspaces): only the bit-identical dtype combination is kept, each kept tensor is handed out once (take)
 * or shared while kept (peek), ending the scope frees the rest exactly once, nested begins fail, a stray end is
 * harmless.
 */
class DequantizedWeightReuseTest {
    /** Storage that counts its releases. */
    record Counted(AtomicInteger releases) implements Storage {
        @Override public Device device() { return Device.cuda(0); }
        @Override public long byteSize() { return 16; }
        @Override public void release() { releases.incrementAndGet(); }
    }

    record FakeWeight(int outFeatures, int inFeatures) implements QuantizedWeight {
        @Override public long deviceBytes() { return 0; }
        @Override public void close() {}
    }

    static Tensor workspace(DType dtype, AtomicInteger releases) {
        return new Tensor(new Counted(releases), dtype, true, 2, 2);
    }

    @Test
    void reusableOnlyWhenTheForwardsBitsAreTheBackwards() {
        assertTrue(DequantizedWeightReuse.reusable(DType.BF16, DType.BF16, DType.F32), "bf16 compute = bf16 activations, mid f32");
        assertTrue(DequantizedWeightReuse.reusable(DType.F32, DType.F32, DType.F32), "f32 compute = f32 activations");
        assertFalse(DequantizedWeightReuse.reusable(DType.F32, DType.BF16, DType.F32), "bf16 compute under f32 activations");
        assertFalse(DequantizedWeightReuse.reusable(DType.F32, DType.F32, DType.BF16), "a bf16 state at f32 compute: rounded twice");
        assertFalse(DequantizedWeightReuse.reusable(DType.BF16, DType.BF16, DType.F16), "an f16 state at bf16 compute");
    }

    @Test
    void keptTensorsAreTakenOnceAndTheRestFreedAtTheEnd() {
        DequantizedWeightReuse r = new DequantizedWeightReuse(DType.BF16);
        QuantizedWeight w1 = new FakeWeight(2, 2), w2 = new FakeWeight(2, 2), w3 = new FakeWeight(2, 2);
        AtomicInteger released = new AtomicInteger();
        assertFalse(r.wants(w1, DType.BF16, DType.F32), "no scope open");
        r.begin();
        assertTrue(r.wants(w1, DType.BF16, DType.F32));
        assertFalse(r.wants(w1, DType.F32, DType.F32), "not the activation dtype");
        assertFalse(r.wants(w1, DType.BF16, DType.F16), "not through float32");
        Tensor t1 = workspace(DType.BF16, released), t2 = workspace(DType.BF16, released);
        r.keep(w1, t1);
        r.keep(w2, t2);
        assertFalse(r.wants(w1, DType.BF16, DType.F32), "already kept");
        assertThrows(IllegalStateException.class, () -> r.keep(w1, workspace(DType.BF16, new AtomicInteger())));
        assertThrows(IllegalStateException.class, () -> r.keep(w3, workspace(DType.F32, new AtomicInteger())));
        assertSame(t1, r.peek(w1, DType.BF16, DType.F32), "a second forward shares the kept one");
        assertNull(r.peek(w1, DType.BF16, DType.F16), "but not with other rounding");
        assertEquals(2, r.keptCount());
        assertSame(t1, r.take(w1));
        assertNull(r.take(w1), "handed out once");
        assertNull(r.take(w3), "never kept");
        assertEquals(1, r.reused());
        assertThrows(IllegalStateException.class, r::begin, "scopes do not nest");
        r.end();
        assertEquals(1, released.get(), "the end frees what was not taken (t2), not the taken t1");
        assertEquals(0, r.keptCount());
        assertFalse(r.isOpen());
        r.end();
        assertEquals(1, released.get(), "a second end is harmless");
        assertNull(r.peek(w2, DType.BF16, DType.F32));
        r.begin(); // a new scope after the end
        assertTrue(r.wants(w1, DType.BF16, DType.F32));
        r.end();
    }
}
