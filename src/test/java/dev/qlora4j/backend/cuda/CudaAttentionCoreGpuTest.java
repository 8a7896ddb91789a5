package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.host;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * CudaBackend.attention against CpuBackend.attention: a prefill of a left-padded batch of 2 with grouped
 * query heads (and a sliding window in some cases), then decode steps, on fresh random q/k/v each step,
 * the output poisoned before each call. After the last step both KV caches are compared too (the cache
 * write). A long case (capacity 1500) makes the decode split over the cache (flash-decoding + combine), capacities
 * 129..256 take one split on 8 warps (or, BF16 with at most 4 query heads a block, 16 warps scoring a slot on four lanes);
 * heads 16 / kvHeads 1 makes one kv head serve two decode blocks of 8 query heads.
 *
 * <p>The CPU runs on the same (activation-dtype-rounded) inputs in float32. Tolerance
 * ||gpu - cpu|| / ||cpu||: F32 2e-5 (float32 rounding in another summation order: online softmax and
 * tiled dot products); BF16 8e-3 (the output is rounded to bf16, 2^-9 relative per element; the cached
 * keys/values are exactly the bf16 inputs on both sides).
 */
@Tag("gpu")
class CudaAttentionCoreGpuTest {

    @ParameterizedTest(name = "{0} heads={1}/{2} d={3} prompt={4} cap={5} window={6} lanes a slot={7}")
    @CsvSource({
            "F32, 4, 2, 16, 7, 12, 0, 4",
            "F32, 4, 2, 16, 6, 12, 3, 4",
            "F32, 8, 2, 64, 45, 60, 0, 4",
            "F32, 16, 1, 128, 33, 40, 0, 4",
            "F32, 4, 4, 256, 19, 24, 0, 4",
            "F32, 4, 2, 96, 20, 24, 7, 4",
            "F32, 4, 2, 64, 700, 1500, 0, 4",
            "F32, 4, 2, 64, 700, 1500, 300, 4",
            "BF16, 4, 2, 16, 7, 12, 0, 4",
            "BF16, 8, 2, 128, 70, 80, 0, 4",
            "BF16, 32, 4, 128, 300, 1100, 0, 4",
            "BF16, 4, 2, 64, 40, 50, 9, 4",
            // capacities 129..256: one split (16 warps, four lanes a slot; 8 query heads a block: 8 warps, the _w8 kernels)
            "BF16, 8, 2, 128, 150, 200, 0, 4",
            "BF16, 16, 1, 128, 140, 180, 0, 4",
            "F32, 4, 2, 64, 130, 250, 17, 4",
            // one split of a BF16 cache scores a slot on one lane too (-Dqlora4j.attention.decodeLanesPerSlot=1): the
            // 4-warp and 8-warp kernels; the BF16 rows above take four lanes a slot on 16 warps where they apply
            "BF16, 8, 2, 128, 70, 80, 0, 1",
            "BF16, 8, 2, 128, 150, 200, 0, 1",
            "BF16, 4, 2, 64, 40, 50, 9, 1",
            "BF16, 32, 4, 128, 300, 1100, 0, 1",
            "BF16, 16, 1, 128, 140, 180, 0, 1",
            // splits on four lanes a slot (8 warps) at 2 query heads a block, head dim 64
            "BF16, 8, 4, 64, 600, 1200, 0, 4"})
    void prefillThenDecodeMatchesCpu(DType act, int heads, int kvHeads, int headDim, int promptLen, int capacity,
                                     int window, int lanesPerSlot) {
        int[] pads = {0, Math.min(3, promptLen - 1)};
        int batch = pads.length, layers = 2, layer = 1, steps = 4;
        Random r = CudaCoreTestSupport.random("attention " + act + " h=" + heads + "/" + kvHeads + " d=" + headDim);
        float scale = (float) (1 / Math.sqrt(headDim));
        try (var lanes = TemporaryProperty.set(AttentionKernels.LANES_PER_SLOT_PROPERTY, Integer.toString(lanesPerSlot));
             CpuBackend cpu = new CpuBackend(2);
             CudaBackend g = CudaCoreTestSupport.backend(act, false);
             KvCache cc = cpu.newKvCache(layers, batch, kvHeads, capacity, headDim);
             KvCache gc = g.newKvCache(layers, batch, kvHeads, capacity, headDim);
             Tensor padsCpu = Tensor.ofInts(pads, batch);
             Tensor padsGpu = g.upload(padsCpu)) {
            int start = 0;
            for (int step = 0; step <= steps; step++) {
                int t = step == 0 ? promptLen : 1;
                int rows = batch * t;
                float[] q = roundTo(gaussian(r, rows * heads * headDim, 1), act);
                float[] k = roundTo(gaussian(r, rows * kvHeads * headDim, 1), act);
                float[] v = roundTo(gaussian(r, rows * kvHeads * headDim, 1), act);
                float[] ref = cpu.attention(Tensor.of(q, rows, heads * headDim), Tensor.of(k, rows, kvHeads * headDim),
                        Tensor.of(v, rows, kvHeads * headDim), cc, layer, start, padsCpu, heads, kvHeads, headDim, scale,
                        window).toFloatArray();
                try (Tensor qd = g.upload(host(q, act, rows, heads * headDim));
                     Tensor kd = g.upload(host(k, act, rows, kvHeads * headDim));
                     Tensor vd = g.upload(host(v, act, rows, kvHeads * headDim))) {
                    poison(g, act, rows, heads * headDim);
                    try (Tensor out = g.attention(qd, kd, vd, gc, layer, start, padsGpu, heads, kvHeads, headDim, scale,
                            window)) {
                        assertClose(values(g, out), ref, act == DType.F32 ? 2e-5 : 8e-3,
                                (step == 0 ? "prefill" : "decode " + step) + " " + act);
                    }
                }
                start += t;
            }
            // The cache write: same slots, same values (bit-equal: both hold the rounded inputs).
            float[] ck = cc.keys(layer).toFloatArray(), gk = values(g, gc.keys(layer));
            float[] cv = cc.values(layer).toFloatArray(), gv = values(g, gc.values(layer));
            CudaCoreTestSupport.assertBitEqual(gk, ck, "cached keys");
            CudaCoreTestSupport.assertBitEqual(gv, cv, "cached values");
        }
    }

    private static float[] roundTo(float[] x, DType act) {
        return host(x, act, x.length).toFloatArray();
    }
}
