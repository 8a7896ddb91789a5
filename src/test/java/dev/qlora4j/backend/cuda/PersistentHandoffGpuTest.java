package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The persistent code GEMVs on a grid planned for two SMs, so that every walker takes dozens of tiles: the tile handoff
 * of the two-block m4 kernels (native/nf4_gemv_handoff.cuh: each tile's fragments in one of two buffers, summed by a
 * rotating warp one tile later, mbarrier phases instead of two block barriers a tile; rows 2..4 here) wraps its buffers
 * and barrier phases many times, and the other forms (one row: "_p3" / "_s3"; 8 and 16 rows) walk as many tiles with
 * their block-wide ends. The single, joint gate / up and grouped q / k / v launches against the row layout's
 * one-tile-a-block kernels, bit for bit.
 */
@Tag("gpu")
class PersistentHandoffGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    @AfterEach
    void plainGrid() { Nf4TileGemvKernels.setGridSmsForTests(0); }

    private static final int[] ROWS = {1, 2, 3, 4, 8, 16};

    private static QuantState4bit nf4(Random rnd, int out, int in) {
        return Quant4bit.quantize(Tensor.fromFloats(QuantGpuSupport.randomWeights(rnd, out, in), DType.BF16, out, in),
                QuantType.NF4, 64, true);
    }

    private static CudaQuant4bit rowLayout(QuantState4bit qs) {
        return (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, DType.BF16);
    }

    private static CudaQuant4bit tiled(QuantState4bit qs) {
        return CudaQuantOps.toTiles(ctx, (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, DType.BF16));
    }

    @ParameterizedTest(name = "form {0}")
    @ValueSource(strings = {"auto", "2", "s3"})
    void aSmallGridWalksManyTilesWithTheOneTileValues(String form) {
        Random rnd = new Random();
        int in = 4096;
        QuantState4bit single = nf4(rnd, 4096, in), gate = nf4(rnd, 2048, in), up = nf4(rnd, 2048, in);
        int[] outs = {2048, 1024, 1024};
        List<QuantState4bit> group = new ArrayList<>();
        for (int o : outs) group.add(nf4(rnd, o, in));
        try (TemporaryProperty p = TemporaryProperty.set(Nf4TileGemvKernels.PERSISTENT_FORM_PROPERTY, form);
             CudaQuant4bit sr = rowLayout(single); CudaQuant4bit st = tiled(single);
             CudaQuant4bit gr = rowLayout(gate); CudaQuant4bit gt = tiled(gate);
             CudaQuant4bit ur = rowLayout(up); CudaQuant4bit ut = tiled(up)) {
            List<CudaQuant4bit> qkvRows = new ArrayList<>(), qkvTiles = new ArrayList<>();
            try {
                for (QuantState4bit qs : group) {
                    qkvRows.add(rowLayout(qs));
                    qkvTiles.add(tiled(qs));
                }
                Nf4TileGemvKernels.setGridSmsForTests(2);
                for (int m : ROWS) {
                    // the walk: 256 tiles (128 pairs, 256 grouped tiles) over at most 6 walkers
                    int grid = Nf4TileGemvKernels.persistentSingle(ctx, st, 4096 / 16, false, m);
                    assertTrue(grid > 0 && grid <= 6, "grid " + grid);
                    try (Tensor x = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, m * in, 1.0), DType.BF16, m, in);
                         Tensor bias = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, 4096, 0.5), DType.BF16, 4096)) {
                        try (Tensor want = QuantGpuSupport.poisoned(ctx, DType.BF16, m, 4096);
                             Tensor got = QuantGpuSupport.poisoned(ctx, DType.BF16, m, 4096)) {
                            Nf4GemvKernels.gemv(ctx, sr, x, m, bias, want, Nf4GemvKernels.Decode.CODE);
                            Nf4GemvKernels.gemv(ctx, st, x, m, bias, got, Nf4GemvKernels.Decode.CODE);
                            assertSameBits("single rows=" + m, want, got);
                        }
                        try (Tensor yg = QuantGpuSupport.poisoned(ctx, DType.BF16, m, 2048);
                             Tensor yu = QuantGpuSupport.poisoned(ctx, DType.BF16, m, 2048);
                             Tensor want = QuantGpuSupport.poisoned(ctx, DType.BF16, m, 2048);
                             Tensor got = QuantGpuSupport.poisoned(ctx, DType.BF16, m, 2048)) {
                            Nf4GemvKernels.gemv(ctx, gr, x, m, null, yg, Nf4GemvKernels.Decode.CODE);
                            Nf4GemvKernels.gemv(ctx, ur, x, m, null, yu, Nf4GemvKernels.Decode.CODE);
                            ElementwiseKernels.siluMul(ctx, DType.BF16, yg, yu, want);
                            assertTrue(Nf4TileGemvKernels.swiGluApplies(gt, ut, m));
                            Nf4TileGemvKernels.swiGlu(ctx, gt, ut, x, m, got);
                            assertSameBits("joint gate / up rows=" + m, want, got);
                        }
                        assertTrue(Nf4TileGemvKernels.groupTilesApplies(ctx, qkvTiles, m));
                        List<Tensor> ys = new ArrayList<>(), biases = new ArrayList<>();
                        try {
                            for (int s = 0; s < outs.length; s++) {
                                ys.add(QuantGpuSupport.poisoned(ctx, DType.BF16, m, outs[s]));
                                biases.add(s == 1 ? QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, outs[s], 0.5), DType.BF16, outs[s]) : null);
                            }
                            Nf4TileGemvKernels.gemvGroupTiles(ctx, qkvTiles, x, m, biases, ys);
                            for (int s = 0; s < outs.length; s++) {
                                try (Tensor want = QuantGpuSupport.poisoned(ctx, DType.BF16, m, outs[s])) {
                                    Nf4GemvKernels.gemv(ctx, qkvRows.get(s), x, m, biases.get(s), want, Nf4GemvKernels.Decode.CODE);
                                    assertSameBits("group segment " + s + " rows=" + m, want, ys.get(s));
                                }
                            }
                        } finally {
                            for (Tensor t : ys) t.close();
                            for (Tensor t : biases) if (t != null) t.close();
                        }
                    }
                }
            } finally {
                for (CudaQuant4bit w : qkvRows) w.close();
                for (CudaQuant4bit w : qkvTiles) w.close();
            }
        }
    }

    private static void assertSameBits(String what, Tensor want, Tensor got) {
        byte[] wb = QuantGpuSupport.bytes(ctx.download(want)), gb = QuantGpuSupport.bytes(ctx.download(got));
        assertEquals(wb.length, gb.length, what);
        for (int i = 0; i < wb.length; i++) {
            if (wb[i] != gb[i]) fail(what + ": byte " + i + " differs (" + wb[i] + " vs " + gb[i] + ")");
        }
    }
}
