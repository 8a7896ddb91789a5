package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * native/nf4.cu dequantize and quantize against dev.qlora4j.quant.Quant4bit, bit for bit: NF4/FP4 x nested
 * or not x output BF16/F16/F32 x blocksize 64/128/256 x shapes with an odd value count (blocks straddling
 * rows, a partial last block, a pad nibble) and a larger one. Fresh random weights each run; outputs are
 * poisoned (NaN) before each launch and every element is compared.
 */
@Tag("gpu")
class CudaQuant4bitDequantizeGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        for (QuantType t : QuantType.values())
            for (boolean nested : new boolean[] {false, true})
                for (int bs : new int[] {64, 128, 256})
                    for (int[] shape : new int[][] {{37, 91}, {300, 1000}})
                        out.add(Arguments.of(t, nested, bs, shape[0], shape[1]));
        // the Llama-7B shapes (every warp one chunk of 2048 values, 1024 / 2752 blocks); 4097 x 4099 ends in a
        // partial chunk, a partial block and a half byte; blocksize 32 (two absmax per lane) and 4096 (a block
        // outspans a chunk)
        for (boolean nested : new boolean[] {false, true}) {
            out.add(Arguments.of(QuantType.NF4, nested, 64, 4096, 4096));
            out.add(Arguments.of(QuantType.FP4, nested, 128, 4097, 4099));
            out.add(Arguments.of(QuantType.NF4, nested, 32, 301, 999));
            out.add(Arguments.of(QuantType.NF4, nested, 4096, 301, 999));
        }
        out.add(Arguments.of(QuantType.NF4, true, 64, 11008, 4096));
        out.add(Arguments.of(QuantType.NF4, true, 64, 4096, 11008));
        return out.stream();
    }

    @ParameterizedTest(name = "{0} nested={1} bs={2} [{3}, {4}]")
    @MethodSource("cases")
    void dequantizeIsBitExact(QuantType type, boolean nested, int blocksize, int rows, int cols) {
        Random rnd = new Random();
        float[] w = QuantGpuSupport.randomWeights(rnd, rows, cols);
        for (int c = 0; c < Math.min(cols, 70); c++) w[c] = 0f;  // an all-zero block (absmax 0)
        QuantState4bit state = Quant4bit.quantize(w, new int[] {rows, cols}, type, blocksize, nested);
        try (QuantizedWeight q = CudaQuantOps.prepare4bit(ctx, state, DType.BF16)) {
            for (DType out : new DType[] {DType.BF16, DType.F16, DType.F32}) {
                byte[] want = QuantGpuSupport.bytes(Quant4bit.dequantize(state, out));
                try (Tensor y = QuantGpuSupport.poisoned(ctx, out, rows, cols)) {
                    Quant4bitKernels.dequantize(ctx, (CudaQuant4bit) q, y, DType.F32);
                    assertBytesEqual(want, QuantGpuSupport.bytes(ctx.download(y)), out);
                }
                try (Tensor y = CudaQuantOps.dequantize(ctx, q, out)) {
                    assertArrayEquals(want, QuantGpuSupport.bytes(ctx.download(y)), "public dequantize " + out);
                }
            }
        }
    }

    static Stream<Arguments> rowsCases() {
        List<Arguments> out = new ArrayList<>();
        // small shapes: a row of one piece (cols 8: rows change every piece), pads of 8 and 64, rows that end inside
        // a warp's chunk; blocksizes 32 (two absmax per lane), 64 and 4096 (a block outspans the chunk)
        for (boolean nested : new boolean[] {false, true})
            for (int bs : new int[] {32, 64, 4096})
                for (int[] s : new int[][] {{37, 96, 64}, {5, 8, 8}, {300, 1000, 64}, {33, 2056, 64}})
                    out.add(Arguments.of(QuantType.NF4, nested, bs, s[0], s[1], s[2]));
        out.add(Arguments.of(QuantType.FP4, true, 128, 300, 1000, 64));
        // the Llama-7B shapes of the LoRA fold ([W | sB], ldy = in + 64)
        for (int[] s : new int[][] {{4096, 4096}, {11008, 4096}, {4096, 11008}})
            out.add(Arguments.of(QuantType.NF4, true, 64, s[0], s[1], 64));
        return out.stream();
    }

    /**
     * Quant4bitKernels.dequantizeRows (q4_dequantize_rows_bf16, the LoRA fold's W columns) against Quant4bit: the
     * weight's values rounded through mid (F32, BF16, F16) then to BF16, in the first cols columns of rows of stride
     * cols + pad; the pad columns keep their poison.
     */
    @ParameterizedTest(name = "rows {0} nested={1} bs={2} [{3}, {4}] + {5}")
    @MethodSource("rowsCases")
    void dequantizeRowsIsBitExact(QuantType type, boolean nested, int blocksize, int rows, int cols, int pad) {
        Random rnd = new Random();
        float[] w = QuantGpuSupport.randomWeights(rnd, rows, cols);
        for (int c = 0; c < Math.min(cols, 70); c++) w[c] = 0f;  // an all-zero block (absmax 0)
        QuantState4bit state = Quant4bit.quantize(w, new int[] {rows, cols}, type, blocksize, nested);
        float[] v = Quant4bit.dequantizeToF32(state);
        int ld = cols + pad;
        try (QuantizedWeight q = CudaQuantOps.prepare4bit(ctx, state, DType.BF16)) {
            for (DType mid : new DType[] {DType.F32, DType.BF16, DType.F16}) {
                byte[] want = new byte[rows * ld * 2];
                java.util.Arrays.fill(want, (byte) 0xFF);
                for (int r = 0; r < rows; r++) {
                    for (int c = 0; c < cols; c++) {
                        short b = Half.floatToBf16(QuantGpuSupport.round(mid, v[r * cols + c]));
                        int at = 2 * (r * ld + c);
                        want[at] = (byte) b;
                        want[at + 1] = (byte) (b >> 8);
                    }
                }
                try (Tensor y = QuantGpuSupport.poisoned(ctx, DType.BF16, rows, ld)) {
                    Quant4bitKernels.dequantizeRows(ctx, (CudaQuant4bit) q, y, mid);
                    assertBytesEqual(want, QuantGpuSupport.bytes(ctx.download(y)), DType.BF16);
                }
            }
        }
    }

    /**
     * Quant4bitKernels.dequantizeRowsFold (q4_dequantize_fold_bf16: the LoRA fold's whole W'_i in one launch) against
     * Quant4bit and lora_fold_b_bf16's formula: the weight's columns as dequantizeRowsIsBitExact, and in the pad
     * columns s * B[row, c - col0] rounded once to BF16 inside the adapter's block (rank 3 at col0 0 for an 8-column
     * pad, rank 16 at col0 16 for 64), zeros elsewhere; s = 1.5 (not a power of two: the product is rounded). Every
     * byte of the poisoned output compared.
     */
    @ParameterizedTest(name = "fold {0} nested={1} bs={2} [{3}, {4}] + {5}")
    @MethodSource("rowsCases")
    void dequantizeRowsFoldIsBitExact(QuantType type, boolean nested, int blocksize, int rows, int cols, int pad) {
        Random rnd = new Random();
        float[] w = QuantGpuSupport.randomWeights(rnd, rows, cols);
        QuantState4bit state = Quant4bit.quantize(w, new int[] {rows, cols}, type, blocksize, nested);
        float[] v = Quant4bit.dequantizeToF32(state);
        int ld = cols + pad, rank = pad == 8 ? 3 : 16, col0 = pad == 8 ? 0 : 16;
        float s = 1.5f;
        float[] bw = new float[rows * rank];
        for (int i = 0; i < bw.length; i++) bw[i] = (float) rnd.nextGaussian();
        try (QuantizedWeight q = CudaQuantOps.prepare4bit(ctx, state, DType.BF16);
             Tensor bDev = ctx.upload(Tensor.of(bw, rows, rank))) {
            for (DType mid : new DType[] {DType.F32, DType.F16}) {
                byte[] want = new byte[rows * ld * 2];
                for (int r = 0; r < rows; r++) {
                    for (int c = 0; c < ld; c++) {
                        int j = c - cols - col0;
                        float value = c < cols ? QuantGpuSupport.round(mid, v[r * cols + c])
                                : j >= 0 && j < rank ? s * bw[r * rank + j] : 0f;
                        short b = Half.floatToBf16(value);
                        int at = 2 * (r * ld + c);
                        want[at] = (byte) b;
                        want[at + 1] = (byte) (b >> 8);
                    }
                }
                try (Tensor y = QuantGpuSupport.poisoned(ctx, DType.BF16, rows, ld)) {
                    Quant4bitKernels.dequantizeRowsFold(ctx, (CudaQuant4bit) q, CudaContext.ptr(y), ld, mid, bDev, col0, s);
                    assertBytesEqual(want, QuantGpuSupport.bytes(ctx.download(y)), DType.BF16);
                }
            }
        }
    }

    private static void assertBytesEqual(byte[] want, byte[] got, DType dtype) {
        assertEquals(want.length, got.length);
        int size = dtype.byteSize();
        for (int i = 0; i < want.length; i++) {
            if (want[i] != got[i]) {
                fail("element " + (i / size) + " of the " + dtype + " dequantize differs (byte " + (i % size) + ": want 0x"
                        + Integer.toHexString(want[i] & 0xFF) + ", got 0x" + Integer.toHexString(got[i] & 0xFF) + ")");
            }
        }
    }

    static Stream<Arguments> quantizeCases() {
        List<Arguments> out = new ArrayList<>();
        for (QuantType t : QuantType.values())
            for (boolean nested : new boolean[] {false, true})
                for (DType d : new DType[] {DType.F32, DType.BF16, DType.F16})
                    for (int bs : new int[] {64, 256})
                        out.add(Arguments.of(t, nested, d, bs));
        return out.stream();
    }

    @ParameterizedTest(name = "{0} nested={1} {2} bs={3}")
    @MethodSource("quantizeCases")
    void quantizeOnGpuIsBitExact(QuantType type, boolean nested, DType dtype, int blocksize) {
        Random rnd = new Random();
        // odd count (pad nibble, partial last block) and > 256 blocks (several nested blocks, a partial one)
        int rows = 131, cols = 257;
        float[] w = QuantGpuSupport.randomWeights(rnd, rows, cols);
        for (int c = 0; c < 300; c++) w[1000 + c] = 0f;  // an all-zero block
        w[5] = Float.NaN;                                   // fmaxf ignores NaN in absmax, the tree sends it to code 0
        Tensor host = Tensor.fromFloats(w, dtype, rows, cols);
        QuantState4bit want = Quant4bit.quantize(host, type, blocksize, nested);
        try (Tensor dev = ctx.upload(host); CudaQuant4bit q = CudaQuantOps.quantize4bit(ctx, dev, type, blocksize, nested)) {
            QuantState4bit got = q.toHostState(ctx);
            assertArrayEquals(QuantGpuSupport.bytes(want.weight()), QuantGpuSupport.bytes(got.weight()), "packed codes");
            assertArrayEquals(QuantGpuSupport.bytes(want.absmax()), QuantGpuSupport.bytes(got.absmax()), "absmax");
            assertEquals(Float.floatToRawIntBits(want.offset()), Float.floatToRawIntBits(got.offset()), "offset");
            assertEquals(want.dtype(), got.dtype());
            if (nested) {
                assertArrayEquals(QuantGpuSupport.bytes(want.state2().absmax()), QuantGpuSupport.bytes(got.state2().absmax()), "nested absmax");
                assertArrayEquals(want.state2().code(), got.state2().code(), "nested code");
            }
            // and the GPU state dequantizes like the CPU one
            try (Tensor y = CudaQuantOps.dequantize(ctx, q, DType.F32)) {
                assertArrayEquals(QuantGpuSupport.bytes(Quant4bit.dequantize(want, DType.F32)), QuantGpuSupport.bytes(ctx.download(y)));
            }
        }
    }
}
