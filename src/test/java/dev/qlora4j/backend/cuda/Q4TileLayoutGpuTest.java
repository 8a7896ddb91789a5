package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The tile layout of 4-bit weights (Q4Layout.TILES) on the GPU: the repack against its host reference (and back), and
 * every kernel that reads tiles (the five dequantize kernels, the code and pair decode GEMVs, the prefill linear)
 * against the same kernel on the row layout of the same weight, bit for bit (same values, same order of operations:
 * only the byte addresses differ); the joint gate / up decode against the two GEMVs and silu_mul it replaces; the
 * persistent code decode (a grid smaller than the tiles) within both; the grouped persistent decode against each weight's
 * own. Fresh random weights each run; outputs poisoned
 * before each launch.
 */
@Tag("gpu")
class Q4TileLayoutGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    @Test
    void repackMatchesTheHostReferenceAndGoesBack() {
        Random rnd = new Random();
        int out = 48, in = 640;
        byte[] rows = new byte[out * in / 2];
        rnd.nextBytes(rows);
        try (Tensor src = ctx.upload(Tensor.view(MemorySegment.ofArray(rows), DType.U8, rows.length));
             Tensor tiles = QuantGpuSupport.poisoned(ctx, DType.U8, rows.length);
             Tensor back = QuantGpuSupport.poisoned(ctx, DType.U8, rows.length)) {
            Quant4bitKernels.tileLayout(ctx, src, tiles, out, in, true);
            assertArrayEquals(Q4Layout.toTiles(rows, out, in), QuantGpuSupport.bytes(ctx.download(tiles)));
            Quant4bitKernels.tileLayout(ctx, tiles, back, out, in, false);
            assertArrayEquals(rows, QuantGpuSupport.bytes(ctx.download(back)));
        }
    }

    static Stream<Arguments> weights() {
        return Stream.of(
                Arguments.of(48, 384, 64, false, DType.BF16, DType.BF16),
                Arguments.of(32, 1024, 64, true, DType.BF16, DType.F16),     // double rounding (state f16, compute bf16)
                Arguments.of(160, 512, 128, true, DType.F16, DType.BF16),
                Arguments.of(16, 128, 32, false, DType.F16, DType.F16),      // one tile, one chunk; blocksize 32: no code decode
                Arguments.of(1024, 4096, 64, true, DType.BF16, DType.BF16),  // a model's shape: many tiles and chunks
                Arguments.of(64, 11008, 256, true, DType.BF16, DType.BF16),  // Llama's intermediate size as in_features
                // more tiles than two blocks per SM hold: the persistent code decode (Nf4TileGemvKernels.persistentGrid)
                Arguments.of(8192, 2048, 64, true, DType.BF16, DType.BF16),
                Arguments.of(6144, 4096, 64, true, DType.BF16, DType.BF16));  // K / 128 = 32: also the 3-deep ring's
    }

    private static QuantState4bit randomState(Random rnd, int out, int in, int blocksize, boolean nested, DType state) {
        QuantType type = rnd.nextInt(4) == 0 ? QuantType.FP4 : QuantType.NF4;
        float[] w = QuantGpuSupport.randomWeights(rnd, out, in);
        return Quant4bit.quantize(Tensor.fromFloats(w, state, out, in), type, blocksize, nested);
    }

    @ParameterizedTest(name = "[{0}, {1}] bs={2} nested={3} compute={4} state={5}")
    @MethodSource("weights")
    void tileKernelsGiveTheRowLayoutsValues(int out, int in, int blocksize, boolean nested, DType compute, DType state) {
        Random rnd = new Random();
        QuantState4bit qs = randomState(rnd, out, in, blocksize, nested, state);
        try (CudaQuant4bit rows = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute);
             CudaQuant4bit tiles = CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute))) {
            assertEquals(Q4Layout.TILES, tiles.layout());
            String what = rows + " vs " + tiles;
            // the download puts the rows back: the checkpoint's bytes
            assertArrayEquals(QuantGpuSupport.bytes(qs.weight()), QuantGpuSupport.bytes(tiles.toHostState(ctx).weight()), what);

            for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16}) {
                assertSameBits(what + " dequantize " + dt, CudaQuantOps.dequantize(ctx, rows, dt), CudaQuantOps.dequantize(ctx, tiles, dt));
            }
            int ld = in + 24;  // rows with room after them, as the LoRA fold leaves
            try (Tensor yr = QuantGpuSupport.poisoned(ctx, DType.BF16, out, ld); Tensor yt = QuantGpuSupport.poisoned(ctx, DType.BF16, out, ld)) {
                Quant4bitKernels.dequantizeRows(ctx, rows, yr, compute == DType.BF16 ? state : DType.F32);
                Quant4bitKernels.dequantizeRows(ctx, tiles, yt, compute == DType.BF16 ? state : DType.F32);
                assertSameBits(what + " dequantizeRows", ctx.download(yr), ctx.download(yt));
            }
            try (Tensor b = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, out * 8, 0.1), DType.F32, out, 8);
                 Tensor yr = QuantGpuSupport.poisoned(ctx, DType.BF16, out, ld); Tensor yt = QuantGpuSupport.poisoned(ctx, DType.BF16, out, ld)) {
                Quant4bitKernels.dequantizeRowsFold(ctx, rows, CudaContext.ptr(yr), ld, DType.F32, b, 8, 0.5f);
                Quant4bitKernels.dequantizeRowsFold(ctx, tiles, CudaContext.ptr(yt), ld, DType.F32, b, 8, 0.5f);
                assertSameBits(what + " dequantizeRowsFold", ctx.download(yr), ctx.download(yt));
            }

            for (int m : new int[] {1, 2, 4, 5, 8, 9, 16}) {
                float[] x = QuantGpuSupport.gaussian(rnd, m * in, 1.0);
                float[] bias = QuantGpuSupport.gaussian(rnd, out, 0.5);
                try (Tensor xc = QuantGpuSupport.upload(ctx, x, compute, m, in);
                     Tensor bd = QuantGpuSupport.upload(ctx, bias, DType.BF16, out)) {
                    for (Nf4GemvKernels.Decode d : new Nf4GemvKernels.Decode[] {Nf4GemvKernels.Decode.CODE, Nf4GemvKernels.Decode.PAIR}) {
                        try (Tensor yr = QuantGpuSupport.poisoned(ctx, DType.F32, m, out); Tensor yt = QuantGpuSupport.poisoned(ctx, DType.F32, m, out)) {
                            Nf4GemvKernels.gemv(ctx, rows, xc, m, bd, yr, d);
                            Nf4GemvKernels.gemv(ctx, tiles, xc, m, bd, yt, d);
                            assertSameBits(what + " gemv " + d + " rows=" + m, ctx.download(yr), ctx.download(yt));
                        }
                    }
                    // a variant without tile kernels takes the exact pair kernel on tiles
                    try (Tensor yr = QuantGpuSupport.poisoned(ctx, DType.F32, m, out); Tensor yt = QuantGpuSupport.poisoned(ctx, DType.F32, m, out)) {
                        Nf4GemvKernels.gemv(ctx, rows, xc, m, bd, yr, Nf4GemvKernels.Decode.PAIR);
                        Quant4bitKernels.gemv(ctx, tiles, xc, m, bd, yt, Quant4bitKernels.GemvVariant.V2TABLE);
                        assertSameBits(what + " v2table on tiles rows=" + m, ctx.download(yr), ctx.download(yt));
                    }
                }
            }
            // the public linear at a prefill shape (dequantize + cuBLAS) and a decode one
            for (int n : new int[] {3, 40}) {
                try (Tensor x = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, n * in, 1.0), DType.BF16, n, in);
                     Tensor yr = CudaQuantOps.linear(ctx, x, rows, null); Tensor yt = CudaQuantOps.linear(ctx, x, tiles, null)) {
                    Quant4bitKernels.GemvVariant v = Quant4bitKernels.gemvVariant();
                    if (n > Quant4bitKernels.GEMV_MAX_ROWS || v == Quant4bitKernels.GemvVariant.V2CODE
                            || v == Quant4bitKernels.GemvVariant.V2) {  // the variants whose kernels read both layouts
                        assertSameBits(what + " linear n=" + n, ctx.download(yr), ctx.download(yt));
                    }
                }
            }
            // kernels that read only the row layout refuse a tiled weight instead of reading garbage
            assertThrows(IllegalStateException.class, () -> Quant4bitKernels.weightArgs(tiles));
            assertThrows(IllegalArgumentException.class, () -> {
                try (Tensor xc = QuantGpuSupport.upload(ctx, new float[in], compute, 1, in); Tensor y = ctx.empty(DType.F32, 1, out)) {
                    Nf4GemvKernels.gemv(ctx, tiles, xc, 1, null, y, Nf4GemvKernels.Decode.TABLE);
                }
            });
        }
    }

    static Stream<Arguments> gateUpCases() {
        return Stream.of(
                Arguments.of(256, 512, 64, true, DType.BF16),
                Arguments.of(96, 1024, 128, false, DType.BF16),
                Arguments.of(160, 384, 64, true, DType.BF16),
                Arguments.of(11008, 4096, 64, true, DType.BF16));  // Llama-7B's gate / up
    }

    /** The joint gate / up decode: the two CODE GEMVs (no bias) and silu_mul in turn, bit for bit, rows 1..8. */
    @ParameterizedTest(name = "[{0}, {1}] bs={2} nested={3} compute={4}")
    @MethodSource("gateUpCases")
    void jointGateUpIsTheTwoGemvsAndSiluMul(int out, int in, int blocksize, boolean nested, DType compute) {
        Random rnd = new Random();
        QuantState4bit gs = randomState(rnd, out, in, blocksize, nested, compute);
        QuantState4bit us = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, out, in), compute, out, in),
                gs.quantType(), blocksize, nested);
        try (CudaQuant4bit gate = CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, gs, compute));
             CudaQuant4bit up = CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, us, compute))) {
            for (int m = 1; m <= Nf4GemvKernels.CODE_MAX_ROWS; m++) {
                assertTrue(Nf4TileGemvKernels.swiGluApplies(gate, up, m));
                try (Tensor x = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, m * in, 1.0), compute, m, in);
                     Tensor yg = QuantGpuSupport.poisoned(ctx, compute, m, out); Tensor yu = QuantGpuSupport.poisoned(ctx, compute, m, out);
                     Tensor want = QuantGpuSupport.poisoned(ctx, compute, m, out); Tensor got = QuantGpuSupport.poisoned(ctx, compute, m, out)) {
                    Nf4GemvKernels.gemv(ctx, gate, x, m, null, yg, Nf4GemvKernels.Decode.CODE);
                    Nf4GemvKernels.gemv(ctx, up, x, m, null, yu, Nf4GemvKernels.Decode.CODE);
                    ElementwiseKernels.siluMul(ctx, compute, yg, yu, want);
                    Nf4TileGemvKernels.swiGlu(ctx, gate, up, x, m, got);
                    assertSameBits("swiGlu [" + out + ", " + in + "] rows=" + m, ctx.download(want), ctx.download(got));
                }
            }
            // not for 9 rows, nor for a weight in the row layout, nor for F16 compute (no kernel: activations never F16)
            assertFalse(Nf4TileGemvKernels.swiGluApplies(gate, up, Nf4GemvKernels.CODE_MAX_ROWS + 1));
            try (CudaQuant4bit f16 = CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, us, DType.F16))) {
                assertFalse(Nf4TileGemvKernels.swiGluApplies(f16, f16, 1));
            }
            try (CudaQuant4bit rowsGate = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, gs, compute)) {
                assertFalse(Nf4TileGemvKernels.swiGluApplies(rowsGate, up, 1));
            }
        }
    }

    static Stream<Arguments> groups() {
        return Stream.of(
                // 320 tiles together: more than two blocks per SM of an H200 hold (a block does 1-2)
                Arguments.of(2048, new int[] {2048, 1536, 1536}),
                // x of one row larger than the three-block form stages (Nf4TileGemvKernels.X_STAGE_BYTES): another form
                Arguments.of(17408, new int[] {32, 16, 16}));
    }

    /** The grouped persistent code decode (q / k / v in one launch): each weight's own CODE GEMV, bit for bit. */
    @ParameterizedTest(name = "in={0}")
    @MethodSource("groups")
    void groupedPersistentDecodeIsEachWeightsGemv(int in, int[] outs) {
        Random rnd = new Random();
        List<CudaQuant4bit> ws = new ArrayList<>();
        List<Tensor> biases = new ArrayList<>();
        try {
            for (int s = 0; s < outs.length; s++) {
                QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, outs[s], in),
                        DType.BF16, outs[s], in), QuantType.NF4, 64, true);
                ws.add(CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, DType.BF16)));
                biases.add(s == 1 ? QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, outs[s], 0.5), DType.BF16, outs[s]) : null);
            }
            for (int m = 1; m <= Nf4GemvKernels.CODE_MAX_ROWS; m++) {
                assertTrue(Nf4TileGemvKernels.groupTilesApplies(ctx, ws, m), "rows " + m);
                try (Tensor x = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, m * in, 1.0), DType.BF16, m, in)) {
                    List<Tensor> ys = new ArrayList<>();
                    for (int o : outs) ys.add(QuantGpuSupport.poisoned(ctx, DType.BF16, m, o));
                    Nf4TileGemvKernels.gemvGroupTiles(ctx, ws, x, m, biases, ys);
                    for (int s = 0; s < outs.length; s++) {
                        try (Tensor want = QuantGpuSupport.poisoned(ctx, DType.BF16, m, outs[s]); Tensor got = ys.get(s)) {
                            Nf4GemvKernels.gemv(ctx, ws.get(s), x, m, biases.get(s), want, Nf4GemvKernels.Decode.CODE);
                            assertSameBits("group segment " + s + " rows=" + m, ctx.download(want), ctx.download(got));
                        }
                    }
                }
            }
            assertFalse(Nf4TileGemvKernels.groupTilesApplies(ctx, ws, Nf4GemvKernels.CODE_MAX_ROWS + 1));
        } finally {
            for (CudaQuant4bit w : ws) w.close();
            for (Tensor b : biases) if (b != null) b.close();
        }
    }

    /** A decode of rows 0..7 and one of rows 8.. of x, concatenated: what one launch over all rows must store. */
    @FunctionalInterface
    private interface Decode { void run(Tensor x, int rows, Tensor y); }

    private static void assertRowsSplitAtEight(String what, float[] x, int rows, int in, int out, Decode decode) {
        try (Tensor all = QuantGpuSupport.upload(ctx, x, DType.BF16, rows, in);
             Tensor lo = QuantGpuSupport.upload(ctx, java.util.Arrays.copyOfRange(x, 0, 8 * in), DType.BF16, 8, in);
             Tensor hi = QuantGpuSupport.upload(ctx, java.util.Arrays.copyOfRange(x, 8 * in, rows * in), DType.BF16, rows - 8, in);
             Tensor yAll = QuantGpuSupport.poisoned(ctx, DType.BF16, rows, out);
             Tensor yLo = QuantGpuSupport.poisoned(ctx, DType.BF16, 8, out);
             Tensor yHi = QuantGpuSupport.poisoned(ctx, DType.BF16, rows - 8, out)) {
            decode.run(all, rows, yAll);
            decode.run(lo, 8, yLo);
            decode.run(hi, rows - 8, yHi);
            byte[] want = new byte[rows * out * 2];
            byte[] a = QuantGpuSupport.bytes(ctx.download(yLo)), b = QuantGpuSupport.bytes(ctx.download(yHi));
            System.arraycopy(a, 0, want, 0, a.length);
            System.arraycopy(b, 0, want, a.length, b.length);
            assertSameBits(what + " rows=" + rows, Tensor.view(MemorySegment.ofArray(want), DType.U8, want.length),
                    Tensor.view(MemorySegment.ofArray(QuantGpuSupport.bytes(ctx.download(yAll))), DType.U8, want.length));
        }
    }

    /**
     * The m16 code kernels (9..16 rows of x; x's fragments loaded per n-tile inside each chunk) against the m8 / m4
     * kernels on rows 0..7 and 8..: bit for bit, on tiles (one block per tile, persistent, the joint gate / up, the
     * grouped q / k / v) and on the row layout (single and grouped).
     */
    @Test
    void nineToSixteenRowsGiveTheEightRowKernelsValues() {
        Random rnd = new Random();
        int[][] shapes = {{4096, 4096}, {8192, 2048}, {96, 1024}};  // [out, in]: 256 tiles, persistent, small
        for (int[] sh : shapes) {
            int out = sh[0], in = sh[1];
            QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, out, in), DType.BF16, out, in),
                    QuantType.NF4, 64, out != 96);
            try (CudaQuant4bit rows = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, DType.BF16);
                 CudaQuant4bit tiles = CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, DType.BF16));
                 Tensor bias = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, out, 0.5), DType.BF16, out)) {
                for (int m : new int[] {9, 12, 16}) {
                    float[] x = QuantGpuSupport.gaussian(rnd, m * in, 1.0);
                    String what = "[" + out + ", " + in + "]";
                    assertRowsSplitAtEight(what + " tiles", x, m, in, out,
                            (xc, r, y) -> Nf4GemvKernels.gemv(ctx, tiles, xc, r, bias, y, Nf4GemvKernels.Decode.CODE));
                    assertRowsSplitAtEight(what + " rows", x, m, in, out,
                            (xc, r, y) -> Nf4GemvKernels.gemv(ctx, rows, xc, r, bias, y, Nf4GemvKernels.Decode.CODE));
                    assertRowsSplitAtEight(what + " swiGlu", x, m, in, out,
                            (xc, r, y) -> Nf4TileGemvKernels.swiGlu(ctx, tiles, tiles, xc, r, y));
                    assertRowsSplitAtEight(what + " row-layout group (2 weights, first output)", x, m, in, out, (xc, r, y) -> {
                        try (Tensor y2 = ctx.empty(DType.BF16, r, out)) {
                            Nf4GemvKernels.gemvGroup(ctx, List.of(rows, rows), xc, r, java.util.Arrays.asList(bias, null),
                                    List.of(y, y2), Nf4GemvKernels.Decode.CODE);
                        }
                    });
                    if (Nf4TileGemvKernels.groupTilesApplies(ctx, List.of(tiles, tiles, tiles), m)) {
                        assertRowsSplitAtEight(what + " tile group (3 weights, last output)", x, m, in, out, (xc, r, y) -> {
                            try (Tensor y0 = ctx.empty(DType.BF16, r, out); Tensor y1 = ctx.empty(DType.BF16, r, out)) {
                                Nf4TileGemvKernels.gemvGroupTiles(ctx, List.of(tiles, tiles, tiles), xc, r,
                                        java.util.Arrays.asList(null, null, bias), List.of(y0, y1, y));
                            }
                        });
                    }
                }
            }
        }
    }

    @Test
    void theBackendTilesTheWeightsItCan() {
        Random rnd = new Random();
        try (var p = TemporaryProperty.clear(Q4Layout.PROPERTY)) {
            QuantState4bit fits = randomState(rnd, 32, 256, 64, true, DType.BF16);
            try (CudaQuant4bit q = CudaQuantOps.arranged(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, fits, DType.BF16))) {
                assertEquals(Q4Layout.TILES, q.layout());
                assertArrayEquals(QuantGpuSupport.bytes(fits.weight()), QuantGpuSupport.bytes(q.toHostState(ctx).weight()));
            }
            QuantState4bit partialTile = randomState(rnd, 40, 256, 64, false, DType.BF16);
            try (CudaQuant4bit r = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, partialTile, DType.BF16)) {
                assertSame(r, CudaQuantOps.arranged(ctx, r));
                assertEquals(Q4Layout.ROWS, r.layout());
            }
            System.setProperty(Q4Layout.PROPERTY, "rows");
            try (CudaQuant4bit r = (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, fits, DType.BF16)) {
                assertSame(r, CudaQuantOps.arranged(ctx, r));
            }
        }
    }

    private static void assertSameBits(String what, Tensor want, Tensor got) {
        try (want; got) {
            Tensor w = want.storage() instanceof CudaStorage ? ctx.download(want) : want;
            Tensor g = got.storage() instanceof CudaStorage ? ctx.download(got) : got;
            byte[] wb = QuantGpuSupport.bytes(w), gb = QuantGpuSupport.bytes(g);
            assertEquals(wb.length, gb.length, what);
            for (int i = 0; i < wb.length; i++) {
                if (wb[i] != gb[i]) fail(what + ": byte " + i + " differs (" + wb[i] + " vs " + gb[i] + ")");
            }
        }
    }
}
