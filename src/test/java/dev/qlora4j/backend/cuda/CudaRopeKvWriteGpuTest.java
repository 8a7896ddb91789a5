package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.host;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * native/fused.cu rope_qk_kv_write (CudaBackend.ropeQkAttention with the fusion on) bit for bit against what it
 * replaces, rope_qk then kv_write (ropeQkInPlace then attention), on fresh random inputs with the caches and outputs
 * poisoned (NaN bytes) before launch: the rotated q, every slot of both caches (slots outside the written ones must
 * stay poisoned), the attention output, and k. Then greedy decode of a synthetic GQA model with the fusion on and off.
 */
@Tag("gpu")
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaRopeKvWriteGpuTest {
    private static final int LAYERS = 2;
    private static final int LAYER = 1; // the second layer: the cache pointer is the layer's, not the first's
    private CudaBackend f32;
    private CudaBackend bf16;

    @BeforeAll
    void open() {
        f32 = CudaCoreTestSupport.backend(DType.F32, false);
        bf16 = CudaBackend.create(0, DType.BF16, false);
    }

    @AfterAll
    void close() {
        FusedKernels.setRopeKvFusion(true);
        if (bf16 != null) bf16.close();
        if (f32 != null) f32.close();
    }

    private CudaBackend gpu(DType act) { return act == DType.F32 ? f32 : bf16; }

    /** Plain RoPE inverse frequencies theta^(-2i/d), or with llama3's scaling (factor 8, low 1, high 4, original 64). */
    private static float[] invFreq(int headDim, boolean scaled) {
        float[] inv = new float[headDim / 2];
        for (int i = 0; i < inv.length; i++) {
            double f = Math.pow(10000, -2.0 * i / headDim);
            if (scaled) { // small original context so that all three bands occur at these head dims
                double wavelen = 2 * Math.PI / f, factor = 8, low = 1, high = 4, original = 64;
                if (wavelen > original / low) f /= factor;
                else if (wavelen >= original / high) {
                    double s = (original / wavelen - low) / (high - low);
                    f = (1 - s) * f / factor + s * f;
                }
            }
            inv[i] = (float) f;
        }
        return inv;
    }

    /**
     * Per layer, the cache contents [batch, kvHeads, cap, headDim] a test starts from: past keys or values (random)
     * in the slots before start, poison (NaN) from start on, so any slot the call fails to write shows up as NaN.
     */
    private static float[][] cacheStart(Random r, DType act, int batch, int kvHeads, int cap, int headDim, int start) {
        float[][] init = new float[LAYERS][];
        for (int l = 0; l < LAYERS; l++) {
            float[] a = gaussian(r, batch * kvHeads * cap * headDim, 1);
            for (int i = 0; i < a.length; i++) if ((i / headDim) % cap >= start) a[i] = Float.NaN;
            init[l] = host(a, act, a.length).toFloatArray();
        }
        return init;
    }

    /** Copies init (cacheStart's, one per layer: keys first, values the same) into both tensors of every layer. */
    private static void fill(CudaBackend g, DType act, CudaKvCache c, float[][] keys, float[][] vals) {
        CudaContext ctx = g.context();
        for (int l = 0; l < c.layers(); l++) {
            try (Tensor kd = g.upload(host(keys[l], act, keys[l].length)); Tensor vd = g.upload(host(vals[l], act, vals[l].length))) {
                ctx.driver().memcpyDtoDAsync(c.keyPointer(l), CudaContext.ptr(kd), kd.byteSize(), ctx.stream());
                ctx.driver().memcpyDtoDAsync(c.valuePointer(l), CudaContext.ptr(vd), vd.byteSize(), ctx.stream());
            }
        }
    }

    /** Slots [from, cap) of every (row, kv head) of a layer's cache c [batch, kvHeads, cap, headDim] are still NaN. */
    private static void assertStillPoisoned(float[] c, int cap, int headDim, int from, String what) {
        for (int i = 0; i < c.length; i++) {
            if ((i / headDim) % cap >= from) assertTrue(Float.isNaN(c[i]), what + ": element " + i + " was written");
        }
    }

    @ParameterizedTest(name = "{0} heads {1}/{2} d {3} batch {4} T {5} start {6} scaled {7}")
    @CsvSource({
            // decode (T = 1), GQA and not, head dims 64 and 128, start 0 and later
            "F32, 8, 2, 64, 1, 1, 37, false", "BF16, 8, 2, 64, 1, 1, 37, true", "BF16, 32, 8, 128, 1, 1, 500, true",
            "F32, 32, 8, 128, 1, 1, 500, false", "BF16, 32, 32, 128, 1, 1, 0, false", "BF16, 16, 4, 64, 3, 1, 12, true",
            // decode inside the attention on 8 warps (capacities 129..256), 16 query heads a kv head (two blocks)
            "BF16, 8, 2, 128, 1, 1, 150, false", "BF16, 16, 1, 128, 2, 1, 200, true", "F32, 16, 4, 64, 1, 1, 140, true",
            // prefill: several tokens, batch rows with left padding; 1100 x 64 pairs is past ROPE_ITEMS_TO_FILL (one
            // head group per row), the others split the heads into groups
            "BF16, 8, 2, 64, 2, 19, 5, true", "F32, 4, 1, 128, 1, 300, 7, true", "BF16, 32, 8, 128, 1, 1100, 3, false",
            "F32, 32, 32, 128, 2, 6, 0, false"})
    void fusedEqualsRopeThenCacheWrite(DType act, int heads, int kvHeads, int headDim, int batch, int tokens, int start,
                                       boolean scaled) {
        CudaBackend g = gpu(act);
        String what = act + " heads " + heads + "/" + kvHeads + " d " + headDim + " B " + batch + " T " + tokens
                + " start " + start + (scaled ? " scaled" : "");
        Random r = CudaCoreTestSupport.random("ropeQkKvWrite " + what);
        int rows = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim, cap = start + tokens + 3;
        float[] q = gaussian(r, rows * qw, 1), k = gaussian(r, rows * kw, 1), v = gaussian(r, rows * kw, 1);
        int[] pads = new int[batch];
        int[] pos = new int[rows];
        for (int b = 0; b < batch; b++) {
            pads[b] = b == 0 ? 0 : r.nextInt(start + 1); // padding only before the new tokens
            for (int t = 0; t < tokens; t++) pos[b * tokens + t] = start + t - pads[b];
        }
        float[] inv = invFreq(headDim, scaled);
        float ropeScale = scaled ? 1.0986123f : 1f, attnScale = (float) (1 / Math.sqrt(headDim));
        boolean before = FusedKernels.ropeKvFusion();
        FusedKernels.setRopeKvFusion(true);
        try (Tensor p = g.upload(Tensor.ofInts(pos, rows)); Tensor f = g.upload(Tensor.of(inv, inv.length));
             Tensor pad = g.upload(Tensor.ofInts(pads, batch)); Tensor vd = g.upload(host(v, act, rows, kw));
             Tensor fq = g.upload(host(q, act, rows, qw)); Tensor fk = g.upload(host(k, act, rows, kw));
             Tensor pq = g.upload(host(q, act, rows, qw)); Tensor pk = g.upload(host(k, act, rows, kw));
             CudaKvCache fused = (CudaKvCache) g.newKvCache(LAYERS, batch, kvHeads, cap, headDim);
             CudaKvCache plain = (CudaKvCache) g.newKvCache(LAYERS, batch, kvHeads, cap, headDim)) {
            float[][] initK = cacheStart(r, act, batch, kvHeads, cap, headDim, start);
            float[][] initV = cacheStart(r, act, batch, kvHeads, cap, headDim, start);
            fill(g, act, fused, initK, initV);
            fill(g, act, plain, initK, initV);
            poison(g, act, rows, qw);
            try (Tensor fo = g.ropeQkAttention(fq, fk, vd, p, f, ropeScale, fused, LAYER, start, pad, heads, kvHeads,
                    headDim, attnScale, 0)) {
                poison(g, act, rows, qw);
                g.ropeQkInPlace(pq, pk, p, f, heads, kvHeads, headDim, ropeScale);
                try (Tensor po = g.attention(pq, pk, vd, plain, LAYER, start, pad, heads, kvHeads, headDim, attnScale, 0)) {
                    // a decode step with RoPE inside the attention leaves q unrotated (nobody reads it afterwards)
                    boolean inDecode = FusedKernels.ropeInDecode() && AttentionKernels.ropeInDecodeApplies(g.context(),
                            AttentionKernels.check(fq, fk, vd, fused, act, start, pad, heads, kvHeads, headDim));
                    assertBitEqual(values(g, fq), inDecode ? host(q, act, rows, qw).toFloatArray() : values(g, pq),
                            what + " q");
                    assertBitEqual(values(g, fused.keys(LAYER)), values(g, plain.keys(LAYER)), what + " key cache");
                    assertBitEqual(values(g, fused.values(LAYER)), values(g, plain.values(LAYER)), what + " value cache");
                    assertStillPoisoned(values(g, fused.keys(LAYER)), cap, headDim, start + tokens, what + " keys after T");
                    assertStillPoisoned(values(g, fused.values(LAYER)), cap, headDim, start + tokens, what + " values after T");
                    assertBitEqual(values(g, fused.keys(0)), initK[0], what + " layer 0 keys untouched");
                    assertBitEqual(values(g, fused.values(0)), initV[0], what + " layer 0 values untouched");
                    float[] out = values(g, fo);
                    for (int i = 0; i < out.length; i++) assertTrue(Float.isFinite(out[i]), what + " output " + i);
                    assertBitEqual(out, values(g, po), what + " attention output");
                    // the backend's call leaves k as it was (no store of the rotation nobody reads)
                    assertBitEqual(values(g, fk), host(k, act, rows, kw).toFloatArray(), what + " k left unrotated");
                }
            }

            // The launcher with storeK and the slot read from device memory (a captured graph's start pointer): the
            // value passed by argument (0) must be ignored.
            try (Tensor gq = g.upload(host(q, act, rows, qw)); Tensor gk = g.upload(host(k, act, rows, kw));
                 Tensor startOnDevice = g.upload(Tensor.ofInts(new int[] {start}, 1))) {
                fill(g, act, fused, initK, initV);
                AttentionKernels.Shape s = AttentionKernels.check(gq, gk, vd, fused, act, start, pad, heads, kvHeads,
                        headDim);
                FusedKernels.ropeQkKvWrite(g.context(), act, s, gq, gk, vd, p, f, ropeScale, fused, LAYER, 0,
                        CudaContext.ptr(startOnDevice), true);
                assertBitEqual(values(g, gq), values(g, pq), what + " q (start pointer)");
                assertBitEqual(values(g, gk), values(g, pk), what + " k stored (storeK)");
                assertBitEqual(values(g, fused.keys(LAYER)), values(g, plain.keys(LAYER)), what + " key cache (start pointer)");
                assertBitEqual(values(g, fused.values(LAYER)), values(g, plain.values(LAYER)),
                        what + " value cache (start pointer)");
            }
        } finally {
            FusedKernels.setRopeKvFusion(before);
        }
    }

    /**
     * Synthetic GQA models (llama-tiny: 4 heads over 2 kv heads, head dim 16; llama-1b@2: 32 over 4, head dim 64, whose
     * decode steps rotate inside the attention kernel): prefill and direct decode steps give the same logits bit for
     * bit with the fusion on and off, and greedy generation (decode steps replayed from a captured CUDA graph) the
     * same tokens.
     */
    @ParameterizedTest
    @CsvSource({"F32, llama-tiny", "BF16, llama-tiny", "F32, llama-1b@2", "BF16, llama-1b@2"})
    void greedyDecodeIsUnchangedByTheFusion(DType act, String shape) {
        int[][] prompts = {{1, 5, 9, 200, 300, 17}, {1, 44, 45}};
        int n = 20;
        SamplingParams greedy = SamplingParams.greedy(n).withMinNewTokens(n);
        boolean before = FusedKernels.ropeKvFusion();
        try {
            int[][][] tokens = new int[2][][];
            float[][] logits = new float[2][];
            for (int on = 0; on < 2; on++) {
                FusedKernels.setRopeKvFusion(on == 1);
                try (CudaBackend g = CudaCoreTestSupport.backend(act, true);
                     TransformerLM m = SyntheticWeights.model(shape, g, 5)) {
                    tokens[on] = new Generator(m, new int[] {2}, 0, x -> "").generate(prompts, greedy, TokenListener.NONE)
                            .outputIds();
                    logits[on] = directSteps(g, m);
                }
            }
            for (int row = 0; row < prompts.length; row++) {
                assertArrayEquals(tokens[0][row], tokens[1][row], act + " " + shape + " row " + row
                        + ": tokens with the fusion on vs off");
            }
            assertBitEqual(logits[1], logits[0], act + " " + shape + " prefill and decode logits with the fusion on vs off");
        } finally {
            FusedKernels.setRopeKvFusion(before);
        }
    }

    /** Prefill of two left-padded rows and four direct decode steps: every step's logits, concatenated. */
    private static float[] directSteps(CudaBackend g, TransformerLM m) {
        int batch = 2, prompt = 4, steps = 4;
        int[] ids = {1, 7, 8, 9, 0, 1, 30, 31};
        int[] pos = {0, 1, 2, 3, 0, 0, 1, 2};
        int[] pads = {0, 1};
        float[][] parts = new float[steps + 1][];
        try (KvCache c = m.newCache(batch, prompt + steps); Tensor padT = g.upload(Tensor.ofInts(pads, batch))) {
            try (Tensor i = g.upload(Tensor.ofInts(ids, ids.length)); Tensor p = g.upload(Tensor.ofInts(pos, pos.length));
                 Tensor h = m.forward(i, p, c, 0, padT); Tensor l = m.logits(h)) {
                parts[0] = values(g, l);
            }
            for (int s = 0; s < steps; s++) {
                int[] next = {40 + s, 90 + s};
                int[] np = {prompt + s, prompt - 1 + s};
                try (Tensor x = g.upload(Tensor.ofInts(next, batch)); Tensor y = g.upload(Tensor.ofInts(np, batch));
                     Tensor h = m.forward(x, y, c, prompt + s, padT); Tensor l = m.logits(h)) {
                    parts[s + 1] = values(g, l);
                }
            }
        }
        int total = 0;
        for (float[] a : parts) total += a.length;
        float[] all = new float[total];
        int at = 0;
        for (float[] a : parts) {
            System.arraycopy(a, 0, all, at, a.length);
            at += a.length;
        }
        return all;
    }
}
