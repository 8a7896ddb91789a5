package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.infer.Sampler;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * Sampling on the GPU (native/sampling.cu sample_prepare / sample_rows) against its CPU twin infer.Sampler (repetition
 * penalty, then #sample), given the same uniform draw: the same token, on fresh random logits in F32, BF16 (many tied values) and F16, vocabularies from 1 to
 * Llama 3's 128,256, with temperature, top-k (ties at the k-th value; survivors that fit the kernel's shared list and
 * more), top-p (ties cut at the boundary by index),
 * excluded ids, rows of one repeated value, a dominant token, draws at 0 and just below 1; outputs poisoned. Exact
 * equality is expected: the two differ only where a cumulative probability lands within ~1e-16 of the draw or of
 * 1 - top_p (their sums run in other orders), which random data does not hit.
 */
@Tag("gpu")
class DeviceSampleGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    /** temperature, top_k, top_p */
    private static final double[][] SETTINGS = {
            {1.0, 0, 1.0}, {0.7, 50, 1.0}, {1.3, 0, 0.9}, {0.8, 40, 0.95}, {1.0, 1, 1.0}, {0.5, 0, 0.5},
            {1.0, 0, 1e-9}, {2.0, 5, 0.999}, {1.0, 1_000_000, 0.3},
            // top-k survivors in shared memory (sample_rows keeps up to 4,096) and past it (the whole-row path)
            {0.9, 4000, 0.79}, {0.9, 5000, 0.81}, {1.1, 100, 0.97}};
    // No top_p here puts 1 - p exactly on an item boundary of the all-tied row 1 (e.g. 0.2 x 128,255 ties = 25,651
    // items): there the host's sequential sum and the kernel's product land on either side of 1 - p by rounding.

    @Test
    void sampleRowsIsTheSamplersChoice() {
        Random rnd = new Random();
        int rows = 9;
        for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16}) {
            for (int vocab : new int[] {1, 7, 1000, 32000, 128256}) {
                float[] v = QuantGpuSupport.gaussian(rnd, rows * vocab, 3.0);
                if (vocab > 10) {
                    Arrays.fill(v, vocab, 2 * vocab, 0.5f);                      // row 1: one repeated value
                    for (int j = 0; j < 10; j++) v[2 * vocab + j * (vocab / 10)] = 12f;  // row 2: ten tied maxima
                    v[3 * vocab + vocab / 2] = 40f;                              // row 3: one dominant token
                    v[4 * vocab + 2] = 60f;                                      // row 4: the maximum is excluded
                    for (int j = 0; j < vocab; j++) v[7 * vocab + j] = -0.02f * (j % 5000);  // row 7: peaked (a few
                    // thousand tokens hold the mass: top-p alone runs on the kernel's candidate list)
                }
                v = QuantGpuSupport.roundedTo(dt, v);
                int[] excluded = vocab > 10 ? new int[] {2, vocab + 5} : new int[0];  // the second is outside the vocab
                for (double[] set : SETTINGS) {
                    double[] u = new double[rows];
                    for (int r = 0; r < rows; r++) u[r] = rnd.nextDouble();
                    u[5] = 0;
                    u[6] = Math.nextDown(1.0);
                    SamplingParams params =
                            new SamplingParams(1, 0, true, set[0], (int) set[1], set[2], 1.0, 0, List.of());
                    // every other setting with a repetition penalty on a random tenth of the ids (1.3, or 0.7)
                    float penalty = set[0] < 1 ? 1.3f : set[0] > 1 ? 0.7f : 1f;
                    int[][] context = new int[rows][];
                    for (int r = 0; r < rows; r++) context[r] = rnd.ints(Math.max(1, vocab / 10), 0, vocab).toArray();
                    // row 1's penalty only on the excluded id 2: a random tenth of its ties penalized made the number of
                    // ties random, and with it where 1 - p falls among them (0.05 once landed on an item boundary:
                    // 25475 against 25476 at 128,256, session 28); the comment above holds for the full count
                    if (vocab > 10) context[1] = new int[] {2};
                    int[] got = runKernel(v, dt, rows, vocab, excluded, params, u, penalty, context);
                    for (int r = 0; r < rows; r++) {
                        float[] row = Arrays.copyOfRange(v, r * vocab, (r + 1) * vocab);
                        if (penalty != 1f) Sampler.applyRepetitionPenalty(row, context[r], context[r].length, penalty);
                        for (int e : excluded) if (e < vocab) row[e] = Float.NEGATIVE_INFINITY;
                        assertEquals(Sampler.sample(row, params, u[r]), got[r], dt + " vocab " + vocab + " row " + r
                                + " T/k/p " + Arrays.toString(set) + " penalty " + penalty + " u " + u[r]);
                    }
                }
            }
        }
    }

    /** A row with a NaN or +infinity logit has no distribution: the kernel reports it (row, vocab), as Sampler throws. */
    @Test
    void notFiniteLogitsAreReported() {
        int rows = 3, vocab = 1000;
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY}) {
            float[] v = QuantGpuSupport.gaussian(new Random(), rows * vocab, 2.0);
            v[2 * vocab + 17] = bad;
            SamplingParams params = new SamplingParams(1, 0, true, 0.8, 50, 0.9, 1.0, 0, List.of());
            float[] row2 = Arrays.copyOfRange(v, 2 * vocab, 3 * vocab);
            IllegalStateException host = org.junit.jupiter.api.Assertions.assertThrows(IllegalStateException.class,
                    () -> Sampler.sample(row2, params, 0.5));
            assertTrue(host.getMessage().contains("NaN or +infinity"), host.getMessage());
            try (Tensor logits = QuantGpuSupport.upload(ctx, v, DType.BF16, rows, vocab);
                 Tensor uniforms = ctx.upload(Tensor.view(java.lang.foreign.MemorySegment.ofArray(new double[] {0.1, 0.5, 0.9}),
                         DType.F64, rows));
                 SampleScratch scratch = new SampleScratch(ctx, rows, vocab);
                 Tensor status = ctx.upload(Tensor.ofInts(new int[3], 3));
                 Tensor token = QuantGpuSupport.poisoned(ctx, DType.I32, rows)) {
                SamplingKernels.sampleRows(ctx, logits, null, 1f, new int[0], 0.8f, 50, 0.9, uniforms, scratch, token,
                        null, CudaContext.ptr(status));
                assertArrayEquals(new int[] {DeviceStatus.SAMPLE_NOT_FINITE, 2, vocab}, ctx.download(status).toIntArray());
                assertTrue(DeviceStatus.error(DeviceStatus.SAMPLE_NOT_FINITE, 2, vocab) instanceof IllegalStateException);
                assertTrue(DeviceStatus.error(DeviceStatus.SAMPLE_NOT_FINITE, 2, vocab).getMessage().startsWith("row 2: "));
            }
        }
    }

    private static int[] runKernel(float[] v, DType dt, int rows, int vocab, int[] excluded, SamplingParams params,
                                   double[] u, float penalty, int[][] context) {
        byte[] flags = new byte[rows * vocab];
        for (int r = 0; r < rows; r++) for (int t : context[r]) flags[r * vocab + t] = 1;
        try (Tensor logits = QuantGpuSupport.upload(ctx, v, dt, rows, vocab);
             Tensor uniforms = ctx.upload(Tensor.view(java.lang.foreign.MemorySegment.ofArray(u), DType.F64, rows));
             SampleScratch scratch = new SampleScratch(ctx, rows, vocab);
             Tensor status = ctx.upload(Tensor.ofInts(new int[3], 3));
             Tensor seen = ctx.upload(Tensor.view(java.lang.foreign.MemorySegment.ofArray(flags), DType.U8, rows, vocab));
             Tensor token = QuantGpuSupport.poisoned(ctx, DType.I32, rows);
             Tensor next = QuantGpuSupport.poisoned(ctx, DType.I32, rows)) {
            SamplingKernels.sampleRows(ctx, logits, penalty != 1f ? seen : null, penalty, excluded,
                    (float) params.temperature(), params.topK(), params.topP(), uniforms, scratch, token, next,
                    CudaContext.ptr(status));
            assertArrayEquals(new int[3], ctx.download(status).toIntArray(), "finite logits report nothing");
            // the scratch's counts are left at zero for the next launch
            assertTrue(java.util.Arrays.stream(ctx.download(scratch.hist).toIntArray()).allMatch(c -> c == 0));
            assertTrue(java.util.Arrays.stream(ctx.download(scratch.maxKey).toIntArray()).allMatch(c -> c == 0));
            int[] got = ctx.download(token).toIntArray();
            assertArrayEquals(got, ctx.download(next).toIntArray(), "the next step's ids are the picks");
            if (penalty != 1f) {  // the picks are flagged for the next step's penalty
                byte[] after = ctx.download(seen).segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
                for (int r = 0; r < rows; r++) assertEquals(1, after[r * vocab + got[r]], "row " + r + " flagged");
            }
            return got;
        }
    }
}
