package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
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
 * The grouped v2 GEMV (native/nf4_gemv.cu, q4v2g / q4v2greg / q4v2gcode entries: up to 3 weights sharing x in one launch) against
 * one single-weight v2 launch per weight: the outputs must be equal BIT FOR BIT (each block runs the same body on its
 * weight). Segment shapes with N not a multiple of 16 and different per segment, rows 1 / 3 / 9 / 16, BF16 and F16
 * compute, biases on some segments (in different dtypes), double quantization, the state dtype (double rounding)
 * and NF4 / FP4 differing per segment; the three decodes (the code decode on its own path where in % 128 == 0). Every output is poisoned before each launch (different poison
 * for the two paths). {@link Nf4GemvKernels#GROUP_LAUNCHES} proves the grouped kernel ran, not a fallback.
 * Also CudaBackend.linearQuantizedGroup: grouped at decode, per weight (same values) for 17 rows or under
 * -Dqlora4j.nf4.gemv=v7.
 */
@Tag("gpu")
class Nf4GemvGroupGpuTest {
    private static TemporaryProperty groupBefore;

    @BeforeAll
    static void groupedLaunchesOn() {   // off by default (CudaQuantOps.GROUP_PROPERTY)
        groupBefore = TemporaryProperty.set(CudaQuantOps.GROUP_PROPERTY, "true");
    }

    @AfterAll
    static void restoreGroupedLaunches() {
        if (groupBefore != null) groupBefore.close();
    }

    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    /** One segment: shape [out, in], nested, blocksize, state dtype, quant type, bias dtype (null: no bias). */
    record Seg(int out, boolean nested, int blocksize, DType state, QuantType type, DType bias) {}

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        // q/k/v-like (different N, odd), gate/up-like (2 segments), one segment, tiny N (fewer rows than a tile)
        Seg[][] groups = {
                {new Seg(147, false, 64, DType.BF16, QuantType.NF4, DType.BF16), new Seg(33, true, 64, DType.BF16, QuantType.NF4, null),
                        new Seg(65, false, 128, DType.F32, QuantType.NF4, DType.F32)},
                {new Seg(200, true, 64, DType.F16, QuantType.NF4, null), new Seg(200, true, 64, DType.BF16, QuantType.FP4, null)},
                {new Seg(1001, true, 256, DType.BF16, QuantType.NF4, DType.F16)},
                {new Seg(5, false, 64, DType.BF16, QuantType.NF4, DType.BF16), new Seg(16, true, 128, DType.F32, QuantType.NF4, null),
                        new Seg(17, false, 64, DType.F16, QuantType.FP4, DType.BF16)},
                // in % 128 == 0: the code decode's own path (the others' aligned shapes)
                {new Seg(300, true, 64, DType.BF16, QuantType.NF4, null), new Seg(64, false, 128, DType.F16, QuantType.FP4, DType.BF16),
                        new Seg(97, true, 256, DType.F32, QuantType.NF4, null)},
        };
        int[] ins = {1344, 4160, 192, 320, 2048};
        int[] rowsList = {1, 3, 9, 16};
        DType[] computes = {DType.BF16, DType.F16};
        DType[] xds = {DType.BF16, DType.F16, DType.F32};
        int i = 0;
        for (int g = 0; g < groups.length; g++) {
            for (int rows : rowsList) {
                DType compute = computes[i % 2];
                out.add(Arguments.of(g, ins[g], rows, compute, xds[i % 3], groups[g]));
                i++;
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "group {0} in={1} rows={2} compute={3} y={4}")
    @MethodSource("cases")
    void groupedLaunchEqualsSingleLaunchesBitForBit(int g, int inF, int rows, DType compute, DType yd, Seg[] segs) {
        Random rnd = CudaCoreTestSupport.random("group " + g + " rows " + rows);
        List<CudaQuant4bit> ws = new ArrayList<>();
        List<Tensor> biases = new ArrayList<>(), ysGroup = new ArrayList<>(), ysSingle = new ArrayList<>();
        Tensor xc = null;
        try {
            for (Seg s : segs) {
                float[] w = QuantGpuSupport.randomWeights(rnd, s.out(), inF);
                QuantState4bit qs = Quant4bit.quantize(Tensor.fromFloats(w, s.state(), s.out(), inF), s.type(), s.blocksize(), s.nested());
                ws.add((CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, qs, compute));
                biases.add(s.bias() == null ? null
                        : QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, s.out(), 0.5), s.bias(), s.out()));
                ysGroup.add(ctx.empty(yd, rows, s.out()));
                ysSingle.add(ctx.empty(yd, rows, s.out()));
            }
            xc = QuantGpuSupport.upload(ctx, QuantGpuSupport.gaussian(rnd, rows * inF, 1.0), compute, rows, inF);
            assertTrue(Nf4GemvKernels.groupApplies(ws, rows));
            for (Nf4GemvKernels.Decode decode : new Nf4GemvKernels.Decode[] {Nf4GemvKernels.Decode.TABLE, Nf4GemvKernels.Decode.REGISTERS,
                    Nf4GemvKernels.Decode.CODE}) {
                for (int s = 0; s < segs.length; s++) {
                    poison(ysSingle.get(s), (byte) 0xFF);
                    poison(ysGroup.get(s), (byte) 0x7F);
                    Nf4GemvKernels.gemv(ctx, ws.get(s), xc, rows, biases.get(s), ysSingle.get(s), decode);
                }
                long before = Nf4GemvKernels.GROUP_LAUNCHES.get();
                Nf4GemvKernels.gemvGroup(ctx, ws, xc, rows, biases, ysGroup, decode);
                assertEquals(before + 1, Nf4GemvKernels.GROUP_LAUNCHES.get(), "one grouped launch");
                for (int s = 0; s < segs.length; s++) {
                    byte[] want = QuantGpuSupport.bytes(ctx.download(ysSingle.get(s)));
                    byte[] got = QuantGpuSupport.bytes(ctx.download(ysGroup.get(s)));
                    assertArrayEquals(want, got, decode + " segment " + s + " " + segs[s] + " in=" + inF + " rows=" + rows
                            + " compute=" + compute + " y=" + yd);
                    assertFalse(hasNaN(ctx.download(ysGroup.get(s)).toFloatArray()), "every output written");
                }
            }
        } finally {
            for (CudaQuant4bit w : ws) w.close();
            for (List<Tensor> l : List.of(biases, ysGroup, ysSingle)) for (Tensor t : l) if (t != null) t.close();
            if (xc != null) xc.close();
        }
    }

    /** CudaBackend.linearQuantizedGroup: the fused kernel at decode rows, per weight above 16 rows or under v7. */
    @Test
    void backendGroupIsFusedAtDecodeAndEqualsPerWeightCalls() {
        try (CudaBackend b = CudaCoreTestSupport.backend(DType.BF16, false)) {
            Random rnd = CudaCoreTestSupport.random("backend group");
            int inF = 512;
            int[] outs = {96, 40, 40};
            List<QuantizedWeight> ws = new ArrayList<>();
            List<Tensor> biases = new ArrayList<>();
            List<QuantizedWeight> tiled = new ArrayList<>();
            for (int s = 0; s < outs.length; s++) {
                float[] w = QuantGpuSupport.randomWeights(rnd, outs[s], inF);
                var state = Quant4bit.quantize(Tensor.fromFloats(w, DType.BF16, outs[s], inF), QuantType.NF4, 64, s != 1);
                try (var rowsLayout = TemporaryProperty.set(Q4Layout.PROPERTY, "rows")) {  // the grouped kernels read rows
                    ws.add(b.prepare4bit(state, DType.BF16));
                }
                tiled.add(b.prepare4bit(state, DType.BF16));  // the default layout: tiles where they apply (96 x 512)
                biases.add(s == 0 ? b.upload(Tensor.fromFloats(QuantGpuSupport.gaussian(rnd, outs[s], 0.5), DType.BF16, outs[s])) : null);
            }
            // a group with a tiled weight runs per weight (no grouped launch), with the same values
            try (Tensor x = b.upload(Tensor.fromFloats(QuantGpuSupport.gaussian(rnd, 2 * inF, 1.0), DType.BF16, 2, inF))) {
                assertEquals(Q4Layout.TILES, ((CudaQuant4bit) tiled.get(0)).layout());
                long before = Nf4GemvKernels.GROUP_LAUNCHES.get();
                Tensor[] grouped = b.linearQuantizedGroup(x, tiled, biases);
                assertEquals(before, Nf4GemvKernels.GROUP_LAUNCHES.get(), "a tiled weight in the group");
                for (int s = 0; s < outs.length; s++) {
                    try (Tensor single = b.linearQuantized(x, ws.get(s), biases.get(s)); Tensor gs = grouped[s]) {
                        assertArrayEquals(QuantGpuSupport.bytes(b.toHost(single)), QuantGpuSupport.bytes(b.toHost(gs)), "tiled segment " + s);
                    }
                }
            }
            for (QuantizedWeight w : tiled) w.close();
            for (int rows : new int[] {1, 7, 16, 17}) {
                for (String variant : new String[] {"v2code", "v2", "v2reg", "v7"}) {
                    try (var old = TemporaryProperty.set(Quant4bitKernels.GEMV_VARIANT_PROPERTY, variant);
                         Tensor x = b.upload(Tensor.fromFloats(QuantGpuSupport.gaussian(rnd, rows * inF, 1.0), DType.BF16, rows, inF))) {
                        long before = Nf4GemvKernels.GROUP_LAUNCHES.get();
                        Tensor[] grouped = b.linearQuantizedGroup(x, ws, biases);
                        boolean fused = rows <= 16 && !variant.equals("v7");
                        assertEquals(before + (fused ? 1 : 0), Nf4GemvKernels.GROUP_LAUNCHES.get(),
                                "rows=" + rows + " " + variant + ": fused " + fused);
                        for (int s = 0; s < outs.length; s++) {
                            try (Tensor single = b.linearQuantized(x, ws.get(s), biases.get(s)); Tensor gs = grouped[s]) {
                                assertArrayEquals(QuantGpuSupport.bytes(b.toHost(single)), QuantGpuSupport.bytes(b.toHost(gs)),
                                        "rows=" + rows + " " + variant + " segment " + s);
                            }
                        }
                    }
                }
            }
            for (QuantizedWeight w : ws) w.close();
            for (Tensor t : biases) if (t != null) t.close();
        }
    }

    /** Groups the kernel cannot take: mixed in_features or compute dtypes, more than 3 weights, F32 compute. */
    @Test
    void groupsTheKernelCannotTakeAreRefused() {
        Random rnd = new Random(1);
        List<CudaQuant4bit> made = new ArrayList<>();
        try {
            CudaQuant4bit a = make(rnd, 32, 256, DType.BF16), b = make(rnd, 32, 256, DType.BF16), c = make(rnd, 32, 128, DType.BF16),
                    d = make(rnd, 32, 256, DType.F16), f = make(rnd, 32, 256, DType.F32);
            made.addAll(List.of(a, b, c, d, f));
            assertTrue(Nf4GemvKernels.groupApplies(List.of(a, b), 1));
            assertFalse(Nf4GemvKernels.groupApplies(List.of(a, c), 1), "different in_features");
            assertFalse(Nf4GemvKernels.groupApplies(List.of(a, d), 1), "different compute dtypes");
            assertFalse(Nf4GemvKernels.groupApplies(List.of(a, b, a, b), 1), "4 weights");
            assertFalse(Nf4GemvKernels.groupApplies(List.of(f), 1), "F32 compute");
            assertFalse(Nf4GemvKernels.groupApplies(List.of(a, b), 17), "17 rows");
            try (Tensor x = ctx.empty(DType.BF16, 2, 256)) {
                assertNull(CudaQuantOps.fusedGroup(x, Arrays.asList(a, c)));
            }
            assertEquals("q4v2g_gemv_bf16_m8", Nf4GemvKernels.groupKernelName(DType.BF16, 8, Nf4GemvKernels.Decode.TABLE));
            assertEquals("q4v2greg_gemv_f16_m16", Nf4GemvKernels.groupKernelName(DType.F16, 9, Nf4GemvKernels.Decode.REGISTERS));
            assertEquals("q4v2gcode_gemv_bf16_m4", Nf4GemvKernels.groupKernelName(DType.BF16, 3, Nf4GemvKernels.Decode.CODE));
        } finally {
            for (CudaQuant4bit w : made) w.close();
        }
    }

    private static CudaQuant4bit make(Random rnd, int out, int in, DType compute) {
        float[] w = QuantGpuSupport.randomWeights(rnd, out, in);
        return (CudaQuant4bit) CudaQuantOps.prepare4bit(ctx, Quant4bit.quantize(Tensor.fromFloats(w, DType.F32, out, in),
                QuantType.NF4, 64, false), compute);
    }

    private static void poison(Tensor t, byte value) {
        ctx.driver().memsetD8Async(CudaContext.ptr(t), value, t.byteSize(), ctx.stream());
    }

    private static boolean hasNaN(float[] v) {
        for (float f : v) if (Float.isNaN(f)) return true;
        return false;
    }
}
