package dev.qlora4j.cuda;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import jcuda.NativePointerObject;
import jcuda.Pointer;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUevent;
import jcuda.driver.CUfunction;
import jcuda.driver.CUgraph;
import jcuda.driver.CUgraphExec;
import jcuda.driver.CUmodule;
import jcuda.driver.CUstream;

/**
 * Converts between JCuda's handle objects and the raw {@code long} values of the {@link CudaDriver}
 * interface. JCuda keeps every native value in {@code NativePointerObject.nativePointer} (private,
 * read and written by its JNI code); we read and write that same field through a VarHandle, so a
 * handle made by either binding is usable by the other. Loading these classes loads no native code.
 */
final class JCudaHandles {
    private JCudaHandles() {}

    private static final VarHandle NATIVE_POINTER;

    static {
        try {
            NATIVE_POINTER = MethodHandles.privateLookupIn(NativePointerObject.class, MethodHandles.lookup())
                    .findVarHandle(NativePointerObject.class, "nativePointer", long.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError("this JCuda version has no NativePointerObject.nativePointer: " + e);
        }
    }

    /** The native value of a handle or of a Pointer without byte offset (0 for null). */
    static long value(NativePointerObject o) {
        return o == null ? 0L : (long) NATIVE_POINTER.get(o);
    }

    private static <T extends NativePointerObject> T with(T o, long value) {
        NATIVE_POINTER.set(o, value);
        return o;
    }

    static CUdeviceptr devicePtr(long address) { return with(new CUdeviceptr(), address); }

    /** A host pointer to native memory at address (JCuda sees it as native-memory backed). */
    static Pointer hostPtr(long address) { return with(new Pointer(), address); }

    static CUstream stream(long s) { return with(new CUstream(), s); }

    static CUevent event(long e) { return with(new CUevent(), e); }

    static CUcontext context(long c) { return with(new CUcontext(), c); }

    static CUmodule module(long m) { return with(new CUmodule(), m); }

    static CUfunction function(long f) { return with(new CUfunction(), f); }

    static CUgraph graph(long g) { return with(new CUgraph(), g); }

    static CUgraphExec graphExec(long g) { return with(new CUgraphExec(), g); }

    static CUdevice device(int ordinalHandle) { return with(new CUdevice(), ordinalHandle); }
}
