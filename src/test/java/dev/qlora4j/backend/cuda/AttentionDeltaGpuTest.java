package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Random;

/**
 * The attention backward's first step, delta[b, h, t] = dO . O over the head's D values (attn_tc_delta_<t>), against
 * its CPU twin (the float64 dot of the same 16-bit values) on fresh random data, delta poisoned first. The kernel
 * takes D / 8 lanes per (row, head) with 16-byte loads where D / 8 is a power of two up to 32 and both tensors are
 * 16-byte aligned, else one warp per (row, head) (D = 40, and an O that starts 8 bytes into its buffer). Tolerance:
 * float32 sums of D products, 1e-5 of the sum of |products| (a few units of float32 rounding per add, far below it).
 */
@Tag("gpu")
class AttentionDeltaGpuTest {
    @ParameterizedTest
    @CsvSource({"2,37,3,128,BF16,0", "1,64,5,64,F16,0", "2,9,4,32,BF16,0", "1,33,2,256,BF16,0", "2,17,3,40,BF16,0",
            "1,21,2,128,BF16,4"})
    void matchesTheCpuTwin(int batch, int tokens, int heads, int dim, DType dtype, int offsetElements) {
        try (CudaBackend b = CudaCoreTestSupport.backend(DType.BF16, false)) {
            Random rnd = CudaCoreTestSupport.random("delta B=" + batch + " T=" + tokens + " H=" + heads + " D=" + dim + " " + dtype
                    + " offset " + offsetElements);
            CudaContext ctx = b.context();
            int n = batch * tokens * heads * dim;
            float[] o = QuantGpuSupport.roundedTo(dtype, QuantGpuSupport.gaussian(rnd, n, 1.0));
            float[] g = QuantGpuSupport.roundedTo(dtype, QuantGpuSupport.gaussian(rnd, n, 1.0));
            float[] oPadded = new float[n + offsetElements];
            System.arraycopy(o, 0, oPadded, offsetElements, n);
            try (Tensor ob = QuantGpuSupport.upload(ctx, oPadded, dtype, n + offsetElements);
                 Tensor gt = QuantGpuSupport.upload(ctx, g, dtype, batch * tokens, heads * dim);
                 Tensor delta = QuantGpuSupport.poisoned(ctx, DType.F32, batch, heads, tokens)) {
                // O starting offsetElements into its buffer (misaligned for 16-byte loads at 4 x 2 bytes); the
                // launch as TrainAttentionKernels#launchDelta makes it
                long oPtr = CudaContext.ptr(ob) + (long) offsetElements * dtype.byteSize();
                String t = dtype == DType.BF16 ? "bf16" : "f16";
                ctx.launch1d(ctx.function("attention_tc", "attn_tc_delta_" + t), (long) batch * tokens * heads * 32,
                        KernelArgs.of().ptr(oPtr).ptr(CudaContext.ptr(gt)).ptr(CudaContext.ptr(delta)).i32(batch)
                                .i32(tokens).i32(heads).i32(dim));
                float[] got = CudaCoreTestSupport.values(b, delta);
                for (int bi = 0; bi < batch; bi++) {
                    for (int h = 0; h < heads; h++) {
                        for (int ti = 0; ti < tokens; ti++) {
                            long base = ((long) (bi * tokens + ti) * heads + h) * dim;
                            double want = 0, mag = 0;
                            for (int d = 0; d < dim; d++) {
                                double p = (double) o[(int) base + d] * g[(int) base + d];
                                want += p;
                                mag += Math.abs(p);
                            }
                            float v = got[(bi * heads + h) * tokens + ti];
                            String what = "delta[" + bi + ", " + h + ", " + ti + "]";
                            assertTrue(Float.isFinite(v), what + " is " + v + " (not written?)");
                            assertTrue(Math.abs(v - want) <= 1e-5 * mag, what + ": " + v + " vs " + want);
                        }
                    }
                }
            }
        }
    }
}
