package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.cuda.CudaDriver;

import java.lang.reflect.Proxy;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** OpProfiler's bookkeeping over a fake driver whose events record a fake GPU clock (no GPU needed). */
class OpProfilerTest {

    /** Events: eventRecord stamps the event with the fake clock; elapsed = difference; counts calls. */
    static final class FakeEvents {
        double clockMs;
        long nextEvent = 100;
        int created, destroyed, synchronizes;
        final Map<Long, Double> stamps = new HashMap<>();

        CudaDriver driver() {
            return (CudaDriver) Proxy.newProxyInstance(CudaDriver.class.getClassLoader(), new Class<?>[] {CudaDriver.class},
                    (proxy, m, a) -> switch (m.getName()) {
                        case "eventCreate" -> { created++; yield nextEvent++; }
                        case "eventRecord" -> { stamps.put((Long) a[0], clockMs); yield null; }
                        case "eventSynchronize" -> { synchronizes++; yield null; }
                        case "eventElapsedMillis" -> (float) (stamps.get((Long) a[1]) - stamps.get((Long) a[0]));
                        case "eventDestroy" -> { destroyed++; yield null; }
                        default -> throw new UnsupportedOperationException(m.getName());
                    });
        }
    }

    @Test
    void accumulatesElapsedTimeAndCallsPerOpAndReusesEvents() {
        FakeEvents f = new FakeEvents();
        OpProfiler p = new OpProfiler(f.driver(), 7, () -> 0L);
        for (int step = 0; step < 2; step++) {
            int m = p.begin();
            f.clockMs += 2.5;
            p.end("linear", m);
            m = p.begin();
            f.clockMs += 1.0;
            p.end("rmsNorm", m);
            m = p.begin();
            f.clockMs += 0.5;
            p.end("linear", m);
            p.resolve();
        }
        Map<String, OpProfiler.Stat> s = p.stats();
        assertEquals(4, s.get("linear").calls());
        assertEquals(6.0, s.get("linear").gpuMillis(), 1e-6); // (2.5 + 0.5) x 2 steps
        assertEquals(2, s.get("rmsNorm").calls());
        assertEquals(2.0, s.get("rmsNorm").gpuMillis(), 1e-6);
        assertEquals(6, f.created, "the second step reuses the six events of the first");
        assertEquals(2, f.synchronizes, "one wait per resolve, none per op");
        p.close();
        assertEquals(6, f.destroyed);
    }

    @Test
    void nestedPartsAreTimedButNotAddedToTheTotal() {
        FakeEvents f = new FakeEvents();
        OpProfiler p = new OpProfiler(f.driver(), 7, () -> 0L);
        int outer = p.begin();
        f.clockMs += 1.0;
        int inner = p.begin();
        f.clockMs += 3.0;
        p.end("linearQuantizedBackwardInput/dequantize", inner);
        p.resolve();    // an op is open: deferred, its start event must survive
        assertEquals(0, f.synchronizes);
        f.clockMs += 2.0;
        p.end("linearQuantizedBackwardInput", outer);
        Map<String, OpProfiler.Stat> s = p.stats();
        assertEquals(6.0, s.get("linearQuantizedBackwardInput").gpuMillis(), 1e-6);
        assertEquals(3.0, s.get("linearQuantizedBackwardInput/dequantize").gpuMillis(), 1e-6);
        String table = p.table(1, 10.0);
        // total 6 of a 10 ms step (the 3 ms part is inside it), 4 ms in no op
        assertTrue(table.contains("all ops (parts '/' not added)") && table.matches("(?s).*all ops[^\\n]* 6\\.00 +60\\.0.*"), table);
        assertTrue(table.matches("(?s).*step time in no op +4\\.00 +40\\.0.*"), table);
        assertTrue(table.contains("  linearQuantizedBackwardInput/dequantize"), table);
    }

    @Test
    void aCancelledMarkRecordsNothingAndLetsResolveRun() {
        FakeEvents f = new FakeEvents();
        OpProfiler p = new OpProfiler(f.driver(), 7, () -> 0L);
        int declined = p.begin();
        f.clockMs += 1.0;
        p.cancel(declined);
        int m = p.begin();
        f.clockMs += 2.0;
        p.end("attentionBackward", m);
        p.resolve();
        assertEquals(1, f.synchronizes, "no op is left open: resolve ran");
        Map<String, OpProfiler.Stat> s = p.stats();
        assertEquals(1, s.get("attentionBackward").calls());
        assertEquals(2.0, s.get("attentionBackward").gpuMillis(), 1e-6);
        assertEquals(1, s.size(), "the cancelled op has no line");
    }

    @Test
    void resetDropsEarlierTimesAndOffMeansNoProfiler() {
        FakeEvents f = new FakeEvents();
        OpProfiler p = new OpProfiler(f.driver(), 7, () -> 0L);
        int m = p.begin();
        f.clockMs += 5;
        p.end("add", m);
        p.reset();
        assertFalse(p.stats().containsKey("add"));
        try (var before = TemporaryProperty.clear(OpProfiler.PROPERTY)) {
            assertNull(OpProfiler.fromProperty(f.driver(), 7, () -> 0L));
            System.setProperty(OpProfiler.PROPERTY, "true");
            try (OpProfiler on = OpProfiler.fromProperty(f.driver(), 7, () -> 0L)) {
                assertTrue(on != null);
            }
        }
    }

    @Test
    void namesTheOpDuringWhichTheAllocatorPeakLastRose() {
        FakeEvents f = new FakeEvents();
        long[] peak = {100};
        OpProfiler p = new OpProfiler(f.driver(), 7, () -> peak[0]);
        int m = p.begin();
        peak[0] = 150;   // rises inside "gemm"
        p.end("gemm", m);
        m = p.begin();
        p.end("add", m);   // no rise: gemm stays the answer
        assertEquals("gemm", p.peakOp());
        m = p.begin();
        peak[0] = 180;
        p.end("siluMulBackward", m);
        assertEquals("siluMulBackward", p.peakOp());
        assertTrue(p.table(1, 1.0).contains("last raised in siluMulBackward"), p.table(1, 1.0));
        p.reset();
        assertNull(p.peakOp(), "reset forgets it");
    }
}
