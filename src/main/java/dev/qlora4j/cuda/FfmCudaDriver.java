package dev.qlora4j.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;

/**
 * The CUDA driver API through Panama FFM: libcuda.so.1, opened on first use.
 *
 * <p>Arena ownership: the library and its symbols live in the global arena (see {@link NativeLibrary});
 * every call that needs out-parameters or strings opens a confined arena for the duration of that call only
 * (the driver copies what it keeps); kernel launches write their arguments into a per-thread reusable block
 * instead ({@link KernelArgs.Scratch}), the launch being the hot path. Pinned host buffers are owned by
 * the driver (cuMemAllocHost) and returned with {@link #memFreeHost}.
 */
public final class FfmCudaDriver implements CudaDriver {
    private static final FfmCudaDriver INSTANCE = new FfmCudaDriver("libcuda.so.1");

    private final LibCuda cu;
    private volatile boolean initialized;

    /** The process-wide driver over libcuda.so.1. */
    public static FfmCudaDriver instance() { return INSTANCE; }

    /** A driver over another library name (tests use a missing one to check the error path). */
    FfmCudaDriver(String soname) {
        this.cu = new LibCuda(soname);
    }

    @Override public String bindingName() { return "ffm"; }

    /** Throws CudaException unless result is CUDA_SUCCESS. */
    private void check(Downcall fn, int result) {
        if (result != CudaErrors.CUDA_SUCCESS) {
            throw new CudaException(fn.name(), result, errorName(result), null);
        }
    }

    private void check(Downcall fn, int result, String detail) {
        if (result != CudaErrors.CUDA_SUCCESS) {
            throw new CudaException(fn.name(), result, errorName(result), detail);
        }
    }

    // ---- initialization and devices ----

    @Override
    public void init() {
        if (initialized) return;
        try {
            check(cu.init, (int) cu.init.handle().invokeExact(0));
            initialized = true;
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public int driverVersion() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check(cu.driverGetVersion, (int) cu.driverGetVersion.handle().invokeExact(out));
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public int deviceCount() {
        init();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check(cu.deviceGetCount, (int) cu.deviceGetCount.handle().invokeExact(out));
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    private int device(int ordinal) {
        init();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check(cu.deviceGet, (int) cu.deviceGet.handle().invokeExact(out, ordinal), "device ordinal " + ordinal);
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    private int attribute(int attribute, int device) throws Throwable {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check(cu.deviceGetAttribute, (int) cu.deviceGetAttribute.handle().invokeExact(out, attribute, device),
                    "attribute " + attribute);
            return out.get(JAVA_INT, 0);
        }
    }

    @Override
    public DeviceProperties deviceProperties(int ordinal) {
        int dev = device(ordinal);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment name = a.allocate(256);
            check(cu.deviceGetName, (int) cu.deviceGetName.handle().invokeExact(name, 256, dev));
            MemorySegment total = a.allocate(JAVA_LONG);
            check(cu.deviceTotalMem, (int) cu.deviceTotalMem.handle().invokeExact(total, dev));
            return new DeviceProperties(ordinal, name.getString(0, StandardCharsets.UTF_8),
                    attribute(CudaAttributes.COMPUTE_CAPABILITY_MAJOR, dev),
                    attribute(CudaAttributes.COMPUTE_CAPABILITY_MINOR, dev),
                    attribute(CudaAttributes.MULTIPROCESSOR_COUNT, dev),
                    total.get(JAVA_LONG, 0),
                    attribute(CudaAttributes.MAX_THREADS_PER_BLOCK, dev),
                    attribute(CudaAttributes.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev),
                    attribute(CudaAttributes.L2_CACHE_SIZE, dev));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    // ---- contexts ----

    @Override
    public long primaryContextRetain(int ordinal) {
        int dev = device(ordinal);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check(cu.primaryCtxRetain, (int) cu.primaryCtxRetain.handle().invokeExact(out, dev));
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void primaryContextRelease(int ordinal) {
        int dev = device(ordinal);
        try {
            check(cu.primaryCtxRelease, (int) cu.primaryCtxRelease.handle().invokeExact(dev));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void contextSetCurrent(long context) {
        try {
            check(cu.ctxSetCurrent, (int) cu.ctxSetCurrent.handle().invokeExact(context));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public long contextGetCurrent() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check(cu.ctxGetCurrent, (int) cu.ctxGetCurrent.handle().invokeExact(out));
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public int contextGetDevice() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check(cu.ctxGetDevice, (int) cu.ctxGetDevice.handle().invokeExact(out));
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void contextSynchronize() {
        try {
            check(cu.ctxSynchronize, (int) cu.ctxSynchronize.handle().invokeExact());
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    // ---- streams and events ----

    @Override
    public long streamCreate(boolean nonBlocking, int priority) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            int flags = nonBlocking ? CudaAttributes.STREAM_NON_BLOCKING : 0;
            check(cu.streamCreateWithPriority, (int) cu.streamCreateWithPriority.handle().invokeExact(out, flags, priority));
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public int[] streamPriorityRange() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment least = a.allocate(JAVA_INT), greatest = a.allocate(JAVA_INT);
            check(cu.ctxGetStreamPriorityRange, (int) cu.ctxGetStreamPriorityRange.handle().invokeExact(least, greatest));
            return new int[] {least.get(JAVA_INT, 0), greatest.get(JAVA_INT, 0)};
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void streamDestroy(long stream) {
        try {
            check(cu.streamDestroy, (int) cu.streamDestroy.handle().invokeExact(stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void streamSynchronize(long stream) {
        try {
            check(cu.streamSynchronize, (int) cu.streamSynchronize.handle().invokeExact(stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public long eventCreate(boolean timing) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            int flags = timing ? CudaAttributes.EVENT_DEFAULT : CudaAttributes.EVENT_DISABLE_TIMING;
            check(cu.eventCreate, (int) cu.eventCreate.handle().invokeExact(out, flags));
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void eventRecord(long event, long stream) {
        try {
            check(cu.eventRecord, (int) cu.eventRecord.handle().invokeExact(event, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void eventSynchronize(long event) {
        try {
            check(cu.eventSynchronize, (int) cu.eventSynchronize.handle().invokeExact(event));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void streamWaitEvent(long stream, long event) {
        try {
            check(cu.streamWaitEvent, (int) cu.streamWaitEvent.handle().invokeExact(stream, event, 0));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public float eventElapsedMillis(long start, long end) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_FLOAT);
            check(cu.eventElapsedTime, (int) cu.eventElapsedTime.handle().invokeExact(out, start, end));
            return out.get(JAVA_FLOAT, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void eventDestroy(long event) {
        try {
            check(cu.eventDestroy, (int) cu.eventDestroy.handle().invokeExact(event));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    // ---- memory ----

    @Override
    public long memAlloc(long bytes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check(cu.memAlloc, (int) cu.memAlloc.handle().invokeExact(out, bytes), "requested " + bytes + " bytes");
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memFree(long devicePointer) {
        try {
            check(cu.memFree, (int) cu.memFree.handle().invokeExact(devicePointer));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public MemorySegment memAllocHost(long bytes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check(cu.memAllocHost, (int) cu.memAllocHost.handle().invokeExact(out, bytes),
                    "requested " + bytes + " bytes of pinned host memory");
            // The driver owns this memory; the segment is a view of it, valid until memFreeHost.
            return out.get(ADDRESS, 0).reinterpret(bytes);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memFreeHost(MemorySegment pinned) {
        try {
            check(cu.memFreeHost, (int) cu.memFreeHost.handle().invokeExact(pinned.address()));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public MemoryInfo memGetInfo() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment free = a.allocate(JAVA_LONG);
            MemorySegment total = a.allocate(JAVA_LONG);
            check(cu.memGetInfo, (int) cu.memGetInfo.handle().invokeExact(free, total));
            return new MemoryInfo(free.get(JAVA_LONG, 0), total.get(JAVA_LONG, 0));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memcpyHtoD(long dstDevice, long srcHostAddress, long bytes) {
        try {
            check(cu.memcpyHtoD, (int) cu.memcpyHtoD.handle().invokeExact(dstDevice, srcHostAddress, bytes));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memcpyDtoH(long dstHostAddress, long srcDevice, long bytes) {
        try {
            check(cu.memcpyDtoH, (int) cu.memcpyDtoH.handle().invokeExact(dstHostAddress, srcDevice, bytes));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memcpyDtoD(long dstDevice, long srcDevice, long bytes) {
        try {
            check(cu.memcpyDtoD, (int) cu.memcpyDtoD.handle().invokeExact(dstDevice, srcDevice, bytes));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memcpyHtoDAsync(long dstDevice, long srcHostAddress, long bytes, long stream) {
        try {
            check(cu.memcpyHtoDAsync, (int) cu.memcpyHtoDAsync.handle().invokeExact(dstDevice, srcHostAddress, bytes, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memcpyDtoHAsync(long dstHostAddress, long srcDevice, long bytes, long stream) {
        try {
            check(cu.memcpyDtoHAsync, (int) cu.memcpyDtoHAsync.handle().invokeExact(dstHostAddress, srcDevice, bytes, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memcpyDtoDAsync(long dstDevice, long srcDevice, long bytes, long stream) {
        try {
            check(cu.memcpyDtoDAsync, (int) cu.memcpyDtoDAsync.handle().invokeExact(dstDevice, srcDevice, bytes, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    /** CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED: enabling twice is not an error for us. */
    private static final int PEER_ACCESS_ALREADY_ENABLED = 704;

    @Override
    public void memcpyPeerAsync(long dstDevice, long dstContext, long srcDevice, long srcContext, long bytes, long stream) {
        try {
            check(cu.memcpyPeerAsync, (int) cu.memcpyPeerAsync.handle().invokeExact(dstDevice, dstContext, srcDevice, srcContext,
                    bytes, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public boolean deviceCanAccessPeer(int ordinal, int peerOrdinal) {
        int dev = device(ordinal), peer = device(peerOrdinal);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check(cu.deviceCanAccessPeer, (int) cu.deviceCanAccessPeer.handle().invokeExact(out, dev, peer));
            return out.get(JAVA_INT, 0) != 0;
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public boolean contextEnablePeerAccess(long peerContext) {
        try {
            int r = (int) cu.ctxEnablePeerAccess.handle().invokeExact(peerContext, 0);
            if (r == PEER_ACCESS_ALREADY_ENABLED) return false;
            check(cu.ctxEnablePeerAccess, r);
            return true;
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memsetD8(long dstDevice, byte value, long count) {
        try {
            check(cu.memsetD8, (int) cu.memsetD8.handle().invokeExact(dstDevice, value, count));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memsetD32(long dstDevice, int value, long count) {
        try {
            check(cu.memsetD32, (int) cu.memsetD32.handle().invokeExact(dstDevice, value, count));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memsetD8Async(long dstDevice, byte value, long count, long stream) {
        try {
            check(cu.memsetD8Async, (int) cu.memsetD8Async.handle().invokeExact(dstDevice, value, count, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void memsetD32Async(long dstDevice, int value, long count, long stream) {
        try {
            check(cu.memsetD32Async, (int) cu.memsetD32Async.handle().invokeExact(dstDevice, value, count, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    // ---- modules and kernels ----

    /** A NUL-terminated copy of a PTX (or cubin) image and the JIT options that collect the error log, in one arena. */
    private record JitInput(MemorySegment image, long imageBytes, MemorySegment log, MemorySegment options, MemorySegment values) {
        static JitInput of(Arena a, byte[] image) {
            MemorySegment img = a.allocate(image.length + 1L, 16);   // zero-filled: NUL-terminated PTX
            MemorySegment.copy(image, 0, img, JAVA_BYTE, 0, image.length);
            MemorySegment log = a.allocate(CudaAttributes.JIT_LOG_BYTES);
            MemorySegment options = a.allocate(JAVA_INT, 2);
            options.setAtIndex(JAVA_INT, 0, CudaAttributes.JIT_ERROR_LOG_BUFFER);
            options.setAtIndex(JAVA_INT, 1, CudaAttributes.JIT_ERROR_LOG_BUFFER_SIZE_BYTES);
            MemorySegment values = a.allocate(ADDRESS, 2);
            values.setAtIndex(ADDRESS, 0, log);
            // A size option's value is the number itself, stored in the pointer slot.
            values.setAtIndex(JAVA_LONG, 1, CudaAttributes.JIT_LOG_BYTES);
            return new JitInput(img, image.length + 1L, log, options, values);
        }

        String logText() {
            String jitLog = log.getString(0, StandardCharsets.UTF_8).strip();
            return jitLog.isEmpty() ? "no JIT log" : "JIT log:\n" + jitLog + "\n";
        }
    }

    @Override
    public long moduleLoadData(byte[] image) {
        try (Arena a = Arena.ofConfined()) {
            JitInput in = JitInput.of(a, image);
            MemorySegment out = a.allocate(JAVA_LONG);
            int r = (int) cu.moduleLoadDataEx.handle().invokeExact(out, in.image(), 2, in.options(), in.values());
            if (r != CudaErrors.CUDA_SUCCESS) throw new CudaException(cu.moduleLoadDataEx.name(), r, errorName(r), in.logText());
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public byte[] compilePtx(byte[] ptx) {
        try (Arena a = Arena.ofConfined()) {
            JitInput in = JitInput.of(a, ptx);
            MemorySegment stateOut = a.allocate(JAVA_LONG);
            check(cu.linkCreate, (int) cu.linkCreate.handle().invokeExact(2, in.options(), in.values(), stateOut));
            long state = stateOut.get(JAVA_LONG, 0);
            try {
                MemorySegment name = a.allocateFrom("module.ptx");
                int r = (int) cu.linkAddData.handle().invokeExact(state, CudaAttributes.JIT_INPUT_PTX, in.image(), in.imageBytes(),
                        name, 0, MemorySegment.NULL, MemorySegment.NULL);
                if (r == CudaErrors.CUDA_SUCCESS) {
                    MemorySegment cubinOut = a.allocate(ADDRESS);
                    MemorySegment sizeOut = a.allocate(JAVA_LONG);
                    r = (int) cu.linkComplete.handle().invokeExact(state, cubinOut, sizeOut);
                    if (r == CudaErrors.CUDA_SUCCESS) {
                        long n = sizeOut.get(JAVA_LONG, 0);
                        return cubinOut.get(ADDRESS, 0).reinterpret(n).toArray(JAVA_BYTE);   // the state owns it: copy
                    }
                }
                throw new CudaException(cu.linkAddData.name(), r, errorName(r), in.logText());
            } finally {
                check(cu.linkDestroy, (int) cu.linkDestroy.handle().invokeExact(state));
            }
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void moduleUnload(long module) {
        try {
            check(cu.moduleUnload, (int) cu.moduleUnload.handle().invokeExact(module));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public long moduleGetFunction(long module, String kernelName) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            MemorySegment name = a.allocateFrom(kernelName);
            check(cu.moduleGetFunction, (int) cu.moduleGetFunction.handle().invokeExact(out, module, name),
                    "kernel '" + kernelName + "'");
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void funcSetMaxDynamicSharedMemory(long function, int bytes) {
        try {
            check(cu.funcSetAttribute, (int) cu.funcSetAttribute.handle().invokeExact(function,
                    CudaAttributes.FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes), bytes + " bytes");
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    /**
     * Per-thread kernel argument block, reused by every launch (see {@link KernelArgs.Scratch}): the hot path
     * allocates no native memory, and the error detail is only built when the launch fails.
     */
    private static final ThreadLocal<KernelArgs.Scratch> LAUNCH_SCRATCH = ThreadLocal.withInitial(KernelArgs.Scratch::new);

    @Override
    public void launchKernel(long function, Dim3 grid, Dim3 block, int dynamicSharedBytes, long stream, KernelArgs args) {
        int r;
        try {
            MemorySegment params = args.layout(LAUNCH_SCRATCH.get());
            r = (int) cu.launchKernel.handle().invokeExact(function, grid.x(), grid.y(), grid.z(),
                    block.x(), block.y(), block.z(), dynamicSharedBytes, stream, params, MemorySegment.NULL);
        } catch (Throwable t) { throw Downcall.propagate(t); }
        if (r != CudaErrors.CUDA_SUCCESS) {
            check(cu.launchKernel, r, "grid " + grid + ", block " + block + ", shared " + dynamicSharedBytes + " B, " + args);
        }
    }

    private static final ThreadLocal<ProgrammaticLaunchConfig> PROGRAMMATIC_CONFIG =
            ThreadLocal.withInitial(ProgrammaticLaunchConfig::new);
    private volatile Boolean launchKernelExPresent;  // looked up once, on first use

    @Override
    public boolean supportsProgrammaticLaunch() {
        Boolean present = launchKernelExPresent;
        if (present == null) {
            present = cu.library.lookup().find("cuLaunchKernelEx").isPresent();
            launchKernelExPresent = present;
        }
        return present;
    }

    @Override
    public void launchKernelProgrammatic(long function, Dim3 grid, Dim3 block, int dynamicSharedBytes, long stream,
                                         KernelArgs args) {
        if (!supportsProgrammaticLaunch()) {
            launchKernel(function, grid, block, dynamicSharedBytes, stream, args);
            return;
        }
        int r;
        try {
            MemorySegment params = args.layout(LAUNCH_SCRATCH.get());
            MemorySegment config = PROGRAMMATIC_CONFIG.get().config(grid, block, dynamicSharedBytes, stream);
            r = (int) cu.launchKernelEx.handle().invokeExact(config, function, params, MemorySegment.NULL);
        } catch (Throwable t) { throw Downcall.propagate(t); }
        if (r != CudaErrors.CUDA_SUCCESS) {
            check(cu.launchKernelEx, r, "programmatic launch, grid " + grid + ", block " + block + ", shared "
                    + dynamicSharedBytes + " B, " + args);
        }
    }

    // ---- graphs ----

    @Override
    public void streamBeginCapture(long stream, CaptureMode mode) {
        try {
            check(cu.streamBeginCapture, (int) cu.streamBeginCapture.handle().invokeExact(stream, mode.value()));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public long streamEndCapture(long stream) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check(cu.streamEndCapture, (int) cu.streamEndCapture.handle().invokeExact(stream, out));
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public long graphInstantiate(long graph) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check(cu.graphInstantiate, (int) cu.graphInstantiate.handle().invokeExact(out, graph, 0L));
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void graphLaunch(long graphExec, long stream) {
        try {
            check(cu.graphLaunch, (int) cu.graphLaunch.handle().invokeExact(graphExec, stream));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void graphExecDestroy(long graphExec) {
        try {
            check(cu.graphExecDestroy, (int) cu.graphExecDestroy.handle().invokeExact(graphExec));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    @Override
    public void graphDestroy(long graph) {
        try {
            check(cu.graphDestroy, (int) cu.graphDestroy.handle().invokeExact(graph));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    // ---- errors ----

    @Override
    public String errorName(int result) {
        String s = errorText(cu.getErrorName, result);
        return s != null ? s : CudaErrors.fallbackName(result);
    }

    @Override
    public String errorString(int result) {
        String s = errorText(cu.getErrorString, result);
        return s != null ? s : errorName(result);
    }

    /** cuGetErrorName / cuGetErrorString, or null when the library is missing or does not know the code. */
    private String errorText(Downcall fn, int result) {
        if (!cu.library.isLoadable()) return null;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            int r = (int) fn.handle().invokeExact(result, out);
            MemorySegment str = out.get(ADDRESS, 0);
            if (r != CudaErrors.CUDA_SUCCESS || str.equals(MemorySegment.NULL)) return null;
            // The driver returns a static string; read up to its NUL.
            return str.reinterpret(4096).getString(0, StandardCharsets.UTF_8);
        } catch (Throwable t) {
            return null;
        }
    }
}
