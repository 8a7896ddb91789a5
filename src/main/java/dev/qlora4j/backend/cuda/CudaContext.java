package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.CachingAllocator;
import dev.qlora4j.cuda.Cublas;
import dev.qlora4j.cuda.DeviceBuffer;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.cuda.DeviceProperties;
import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.cuda.PtxModules;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Everything the CUDA kernels' launchers share for one device: the driver binding, the primary
 * context, one compute stream (all work is ordered on it, so the caching allocator may reuse a
 * block as soon as its tensor is closed), the allocator, the PTX modules and a cuBLAS handle.
 * One per CudaBackend; not thread-safe (one model step at a time).
 */
public final class CudaContext implements AutoCloseable {
    private final CudaDriver driver;
    private final int ordinal;
    private final Device device;
    private final DeviceProperties properties;
    private final long context;
    private final long stream;
    private final CachingAllocator allocator;
    private final DequantCache dequantCache = new DequantCache();   // a checkpointed layer's weights, forward to backward
    private CachingAllocator current;  // where empty() allocates: the allocator, or a graph's private pool
    private final PtxModules modules;
    // programmatic dependent launch of the kernels that allow it (-Dqlora4j.cuda.pdl=false turns it off)
    private final boolean programmaticLaunch;
    // function -> dynamic shared memory bytes it is allowed (raised past the default 48 KiB)
    private final Map<Long, Integer> sharedMemoryRaisedTo = new ConcurrentHashMap<>();
    private volatile Cublas cublas; // created on first use (the kernels alone do not need libcublas); stream and math mode set once
    private SideStream side;         // created on first use (LoRA backward products)
    private long transferEvent;      // ordering event of cross-device copies (DeviceTransfer), created on first use
    private final Tensor arrivalCounters;  // I32 [ARRIVAL_COUNTERS], zero between launches (see arrivalCounters())
    /** The CUDA context each thread last made current through this class (0: none yet); see {@link #bind}. */
    private static final ThreadLocal<long[]> BOUND = ThreadLocal.withInitial(() -> new long[1]);

    public CudaContext(CudaDriver driver, int ordinal) {
        this.driver = driver;
        this.ordinal = ordinal;
        driver.init();
        int count = driver.deviceCount();
        if (ordinal < 0 || ordinal >= count) {
            throw new IllegalArgumentException("cuda:" + ordinal + " does not exist: this machine has " + count
                    + " CUDA device(s); use --device cuda:0.." + (count - 1) + " or --device cpu");
        }
        this.device = Device.cuda(ordinal);
        this.properties = driver.deviceProperties(ordinal);
        this.context = driver.usePrimaryContext(ordinal);
        BOUND.get()[0] = context;
        // A blocking stream: the synchronous host<->device copies (legacy default stream) then stay ordered
        // after kernels queued here, so a reused allocator block is never overwritten while still read.
        this.stream = driver.streamCreate(false);
        this.allocator = CachingAllocator.over(driver);
        this.current = allocator;
        this.modules = PtxModules.forCurrentContext(driver);
        this.programmaticLaunch = Boolean.parseBoolean(System.getProperty("qlora4j.cuda.pdl", "true"))
                && driver.supportsProgrammaticLaunch();
        this.arrivalCounters = empty(DType.I32, ARRIVAL_COUNTERS);
        driver.memsetD32Async(ptr(arrivalCounters), 0, ARRIVAL_COUNTERS, stream);
    }

    /** Entries of {@link #arrivalCounters()}. */
    public static final int ARRIVAL_COUNTERS = 1 << 16;

    /**
     * I32 [ARRIVAL_COUNTERS] device counters, zero between launches: a kernel whose last-arriving block finishes the
     * work (the decode attention's merge of its splits) counts its blocks here and the last one resets its entry.
     * Allocated once with the context, so launches inside a CUDA graph capture and direct ones see the same memory.
     * One user at a time: all work of the context is ordered on its one stream.
     */
    public long arrivalCounters() { return ptr(arrivalCounters); }

    public CudaDriver driver() { return driver; }

    /**
     * Makes this device's context current on the calling thread unless it already is (a thread-local compare;
     * cuCtxSetCurrent only on a switch). Allocations, launches and cuBLAS calls go to the thread's current
     * context, so with backends on several GPUs in one process each binds before its work: launch, empty,
     * upload, download, synchronize and every CudaBackend op do. Contexts are only ever made current here.
     */
    public void bind() {
        long[] bound = BOUND.get();
        if (bound[0] != context) {
            driver.contextSetCurrent(context);
            bound[0] = context;
        }
    }

    /** The CUcontext (the device's primary context; shared by every CudaContext of the same GPU). */
    public long contextHandle() { return context; }

    /**
     * An event of this context that cross-device copies record on {@link #stream()} to order another stream after
     * the work queued here (created once; re-recording is safe: a stream wait takes the latest record).
     */
    public long transferEvent() {
        if (transferEvent == 0) {
            bind();
            transferEvent = driver.eventCreate(false);
        }
        return transferEvent;
    }

    public int ordinal() { return ordinal; }

    public Device device() { return device; }

    public DeviceProperties properties() { return properties; }

    public long stream() { return stream; }

    public CachingAllocator allocator() { return allocator; }

    /**
     * Makes {@link #empty} allocate from pool (a CUDA graph's private pool, so that the blocks a captured
     * step uses are never handed to other tensors) and returns the allocator used until now; pass that
     * back to restore it. Not thread-safe, like the rest of the context.
     */
    public CachingAllocator swapAllocator(CachingAllocator pool) {
        CachingAllocator before = current;
        current = pool;
        return before;
    }

    /** Threads of the 1-D launches (block size of the grid-stride kernels). */
    public static final int BLOCK_1D = 256;

    /**
     * Blocks of a 1-D grid-stride launch over n elements: enough to cover n, capped at 32 blocks per SM
     * (more only adds scheduling work; the kernels' loops cover the rest). At least 1.
     */
    public Dim3 grid1d(long n) {
        long blocks = Math.max(1, (n + BLOCK_1D - 1) / BLOCK_1D);
        return Dim3.of((int) Math.min(blocks, 32L * properties.multiprocessorCount()));
    }

    private static final Dim3 BLOCK_1D_DIM = Dim3.of(BLOCK_1D);

    /** Launches a 1-D grid-stride kernel over n elements. */
    public void launch1d(long function, long n, KernelArgs args) {
        launch(function, grid1d(n), BLOCK_1D_DIM, 0, args);
    }

    /** {@link #launch1d(long, long, KernelArgs)} on another stream of this context (a plain launch; SideStream's work). */
    void launch1d(long function, long n, KernelArgs args, long onStream) {
        bind();
        driver.launchKernel(function, grid1d(n), BLOCK_1D_DIM, 0, onStream, args);
    }

    /**
     * Allows function bytes of dynamic shared memory when that is more than the default 48 KiB (raised to exactly
     * bytes, and again only for a larger request: the limit covers dynamic plus the kernel's static shared memory, so
     * the device's per-block maximum itself would be refused for a kernel with static shared memory); fails with the
     * device's limit in the message when bytes is more than the GPU offers.
     */
    public void allowSharedMemory(long function, int bytes) {
        if (bytes <= 48 * 1024) return;
        Integer allowed = sharedMemoryRaisedTo.get(function);
        if (allowed != null && allowed >= bytes) return;
        if (bytes > properties.maxSharedMemoryPerBlockOptin()) {
            throw new IllegalArgumentException("kernel needs " + bytes + " bytes of shared memory but "
                    + properties.name() + " allows " + properties.maxSharedMemoryPerBlockOptin() + " per block");
        }
        driver.funcSetMaxDynamicSharedMemory(function, bytes);
        sharedMemoryRaisedTo.merge(function, bytes, Math::max);
    }

    /** Whether module runs from its sm90a build on this GPU (Hopper; its wgmma kernels exist). */
    public boolean hopperBuild(String module) { return modules.isHopperBuild(module); }

    /** The kernel handle of an extern "C" kernel in kernels-ptx/&lt;module&gt;.ptx (loaded once). */
    public long function(String module, String kernel) { return modules.function(module, kernel); }

    /** The context's cuBLAS handle, bound to its stream (created, and its stream and math mode set, once). */
    public Cublas cublas() {
        Cublas c = cublas;
        return c != null ? c : createCublas();
    }

    private synchronized Cublas createCublas() {
        if (cublas == null) {
            bind();
            Cublas c = Cublas.create();
            c.setStream(stream);
            c.setMathMode(Cublas.MathMode.DEFAULT_NO_REDUCED_PRECISION_REDUCTION);
            cublas = c;
        }
        return cublas;
    }

    /** The context's second stream (created on first use; see {@link SideStream}). */
    SideStream side() {
        if (side == null) {
            bind();
            side = new SideStream(driver);
        }
        return side;
    }

    /**
     * Launches a kernel on the context's stream. Kernels of the sm90a modules (on Hopper) go out as programmatic
     * dependents ({@link CudaDriver#launchKernelProgrammatic}): each waits in the kernel for the one before it, so
     * the stream's order holds, but its launch and prologue overlap the previous kernel's tail (native/pdl.cuh).
     */
    public void launch(long function, Dim3 grid, Dim3 block, int sharedBytes, KernelArgs args) {
        bind();
        if (programmaticLaunch && modules.launchesAsDependent(function)) {
            driver.launchKernelProgrammatic(function, grid, block, sharedBytes, stream, args);
        } else {
            driver.launchKernel(function, grid, block, sharedBytes, stream, args);
        }
    }

    /** Whether {@link #launch} starts function as a programmatic dependent (Hopper, sm90a module, not turned off). */
    public boolean launchesAsDependent(long function) {
        return programmaticLaunch && modules.launchesAsDependent(function);
    }

    // ---- tensors in device memory ----

    /** An uninitialized device tensor (from the caching allocator). */
    public Tensor empty(DType dtype, int... shape) {
        bind();
        long bytes = Math.max(1, Tensor.numel(shape) * dtype.byteSize());
        return new Tensor(new CudaStorage(current.allocate(bytes), device), dtype, true, shape);
    }

    /**
     * A copy of device tensor t in page-locked host memory that this context's kernels read directly, over the bus
     * (unified addressing maps cuMemAllocHost memory into the device's address space): for a large table read a few
     * rows at a time, whose device memory is then better spent elsewhere. Closing the copy frees the host memory.
     * Waits for the stream (the copy is synchronous).
     */
    public Tensor hostMappedCopy(Tensor t) {
        bind();
        long bytes = Math.max(1, t.byteSize());
        java.lang.foreign.MemorySegment host;
        try {
            host = driver.memAllocHost(bytes);
        } catch (RuntimeException e) {
            throw new IllegalStateException("could not pin " + bytes + " bytes of host memory for " + t
                    + ": the host is out of page-locked memory; keep the table in GPU memory", e);
        }
        try {
            synchronize();
            if (t.byteSize() > 0) driver.copyToHost(host.asSlice(0, t.byteSize()), ptr(t));
        } catch (RuntimeException e) {
            driver.memFreeHost(host);
            throw e;
        }
        DeviceBuffer view = allocator.view(host.address(), bytes);
        return new Tensor(new CudaStorage(view, device, () -> driver.memFreeHost(host)), t.dtype(), true, t.shape());
    }

    /** The device address of a tensor of this context (0 for null: an optional kernel argument). */
    public static long ptrOrNull(Tensor t) { return t == null ? 0 : ptr(t); }

    /** The device address of a tensor of this context. */
    public static long ptr(Tensor t) {
        if (!(t.storage() instanceof CudaStorage cs)) {
            throw new IllegalArgumentException(t + " is not in GPU memory: upload it with the CUDA backend first");
        }
        return cs.pointer();
    }

    /** Copies a host tensor to a new device tensor of the same dtype and shape. */
    public Tensor upload(Tensor host) {
        Tensor t = empty(host.dtype(), host.shape());
        if (host.byteSize() > 0) driver.copyToDevice(ptr(t), host.segment().asSlice(0, host.byteSize()));
        return t;
    }

    /** Copies a device tensor to a new host tensor (waits for the stream first). */
    public Tensor download(Tensor dev) {
        bind();
        driver.streamSynchronize(stream);
        Tensor h = Tensor.zeros(dev.dtype(), dev.shape());
        if (dev.byteSize() > 0) driver.copyToHost(h.segment().asSlice(0, dev.byteSize()), ptr(dev));
        return h;
    }

    public void synchronize() {
        bind();
        driver.streamSynchronize(stream);
    }

    /** The dequantized weights kept from a layer's recompute for its backward (see DequantCache). */
    DequantCache dequantCache() { return dequantCache; }

    @Override
    public void close() {
        synchronize();
        dequantCache.close();
        if (transferEvent != 0) driver.eventDestroy(transferEvent);
        if (cublas != null) cublas.close();
        if (side != null) side.close();
        arrivalCounters.close();
        allocator.close();
        driver.streamDestroy(stream);
    }
}
