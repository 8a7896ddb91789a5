package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.CudaDriver;

/**
 * A second stream of a {@link CudaContext}, with its own cuBLAS handle, for small products that do not depend on
 * the main stream's next work: a LoRA layer's weight gradient dB = s gy^T h runs here while the main stream forms
 * gh = s gy B, dA and grad_x from the same gy, and a group's gh, dB and dA run here while the main stream runs the
 * base layers' input-gradient GEMMs (CudaLoraGroupBackward). Why: each LoRA product is a skinny, memory-bound
 * GEMM (one dimension is the rank) that alone keeps only part of the GPU busy (session 8's profile: 1-1.5 TB/s of
 * 4.2), while the base GEMMs are bound by the tensor cores.
 *
 * <p>{@link #fork} orders this stream after the work queued on the main stream so far; {@link #join} orders the
 * main stream after the work queued here. A caller allocates everything the side work touches before fork and
 * releases it after join: the caching allocator orders the reuse of a block by the main stream only. Off while the
 * op profiler runs (its events time ops on the main stream) and with -Dqlora4j.cuda.sideStream=false (A/B runs).
 */
public final class SideStream implements AutoCloseable {
    public static final String PROPERTY = "qlora4j.cuda.sideStream";

    private final CudaDriver driver;
    private final long stream;
    private final long forked;
    private final long joined;
    private final long marked;
    private final Cublas cublas;

    SideStream(CudaDriver driver) {
        this.driver = driver;
        // blocking, like the context's stream; the highest priority, so that its few blocks are scheduled ahead of the
        // main stream's waiting ones (a base GEMM's later waves) and run beside that GEMM rather than after it
        this.stream = driver.streamCreate(false, driver.streamPriorityRange()[1]);
        this.forked = driver.eventCreate(false);
        this.joined = driver.eventCreate(false);
        this.marked = driver.eventCreate(false);
        Cublas c = Cublas.create();
        c.setStream(stream);
        c.setMathMode(Cublas.MathMode.DEFAULT_NO_REDUCED_PRECISION_REDUCTION);   // as the context's handle
        this.cublas = c;
    }

    /** Whether b's side work may run on the side stream now (see the class comment). */
    static boolean on(CudaBackend b) {
        return b.profiler() == null && Switches.on(PROPERTY, true);
    }

    /** The stream (for launches: {@link CudaContext#launch1d(long, long, dev.qlora4j.cuda.KernelArgs, long)}). */
    long stream() { return stream; }

    /** The cuBLAS handle bound to this stream. */
    Cublas cublas() { return cublas; }

    /** Work queued here from now on starts after everything queued on main so far. */
    void fork(long main) {
        driver.eventRecord(forked, main);
        driver.streamWaitEvent(stream, forked);
    }

    /** Work queued on main from now on starts after everything queued here so far. */
    void join(long main) {
        driver.eventRecord(joined, stream);
        driver.streamWaitEvent(main, joined);
    }

    /** Marks the work queued here so far: {@link #awaitMark} orders main after it (not after what is queued later). */
    void mark() {
        driver.eventRecord(marked, stream);
    }

    /** Work queued on main from now on starts after the work queued here before the last {@link #mark}. */
    void awaitMark(long main) {
        driver.streamWaitEvent(main, marked);
    }

    @Override
    public void close() {
        driver.streamSynchronize(stream);
        cublas.close();
        driver.eventDestroy(forked);
        driver.eventDestroy(joined);
        driver.eventDestroy(marked);
        driver.streamDestroy(stream);
    }
}
