package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import java.util.function.Supplier;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * Programmatic dependent launch (native/pdl.cuh, CudaContext.launch): on Hopper the kernels of the sm90a modules start
 * while the kernel before them still runs and wait inside for it. Checked: which kernels go out that way, that long
 * chains of dependent kernels (read-after-write and write-after-read on the same buffers) see exactly the values of
 * plain launches, and that an NF4 model decodes the same tokens and logits with and without it.
 */
@Tag("gpu")
class ProgrammaticLaunchGpuTest {

    private static boolean hopper(CudaBackend g) {
        var p = g.context().properties();
        return p.computeCapabilityMajor() == 9 && p.computeCapabilityMinor() == 0;
    }

    @Test
    void decodeKernelsLaunchAsDependentsOnHopperAndTrainingOnlyKernelsDoNot() {
        try (CudaBackend g = CudaCoreTestSupport.backend(DType.BF16, false)) {
            assumeTrue(hopper(g), "programmatic launches are built for compute capability 9.0 only");
            assumeTrue(g.context().driver().supportsProgrammaticLaunch(), "this binding launches plainly (JCuda)");
            CudaContext ctx = g.context();
            assertTrue(ctx.launchesAsDependent(ctx.function("nf4_gemv", "q4v2_gemv_bf16_m8")));
            assertTrue(ctx.launchesAsDependent(ctx.function("nf4_gemv7", "q4v7_gemv_bf16_p1")));
            assertTrue(ctx.launchesAsDependent(ctx.function("rmsnorm", "rmsnorm_fwd_bf16_wbf16")));
            assertTrue(ctx.launchesAsDependent(ctx.function("attention", "attn_combine_bf16_d128")));
            assertFalse(ctx.launchesAsDependent(ctx.function("adamw", "adamw_f32")), "adamw has no sm90a build");
        }
    }

    /**
     * 400 element-wise adds over 4M floats, each reading the previous one's output and overwriting the buffer the
     * previous one read (a ping-pong), with a 1-block kernel every 7 steps so that large and tiny kernels follow
     * each other: x_k = x_0 + k (integers, exact in float32). An early read or an early write shows as a wrong value.
     */
    @Test
    void longChainsOfDependentKernelsSeeExactlyThePreviousResults() {
        try (CudaBackend g = CudaCoreTestSupport.backend(DType.F32, false)) {
            CudaContext ctx = g.context();
            long add = ctx.function("elementwise", "add_fwd_f32");
            long fill = ctx.function("cast", "fill_f32");
            Random r = CudaCoreTestSupport.random("pdl chain");
            int n = 4 << 20, steps = 400;
            float[] x0 = new float[n], ones = new float[n];
            for (int i = 0; i < n; i++) {
                x0[i] = r.nextInt(1000);
                ones[i] = 1;
            }
            try (Tensor a = g.upload(Tensor.of(x0, n)); Tensor b = ctx.empty(DType.F32, n);
                 Tensor one = g.upload(Tensor.of(ones, n)); Tensor small = ctx.empty(DType.F32, 1000)) {
                Tensor src = a, dst = b;
                for (int step = 0; step < steps; step++) {
                    ctx.launch1d(add, n, KernelArgs.of().ptr(CudaContext.ptr(src)).ptr(CudaContext.ptr(one))
                            .ptr(CudaContext.ptr(dst)).i64(n));
                    if (step % 7 == 0) ctx.launch1d(fill, 1000, KernelArgs.of().ptr(CudaContext.ptr(small)).f32(step).i64(1000));
                    Tensor t = src;
                    src = dst;
                    dst = t;
                }
                float[] got = CudaCoreTestSupport.values(g, src);
                for (int i = 0; i < n; i++) {
                    if (got[i] != x0[i] + steps) throw new AssertionError("element " + i + ": " + got[i] + " != " + (x0[i] + steps));
                }
                for (float v : CudaCoreTestSupport.values(g, small)) assertEquals((steps - 1) - (steps - 1) % 7, v);
            }
        }
    }

    @Test
    void anNf4ModelDecodesTheSameTokensAndLogitsWithAndWithoutProgrammaticLaunches() {
        int[][] prompts = {{1, 5, 9, 200, 300, 17}, {1, 44, 45}};
        int n = 24;
        SamplingParams greedy = SamplingParams.greedy(n).withMinNewTokens(n);
        QuantizationConfig nf4 = new QuantizationConfig(false, true, 6.0, null, false, false, DType.BF16, QuantType.NF4,
                true, DType.U8, 64);
        Supplier<int[][]> decode = () -> {
            try (CudaBackend g = CudaCoreTestSupport.backend(DType.BF16, true);
                 TransformerLM m = SyntheticWeights.model("llama-tiny", g, 3, new QuantizedLinearFactory(nf4))) {
                return new Generator(m, new int[] {2}, 0, x -> "").generate(prompts, greedy, TokenListener.NONE).outputIds();
            }
        };
        int[][] with = decode.get();
        int[][] without;
        try (var before = TemporaryProperty.set("qlora4j.cuda.pdl", "false")) {
            try (CudaBackend g = CudaCoreTestSupport.backend(DType.BF16, true)) {
                CudaContext ctx = g.context();
                assertFalse(ctx.launchesAsDependent(ctx.function("nf4_gemv", "q4v2_gemv_bf16_m8")), "-Dqlora4j.cuda.pdl=false");
            }
            without = decode.get();
        }
        for (int r = 0; r < prompts.length; r++) assertArrayEquals(without[r], with[r], "row " + r);
    }
}
