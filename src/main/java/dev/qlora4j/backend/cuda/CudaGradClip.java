package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

/**
 * torch.nn.utils.clip_grad_norm_ (L2) over gradients in GPU memory, with the host {@link dev.qlora4j.optim.GradClip}'s
 * arithmetic, in three launches whatever the number of gradients (native/grad_clip.cu): the float64 sums of
 * squares of every chunk of every gradient (one multi-tensor launch over a pointer table), then one block that
 * rounds each gradient's norm to float, takes the total (the norm of those norms) and the scale
 * min(1, maxNorm / (total + 1e-6)) in float, into a device scalar, then one multi-tensor launch that multiplies
 * every gradient by that scalar unless it is exactly 1. The step never waits for the GPU: the total norm comes
 * back through an asynchronous copy and is only waited for when {@link GradNorm#value()} is read.
 *
 * <p>Versus the CPU twin: the per-gradient float64 sums are added in another (fixed, run-to-run identical)
 * order, so a gradient's float norm, the total and the scale may differ from the CPU's in their last bit (float
 * rounding of float64 sums that differ by ~1e-16 relative); the scaled gradients then differ by at most a few
 * float ulps. Non-finite totals behave as on the CPU: a NaN or infinite total gives a NaN or 0 scale, which is
 * applied (as torch does with error_if_nonfinite=False); the caller sees the non-finite total.
 *
 * <p>Fits {@code Trainer.Builder.gradClipper(new CudaGradClip(backend)::clip)} (which reads the total at once);
 * a loop that reads the norm only for logging uses {@link #clipAsync}. Not thread-safe (as the context).
 */
public final class CudaGradClip implements AutoCloseable {
    /** Elements per CUDA block (CLIP_CHUNK in native/grad_clip.cu). */
    static final int CHUNK = 4096;
    /** sizeof(ClipEntry) in native/grad_clip.cu. */
    static final int ENTRY_BYTES = 32;
    private static final int THREADS = 256;
    private static final String MODULE = "grad_clip";

    private final CudaContext ctx;
    private final LaunchTable table;
    private final Tensor result;            // F32 [2] on the device: {total norm, clamped scale}
    private final MemorySegment hostResult; // pinned F32 [2]: the copy of result
    private final long copied;              // event recorded after that copy
    private long generation;                // clips queued so far

    public CudaGradClip(CudaBackend backend) {
        this.ctx = backend.context();
        this.table = new LaunchTable(ctx, ENTRY_BYTES);
        this.result = ctx.empty(DType.F32, 2);
        this.hostResult = ctx.driver().memAllocHost(8);
        this.copied = ctx.driver().eventCreate(false);
    }

    /** Clips in place and returns the total norm before clipping (waits for it; NaN scales are applied, as torch does). */
    public float clip(List<Param> params, double maxNorm) {
        return clipAsync(params, maxNorm).value();
    }

    /**
     * Queues the clip of every gradient of params (those without one are skipped) on the context's stream and
     * returns at once; the gradients are scaled in stream order, before any later work (the optimizer step).
     */
    public GradNorm clipAsync(List<Param> params, double maxNorm) {
        List<Tensor> grads = new ArrayList<>();
        for (Param p : params) {
            Tensor g = p.grad();
            if (g == null) continue;
            KernelTypes.requireDevice(g, "gradient of '" + p.name() + "'");
            KernelTypes.act(g.dtype());   // F32 or BF16
            if (g.numel() > 0) grads.add(g);
        }
        generation++;
        if (grads.isEmpty()) return new GradNorm(this, generation, true, 0f);   // as the CPU: total 0, nothing to scale
        MemorySegment t = table.begin(grads.size());
        long chunks = 0;
        for (int i = 0; i < grads.size(); i++) {
            Tensor g = grads.get(i);
            long o = (long) i * ENTRY_BYTES;
            t.set(ValueLayout.JAVA_LONG, o, CudaContext.ptr(g));
            t.set(ValueLayout.JAVA_LONG, o + 8, g.numel());
            t.set(ValueLayout.JAVA_LONG, o + 16, chunks);
            t.set(ValueLayout.JAVA_INT, o + 24, g.dtype() == DType.F32 ? 0 : 1);
            t.set(ValueLayout.JAVA_INT, o + 28, 0);
            chunks += (g.numel() + CHUNK - 1) / CHUNK;
        }
        if (chunks > Integer.MAX_VALUE) throw new IllegalStateException("too many gradient elements for one launch: " + chunks + " chunks");
        long dev = table.upload(grads.size());
        int count = grads.size();
        Dim3 grid = Dim3.of((int) chunks), block = Dim3.of(THREADS);
        try (Tensor partials = ctx.empty(DType.F64, (int) chunks)) {   // freed in stream order: safe once queued
            ctx.launch(ctx.function(MODULE, "grad_sumsq_multi"), grid, block, 0,
                    KernelArgs.of().ptr(dev).i32(count).ptr(CudaContext.ptr(partials)));
            ctx.launch(ctx.function(MODULE, "grad_clip_coef"), Dim3.of(1), block, 0,
                    KernelArgs.of().ptr(dev).i32(count).ptr(CudaContext.ptr(partials)).f32((float) maxNorm)
                            .ptr(CudaContext.ptr(result)));
        }
        ctx.launch(ctx.function(MODULE, "grad_scale_multi"), grid, block, 0,
                KernelArgs.of().ptr(dev).i32(count).ptr(CudaContext.ptr(result)));
        ctx.driver().memcpyDtoHAsync(hostResult.address(), CudaContext.ptr(result), 8, ctx.stream());
        ctx.driver().eventRecord(copied, ctx.stream());
        return new GradNorm(this, generation, false, Float.NaN);
    }

    /**
     * The total gradient norm (before clipping) of one {@link #clipAsync}, read from the GPU on the first
     * {@link #value()} (which waits for that clip only, not for work queued after it). Read it before the next
     * clip of the same CudaGradClip, which reuses the buffer.
     */
    public static final class GradNorm {
        private final CudaGradClip owner;
        private final long generation;
        private float value;
        private boolean known;

        private GradNorm(CudaGradClip owner, long generation, boolean known, float value) {
            this.owner = owner;
            this.generation = generation;
            this.known = known;
            this.value = value;
        }

        /** The total norm; waits for the clip's result the first time. */
        public float value() {
            if (!known) {
                if (owner.generation != generation) {
                    throw new IllegalStateException("this gradient norm was overwritten by a later clip (clip "
                            + owner.generation + ", this is clip " + generation + "): read value() before clipping again");
                }
                owner.ctx.driver().eventSynchronize(owner.copied);
                value = owner.hostResult.get(ValueLayout.JAVA_FLOAT, 0);
                known = true;
            }
            return value;
        }
    }

    /** Frees the launch table, the result buffers and the event (waits for a pending clip first). */
    @Override
    public void close() {
        ctx.driver().eventSynchronize(copied);
        ctx.driver().eventDestroy(copied);
        ctx.driver().memFreeHost(hostResult);
        result.close();
        table.close();
    }
}
