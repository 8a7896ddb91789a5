package dev.qlora4j.cuda;

import static jcuda.driver.JCudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import jcuda.Pointer;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUevent;
import jcuda.driver.CUfunction;
import jcuda.driver.CUgraph;
import jcuda.driver.CUgraphExec;
import jcuda.driver.CUjit_option;
import jcuda.driver.CUlinkState;
import jcuda.driver.CUmodule;
import jcuda.driver.CUstream;
import jcuda.driver.JITOptions;

/**
 * The {@link CudaDriver} interface over JCuda 12.6 (org.jcuda:jcuda), selected with
 * {@code -Dqlora4j.cuda.binding=jcuda}. JCuda's own exceptions are switched off
 * (setExceptionsEnabled(false)); every CUresult is checked here and thrown as the same
 * {@link CudaException} the FFM binding throws. JCuda's JNI library is loaded on first use; when it
 * (or libcuda.so.1 under it) cannot load, calls fail with a CudaException that says so.
 *
 * <p>Arena ownership: like the FFM binding, kernel argument arrays live in a confined arena for one
 * call; JCuda receives their native address.
 */
public final class JCudaDriver implements CudaDriver {
    private static final JCudaDriver INSTANCE = new JCudaDriver();

    private volatile boolean loaded;
    private volatile CudaException loadFailure;
    private volatile boolean initialized;

    public static JCudaDriver instance() { return INSTANCE; }

    private JCudaDriver() {}

    @Override public String bindingName() { return "jcuda"; }

    /** Loads JCuda's JNI library once (class initialization of jcuda.driver.JCudaDriver). */
    private void ensureLoaded() {
        if (loaded) return;
        synchronized (this) {
            if (loaded) return;
            if (loadFailure != null) throw loadFailure;
            try {
                jcuda.driver.JCudaDriver.setExceptionsEnabled(false);
                loaded = true;
            } catch (LinkageError | RuntimeException e) {
                loadFailure = new CudaException("loading JCuda (libJCudaDriver, which needs libcuda.so.1)",
                        CudaException.LIBRARY_NOT_FOUND, "LIBRARY_NOT_FOUND",
                        "JCuda's native library did not load (" + briefly(e) + "); try -Dqlora4j.cuda.binding=ffm", e);
                throw loadFailure;
            }
        }
    }

    /** JCuda's load error lists nested stack traces; keep the line that names the missing library. */
    static String briefly(Throwable e) {
        String msg = String.valueOf(e.getMessage());
        for (String line : msg.split("\n")) {
            if (line.contains("cannot open shared object file")) return line.strip();
        }
        return e.getClass().getSimpleName() + ": " + msg.lines().findFirst().orElse("").strip();
    }

    private void check(String function, int result) { check(function, result, null); }

    private void check(String function, int result, String detail) {
        if (result != CudaErrors.CUDA_SUCCESS) {
            throw new CudaException(function, result, errorName(result), detail);
        }
    }

    // ---- initialization and devices ----

    @Override
    public void init() {
        if (initialized) return;
        ensureLoaded();
        check("cuInit", cuInit(0));
        initialized = true;
    }

    @Override
    public int driverVersion() {
        ensureLoaded();
        int[] v = new int[1];
        check("cuDriverGetVersion", cuDriverGetVersion(v));
        return v[0];
    }

    @Override
    public int deviceCount() {
        init();
        int[] n = new int[1];
        check("cuDeviceGetCount", cuDeviceGetCount(n));
        return n[0];
    }

    private CUdevice device(int ordinal) {
        init();
        CUdevice dev = new CUdevice();
        check("cuDeviceGet", cuDeviceGet(dev, ordinal), "device ordinal " + ordinal);
        return dev;
    }

    private int attribute(int attribute, CUdevice dev) {
        int[] v = new int[1];
        check("cuDeviceGetAttribute", cuDeviceGetAttribute(v, attribute, dev), "attribute " + attribute);
        return v[0];
    }

    @Override
    public DeviceProperties deviceProperties(int ordinal) {
        CUdevice dev = device(ordinal);
        byte[] name = new byte[256];
        check("cuDeviceGetName", cuDeviceGetName(name, name.length, dev));
        int len = 0;
        while (len < name.length && name[len] != 0) len++;
        long[] total = new long[1];
        check("cuDeviceTotalMem_v2", cuDeviceTotalMem(total, dev));
        return new DeviceProperties(ordinal, new String(name, 0, len, StandardCharsets.UTF_8),
                attribute(CudaAttributes.COMPUTE_CAPABILITY_MAJOR, dev),
                attribute(CudaAttributes.COMPUTE_CAPABILITY_MINOR, dev),
                attribute(CudaAttributes.MULTIPROCESSOR_COUNT, dev),
                total[0],
                attribute(CudaAttributes.MAX_THREADS_PER_BLOCK, dev),
                attribute(CudaAttributes.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev),
                attribute(CudaAttributes.L2_CACHE_SIZE, dev));
    }

    // ---- contexts ----

    @Override
    public long primaryContextRetain(int ordinal) {
        CUcontext ctx = new CUcontext();
        check("cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain(ctx, device(ordinal)));
        return JCudaHandles.value(ctx);
    }

    @Override
    public void primaryContextRelease(int ordinal) {
        check("cuDevicePrimaryCtxRelease_v2", cuDevicePrimaryCtxRelease(device(ordinal)));
    }

    @Override
    public void contextSetCurrent(long context) {
        ensureLoaded();
        check("cuCtxSetCurrent", cuCtxSetCurrent(JCudaHandles.context(context)));
    }

    @Override
    public long contextGetCurrent() {
        ensureLoaded();
        CUcontext ctx = new CUcontext();
        check("cuCtxGetCurrent", cuCtxGetCurrent(ctx));
        return JCudaHandles.value(ctx);
    }

    @Override
    public int contextGetDevice() {
        ensureLoaded();
        CUdevice dev = new CUdevice();
        check("cuCtxGetDevice", cuCtxGetDevice(dev));
        return (int) JCudaHandles.value(dev);
    }

    @Override
    public void contextSynchronize() {
        ensureLoaded();
        check("cuCtxSynchronize", cuCtxSynchronize());
    }

    // ---- streams and events ----

    @Override
    public long streamCreate(boolean nonBlocking, int priority) {
        ensureLoaded();
        CUstream s = new CUstream();
        check("cuStreamCreateWithPriority", cuStreamCreateWithPriority(s, nonBlocking ? CudaAttributes.STREAM_NON_BLOCKING : 0, priority));
        return JCudaHandles.value(s);
    }

    @Override
    public int[] streamPriorityRange() {
        ensureLoaded();
        int[] least = new int[1], greatest = new int[1];
        check("cuCtxGetStreamPriorityRange", cuCtxGetStreamPriorityRange(least, greatest));
        return new int[] {least[0], greatest[0]};
    }

    @Override
    public void streamDestroy(long stream) {
        ensureLoaded();
        check("cuStreamDestroy_v2", cuStreamDestroy(JCudaHandles.stream(stream)));
    }

    @Override
    public void streamSynchronize(long stream) {
        ensureLoaded();
        check("cuStreamSynchronize", cuStreamSynchronize(JCudaHandles.stream(stream)));
    }

    @Override
    public long eventCreate(boolean timing) {
        ensureLoaded();
        CUevent e = new CUevent();
        check("cuEventCreate", cuEventCreate(e, timing ? CudaAttributes.EVENT_DEFAULT : CudaAttributes.EVENT_DISABLE_TIMING));
        return JCudaHandles.value(e);
    }

    @Override
    public void eventRecord(long event, long stream) {
        ensureLoaded();
        check("cuEventRecord", cuEventRecord(JCudaHandles.event(event), JCudaHandles.stream(stream)));
    }

    @Override
    public void eventSynchronize(long event) {
        ensureLoaded();
        check("cuEventSynchronize", cuEventSynchronize(JCudaHandles.event(event)));
    }

    @Override
    public void streamWaitEvent(long stream, long event) {
        ensureLoaded();
        check("cuStreamWaitEvent", cuStreamWaitEvent(JCudaHandles.stream(stream), JCudaHandles.event(event), 0));
    }

    @Override
    public float eventElapsedMillis(long start, long end) {
        ensureLoaded();
        float[] ms = new float[1];
        check("cuEventElapsedTime", cuEventElapsedTime(ms, JCudaHandles.event(start), JCudaHandles.event(end)));
        return ms[0];
    }

    @Override
    public void eventDestroy(long event) {
        ensureLoaded();
        check("cuEventDestroy_v2", cuEventDestroy(JCudaHandles.event(event)));
    }

    // ---- memory ----

    @Override
    public long memAlloc(long bytes) {
        ensureLoaded();
        CUdeviceptr p = new CUdeviceptr();
        check("cuMemAlloc_v2", cuMemAlloc(p, bytes), "requested " + bytes + " bytes");
        return JCudaHandles.value(p);
    }

    @Override
    public void memFree(long devicePointer) {
        ensureLoaded();
        check("cuMemFree_v2", cuMemFree(JCudaHandles.devicePtr(devicePointer)));
    }

    @Override
    public MemorySegment memAllocHost(long bytes) {
        ensureLoaded();
        Pointer p = new Pointer();
        check("cuMemAllocHost_v2", cuMemAllocHost(p, bytes), "requested " + bytes + " bytes of pinned host memory");
        return MemorySegment.ofAddress(JCudaHandles.value(p)).reinterpret(bytes);
    }

    @Override
    public void memFreeHost(MemorySegment pinned) {
        ensureLoaded();
        check("cuMemFreeHost", cuMemFreeHost(JCudaHandles.hostPtr(pinned.address())));
    }

    @Override
    public MemoryInfo memGetInfo() {
        ensureLoaded();
        long[] free = new long[1];
        long[] total = new long[1];
        check("cuMemGetInfo_v2", cuMemGetInfo(free, total));
        return new MemoryInfo(free[0], total[0]);
    }

    @Override
    public void memcpyHtoD(long dstDevice, long srcHostAddress, long bytes) {
        ensureLoaded();
        check("cuMemcpyHtoD_v2", cuMemcpyHtoD(JCudaHandles.devicePtr(dstDevice), JCudaHandles.hostPtr(srcHostAddress), bytes));
    }

    @Override
    public void memcpyDtoH(long dstHostAddress, long srcDevice, long bytes) {
        ensureLoaded();
        check("cuMemcpyDtoH_v2", cuMemcpyDtoH(JCudaHandles.hostPtr(dstHostAddress), JCudaHandles.devicePtr(srcDevice), bytes));
    }

    @Override
    public void memcpyDtoD(long dstDevice, long srcDevice, long bytes) {
        ensureLoaded();
        check("cuMemcpyDtoD_v2", cuMemcpyDtoD(JCudaHandles.devicePtr(dstDevice), JCudaHandles.devicePtr(srcDevice), bytes));
    }

    @Override
    public void memcpyHtoDAsync(long dstDevice, long srcHostAddress, long bytes, long stream) {
        ensureLoaded();
        check("cuMemcpyHtoDAsync_v2", cuMemcpyHtoDAsync(JCudaHandles.devicePtr(dstDevice),
                JCudaHandles.hostPtr(srcHostAddress), bytes, JCudaHandles.stream(stream)));
    }

    @Override
    public void memcpyDtoHAsync(long dstHostAddress, long srcDevice, long bytes, long stream) {
        ensureLoaded();
        check("cuMemcpyDtoHAsync_v2", cuMemcpyDtoHAsync(JCudaHandles.hostPtr(dstHostAddress),
                JCudaHandles.devicePtr(srcDevice), bytes, JCudaHandles.stream(stream)));
    }

    @Override
    public void memcpyDtoDAsync(long dstDevice, long srcDevice, long bytes, long stream) {
        ensureLoaded();
        check("cuMemcpyDtoDAsync_v2", cuMemcpyDtoDAsync(JCudaHandles.devicePtr(dstDevice),
                JCudaHandles.devicePtr(srcDevice), bytes, JCudaHandles.stream(stream)));
    }

    /** CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED: enabling twice is not an error for us. */
    private static final int PEER_ACCESS_ALREADY_ENABLED = 704;

    @Override
    public void memcpyPeerAsync(long dstDevice, long dstContext, long srcDevice, long srcContext, long bytes, long stream) {
        ensureLoaded();
        check("cuMemcpyPeerAsync", cuMemcpyPeerAsync(JCudaHandles.devicePtr(dstDevice), JCudaHandles.context(dstContext),
                JCudaHandles.devicePtr(srcDevice), JCudaHandles.context(srcContext), bytes, JCudaHandles.stream(stream)));
    }

    @Override
    public boolean deviceCanAccessPeer(int ordinal, int peerOrdinal) {
        int[] can = new int[1];
        check("cuDeviceCanAccessPeer", cuDeviceCanAccessPeer(can, device(ordinal), device(peerOrdinal)));
        return can[0] != 0;
    }

    @Override
    public boolean contextEnablePeerAccess(long peerContext) {
        ensureLoaded();
        int r = cuCtxEnablePeerAccess(JCudaHandles.context(peerContext), 0);
        if (r == PEER_ACCESS_ALREADY_ENABLED) return false;
        check("cuCtxEnablePeerAccess", r);
        return true;
    }

    @Override
    public void memsetD8(long dstDevice, byte value, long count) {
        ensureLoaded();
        check("cuMemsetD8_v2", cuMemsetD8(JCudaHandles.devicePtr(dstDevice), value, count));
    }

    @Override
    public void memsetD32(long dstDevice, int value, long count) {
        ensureLoaded();
        check("cuMemsetD32_v2", cuMemsetD32(JCudaHandles.devicePtr(dstDevice), value, count));
    }

    @Override
    public void memsetD8Async(long dstDevice, byte value, long count, long stream) {
        ensureLoaded();
        check("cuMemsetD8Async", cuMemsetD8Async(JCudaHandles.devicePtr(dstDevice), value, count, JCudaHandles.stream(stream)));
    }

    @Override
    public void memsetD32Async(long dstDevice, int value, long count, long stream) {
        ensureLoaded();
        check("cuMemsetD32Async", cuMemsetD32Async(JCudaHandles.devicePtr(dstDevice), value, count, JCudaHandles.stream(stream)));
    }

    // ---- modules and kernels ----

    @Override
    public long moduleLoadData(byte[] image) {
        ensureLoaded();
        byte[] terminated = new byte[image.length + 1];   // PTX must be NUL-terminated
        System.arraycopy(image, 0, terminated, 0, image.length);
        JITOptions options = new JITOptions();
        options.putBytes(CUjit_option.CU_JIT_ERROR_LOG_BUFFER, new byte[CudaAttributes.JIT_LOG_BYTES]);
        options.putInt(CUjit_option.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CudaAttributes.JIT_LOG_BYTES);
        CUmodule module = new CUmodule();
        int r = cuModuleLoadDataJIT(module, Pointer.to(terminated), options);
        if (r != CudaErrors.CUDA_SUCCESS) {
            String log = options.getString(CUjit_option.CU_JIT_ERROR_LOG_BUFFER);
            log = log == null ? "" : log.strip();
            throw new CudaException("cuModuleLoadDataEx", r, errorName(r), log.isEmpty() ? "no JIT log" : "JIT log:\n" + log + "\n");
        }
        return JCudaHandles.value(module);
    }

    @Override
    public byte[] compilePtx(byte[] ptx) {
        ensureLoaded();
        byte[] terminated = new byte[ptx.length + 1];   // PTX must be NUL-terminated
        System.arraycopy(ptx, 0, terminated, 0, ptx.length);
        // No error-log option here: JCuda frees cuLinkCreate's option buffers when that call returns, and the
        // driver would write the log into freed memory later (heap corruption, seen as "free(): invalid
        // pointer"). On a failure the log comes from compiling the PTX once more through moduleLoadData.
        CUlinkState state = new CUlinkState();
        check("cuLinkCreate", cuLinkCreate(new JITOptions(), state));
        int r;
        try {
            r = cuLinkAddData(state, CudaAttributes.JIT_INPUT_PTX, Pointer.to(terminated), terminated.length, "module.ptx",
                    new JITOptions());
            if (r == CudaErrors.CUDA_SUCCESS) {
                Pointer cubin = new Pointer();
                long[] size = new long[1];
                r = cuLinkComplete(state, cubin, size);
                if (r == CudaErrors.CUDA_SUCCESS) {
                    // The link state owns the cubin (a bare native address, which JCuda's Pointer cannot view): copy it out.
                    return MemorySegment.ofAddress(JCudaHandles.value(cubin)).reinterpret(size[0])
                            .toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
                }
            }
        } finally {
            check("cuLinkDestroy", cuLinkDestroy(state));
        }
        moduleUnload(moduleLoadData(ptx));   // throws with the JIT log when the PTX itself is at fault
        throw new CudaException("cuLinkAddData", r, errorName(r), "the PTX loads on its own but does not link");
    }

    @Override
    public void moduleUnload(long module) {
        ensureLoaded();
        check("cuModuleUnload", cuModuleUnload(JCudaHandles.module(module)));
    }

    @Override
    public long moduleGetFunction(long module, String kernelName) {
        ensureLoaded();
        CUfunction f = new CUfunction();
        check("cuModuleGetFunction", cuModuleGetFunction(f, JCudaHandles.module(module), kernelName), "kernel '" + kernelName + "'");
        return JCudaHandles.value(f);
    }

    @Override
    public void funcSetMaxDynamicSharedMemory(long function, int bytes) {
        ensureLoaded();
        check("cuFuncSetAttribute", cuFuncSetAttribute(JCudaHandles.function(function),
                CudaAttributes.FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes), bytes + " bytes");
    }

    @Override
    public void launchKernel(long function, Dim3 grid, Dim3 block, int dynamicSharedBytes, long stream, KernelArgs args) {
        ensureLoaded();
        // Arena: confined, holds the argument values and the void** array for this call only.
        try (Arena a = Arena.ofConfined()) {
            MemorySegment params = args.layout(a);
            int r = cuLaunchKernel(JCudaHandles.function(function), grid.x(), grid.y(), grid.z(),
                    block.x(), block.y(), block.z(), dynamicSharedBytes, JCudaHandles.stream(stream),
                    JCudaHandles.hostPtr(params.address()), null);
            check("cuLaunchKernel", r, "grid " + grid + ", block " + block + ", shared " + dynamicSharedBytes + " B, " + args);
        }
    }

    // ---- graphs ----

    @Override
    public void streamBeginCapture(long stream, CaptureMode mode) {
        ensureLoaded();
        check("cuStreamBeginCapture_v2", cuStreamBeginCapture(JCudaHandles.stream(stream), mode.value()));
    }

    @Override
    public long streamEndCapture(long stream) {
        ensureLoaded();
        CUgraph g = new CUgraph();
        check("cuStreamEndCapture", cuStreamEndCapture(JCudaHandles.stream(stream), g));
        return JCudaHandles.value(g);
    }

    @Override
    public long graphInstantiate(long graph) {
        ensureLoaded();
        CUgraphExec exec = new CUgraphExec();
        check("cuGraphInstantiateWithFlags", cuGraphInstantiate(exec, JCudaHandles.graph(graph), 0L));
        return JCudaHandles.value(exec);
    }

    @Override
    public void graphLaunch(long graphExec, long stream) {
        ensureLoaded();
        check("cuGraphLaunch", cuGraphLaunch(JCudaHandles.graphExec(graphExec), JCudaHandles.stream(stream)));
    }

    @Override
    public void graphExecDestroy(long graphExec) {
        ensureLoaded();
        check("cuGraphExecDestroy", cuGraphExecDestroy(JCudaHandles.graphExec(graphExec)));
    }

    @Override
    public void graphDestroy(long graph) {
        ensureLoaded();
        check("cuGraphDestroy", cuGraphDestroy(JCudaHandles.graph(graph)));
    }

    // ---- errors ----

    @Override
    public String errorName(int result) {
        if (loaded) {
            String[] s = new String[1];
            if (cuGetErrorName(result, s) == CudaErrors.CUDA_SUCCESS && s[0] != null) return s[0];
        }
        return CudaErrors.fallbackName(result);
    }

    @Override
    public String errorString(int result) {
        if (loaded) {
            String[] s = new String[1];
            if (cuGetErrorString(result, s) == CudaErrors.CUDA_SUCCESS && s[0] != null) return s[0];
        }
        return errorName(result);
    }
}
