package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.optim.GradClip;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * CudaGradClip (native/grad_clip.cu: multi-tensor sums of squares, device-side scale, multi-tensor scaling) against
 * its CPU twin optim/GradClip on fresh random gradients of mixed sizes (1 element, partial and exact 4096-element
 * chunks, many chunks, a parameter without a gradient, an empty one). Tolerance: the total norm within 2 float
 * ulps of the CPU's (the float64 sums are added in another order), every clipped element within 4 ulps; without
 * clipping the gradients are untouched bit for bit. Non-finite totals (NaN, inf) give the CPU's gradients.
 */
@Tag("gpu")
class CudaGradClipGpuTest {
    private static final int[] SIZES = {1, 300, 4096, 4097, 70_001, 0, 16 * 4096, 5};

    /** A parameter with a fixed gradient (or none). */
    private record P(String name, Tensor value, Tensor grad) implements Param {}

    @Test
    void clipsLikeTheCpuTwinOnMixedSizes() {
        try (CudaBackend b = backend(DType.BF16, false); CudaGradClip clip = new CudaGradClip(b)) {
            Random r = random("grad clip");
            for (double maxNormFactor : new double[] {0.3, 0.999, 1e6}) {
                List<float[]> host = new ArrayList<>();
                for (int n : SIZES) host.add(gaussian(r, n, 0.01 + r.nextDouble()));
                double total = 0;
                for (float[] g : host) for (float x : g) total += (double) x * x;
                double maxNorm = maxNormFactor * Math.sqrt(total);
                compare(b, clip, host, maxNorm, "maxNorm " + maxNormFactor + " x total");
            }
            List<float[]> host = new ArrayList<>();
            for (int n : SIZES) host.add(gaussian(r, n, 1));
            compare(b, clip, host, Double.POSITIVE_INFINITY, "maxNorm +inf (measure only)");
        }
    }

    @Test
    void nonFiniteTotalsScaleAsTheCpuDoes() {
        try (CudaBackend b = backend(DType.BF16, false); CudaGradClip clip = new CudaGradClip(b)) {
            Random r = random("grad clip non-finite");
            for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY}) {
                List<float[]> host = new ArrayList<>();
                for (int n : SIZES) host.add(gaussian(r, n, 1));
                host.get(4)[1234] = bad;
                compare(b, clip, host, 1.0, "a gradient element " + bad);
            }
        }
    }

    @Test
    void theNormIsReadLazilyAndOnlyBeforeTheNextClip() {
        try (CudaBackend b = backend(DType.BF16, false); CudaGradClip clip = new CudaGradClip(b)) {
            Random r = random("grad clip lazy");
            float[] g = gaussian(r, 10_000, 1);
            double ss = 0;
            for (float x : g) ss += (double) x * x;
            List<Param> params = List.of(new P("w", b.upload(Tensor.of(new float[g.length], g.length)),
                    b.upload(Tensor.of(g.clone(), g.length))));
            CudaGradClip.GradNorm first = clip.clipAsync(params, 1e9);
            assertEquals((float) Math.sqrt(ss), first.value(), 2 * Math.ulp((float) Math.sqrt(ss)));
            assertEquals(first.value(), first.value());   // cached
            CudaGradClip.GradNorm second = clip.clipAsync(params, 1e9);
            CudaGradClip.GradNorm third = clip.clipAsync(params, 1e9);
            IllegalStateException e = assertThrows(IllegalStateException.class, second::value);
            assertTrue(e.getMessage().contains("read value() before clipping again"), e.getMessage());
            assertEquals(first.value(), third.value());
            List<Param> none = List.of(new P("frozen", params.get(0).value(), null));
            assertEquals(0f, clip.clip(none, 1.0));
            params.forEach(p -> { p.value().close(); p.grad().close(); });
        }
    }

    @Test
    void bf16GradientsAreScaledInFloatAndRoundedOnce() {
        try (CudaBackend b = backend(DType.BF16, false); CudaGradClip clip = new CudaGradClip(b)) {
            Random r = random("grad clip bf16");
            float[] g = Tensor.fromFloats(gaussian(r, 9000, 1), DType.BF16, 9000).toFloatArray();   // bf16-exact values
            // CPU twin on the same (exactly representable) values in F32, then the product rounded to BF16
            float[] cpu = g.clone();
            float total = GradClip.clipByGlobalNorm(List.of(Param.of("w", new float[g.length], cpu)), 10.0);
            Tensor dev = b.upload(Tensor.fromFloats(g, DType.BF16, g.length));
            float gpuTotal = clip.clip(List.of(new P("w", dev, dev)), 10.0);
            assertEquals(total, gpuTotal, 2 * Math.ulp(total));
            float[] got = b.toHost(dev).toFloatArray();
            float[] expect = Tensor.fromFloats(cpu, DType.BF16, cpu.length).toFloatArray();
            int off = 0;
            for (int i = 0; i < g.length; i++) if (got[i] != expect[i]) off++;
            // the product is rounded to bf16 once; a 1-ulp float difference of the scale may flip a rounding tie
            assertTrue(off <= g.length / 1000, off + " of " + g.length + " bf16 elements differ from the CPU's");
            dev.close();
        }
    }

    private static void compare(CudaBackend b, CudaGradClip clip, List<float[]> host, double maxNorm, String what) {
        List<Param> cpu = new ArrayList<>(), gpu = new ArrayList<>();
        List<float[]> cpuGrads = new ArrayList<>();
        for (int i = 0; i < host.size(); i++) {
            float[] g = host.get(i);
            float[] c = g.clone();
            cpuGrads.add(c);
            cpu.add(Param.of("p" + i, new float[g.length], c));
            gpu.add(new P("p" + i, b.upload(Tensor.of(new float[g.length], g.length)), b.upload(Tensor.of(g.clone(), g.length))));
        }
        cpu.add(Param.of("frozen", new float[7], null));
        gpu.add(new P("frozen", b.upload(Tensor.of(new float[7], 7)), null));
        float expect = GradClip.clipByGlobalNorm(cpu, maxNorm);
        float got = clip.clip(gpu, maxNorm);
        if (Float.isFinite(expect)) {
            assertEquals(expect, got, 2 * Math.ulp(expect), what + ": total norm");
        } else {
            assertEquals(expect, got, what + ": non-finite total norm");
        }
        boolean clipped = !((float) maxNorm / (expect + 1e-6f) >= 1.0f);
        for (int i = 0; i < host.size(); i++) {
            float[] g = b.toHost(gpu.get(i).grad()).toFloatArray(), c = cpuGrads.get(i);
            for (int j = 0; j < c.length; j++) {
                boolean ok = clipped
                        ? (Float.isNaN(c[j]) ? Float.isNaN(g[j]) : Math.abs(g[j] - c[j]) <= 4 * Math.ulp(c[j]))
                        : Float.floatToRawIntBits(g[j]) == Float.floatToRawIntBits(c[j]);
                if (!ok) fail(what + ": gradient " + i + " element " + j + " is " + g[j] + ", CPU " + c[j]);
            }
        }
        System.out.printf("%s: total %s (CPU %s)%n", what, got, expect);
        for (Param p : gpu) {
            p.value().close();
            if (p.grad() != null) p.grad().close();
        }
    }
}
