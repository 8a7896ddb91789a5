package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Random;

/**
 * The norms written into a wider buffer (CudaBackend#rmsNormPadded, #addInPlaceRmsNormPadded: the LoRA fold's [x | H]
 * with x written by the norm) against the plain ops on the same fresh random data, outputs poisoned first: the first
 * h columns bit for bit the plain op's (the same kernels, only the row stride differs), the columns [h, width) zero,
 * and resid updated bit for bit alike. Rows of 16-byte packs (h = 256, 4096 with widths 320, 4160) and element by
 * element (F32 rows of h = 102, width 166), BF16 and F32 activations, more rows than the register form of add_rmsnorm takes at
 * 4096.
 */
@Tag("gpu")
class RmsNormPaddedGpuTest {
    @ParameterizedTest
    @CsvSource({"BF16,7,256,320", "BF16,33,4096,4160", "F32,5,102,166", "BF16,3,4096,4096"})
    void paddedNormsEqualThePlainOnesAndZeroTheRest(DType act, int n, int h, int width) {
        try (CudaBackend b = CudaCoreTestSupport.backend(act, false)) {
            Random rnd = CudaCoreTestSupport.random("padded norm " + act + " n=" + n + " h=" + h + " width=" + width);
            float[] x = CudaCoreTestSupport.gaussian(rnd, n * h, 1.0), y = CudaCoreTestSupport.gaussian(rnd, n * h, 1.0);
            float[] w = CudaCoreTestSupport.gaussian(rnd, h, 1.0);
            try (Tensor xt = b.upload(CudaCoreTestSupport.host(x, act, n, h));
                 Tensor wt = b.upload(CudaCoreTestSupport.host(w, DType.F32, h))) {
                float[] plain;
                try (Tensor o = b.rmsNorm(xt, wt, 1e-5f)) { plain = CudaCoreTestSupport.values(b, o); }
                CudaCoreTestSupport.poison(b, act, n, width);
                try (Tensor o = b.rmsNormPadded(xt, wt, 1e-5f, width)) {
                    assertPadded(CudaCoreTestSupport.values(b, o), plain, n, h, width, "rmsNormPadded");
                }
            }
            // add + norm: two residuals with the same values, one through each op
            try (Tensor r1 = b.upload(CudaCoreTestSupport.host(x, act, n, h));
                 Tensor r2 = b.upload(CudaCoreTestSupport.host(x, act, n, h));
                 Tensor yt = b.upload(CudaCoreTestSupport.host(y, act, n, h));
                 Tensor wt = b.upload(CudaCoreTestSupport.host(w, DType.BF16, h))) {
                float[] plain;
                try (Tensor o = b.addInPlaceRmsNorm(r1, yt, wt, 1e-5f)) { plain = CudaCoreTestSupport.values(b, o); }
                CudaCoreTestSupport.poison(b, act, n, width);
                try (Tensor o = b.addInPlaceRmsNormPadded(r2, yt, wt, 1e-5f, width)) {
                    assertPadded(CudaCoreTestSupport.values(b, o), plain, n, h, width, "addInPlaceRmsNormPadded");
                }
                CudaCoreTestSupport.assertBitEqual(CudaCoreTestSupport.values(b, r2), CudaCoreTestSupport.values(b, r1),
                        "resid after the padded and the plain add + norm");
            }
        }
    }

    private static void assertPadded(float[] got, float[] plain, int n, int h, int width, String what) {
        assertEquals(n * width, got.length, what + ": element count");
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < width; j++) {
                float want = j < h ? plain[i * h + j] : 0f;
                assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got[i * width + j]),
                        what + "[" + i + ", " + j + "]: " + got[i * width + j] + " vs " + want);
            }
        }
    }
}
