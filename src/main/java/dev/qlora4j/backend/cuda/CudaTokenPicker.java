package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The device side of a token pick for batch rows (native/sampling.cu through SamplingKernels): the picks [batch], the
 * draws [batch], the repetition penalty's flags [batch, vocab] and the sampling kernels' scratch, allocated when first
 * needed. {@link #enqueue} queues a pick on the stream (CudaDecodeGraph's pipelined steps); {@link #pick} also waits
 * for it and returns the ids (steps without a graph).
 */
final class CudaTokenPicker implements TokenPicker {
    private final CudaBackend backend;
    private final CudaContext ctx;
    private final CudaDriver driver;
    private final int batch;
    private final Tensor tokens;     // I32 [batch]: the picks
    private final Tensor uniforms;   // F64 [batch]: the sampled picks' draws
    private Tensor seen;             // U8 [batch, vocab]: the repetition penalty's ids (markSeen, then each pick)
    private SampleScratch scratch;   // the sampling kernels' device memory (first sampled pick)
    private MemorySegment pinned;    // pick(): draws [batch] (doubles), then picks [batch], then the status word
    private boolean closed;

    CudaTokenPicker(CudaBackend backend, int batch) {
        this.backend = backend;
        this.ctx = backend.context();
        this.driver = ctx.driver();
        this.batch = batch;
        this.tokens = ctx.empty(DType.I32, batch);
        this.uniforms = ctx.empty(DType.F64, batch);
    }

    /** The device tensor the picks land in (I32 [batch]). */
    Tensor tokens() { return tokens; }

    /**
     * Queues the pick of logits [batch, vocab] into {@link #tokens} and nextIds (I32 [batch], or null). pinnedDraws:
     * pinned host memory holding pick's draws (batch doubles; unused for greedy), copied on the stream.
     */
    void enqueue(Tensor logits, TokenPick pick, MemorySegment pinnedDraws, Tensor nextIds) {
        if (closed) throw new IllegalStateException("token picker is closed");
        ctx.bind();  // the head's GPU: a model over several GPUs leaves another one's context current
        if (logits.rank() != 2 || logits.dim(0) != batch) {
            throw new IllegalArgumentException("token picker of batch " + batch + " got logits " + logits);
        }
        if (pick.penalized() && seen == null) {
            throw new IllegalStateException("a repetition penalty on the device needs the rows' tokens: markSeen first");
        }
        if (!pick.greedy() && pick.uniforms().length != batch) {
            throw new IllegalArgumentException("token picker of batch " + batch + " got " + pick.uniforms().length + " draws");
        }
        Tensor flags = pick.penalized() ? seen : null;
        if (pick.greedy()) {
            SamplingKernels.argmaxRows(ctx, logits, flags, pick.repetitionPenalty(), pick.excluded(), tokens, nextIds);
        } else {
            driver.memcpyHtoDAsync(CudaContext.ptr(uniforms), pinnedDraws.address(), 8L * batch, ctx.stream());
            if (scratch == null) scratch = new SampleScratch(ctx, batch, logits.dim(1));
            SamplingKernels.sampleRows(ctx, logits, flags, pick.repetitionPenalty(), pick.excluded(), pick.temperature(),
                    pick.topK(), pick.topP(), uniforms, scratch, tokens, nextIds, backend.status().pointer());
        }
    }

    @Override
    public int[] pick(Tensor logits, TokenPick pick) {
        if (closed) throw new IllegalStateException("token picker is closed");
        ctx.bind();
        if (pinned == null) pinned = driver.memAllocHost(8L * batch + 4L * batch + 12);
        if (!pick.greedy()) MemorySegment.copy(pick.uniforms(), 0, pinned, ValueLayout.JAVA_DOUBLE, 0, batch);
        enqueue(logits, pick, pinned, null);
        long s = ctx.stream(), picksAt = 8L * batch, statusAt = picksAt + 4L * batch;
        driver.memcpyDtoHAsync(pinned.address() + picksAt, CudaContext.ptr(tokens), 4L * batch, s);
        driver.memcpyDtoHAsync(pinned.address() + statusAt, backend.status().pointer(), 12, s);
        driver.streamSynchronize(s);
        if (pinned.get(ValueLayout.JAVA_INT, statusAt) != 0) backend.synchronize(); // clears the word, throws its error
        int[] picked = new int[batch];
        MemorySegment.copy(pinned, ValueLayout.JAVA_INT, picksAt, picked, 0, batch);
        CudaDecodeGraph.DEVICE_PICKS.incrementAndGet();
        return picked;
    }

    @Override
    public void markSeen(int[][] rowTokens, int vocab) {
        if (closed) throw new IllegalStateException("token picker is closed");
        if (rowTokens.length != batch) {
            throw new IllegalArgumentException("token picker of batch " + batch + " got " + rowTokens.length + " rows of tokens");
        }
        byte[] flags = new byte[batch * vocab];
        for (int r = 0; r < batch; r++) {
            for (int t : rowTokens[r]) if (t >= 0 && t < vocab) flags[r * vocab + t] = 1;
        }
        ctx.synchronize();  // binds the context; no queued pick still reads the flags (a synchronous copy would not wait)
        if (seen != null && seen.dim(1) != vocab) {
            seen.close();
            seen = null;
        }
        if (seen == null) seen = ctx.empty(DType.U8, batch, vocab);
        driver.copyToDevice(CudaContext.ptr(seen), MemorySegment.ofArray(flags));
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        ctx.synchronize();
        tokens.close();
        uniforms.close();
        if (seen != null) seen.close();
        if (scratch != null) scratch.close();
        if (pinned != null) driver.memFreeHost(pinned);
    }
}
