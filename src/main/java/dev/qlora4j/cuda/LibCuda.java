package dev.qlora4j.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.util.List;

/**
 * The CUDA driver functions qlora4j uses, as lazily linked downcalls into libcuda.so.1.
 * Symbol names are the ones cuda.h maps the API names to (the _v2 variants where they exist).
 * Every function returns CUresult (int). Opaque handles (CUcontext, CUstream, CUevent, CUmodule,
 * CUfunction, CUgraph, CUgraphExec) and CUdeviceptr are passed as JAVA_LONG: on the 64-bit
 * platforms we support, a pointer and a 64-bit integer travel in the same register.
 */
final class LibCuda {
    final NativeLibrary library;

    LibCuda(String soname) {
        this.library = new NativeLibrary(soname, List.of(soname),
                "the NVIDIA driver (which provides " + soname + ") is not installed or not on the library path");
    }

    private Downcall fn(MemoryLayout[] args, String... names) {
        return new Downcall(() -> library, FunctionDescriptor.of(JAVA_INT, args), names);
    }

    private static MemoryLayout[] a(MemoryLayout... l) { return l; }

    // CUresult cuInit(unsigned flags)
    final Downcall init = fn(a(JAVA_INT), "cuInit");
    // cuDriverGetVersion(int* version)
    final Downcall driverGetVersion = fn(a(ADDRESS), "cuDriverGetVersion");
    // cuGetErrorName(CUresult, const char** name) / cuGetErrorString
    final Downcall getErrorName = fn(a(JAVA_INT, ADDRESS), "cuGetErrorName");
    final Downcall getErrorString = fn(a(JAVA_INT, ADDRESS), "cuGetErrorString");

    // devices: cuDeviceGetCount(int*), cuDeviceGet(CUdevice*, int ordinal), cuDeviceGetName(char*, int, CUdevice),
    // cuDeviceTotalMem_v2(size_t*, CUdevice), cuDeviceGetAttribute(int*, CUdevice_attribute, CUdevice)
    final Downcall deviceGetCount = fn(a(ADDRESS), "cuDeviceGetCount");
    final Downcall deviceGet = fn(a(ADDRESS, JAVA_INT), "cuDeviceGet");
    final Downcall deviceGetName = fn(a(ADDRESS, JAVA_INT, JAVA_INT), "cuDeviceGetName");
    final Downcall deviceTotalMem = fn(a(ADDRESS, JAVA_INT), "cuDeviceTotalMem_v2");
    final Downcall deviceGetAttribute = fn(a(ADDRESS, JAVA_INT, JAVA_INT), "cuDeviceGetAttribute");

    // contexts: cuDevicePrimaryCtxRetain(CUcontext*, CUdevice), cuDevicePrimaryCtxRelease_v2(CUdevice),
    // cuCtxSetCurrent(CUcontext), cuCtxGetCurrent(CUcontext*), cuCtxGetDevice(CUdevice*), cuCtxSynchronize()
    final Downcall primaryCtxRetain = fn(a(ADDRESS, JAVA_INT), "cuDevicePrimaryCtxRetain");
    final Downcall primaryCtxRelease = fn(a(JAVA_INT), "cuDevicePrimaryCtxRelease_v2");
    final Downcall ctxSetCurrent = fn(a(JAVA_LONG), "cuCtxSetCurrent");
    final Downcall ctxGetCurrent = fn(a(ADDRESS), "cuCtxGetCurrent");
    final Downcall ctxGetDevice = fn(a(ADDRESS), "cuCtxGetDevice");
    final Downcall ctxSynchronize = fn(a(), "cuCtxSynchronize");

    // streams: cuStreamDestroy_v2(CUstream), cuStreamSynchronize(CUstream)
    // cuStreamCreateWithPriority(CUstream*, unsigned flags, int priority), cuCtxGetStreamPriorityRange(int*, int*)
    final Downcall streamCreateWithPriority = fn(a(ADDRESS, JAVA_INT, JAVA_INT), "cuStreamCreateWithPriority");
    final Downcall ctxGetStreamPriorityRange = fn(a(ADDRESS, ADDRESS), "cuCtxGetStreamPriorityRange");
    final Downcall streamDestroy = fn(a(JAVA_LONG), "cuStreamDestroy_v2");
    final Downcall streamSynchronize = fn(a(JAVA_LONG), "cuStreamSynchronize");

    // events: cuEventCreate(CUevent*, unsigned), cuEventRecord(CUevent, CUstream), cuEventSynchronize(CUevent),
    // cuEventElapsedTime_v2(float*, CUevent, CUevent) (CUDA >= 12.8; older drivers have only the v1 symbol),
    // cuEventDestroy_v2(CUevent)
    final Downcall eventCreate = fn(a(ADDRESS, JAVA_INT), "cuEventCreate");
    final Downcall eventRecord = fn(a(JAVA_LONG, JAVA_LONG), "cuEventRecord");
    final Downcall eventSynchronize = fn(a(JAVA_LONG), "cuEventSynchronize");
    final Downcall eventElapsedTime = fn(a(ADDRESS, JAVA_LONG, JAVA_LONG), "cuEventElapsedTime_v2", "cuEventElapsedTime");
    final Downcall eventDestroy = fn(a(JAVA_LONG), "cuEventDestroy_v2");
    // cuStreamWaitEvent(CUstream, CUevent, unsigned flags)
    final Downcall streamWaitEvent = fn(a(JAVA_LONG, JAVA_LONG, JAVA_INT), "cuStreamWaitEvent");

    // memory
    final Downcall memAlloc = fn(a(ADDRESS, JAVA_LONG), "cuMemAlloc_v2");          // (CUdeviceptr*, size_t)
    final Downcall memFree = fn(a(JAVA_LONG), "cuMemFree_v2");                      // (CUdeviceptr)
    final Downcall memAllocHost = fn(a(ADDRESS, JAVA_LONG), "cuMemAllocHost_v2");  // (void**, size_t)
    final Downcall memFreeHost = fn(a(JAVA_LONG), "cuMemFreeHost");                 // (void*)
    final Downcall memGetInfo = fn(a(ADDRESS, ADDRESS), "cuMemGetInfo_v2");        // (size_t* free, size_t* total)
    // (dst, src, bytes) and (dst, src, bytes, stream); host pointers as JAVA_LONG addresses
    final Downcall memcpyHtoD = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyHtoD_v2");
    final Downcall memcpyDtoH = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyDtoH_v2");
    final Downcall memcpyDtoD = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyDtoD_v2");
    final Downcall memcpyHtoDAsync = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyHtoDAsync_v2");
    final Downcall memcpyDtoHAsync = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyDtoHAsync_v2");
    final Downcall memcpyDtoDAsync = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyDtoDAsync_v2");
    // cuMemcpyPeerAsync(CUdeviceptr dst, CUcontext dstCtx, CUdeviceptr src, CUcontext srcCtx, size_t, CUstream)
    final Downcall memcpyPeerAsync = fn(a(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyPeerAsync");
    // cuDeviceCanAccessPeer(int* canAccess, CUdevice dev, CUdevice peer), cuCtxEnablePeerAccess(CUcontext peer, unsigned flags)
    final Downcall deviceCanAccessPeer = fn(a(ADDRESS, JAVA_INT, JAVA_INT), "cuDeviceCanAccessPeer");
    final Downcall ctxEnablePeerAccess = fn(a(JAVA_LONG, JAVA_INT), "cuCtxEnablePeerAccess");
    // cuMemsetD8_v2(CUdeviceptr, unsigned char, size_t n) / cuMemsetD32_v2(CUdeviceptr, unsigned, size_t n) (+ stream)
    final Downcall memsetD8 = fn(a(JAVA_LONG, JAVA_BYTE, JAVA_LONG), "cuMemsetD8_v2");
    final Downcall memsetD32 = fn(a(JAVA_LONG, JAVA_INT, JAVA_LONG), "cuMemsetD32_v2");
    final Downcall memsetD8Async = fn(a(JAVA_LONG, JAVA_BYTE, JAVA_LONG, JAVA_LONG), "cuMemsetD8Async");
    final Downcall memsetD32Async = fn(a(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_LONG), "cuMemsetD32Async");

    // modules: cuModuleLoadDataEx(CUmodule*, const void* image, unsigned n, CUjit_option*, void** values),
    // cuModuleUnload(CUmodule), cuModuleGetFunction(CUfunction*, CUmodule, const char*)
    final Downcall moduleLoadDataEx = fn(a(ADDRESS, ADDRESS, JAVA_INT, ADDRESS, ADDRESS), "cuModuleLoadDataEx");
    // cuLinkCreate(numOptions, options, optionValues, CUlinkState*); cuLinkAddData(state, type, data, size, name,
    // numOptions, options, optionValues); cuLinkComplete(state, void** cubin, size_t*); cuLinkDestroy(state)
    final Downcall linkCreate = fn(a(JAVA_INT, ADDRESS, ADDRESS, ADDRESS), "cuLinkCreate_v2", "cuLinkCreate");
    final Downcall linkAddData = fn(a(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, JAVA_INT, ADDRESS, ADDRESS),
            "cuLinkAddData_v2", "cuLinkAddData");
    final Downcall linkComplete = fn(a(JAVA_LONG, ADDRESS, ADDRESS), "cuLinkComplete");
    final Downcall linkDestroy = fn(a(JAVA_LONG), "cuLinkDestroy");
    final Downcall moduleUnload = fn(a(JAVA_LONG), "cuModuleUnload");
    final Downcall moduleGetFunction = fn(a(ADDRESS, JAVA_LONG, ADDRESS), "cuModuleGetFunction");
    // cuFuncSetAttribute(CUfunction, CUfunction_attribute, int)
    final Downcall funcSetAttribute = fn(a(JAVA_LONG, JAVA_INT, JAVA_INT), "cuFuncSetAttribute");
    // cuLaunchKernel(CUfunction, gx, gy, gz, bx, by, bz, unsigned sharedBytes, CUstream, void** params, void** extra)
    final Downcall launchKernel = fn(a(JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT,
            JAVA_INT, JAVA_LONG, ADDRESS, ADDRESS), "cuLaunchKernel");
    // cuLaunchKernelEx(const CUlaunchConfig*, CUfunction, void** params, void** extra) (CUDA 12+; see ProgrammaticLaunchConfig)
    final Downcall launchKernelEx = fn(a(ADDRESS, JAVA_LONG, ADDRESS, ADDRESS), "cuLaunchKernelEx");

    // graphs: cuStreamBeginCapture_v2(CUstream, CUstreamCaptureMode), cuStreamEndCapture(CUstream, CUgraph*),
    // cuGraphInstantiateWithFlags(CUgraphExec*, CUgraph, unsigned long long), cuGraphLaunch(CUgraphExec, CUstream),
    // cuGraphExecDestroy(CUgraphExec), cuGraphDestroy(CUgraph)
    final Downcall streamBeginCapture = fn(a(JAVA_LONG, JAVA_INT), "cuStreamBeginCapture_v2");
    final Downcall streamEndCapture = fn(a(JAVA_LONG, ADDRESS), "cuStreamEndCapture");
    final Downcall graphInstantiate = fn(a(ADDRESS, JAVA_LONG, JAVA_LONG), "cuGraphInstantiateWithFlags");
    final Downcall graphLaunch = fn(a(JAVA_LONG, JAVA_LONG), "cuGraphLaunch");
    final Downcall graphExecDestroy = fn(a(JAVA_LONG), "cuGraphExecDestroy");
    final Downcall graphDestroy = fn(a(JAVA_LONG), "cuGraphDestroy");
}
