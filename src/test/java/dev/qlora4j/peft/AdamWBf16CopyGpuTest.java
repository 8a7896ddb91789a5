package dev.qlora4j.peft;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.qlora4j.backend.cuda.CudaAdamW;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.util.List;
import java.util.Random;

/**
 * The CUDA AdamW rewrites a trainable tensor's BF16 cast copy with its update (Param#refreshableCopy): after a
 * step the copy is the same tensor (no re-cast) and holds exactly the updated F32 values rounded to BF16 (compared
 * bit for bit with a fresh cast of them); a tensor without a copy still steps; a copy made stale by another
 * writer (setHostValues) is re-made.
 */
@Tag("gpu")
class AdamWBf16CopyGpuTest {
    @Test
    void theStepRewritesTheBf16CopyInPlace() {
        assumeTrue(CudaBackend.isAvailable(), () -> "no GPU: " + CudaDriver.unavailableReason());
        long seed = System.nanoTime();
        System.out.println("seed " + seed);
        Random rnd = new Random(seed);
        try (CudaBackend gpu = CudaBackend.create(0, DType.BF16, false);
             TrainableTensor withCopy = TrainableTensor.of(gpu, gaussian(rnd, 16 * 300), 16, 300);
             TrainableTensor without = TrainableTensor.of(gpu, gaussian(rnd, 5000), 5000);
             CudaAdamW opt = CudaAdamW.of(gpu, List.of(withCopy.param("a"), without.param("b")),
                     AdamWConfig.torchDefaults().withLr(1e-2).withWeightDecay(0.01))) {
            Tensor copy = withCopy.castCopy(gpu, DType.BF16);
            for (int step = 0; step < 3; step++) {
                for (TrainableTensor t : List.of(withCopy, without)) {
                    try (Tensor g = gpu.upload(Tensor.of(gaussian(rnd, (int) t.numel()), t.shape()))) {
                        gpu.axpyInPlace(t.gradForAccumulation(gpu), 1f, g);
                    }
                }
                opt.step();
                withCopy.zeroGrad();
                without.zeroGrad();
                assertSame(copy, withCopy.castCopy(gpu, DType.BF16), "step " + step + ": the copy is current, not re-cast");
                try (Tensor fresh = gpu.cast(withCopy.value(), DType.BF16)) {
                    assertArrayEquals(gpu.toHost(fresh).toFloatArray(), gpu.toHost(copy).toFloatArray(),
                            "step " + step + ": the copy holds the updated values rounded to BF16");
                }
            }
            withCopy.setHostValues(gpu, gaussian(rnd, 16 * 300));
            Tensor remade = withCopy.castCopy(gpu, DType.BF16);
            assertNotSame(copy, remade, "values written by another path: the copy is re-made");
            try (Tensor fresh = gpu.cast(withCopy.value(), DType.BF16)) {
                assertArrayEquals(gpu.toHost(fresh).toFloatArray(), gpu.toHost(remade).toFloatArray());
            }
        }
    }

    private static float[] gaussian(Random r, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian();
        return v;
    }
}
