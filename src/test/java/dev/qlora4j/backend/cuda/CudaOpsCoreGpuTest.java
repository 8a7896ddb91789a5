package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.host;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Every non-attention op of CudaBackend against CpuBackend (the reference) on fresh random inputs, with the
 * output memory poisoned (NaN) before each launch, for F32 and BF16 activations.
 *
 * <p>The CPU runs on the values the GPU holds (inputs rounded to the activation dtype first), in float32.
 * Tolerances (||gpu - cpu|| / ||cpu||):
 * <ul>
 *   <li>F32, data movement (embedding, gather) and a + b: bit-equal (the same single float32 operation).</li>
 *   <li>F32, other ops: 1e-5 — float32 rounding in another order (block reductions, cuBLAS tiling, FMA
 *       contraction in rope, expf vs the Vector API's exp): a few ulp per element.</li>
 *   <li>BF16: 8e-3 — the GPU rounds each output to bf16 (relative error up to 2^-9 per element, ~2e-3 rms
 *       for one rounding); linear and xent read bf16 products of a K-long sum, same bound.</li>
 * </ul>
 * Odd sizes (rows of 1 and 37, hidden 72 and 200) exercise the non-16-byte-multiple paths and tails.
 */
@Tag("gpu")
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CudaOpsCoreGpuTest {
    private final CpuBackend cpu = new CpuBackend(2);
    private CudaBackend f32;
    private CudaBackend bf16;

    @BeforeAll
    void open() {
        f32 = CudaCoreTestSupport.backend(DType.F32, false);
        bf16 = CudaBackend.create(0, DType.BF16, false);
    }

    @AfterAll
    void close() {
        if (bf16 != null) bf16.close();
        if (f32 != null) f32.close();
        cpu.close();
    }

    private CudaBackend gpu(DType act) { return act == DType.F32 ? f32 : bf16; }

    private static double tol(DType act) { return act == DType.F32 ? 1e-5 : 8e-3; }

    /** Rounds to the activation dtype and back: the values the GPU actually holds. */
    private static float[] held(float[] x, DType act) {
        return host(x, act, x.length).toFloatArray();
    }

    /**
     * Backend.zeros fills on the stream: zero even where the caching allocator hands back a block that held other
     * values (poisoned, freed, reused), and zero after earlier queued work that wrote the old block.
     */
    @ParameterizedTest
    @CsvSource({"F32, 3, 5", "BF16, 37, 72", "F32, 1, 1", "F32, 0, 4"})
    void zerosAreZeroOnARecycledBlock(DType dtype, int rows, int cols) {
        CudaBackend g = bf16;
        for (int round = 0; round < 3; round++) {
            Tensor old = g.upload(Tensor.fromFloats(gaussian(new Random(round), rows * cols, 3), dtype, rows, cols));
            poison(g, dtype, rows, cols);
            old.close();
            try (Tensor z = g.zeros(dtype, rows, cols)) {
                assertEquals(dtype, z.dtype());
                assertEquals(rows * cols, z.numel());
                for (float v : values(g, z)) assertEquals(0f, v);
            }
        }
    }

    @ParameterizedTest
    @CsvSource({"F32, F32", "F32, BF16", "F32, F16", "BF16, BF16", "BF16, F32"})
    void embeddingCopiesTableRows(DType act, DType tableType) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("embedding " + act + " " + tableType);
        int vocab = 301, hidden = 72;
        Tensor table = host(gaussian(r, vocab * hidden, 1), tableType, vocab, hidden);
        int[] ids = r.ints(37, 0, vocab).toArray();
        ids[0] = vocab - 1;
        ids[1] = 0;
        float[] ref = cpu.embedding(Tensor.ofInts(ids, ids.length), table).toFloatArray();
        try (Tensor t = g.upload(table); Tensor i = g.upload(Tensor.ofInts(ids, ids.length))) {
            poison(g, act, ids.length, hidden);
            try (Tensor out = g.embedding(i, t)) {
                assertEquals(act, out.dtype());
                assertBitEqual(values(g, out), held(ref, act), "embedding " + act + " " + tableType);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void embeddingReportsIdsOutsideTheTable(DType act) {
        CudaBackend g = gpu(act);
        try (Tensor t = g.upload(host(new float[8 * 16], DType.F32, 8, 16));
             Tensor i = g.upload(Tensor.ofInts(new int[] {3, 8}, 2));
             Tensor out = g.embedding(i, t)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, g::synchronize);
            assertTrue(e.getMessage().contains("token id 8"), e.getMessage());
            g.synchronize(); // the error was cleared
        }
    }

    @ParameterizedTest
    // 300 rows: the narrower blocks of many rows (RmsNormKernels.rowThreads)
    @CsvSource({"F32, F32, 72, 37", "F32, BF16, 200, 37", "F32, F16, 64, 37", "BF16, BF16, 72, 37", "BF16, F32, 203, 37",
            "BF16, BF16, 4096, 300", "F32, F32, 1000, 300"})
    void rmsNormMatchesCpu(DType act, DType wType, int hidden, int n) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("rmsNorm");
        float[] x = held(gaussian(r, n * hidden, 3), act);
        Tensor w = host(gaussian(r, hidden, 1), wType, hidden);
        float[] ref = cpu.rmsNorm(Tensor.of(x, n, hidden), w, 1e-5f).toFloatArray();
        try (Tensor xd = g.upload(host(x, act, n, hidden)); Tensor wd = g.upload(w)) {
            poison(g, act, n, hidden);
            try (Tensor out = g.rmsNorm(xd, wd, 1e-5f)) {
                assertClose(values(g, out), ref, act == DType.F32 ? 1e-6 : tol(act), "rmsNorm " + act + " " + wType + " h=" + hidden);
            }
        }
    }

    @ParameterizedTest
    @CsvSource({"F32, F32, 1", "F32, F32, 37", "F32, BF16, 37", "F32, F16, 5", "BF16, BF16, 37", "BF16, BF16, 1",
            "BF16, F32, 9", "BF16, F16, 9"})
    void linearMatchesCpuWithAndWithoutBias(DType act, DType wType, int rows) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("linear");
        int k = 200, m = 72;
        float[] x = held(gaussian(r, rows * k, 1), act);
        Tensor w = host(gaussian(r, m * k, 0.1), wType, m, k);
        Tensor bias = host(gaussian(r, m, 1), wType, m);
        for (boolean withBias : new boolean[] {false, true}) {
            float[] ref = cpu.linear(Tensor.of(x, rows, k), w, withBias ? bias : null).toFloatArray();
            try (Tensor xd = g.upload(host(x, act, rows, k)); Tensor wd = g.upload(w); Tensor bd = g.upload(bias)) {
                poison(g, act, rows, m);
                poison(g, DType.F32, rows, m);
                try (Tensor out = g.linear(xd, wd, withBias ? bd : null)) {
                    assertEquals(act, out.dtype());
                    assertClose(values(g, out), ref, tol(act), "linear " + act + " x " + wType + " rows=" + rows
                            + (withBias ? " +bias" : ""));
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void addAddInPlaceAndSiluMulMatchCpu(DType act) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("elementwise");
        int n = 37, h = 203; // 7511 elements: not a multiple of the 16-byte pack
        float[] a = held(gaussian(r, n * h, 2), act), b = held(gaussian(r, n * h, 2), act);
        float[] add = cpu.add(Tensor.of(a, n, h), Tensor.of(b, n, h)).toFloatArray();
        float[] silu = cpu.siluMul(Tensor.of(a, n, h), Tensor.of(b, n, h)).toFloatArray();
        try (Tensor ad = g.upload(host(a, act, n, h)); Tensor bd = g.upload(host(b, act, n, h))) {
            poison(g, act, n, h);
            try (Tensor sum = g.add(ad, bd)) {
                if (act == DType.F32) assertBitEqual(values(g, sum), add, "add");
                else assertClose(values(g, sum), add, tol(act), "add bf16");
            }
            poison(g, act, n, h);
            try (Tensor s = g.siluMul(ad, bd)) {
                assertClose(values(g, s), silu, tol(act), "siluMul " + act);
            }
            assertEquals(ad, g.addInPlace(ad, bd));
            float[] inPlace = values(g, ad);
            if (act == DType.F32) assertBitEqual(inPlace, add, "addInPlace");
            else assertClose(inPlace, add, tol(act), "addInPlace bf16");
        }
    }

    @ParameterizedTest
    @CsvSource({"F32, 16", "F32, 128", "BF16, 128", "BF16, 64"})
    void ropeMatchesCpu(DType act, int headDim) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("rope");
        int n = 37, heads = 3;
        float[] x = held(gaussian(r, n * heads * headDim, 1), act);
        int[] pos = r.ints(n, 0, 5000).toArray();
        float[] inv = new float[headDim / 2];
        for (int i = 0; i < inv.length; i++) inv[i] = (float) Math.pow(10000, -2.0 * i / headDim);
        Tensor ref = Tensor.of(x.clone(), n, heads * headDim);
        cpu.ropeInPlace(ref, Tensor.ofInts(pos, n), Tensor.of(inv, inv.length), heads, headDim, 1.25f);
        try (Tensor xd = g.upload(host(x, act, n, heads * headDim)); Tensor pd = g.upload(Tensor.ofInts(pos, n));
             Tensor fd = g.upload(Tensor.of(inv, inv.length))) {
            g.ropeInPlace(xd, pd, fd, heads, headDim, 1.25f);
            // angles up to 5000 rad: both sides evaluate cos/sin of the same float32 angle in double
            assertClose(values(g, xd), ref.toFloatArray(), tol(act), "rope " + act + " d=" + headDim);
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void gatherRowsCopiesAndReportsBadRows(DType act) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("gather");
        int n = 37, h = 72;
        float[] x = held(gaussian(r, n * h, 1), act);
        int[] rows = {36, 0, 5, 5};
        float[] ref = cpu.gatherRows(Tensor.of(x, n, h), Tensor.ofInts(rows, rows.length)).toFloatArray();
        try (Tensor xd = g.upload(host(x, act, n, h)); Tensor rd = g.upload(Tensor.ofInts(rows, rows.length))) {
            poison(g, act, rows.length, h);
            try (Tensor out = g.gatherRows(xd, rd)) {
                assertBitEqual(values(g, out), ref, "gatherRows " + act);
            }
            try (Tensor bad = g.upload(Tensor.ofInts(new int[] {37}, 1)); Tensor out = g.gatherRows(xd, bad)) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, g::synchronize);
                assertTrue(e.getMessage().contains("row 37"), e.getMessage());
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void crossEntropyMatchesCpu(DType act) {
        CudaBackend g = gpu(act);
        Random r = CudaCoreTestSupport.random("xent");
        int n = 9, vocab = 32003;
        float[] logits = held(gaussian(r, n * vocab, 4), act);
        int[] targets = r.ints(n, 0, vocab).toArray();
        targets[3] = -100;
        float[] ref = cpu.crossEntropy(Tensor.of(logits, n, vocab), Tensor.ofInts(targets, n)).toFloatArray();
        try (Tensor ld = g.upload(host(logits, act, n, vocab)); Tensor td = g.upload(Tensor.ofInts(targets, n))) {
            poison(g, DType.F32, n);
            try (Tensor loss = g.crossEntropy(ld, td)) {
                assertEquals(DType.F32, loss.dtype());
                float[] got = values(g, loss);
                assertEquals(0f, got[3], "ignored row");
                // the inputs are identical (already rounded), the loss is float32 on both sides
                assertClose(got, ref, 1e-5, "crossEntropy " + act);
            }
            try (Tensor bad = g.upload(Tensor.ofInts(new int[] {0, 1, 2, vocab, 0, 0, 0, 0, 0}, n));
                 Tensor loss = g.crossEntropy(ld, bad)) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, g::synchronize);
                assertTrue(e.getMessage().contains("target " + vocab), e.getMessage());
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"F32>BF16", "BF16>F32", "F32>F16", "F16>BF16", "BF16>F16", "BF16>BF16"})
    void castRoundsLikeTheHost(String pair) {
        DType from = DType.valueOf(pair.split(">")[0]), to = DType.valueOf(pair.split(">")[1]);
        Random r = CudaCoreTestSupport.random("cast " + pair);
        Tensor h = host(gaussian(r, 1001, 100), from, 7, 143);
        float[] ref = h.toDType(to).toFloatArray();
        try (Tensor d = f32.upload(h); Tensor c = f32.cast(d, to)) {
            assertEquals(to, c.dtype());
            assertBitEqual(values(f32, c), ref, "cast " + pair);
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void inputsOfAnotherDtypeAreCastFirstAndShapesAreChecked(DType act) {
        CudaBackend g = gpu(act);
        DType other = act == DType.F32 ? DType.BF16 : DType.F32;
        float[] a = {1, 2, 3, 4}, b = {0.5f, 0.25f, 2, -1};
        try (Tensor ad = g.upload(host(a, other, 2, 2)); Tensor bd = g.upload(host(b, act, 2, 2));
             Tensor sum = g.add(ad, bd)) {
            assertEquals(act, sum.dtype());
            assertBitEqual(values(g, sum), new float[] {1.5f, 2.25f, 5, 3}, "add of mixed dtypes");
            assertThrows(IllegalArgumentException.class, () -> g.addInPlace(ad, bd), "in-place target of another dtype");
            try (Tensor c = g.upload(host(a, act, 4, 1))) {
                assertThrows(IllegalArgumentException.class, () -> g.add(bd, c));
            }
        }
    }
}
