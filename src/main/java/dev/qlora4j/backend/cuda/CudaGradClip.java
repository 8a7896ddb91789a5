package dev.qlora4j.backend.cuda;

import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * torch.nn.utils.clip_grad_norm_ (L2) over gradients in GPU memory, with the host
 * {@link dev.qlora4j.optim.GradClip}'s arithmetic: each gradient's sum of squares in float64 (one download for
 * all of them), its norm rounded to float, the total the norm of those norms, the scale
 * min(1, maxNorm / (total + 1e-6)) in float, applied in place by one kernel per gradient when it is not 1.
 * Fits {@code Trainer.Builder.gradClipper(new CudaGradClip(backend)::clip)}.
 */
public final class CudaGradClip {
    private final CudaBackend backend;

    public CudaGradClip(CudaBackend backend) { this.backend = backend; }

    /** Clips in place and returns the total norm before clipping (NaN scales are applied, as torch does). */
    public float clip(List<Param> params, double maxNorm) {
        CudaContext ctx = backend.context();
        List<Tensor> grads = new ArrayList<>();
        for (Param p : params) {
            Tensor g = p.grad();
            if (g == null) continue;
            KernelTypes.requireDevice(g, "gradient of '" + p.name() + "'");
            KernelTypes.act(g.dtype());
            grads.add(g);
        }
        double sumOfSquares = 0;
        for (double s : TrainKernels.sumsOfSquares(ctx, grads)) {
            float norm = (float) Math.sqrt(s);
            sumOfSquares += (double) norm * norm;
        }
        float total = (float) Math.sqrt(sumOfSquares);
        float coef = (float) maxNorm / (total + 1e-6f);
        float clamped = Math.min(coef, 1.0f);
        if (!(clamped == 1.0f)) {
            for (Tensor g : grads) TrainKernels.scale(ctx, g, clamped, g);
        }
        return total;
    }
}
