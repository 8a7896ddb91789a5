package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertSame;

import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Every training op of CudaBackend against CpuBackend (the reference) on fresh random data, outputs
 * poisoned (NaN) before each launch. F32 activations: 1e-5 relative (float32, summation-order
 * differences only); BF16 activations: 1e-2 (inputs and outputs rounded to bf16, ~4e-3 per rounding).
 * The CPU reference is fed the same bf16-rounded inputs. Dropout is bit-exact in F32.
 */
@Tag("gpu")
class CudaTrainOpsGpuTest {
    private static double tol(DType act) { return act == DType.F32 ? 1e-5 : 1e-2; }

    private static Tensor dev(CudaBackend b, float[] v, DType dtype, int... shape) {
        return b.upload(Tensor.fromFloats(v, dtype, shape));
    }

    /** Host F32 tensor of the values as the GPU holds them (rounded to dtype). */
    private static Tensor ref(float[] v, DType dtype, int... shape) {
        return Tensor.of(Tensor.fromFloats(v, dtype, shape).toFloatArray(), shape);
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void elementwiseOpsMatchCpu(DType act) {
        Random r = random("train elementwise " + act);
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            int n = 37, m = 203;
            float[] a = gaussian(r, n * m, 1), c = gaussian(r, n * m, 1), s = gaussian(r, m, 1);
            Tensor ga = dev(b, a, act, n, m), gc = dev(b, c, act, n, m);
            Tensor ra = ref(a, act, n, m), rc = ref(c, act, n, m);
            poison(b, act, n, m);
            assertClose(values(b, b.scale(ga, 0.37f)), cpu.scale(ra, 0.37f).toFloatArray(), tol(act), "scale " + act);
            poison(b, act, n, m);
            assertClose(values(b, b.mul(ga, gc)), cpu.mul(ra, rc).toFloatArray(), tol(act), "mul " + act);
            Tensor sumDev = dev(b, a, act, n, m);
            b.axpyInPlace(sumDev, -0.7f, gc);
            Tensor sumCpu = ref(a, act, n, m);
            cpu.axpyInPlace(sumCpu, -0.7f, rc);
            assertClose(values(b, sumDev), sumCpu.toFloatArray(), tol(act), "axpyInPlace " + act);
            assertEquals(cpu.sumOfSquares(ra), b.sumOfSquares(ga), 1e-12 * cpu.sumOfSquares(ra), "sumOfSquares " + act);
            poison(b, DType.F32, n);
            assertClose(values(b, b.rowNorms(ga)), cpu.rowNorms(ra).toFloatArray(), tol(act), "rowNorms " + act);
            poison(b, act, n, m);
            assertClose(values(b, b.scaleColumns(ga, b.upload(Tensor.of(s, m)))), cpu.scaleColumns(ra, Tensor.of(s, m)).toFloatArray(),
                    tol(act), "scaleColumns " + act);
            poison(b, act, m, n);
            assertBitEqual(values(b, b.transpose(ga)), cpu.transpose(ra).toFloatArray(), "transpose " + act);
            float[] gOut = ref(gaussian(r, n * m, 1), act, n, m).toFloatArray();
            poison(b, act, n, m);
            Tensor[] sgGpu = b.siluMulBackward(ga, gc, dev(b, gOut, act, n, m));
            Tensor[] sgCpu = cpu.siluMulBackward(ra, rc, Tensor.of(gOut, n, m));
            assertClose(values(b, sgGpu[0]), sgCpu[0].toFloatArray(), tol(act), "siluMulBackward grad_gate " + act);
            assertClose(values(b, sgGpu[1]), sgCpu[1].toFloatArray(), tol(act), "siluMulBackward grad_up " + act);
            // the in-place form (gradients written over copies of gate and up) gives the same bits
            Tensor gateCopy = dev(b, a, act, n, m), upCopy = dev(b, c, act, n, m);
            Tensor[] inPlace = b.siluMulBackwardInPlace(gateCopy, upCopy, dev(b, gOut, act, n, m));
            assertSame(gateCopy, inPlace[0], "the CUDA backend writes grad_gate over gate");
            assertBitEqual(values(b, inPlace[0]), values(b, sgGpu[0]), "siluMulBackwardInPlace grad_gate " + act);
            assertBitEqual(values(b, inPlace[1]), values(b, sgGpu[1]), "siluMulBackwardInPlace grad_up " + act);
            inPlace[0].close();
            inPlace[1].close();
            float[] gb0 = gaussian(r, m, 1);
            Tensor gbDev = b.upload(Tensor.of(gb0, m)), gbCpu = Tensor.of(gb0.clone(), m);
            b.sumRowsInto(ga, gbDev);
            cpu.sumRowsInto(ra, gbCpu);
            assertClose(values(b, gbDev), gbCpu.toFloatArray(), tol(act), "sumRowsInto " + act);
            poison(b, act, 2 * n, m);
            assertBitEqual(values(b, b.concatRows(List.of(ga, gc))), cpu.concatRows(List.of(ra, rc)).toFloatArray(),
                    "concatRows " + act);
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void dropoutMaskIsTheCpusBitForBit(DType act) {
        Random r = random("dropout " + act);
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            int n = 100_003;
            float[] x = gaussian(r, n, 1);
            for (float p : new float[] {0f, 0.1f, 0.5f, 1f}) {
                long seed = r.nextLong();
                poison(b, act, n);
                float[] ours = values(b, b.dropout(dev(b, x, act, n), p, seed));
                float[] want = cpu.dropout(ref(x, act, n), p, seed).toFloatArray();
                if (act == DType.F32) {
                    assertBitEqual(ours, want, "dropout p=" + p);
                } else {   // the mask must agree exactly: zeros where the CPU has zeros
                    for (int i = 0; i < n; i++) {
                        assertEquals(want[i] == 0f, ours[i] == 0f, "dropout mask element " + i + " p=" + p);
                        assertEquals(want[i], ours[i], Math.abs(want[i]) * 8e-3, "dropout element " + i);
                    }
                }
            }
        }
    }

    /**
     * RMSNorm backward at model widths: 16-bit rows of whole 16-byte chunks take the register path (norm_bwd.cu
     * rmsnorm_bwd_rows_in_registers; 4096 and 8192 wide, F32 and BF16 weights), other widths and F32 the loop.
     */
    @ParameterizedTest
    // 300 and 256 rows: the narrower blocks of many rows (RmsNormKernels.rowThreads: 128 and 64 threads a row)
    @CsvSource({"BF16, 4096, 7, F32", "BF16, 4096, 3, BF16", "BF16, 8192, 2, F32", "BF16, 4100, 3, F32", "F32, 4096, 3, F32",
            "BF16, 4096, 300, F32", "BF16, 2048, 256, BF16", "F32, 4096, 260, F32"})
    void rmsNormBackwardAtModelWidthsMatchesCpu(DType act, int h, int n, DType weightType) {
        Random r = random("rmsNorm backward " + act + " " + h + " " + weightType);
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            float[] x = gaussian(r, n * h, 1), w = gaussian(r, h, 1), g = gaussian(r, n * h, 1);
            if (weightType == DType.BF16) w = Tensor.fromFloats(w, DType.BF16, h).toFloatArray();   // exact in both
            float[] gw0 = gaussian(r, h, 1);
            Tensor gwDev = b.upload(Tensor.of(gw0, h)), gwCpu = Tensor.of(gw0.clone(), h);
            poison(b, act, n, h);
            Tensor gxDev = b.rmsNormBackward(dev(b, x, act, n, h), b.upload(Tensor.fromFloats(w, weightType, h)), 1e-5f,
                    dev(b, g, act, n, h), gwDev);
            Tensor gxCpu = cpu.rmsNormBackward(ref(x, act, n, h), Tensor.of(w, h), 1e-5f, ref(g, act, n, h), gwCpu);
            String what = "rmsNormBackward " + act + " h=" + h + " weight " + weightType;
            assertClose(values(b, gxDev), gxCpu.toFloatArray(), tol(act), what + " grad_x");
            assertClose(values(b, gwDev), gwCpu.toFloatArray(), tol(act), what + " grad_weight");
        }
    }

    /**
     * The fused residual form (norm_bwd.cu's add argument): rmsNormBackwardAdd must give the bits of rmsNormBackward
     * followed by addInPlace, on the register path (4096 wide, BF16) and the loop (4100 wide; F32).
     */
    @ParameterizedTest
    @CsvSource({"BF16, 4096, 5", "BF16, 4100, 3", "F32, 4096, 2", "BF16, 4096, 300"})
    void rmsNormBackwardAddEqualsTheTwoCalls(DType act, int h, int n) {
        Random r = random("rmsNorm backward add " + act + " " + h);
        try (CudaBackend b = backend(act, false)) {
            float[] x = gaussian(r, n * h, 1), w = gaussian(r, h, 1), g = gaussian(r, n * h, 1), a = gaussian(r, n * h, 2);
            Tensor wDev = b.upload(Tensor.of(w, h));
            poison(b, act, n, h);
            Tensor fused = b.rmsNormBackwardAdd(dev(b, x, act, n, h), wDev, 1e-5f, dev(b, g, act, n, h), null, dev(b, a, act, n, h));
            Tensor apart = b.addInPlace(b.rmsNormBackward(dev(b, x, act, n, h), wDev, 1e-5f, dev(b, g, act, n, h), null),
                    dev(b, a, act, n, h));
            assertBitEqual(values(b, fused), values(b, apart), "rmsNormBackwardAdd " + act + " h=" + h);
        }
    }

    /**
     * A gradient wider than x (a joined input gradient's [grad_x | GH] buffer, CudaJoinedInputGrad#intoWide): the
     * norm backward reads its first h columns with the wider row stride, with the bits of the same gradient given
     * contiguous, with and without the addend and the weight gradient, on the register path (4096 wide) and the loop
     * (4100 wide: not whole 16-byte chunks); the extra columns hold other values and must not matter.
     */
    @ParameterizedTest
    @CsvSource({"4096, 5, 64", "4096, 300, 128", "4100, 3, 68"})
    void rmsNormBackwardReadsAWiderGradient(int h, int n, int extra) {
        Random r = random("rmsNorm backward wide " + h);
        DType act = DType.BF16;
        int ld = h + extra;
        try (CudaBackend b = backend(act, false)) {
            float[] x = gaussian(r, n * h, 1), w = gaussian(r, h, 1), a = gaussian(r, n * h, 2);
            float[] wide = gaussian(r, n * ld, 1), g = new float[n * h];
            for (int i = 0; i < n; i++) System.arraycopy(wide, i * ld, g, i * h, h);
            Tensor wDev = b.upload(Tensor.of(w, h));
            Tensor gwWide = b.upload(Tensor.of(new float[h], h)), gwNarrow = b.upload(Tensor.of(new float[h], h));
            Tensor fromWide = b.rmsNormBackwardAdd(dev(b, x, act, n, h), wDev, 1e-5f, dev(b, wide, act, n, ld), gwWide,
                    dev(b, a, act, n, h));
            Tensor fromNarrow = b.rmsNormBackwardAdd(dev(b, x, act, n, h), wDev, 1e-5f, dev(b, g, act, n, h), gwNarrow,
                    dev(b, a, act, n, h));
            assertBitEqual(values(b, fromWide), values(b, fromNarrow), "rmsNormBackwardAdd, gradient of stride " + ld);
            assertBitEqual(values(b, gwWide), values(b, gwNarrow), "weight gradient, gradient of stride " + ld);
            Tensor plainWide = b.rmsNormBackward(dev(b, x, act, n, h), wDev, 1e-5f, dev(b, wide, act, n, ld), null);
            Tensor plainNarrow = b.rmsNormBackward(dev(b, x, act, n, h), wDev, 1e-5f, dev(b, g, act, n, h), null);
            assertBitEqual(values(b, plainWide), values(b, plainNarrow), "rmsNormBackward, gradient of stride " + ld);
            assertThrows(IllegalArgumentException.class, () -> b.rmsNormBackward(dev(b, x, act, n, h), wDev, 1e-5f,
                    dev(b, new float[n * (h - 8)], act, n, h - 8), null), "a narrower gradient is a shape mismatch");
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void backwardOpsMatchCpu(DType act) {
        Random r = random("train backward " + act);
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            int n = 29, h = 96, heads = 3, hd = 32, vocab = 77;
            float[] x = gaussian(r, n * h, 1), w = gaussian(r, h, 1), g = gaussian(r, n * h, 1);
            // RMSNorm backward with weight gradient accumulation
            float[] gw0 = gaussian(r, h, 1);
            Tensor gwDev = b.upload(Tensor.of(gw0, h)), gwCpu = Tensor.of(gw0.clone(), h);
            poison(b, act, n, h);
            Tensor gxDev = b.rmsNormBackward(dev(b, x, act, n, h), b.upload(Tensor.of(w, h)), 1e-5f, dev(b, g, act, n, h), gwDev);
            Tensor gxCpu = cpu.rmsNormBackward(ref(x, act, n, h), Tensor.of(w, h), 1e-5f, ref(g, act, n, h), gwCpu);
            assertClose(values(b, gxDev), gxCpu.toFloatArray(), tol(act), "rmsNormBackward grad_x " + act);
            assertClose(values(b, gwDev), gwCpu.toFloatArray(), tol(act), "rmsNormBackward grad_weight " + act);
            // RoPE backward
            int[] pos = new int[n];
            for (int i = 0; i < n; i++) pos[i] = r.nextInt(4096);
            float[] inv = new float[hd / 2];
            for (int i = 0; i < hd / 2; i++) inv[i] = (float) Math.pow(10000, -2.0 * i / hd);
            Tensor ropeDev = dev(b, g, act, n, h), ropeCpu = ref(g, act, n, h);
            b.ropeBackwardInPlace(ropeDev, b.upload(Tensor.ofInts(pos, n)), b.upload(Tensor.of(inv, hd / 2)), heads, hd, 1.25f);
            cpu.ropeBackwardInPlace(ropeCpu, Tensor.ofInts(pos, n), Tensor.of(inv, hd / 2), heads, hd, 1.25f);
            assertClose(values(b, ropeDev), ropeCpu.toFloatArray(), tol(act), "ropeBackwardInPlace " + act);
            // embedding backward (repeated ids)
            int[] ids = new int[n];
            for (int i = 0; i < n; i++) ids[i] = r.nextInt(vocab / 4);
            float[] t0 = gaussian(r, vocab * h, 1);
            Tensor tDev = b.upload(Tensor.of(t0, vocab, h)), tCpu = Tensor.of(t0.clone(), vocab, h);
            b.embeddingBackward(b.upload(Tensor.ofInts(ids, n)), dev(b, g, act, n, h), tDev);
            cpu.embeddingBackward(Tensor.ofInts(ids, n), ref(g, act, n, h), tCpu);
            assertClose(values(b, tDev), tCpu.toFloatArray(), tol(act), "embeddingBackward " + act);
            // cross-entropy with grad, one ignored row
            float[] logits = gaussian(r, n * vocab, 3);
            int[] targets = new int[n];
            for (int i = 0; i < n; i++) targets[i] = i == 3 ? -100 : r.nextInt(vocab);
            poison(b, act, n, vocab);
            Tensor[] xDev = b.crossEntropyWithGrad(dev(b, logits, act, n, vocab), b.upload(Tensor.ofInts(targets, n)), 0.3f);
            Tensor[] xCpu = cpu.crossEntropyWithGrad(ref(logits, act, n, vocab), Tensor.ofInts(targets, n), 0.3f);
            assertClose(values(b, xDev[0]), xCpu[0].toFloatArray(), 1e-5, "crossEntropyWithGrad loss " + act);
            assertClose(values(b, xDev[1]), xCpu[1].toFloatArray(), tol(act), "crossEntropyWithGrad grad " + act);
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "BF16"})
    void linearBackwardsMatchCpu(DType act) {
        Random r = random("linear backward " + act);
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            int n = 45, m = 70, k = 64;
            float[] g = gaussian(r, n * m, 1), w = gaussian(r, m * k, 1), x = gaussian(r, n * k, 1), gw0 = gaussian(r, m * k, 1);
            // an F32 weight (LoRA's) and a weight in the activation dtype
            for (DType wt : new DType[] {DType.F32, act}) {
                poison(b, act, n, k);
                Tensor ours = b.linearBackwardInput(dev(b, g, act, n, m), dev(b, w, wt, m, k));
                Tensor want = cpu.linearBackwardInput(ref(g, act, n, m), ref(w, wt, m, k));
                assertClose(values(b, ours), want.toFloatArray(), tol(act), "linearBackwardInput w " + wt + " act " + act);
            }
            // through a frozen NF4 + double-quant weight (quantized bit-identically on both backends)
            Tensor wHost = Tensor.of(w, m, k);
            var qDev = b.quantize4bit(wHost, dev.qlora4j.quant.QuantType.NF4, 64, true, act);
            var qCpu = cpu.quantize4bit(wHost, dev.qlora4j.quant.QuantType.NF4, 64, true, act);
            poison(b, act, n, k);
            assertClose(values(b, b.linearQuantizedBackwardInput(dev(b, g, act, n, m), qDev)),
                    cpu.linearQuantizedBackwardInput(ref(g, act, n, m), qCpu).toFloatArray(), tol(act),
                    "linearQuantizedBackwardInput " + act);
            Tensor gwDev = b.upload(Tensor.of(gw0, m, k)), gwCpu = Tensor.of(gw0.clone(), m, k);
            b.linearBackwardWeight(dev(b, g, act, n, m), dev(b, x, act, n, k), gwDev);
            cpu.linearBackwardWeight(ref(g, act, n, m), ref(x, act, n, k), gwCpu);
            assertClose(values(b, gwDev), gwCpu.toFloatArray(), 1e-5, "linearBackwardWeight " + act);
        }
    }
}
