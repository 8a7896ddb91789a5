package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The per-op profiler (-Dqlora4j.cuda.profile=true) keeps timing after an op declines: the joint gate / up GEMV
 * returns null for a prefill's rows (more than 8), and the ops after it must still reach the profiler's table (an
 * open mark used to hold every later resolve off, which left CudaDecodeProfile's table empty).
 */
@Tag("gpu")
class OpProfilerDeclinedOpGpuTest {
    @Test
    void opsAfterADeclinedOpAreStillTimed() {
        Random rnd = new Random();
        int out = 64, in = 256, rows = Nf4GemvKernels.CODE_MAX_ROWS + 1;
        try (var profile = TemporaryProperty.set(OpProfiler.PROPERTY, "true");
             CudaBackend b = CudaCoreTestSupport.backend(DType.BF16, false)) {
            CudaContext ctx = b.context();
            QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, out, in), DType.BF16, out, in),
                    QuantType.NF4, 64, true);
            try (CudaQuant4bit w = CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, DType.BF16));
                 Tensor x = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, rows * in, 1.0), DType.BF16, rows, in);
                 Tensor norm = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, in, 1.0), DType.BF16, in)) {
                OpProfiler prof = b.profiler();
                assertNotNull(prof);
                prof.reset();
                assertNull(b.linearQuantizedSwiGlu(x, w, w), "the joint decode declines " + rows + " rows");
                try (Tensor y = b.rmsNorm(x, norm, 1e-5f)) {
                    b.synchronize();
                }
                OpProfiler.Stat s = prof.stats().get("rmsNorm");
                assertNotNull(s, "rmsNorm timed after the declined op: " + prof.stats().keySet());
                assertEquals(1, s.calls());
                assertTrue(s.gpuMillis() > 0);
                assertTrue(!prof.stats().containsKey("linearQuantizedSwiGlu"), "a declined op is not in the table");
            }
        }
    }
}
