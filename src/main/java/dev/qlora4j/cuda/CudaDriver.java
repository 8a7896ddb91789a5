package dev.qlora4j.cuda;

import java.lang.foreign.MemorySegment;

/**
 * The CUDA driver API as qlora4j uses it; implemented over Panama FFM ({@link FfmCudaDriver}, the
 * default) and over JCuda ({@link JCudaDriver}). Pick one with {@code -Dqlora4j.cuda.binding=ffm|jcuda}.
 *
 * <p>Handles (CUcontext, CUstream, CUevent, CUmodule, CUfunction, CUgraph, CUgraphExec) and device
 * pointers are the native values as {@code long}; 0 is the NULL handle (stream 0 is the legacy
 * default stream). Both implementations see the same process-wide driver state, so a handle from
 * one works with the other. Host buffers are passed as native addresses in the raw methods, and as
 * {@link MemorySegment}s (heap or native) in the convenience copies.
 *
 * <p>A CUDA context is current per thread: call {@link #usePrimaryContext(int)} on every thread
 * that touches the GPU. Every failing call throws {@link CudaException}.
 */
public interface CudaDriver {

    /** The driver chosen by {@code qlora4j.cuda.binding} (ffm by default); created once, loads nothing yet. */
    static CudaDriver get() { return CudaDrivers.selected(); }

    /** Whether the selected driver loads, initializes and sees at least one GPU. Never throws. */
    static boolean isAvailable() { return CudaDrivers.isAvailable(get()); }

    /** Why {@link #isAvailable()} is false (the CudaException message), or null when a GPU is usable. */
    static String unavailableReason() { return CudaDrivers.unavailableReason(get()); }

    /** "ffm" or "jcuda". */
    String bindingName();

    // ---- initialization and devices ----

    /** cuInit(0); idempotent. Throws with the "no NVIDIA GPU/driver found" hint when the driver is absent. */
    void init();

    /** cuDriverGetVersion: e.g. 13000 for CUDA 13.0. */
    int driverVersion();

    int deviceCount();

    DeviceProperties deviceProperties(int ordinal);

    // ---- contexts ----

    /** cuDevicePrimaryCtxRetain: the device's primary context (shared with the CUDA runtime, cuBLAS ...). */
    long primaryContextRetain(int ordinal);

    void primaryContextRelease(int ordinal);

    void contextSetCurrent(long context);

    /** The context current on this thread, 0 if none. */
    long contextGetCurrent();

    /** The device ordinal of the current context. */
    int contextGetDevice();

    void contextSynchronize();

    /** init + retain the device's primary context + make it current on this thread; returns the context. */
    default long usePrimaryContext(int ordinal) {
        init();
        long ctx = primaryContextRetain(ordinal);
        contextSetCurrent(ctx);
        return ctx;
    }

    // ---- streams and events ----

    /** A stream of the default priority (0); nonBlocking = CU_STREAM_NON_BLOCKING (no implicit sync with stream 0). */
    default long streamCreate(boolean nonBlocking) { return streamCreate(nonBlocking, 0); }

    /**
     * cuStreamCreateWithPriority: work of a stream with a numerically lower priority is scheduled first where both
     * have blocks waiting ({@link #streamPriorityRange}).
     */
    long streamCreate(boolean nonBlocking, int priority);

    /** cuCtxGetStreamPriorityRange of the current context: {least, greatest} (greatest is the lower number). */
    int[] streamPriorityRange();

    void streamDestroy(long stream);

    void streamSynchronize(long stream);

    /** cuEventCreate; timing=false gives CU_EVENT_DISABLE_TIMING (cheaper, for ordering only). */
    long eventCreate(boolean timing);

    void eventRecord(long event, long stream);

    void eventSynchronize(long event);

    /**
     * cuStreamWaitEvent(stream, event, 0): work queued on stream from now on waits for the event's last record
     * (orders a copy stream against the compute stream without blocking the host; a never-recorded event is no wait).
     */
    void streamWaitEvent(long stream, long event);

    /** Milliseconds between two recorded, completed timing events (resolution about 0.5 us). */
    float eventElapsedMillis(long start, long end);

    void eventDestroy(long event);

    // ---- memory ----

    /** cuMemAlloc_v2; prefer {@link CachingAllocator}, which caches blocks. */
    long memAlloc(long bytes);

    void memFree(long devicePointer);

    /** Page-locked host memory (cuMemAllocHost_v2) as a segment of the given size; free with memFreeHost. */
    MemorySegment memAllocHost(long bytes);

    void memFreeHost(MemorySegment pinned);

    MemoryInfo memGetInfo();

    /** Synchronous copies; host side is a native address. */
    void memcpyHtoD(long dstDevice, long srcHostAddress, long bytes);

    void memcpyDtoH(long dstHostAddress, long srcDevice, long bytes);

    void memcpyDtoD(long dstDevice, long srcDevice, long bytes);

    /** Stream-ordered copies; the host side must be native memory that stays alive until the stream passes the copy (pinned for true asynchrony). */
    void memcpyHtoDAsync(long dstDevice, long srcHostAddress, long bytes, long stream);

    void memcpyDtoHAsync(long dstHostAddress, long srcDevice, long bytes, long stream);

    void memcpyDtoDAsync(long dstDevice, long srcDevice, long bytes, long stream);

    /** Sets count bytes (D8) or count 32-bit words (D32) to value. */
    void memsetD8(long dstDevice, byte value, long count);

    void memsetD32(long dstDevice, int value, long count);

    void memsetD8Async(long dstDevice, byte value, long count, long stream);

    // ---- several devices ----

    /**
     * cuMemcpyPeerAsync: copies bytes from srcDevice (memory of srcContext) to dstDevice (memory of dstContext),
     * ordered on stream (a stream of the current context). Works between any two GPUs; it is a direct copy when
     * peer access is enabled ({@link #contextEnablePeerAccess}), staged by the driver otherwise.
     */
    void memcpyPeerAsync(long dstDevice, long dstContext, long srcDevice, long srcContext, long bytes, long stream);

    /** cuDeviceCanAccessPeer: whether device ordinal can map the memory of peerOrdinal (NVLink or PCIe P2P). */
    boolean deviceCanAccessPeer(int ordinal, int peerOrdinal);

    /**
     * cuCtxEnablePeerAccess(peerContext, 0): lets the current context read and write peerContext's memory directly
     * (returns false, without failing, when it was already enabled).
     */
    boolean contextEnablePeerAccess(long peerContext);

    void memsetD32Async(long dstDevice, int value, long count, long stream);

    /** Copies src (heap or native memory, all of it) to the device; synchronous. */
    default void copyToDevice(long dstDevice, MemorySegment src) {
        HostStaging.toDevice(this, dstDevice, src);
    }

    /** Fills dst (heap or native memory, all of it) from the device; synchronous. */
    default void copyToHost(MemorySegment dst, long srcDevice) {
        HostStaging.toHost(this, dst, srcDevice);
    }

    // ---- modules and kernels ----

    /**
     * Loads a PTX (or cubin) image; the NUL terminator PTX needs is added here. On a JIT failure the
     * exception carries the driver's JIT error log.
     */
    long moduleLoadData(byte[] image);

    /**
     * JIT-compiles PTX for the device of the current context (cuLinkCreate / cuLinkAddData / cuLinkComplete)
     * and returns the cubin: what moduleLoadData(ptx) compiles, as bytes that moduleLoadData also takes, so
     * that KernelCache can keep it. On a JIT failure the exception carries the driver's JIT error log.
     */
    byte[] compilePtx(byte[] ptx);

    void moduleUnload(long module);

    /** cuModuleGetFunction; fails with CUDA_ERROR_NOT_FOUND when the module has no such extern "C" kernel. */
    long moduleGetFunction(long module, String kernelName);

    /** Raises the dynamic shared memory a kernel may use above the 48 KiB default (up to the device's opt-in limit). */
    void funcSetMaxDynamicSharedMemory(long function, int bytes);

    /** cuLaunchKernel; asynchronous on stream. Check errors of the kernel itself with a synchronize. */
    void launchKernel(long function, Dim3 grid, Dim3 block, int dynamicSharedBytes, long stream, KernelArgs args);

    /**
     * A programmatic dependent launch (cuLaunchKernelEx with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
     * compute capability 9.0+): the kernel may be scheduled while the kernel before it in stream is still running,
     * so its launch latency and input-independent prologue overlap that kernel's tail. Only for kernels that keep
     * native/pdl.cuh's contract (griddepcontrol.wait before touching what earlier kernels write). Bindings without
     * cuLaunchKernelEx make it a plain {@link #launchKernel}, which is always correct.
     */
    default void launchKernelProgrammatic(long function, Dim3 grid, Dim3 block, int dynamicSharedBytes, long stream,
                                          KernelArgs args) {
        launchKernel(function, grid, block, dynamicSharedBytes, stream, args);
    }

    /** Whether {@link #launchKernelProgrammatic} really lets kernels overlap (false: it launches plainly). */
    default boolean supportsProgrammaticLaunch() { return false; }

    // ---- graphs ----

    /** cuStreamBeginCapture_v2: work issued to stream is recorded, not run, until endCapture. */
    void streamBeginCapture(long stream, CaptureMode mode);

    /** cuStreamEndCapture: the recorded graph. */
    long streamEndCapture(long stream);

    /** cuGraphInstantiateWithFlags(flags=0): an executable graph. */
    long graphInstantiate(long graph);

    void graphLaunch(long graphExec, long stream);

    void graphExecDestroy(long graphExec);

    void graphDestroy(long graph);

    // ---- errors ----

    /** cuGetErrorName, or a fallback name when the driver cannot say. */
    String errorName(int result);

    /** cuGetErrorString, or the name when the driver cannot say. */
    String errorString(int result);
}
