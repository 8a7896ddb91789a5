package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.CachingAllocator;
import dev.qlora4j.cuda.CaptureMode;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * A decode step recorded as a CUDA graph and replayed.
 *
 * <p>What makes the step replayable:
 * <ul>
 *   <li>Per-step values live in static device tensors: ids [B], positions [B] and start [1] (the cache slot),
 *       written by async copies from pinned host memory on the compute stream before each launch. The
 *       attention kernels read start through a pointer ({@link CudaBackend#useGraphStart}); rope and the
 *       embedding read positions and ids from their tensors anyway. Kernel launch shapes never depend on
 *       start (decode splits follow the cache capacity), so one recording serves every step.</li>
 *   <li>Every tensor the step allocates comes from a private pool (a CachingAllocator of its own, swapped
 *       into the context for the first step and the capture). Blocks a replay writes therefore belong to the
 *       graph alone: nothing else can be handed one of them between replays.</li>
 *   <li>The first {@link #step} runs the body directly (a real step, whose logits are returned) with the pool
 *       in place: that fills the pool with exactly the blocks the step needs. The capture then repeats the
 *       same allocation sequence and is served from the pool's cache, so no cuMemAlloc happens while the
 *       stream is captured (it would be an error); this is verified.</li>
 * </ul>
 * The graph's logits tensor stays open until {@link #close}. The KV cache and weights the body uses must
 * outlive the graph.
 */
final class CudaDecodeGraph implements DecodeGraph {
    private final CudaBackend backend;
    private final CudaContext ctx;
    private final CudaDriver driver;
    private final int batch;
    private final Body body;
    private final CachingAllocator pool;
    private final Tensor ids;        // I32 [batch]
    private final Tensor positions;  // I32 [batch]
    private final Tensor start;      // I32 [1]
    private final MemorySegment pinnedInputs;   // ids, positions, start, status word (3 ints): step()
    private final CudaTokenPicker picker;  // the device picks (kernels, flags, draws, scratch)
    // Pipelined device-pick steps (launchPick / collectPicks): two slots of pinned inputs, draws, status word and picks,
    // each with the event recorded after its copies back; a slot is reused only once its step has been collected.
    private final MemorySegment[] pickSlots = new MemorySegment[2];
    private final long[] pickEvents = new long[2];
    private final java.util.ArrayDeque<Integer> queued = new java.util.ArrayDeque<>();
    private int nextSlot;
    private MemorySegment pinnedLogits;
    private Tensor logits;           // the captured step's output [batch, vocab]
    private long graph;
    private long exec;
    private boolean closed;

    CudaDecodeGraph(CudaBackend backend, int batch, Body body) {
        if (batch < 1) throw new IllegalArgumentException("decode graph batch must be >= 1, got " + batch);
        this.backend = backend;
        this.ctx = backend.context();
        this.driver = ctx.driver();
        this.batch = batch;
        this.body = body;
        this.pool = CachingAllocator.over(driver);
        this.ids = ctx.empty(DType.I32, batch);
        this.positions = ctx.empty(DType.I32, batch);
        this.start = ctx.empty(DType.I32, 1);
        this.picker = new CudaTokenPicker(backend, batch);
        this.pinnedInputs = driver.memAllocHost(4L * (2 * batch + 1 + 3));
    }

    /** System property: "false" turns {@link #launchPick} off (the caller then picks from the logits on the host). */
    static final String DEVICE_PICK_PROPERTY = "qlora4j.cuda.devicePick";
    /** Steps whose tokens were picked on the device, all graphs and pickers (tests read it to see the path ran). */
    static final java.util.concurrent.atomic.AtomicLong DEVICE_PICKS = new java.util.concurrent.atomic.AtomicLong();

    @Override
    public boolean picksOnDevice() { return exec != 0 && Switches.on(DEVICE_PICK_PROPERTY, true); }

    // Pinned inputs (pinnedInputs, and each pick slot): ids [batch], positions [batch], start, status word (3 ints);
    // a pick slot then its draws [batch] (doubles, 8-aligned: the ints before them are 2 * batch + 4) and picks [batch].
    private long statusOffset() { return 4L * (2 * batch + 1); }
    private long slotUniformsOffset() { return statusOffset() + 12; }
    private long slotPicksOffset() { return slotUniformsOffset() + 8L * batch; }

    @Override
    public void launchPick(int[] stepIds, int[] stepPositions, int stepStart, TokenPick pick) {
        if (closed) throw new IllegalStateException("decode graph is closed");
        if (exec == 0) throw new IllegalStateException("launchPick replays a recorded step: call step first");
        if ((stepIds != null && stepIds.length != batch) || stepPositions.length != batch) {
            throw new IllegalArgumentException("decode graph of batch " + batch + " got "
                    + (stepIds == null ? "the previous picks" : stepIds.length + " ids") + " and " + stepPositions.length + " positions");
        }
        if (queued.size() == pickSlots.length) {
            throw new IllegalStateException("two device-pick steps are queued uncollected: collectPicks first");
        }
        int k = nextSlot;
        nextSlot = (nextSlot + 1) % pickSlots.length;
        if (pickSlots[k] == null) {
            pickSlots[k] = driver.memAllocHost(slotPicksOffset() + 4L * batch);
            pickEvents[k] = driver.eventCreate(false);
        }
        MemorySegment slot = pickSlots[k];
        long host = slot.address(), s = ctx.stream();
        writeInputs(slot, stepIds, stepPositions, stepStart);
        if (!pick.greedy()) MemorySegment.copy(pick.uniforms(), 0, slot, ValueLayout.JAVA_DOUBLE, slotUniformsOffset(), batch);
        driver.graphLaunch(exec, s);
        // the picks go to the host and, as the next step's input ids, stay on the device
        picker.enqueue(logits, pick, slot.asSlice(slotUniformsOffset()), ids);
        driver.memcpyDtoHAsync(host + slotPicksOffset(), CudaContext.ptr(picker.tokens()), 4L * batch, s);
        driver.memcpyDtoHAsync(host + statusOffset(), backend.status().pointer(), 12, s);
        driver.eventRecord(pickEvents[k], s);
        queued.add(k);
    }

    @Override
    public int[] collectPicks() {
        if (closed) throw new IllegalStateException("decode graph is closed");
        Integer k = queued.poll();
        if (k == null) throw new IllegalStateException("no device-pick step is queued: launchPick first");
        driver.eventSynchronize(pickEvents[k]);
        MemorySegment slot = pickSlots[k];
        if (slot.get(ValueLayout.JAVA_INT, statusOffset()) != 0) backend.synchronize(); // clears the word, throws its error
        int[] picked = new int[batch];
        MemorySegment.copy(slot, ValueLayout.JAVA_INT, slotPicksOffset(), picked, 0, batch);
        DEVICE_PICKS.incrementAndGet();
        return picked;
    }

    @Override
    public void markSeen(int[][] rowTokens) {
        if (closed) throw new IllegalStateException("decode graph is closed");
        if (exec == 0) throw new IllegalStateException("markSeen needs the recorded step (its vocabulary): call step first");
        picker.markSeen(rowTokens, logits.dim(1));
    }

    @Override
    public boolean isCaptured() { return exec != 0; }

    @Override
    public float[][] step(int[] stepIds, int[] stepPositions, int stepStart) {
        if (closed) throw new IllegalStateException("decode graph is closed");
        if (stepIds.length != batch || stepPositions.length != batch) {
            throw new IllegalArgumentException("decode graph of batch " + batch + " got " + stepIds.length + " ids and "
                    + stepPositions.length + " positions");
        }
        writeInputs(pinnedInputs, stepIds, stepPositions, stepStart);
        if (exec == 0) return firstStepThenCapture(stepStart);
        driver.graphLaunch(exec, ctx.stream());
        return readLogits();
    }

    /**
     * The step's inputs into pinned buffer (its ids, positions and start) and on to the static device tensors, on the
     * compute stream. stepIds null: the ids tensor keeps what the device left there (the previous device picks). The
     * buffer's previous copies have completed: step ends with a stream synchronization, and a pick slot is reused
     * only once its step has been collected.
     */
    private void writeInputs(MemorySegment buf, int[] stepIds, int[] stepPositions, int stepStart) {
        long host = buf.address(), s = ctx.stream();
        if (stepIds != null) {
            MemorySegment.copy(stepIds, 0, buf, ValueLayout.JAVA_INT, 0, batch);
            driver.memcpyHtoDAsync(CudaContext.ptr(ids), host, 4L * batch, s);
        }
        MemorySegment.copy(stepPositions, 0, buf, ValueLayout.JAVA_INT, 4L * batch, batch);
        buf.setAtIndex(ValueLayout.JAVA_INT, 2L * batch, stepStart);
        driver.memcpyHtoDAsync(CudaContext.ptr(positions), host + 4L * batch, 4L * batch, s);
        driver.memcpyHtoDAsync(CudaContext.ptr(start), host + 8L * batch, 4, s);
    }

    private float[][] firstStepThenCapture(int stepStart) {
        CachingAllocator before = ctx.swapAllocator(pool);
        backend.useGraphStart(CudaContext.ptr(start));
        try {
            float[][] result;
            try (Tensor direct = body.run(ids, positions, stepStart)) {
                checkLogits(direct);
                result = toRows(backend.toHost(direct));
            }
            long deviceAllocs = pool.stats().deviceAllocs();
            driver.streamBeginCapture(ctx.stream(), CaptureMode.GLOBAL);
            try {
                logits = body.run(ids, positions, stepStart);
            } catch (RuntimeException e) {
                try {   // end the capture so the stream is usable again; the body's error is the one to report
                    driver.graphDestroy(driver.streamEndCapture(ctx.stream()));
                } catch (RuntimeException e2) {
                    e.addSuppressed(e2);
                }
                throw e;
            }
            graph = driver.streamEndCapture(ctx.stream());
            checkLogits(logits);
            if (pool.stats().deviceAllocs() != deviceAllocs) {
                throw new IllegalStateException("the decode step allocated new device memory while being captured:"
                        + " its allocations differ from the first (direct) step; the step must do the same work every time");
            }
            exec = driver.graphInstantiate(graph);
            pinnedLogits = driver.memAllocHost(logits.byteSize());
            return result;
        } finally {
            backend.useGraphStart(0);
            ctx.swapAllocator(before);
        }
    }

    private void checkLogits(Tensor t) {
        if (t.rank() != 2 || t.dim(0) != batch) {
            throw new IllegalArgumentException("decode graph body must return logits [" + batch + ", vocab], got " + t);
        }
    }

    private float[][] readLogits() {
        long s = ctx.stream();
        long statusAt = pinnedInputs.address() + statusOffset();
        driver.memcpyDtoHAsync(pinnedLogits.address(), CudaContext.ptr(logits), logits.byteSize(), s);
        driver.memcpyDtoHAsync(statusAt, backend.status().pointer(), 12, s);
        driver.streamSynchronize(s);
        int code = pinnedInputs.getAtIndex(ValueLayout.JAVA_INT, 2L * batch + 1);
        if (code != 0) backend.synchronize(); // clears the word and throws its error
        int vocab = logits.dim(1);
        float[][] rows = new float[batch][vocab];
        boolean bf16 = logits.dtype() == DType.BF16;
        for (int r = 0; r < batch; r++) {
            for (int j = 0; j < vocab; j++) {
                long i = (long) r * vocab + j;
                rows[r][j] = bf16 ? Half.bf16ToFloat(pinnedLogits.getAtIndex(ValueLayout.JAVA_SHORT, i))
                        : pinnedLogits.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            }
        }
        return rows;
    }

    private float[][] toRows(Tensor host) {
        int vocab = host.dim(1);
        float[] flat = host.toFloatArray();
        float[][] rows = new float[batch][];
        for (int r = 0; r < batch; r++) rows[r] = java.util.Arrays.copyOfRange(flat, r * vocab, (r + 1) * vocab);
        return rows;
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        ctx.synchronize();
        if (exec != 0) driver.graphExecDestroy(exec);
        if (graph != 0) driver.graphDestroy(graph);
        if (logits != null) logits.close();
        pool.close();
        ids.close();
        positions.close();
        start.close();
        picker.close();
        driver.memFreeHost(pinnedInputs);
        for (int k = 0; k < pickSlots.length; k++) {
            if (pickSlots[k] != null) {
                driver.memFreeHost(pickSlots[k]);
                driver.eventDestroy(pickEvents[k]);
            }
        }
        if (pinnedLogits != null) driver.memFreeHost(pinnedLogits);
    }
}
