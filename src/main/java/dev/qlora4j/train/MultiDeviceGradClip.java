package dev.qlora4j.train;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaGradClip;
import dev.qlora4j.model.ModelDevices;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * clip_grad_norm_ by the GLOBAL L2 norm over gradients that live on several devices (a model split over GPUs):
 * each device contributes the sum of squares of its gradients' norms, the host adds them up (one wait per CUDA
 * device per step, acceptable once per optimizer step), and every device scales its gradients by the one global
 * coefficient min(1, maxNorm / (total + 1e-6)), computed in float as torch does.
 *
 * <p>Host gradients (CPU backends) use {@link dev.qlora4j.optim.GradClip}'s arithmetic exactly, in parameter
 * order: on CPU backends the result is bit-identical to GradClip over all parameters. A CUDA device's part is its
 * {@link CudaGradClip} total (measured with maxNorm = +inf, which scales nothing), squared in double; the global
 * total may therefore differ from a single GPU's in its last float bit, and the scaling runs as
 * g += (coef - 1) g (one launch per gradient, only when the coefficient is not 1), within an ulp or two of coef * g.
 */
public final class MultiDeviceGradClip implements AutoCloseable {
    private final ModelDevices devices;
    private final Map<Backend, CudaGradClip> cudaClips = new IdentityHashMap<>();

    public MultiDeviceGradClip(ModelDevices devices) {
        this.devices = devices;
    }

    /** Scales every gradient in place so that their global norm is at most maxNorm; returns the norm before. */
    public float clip(List<Param> params, double maxNorm) {
        double sumOfSquares = 0;
        Map<Backend, List<Param>> onGpu = new LinkedHashMap<>();
        for (Param p : params) {
            Tensor g = p.grad();
            if (g == null) continue;
            Backend b = devices.forName(p.name());
            if (b instanceof CudaBackend && !g.device().isCpu()) {
                onGpu.computeIfAbsent(b, k -> new ArrayList<>()).add(p);
                continue;
            }
            float norm = hostNorm(g);
            sumOfSquares += (double) norm * norm;
        }
        for (var e : onGpu.entrySet()) {
            CudaBackend cuda = (CudaBackend) e.getKey();
            cuda.context().bind(); // CudaGradClip queues its copies and events in the current context
            float deviceTotal = cudaClip(cuda).clip(e.getValue(), Double.POSITIVE_INFINITY);
            sumOfSquares += (double) deviceTotal * deviceTotal;
        }
        float total = (float) Math.sqrt(sumOfSquares);
        float coef = (float) maxNorm / (total + 1e-6f);
        float clamped = Math.min(coef, 1.0f);
        if (!(clamped == 1.0f)) { // exactly 1 changes nothing; NaN scales are applied, as torch does
            for (Param p : params) {
                Tensor g = p.grad();
                if (g == null) continue;
                Backend b = devices.forName(p.name());
                if (b instanceof CudaBackend && !g.device().isCpu()) b.axpyInPlace(g, clamped - 1f, g);
                else scaleHost(g, clamped);
            }
        }
        return total;
    }

    /** A host gradient's L2 norm: float64 sum of squares rounded to float, as GradClip and torch on the CPU. */
    private static float hostNorm(Tensor g) {
        double s = 0;
        long n = g.numel();
        for (long i = 0; i < n; i++) {
            double x = g.getFloat(i);
            s += x * x;
        }
        return (float) Math.sqrt(s);
    }

    private static void scaleHost(Tensor g, float c) {
        if (g.dtype() != DType.F32) throw new IllegalArgumentException("host gradients must be F32, got " + g);
        long n = g.numel();
        for (long i = 0; i < n; i++) g.setFloat(i, g.getFloat(i) * c);
    }

    private CudaGradClip cudaClip(CudaBackend b) {
        return cudaClips.computeIfAbsent(b, k -> new CudaGradClip(b));
    }

    @Override
    public void close() {
        for (var e : cudaClips.entrySet()) {
            ((CudaBackend) e.getKey()).context().bind();
            e.getValue().close();
        }
        cudaClips.clear();
    }
}
