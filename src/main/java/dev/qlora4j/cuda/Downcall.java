package dev.qlora4j.cuda;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.invoke.MethodHandle;
import java.util.function.Supplier;

/**
 * One native function, linked on its first call (so a missing library or symbol fails only the
 * code that needs it, with a clear message). Call sites use {@code (int) d.handle().invokeExact(...)}
 * with argument types exactly matching the descriptor (long for handles and sizes, int for enums
 * and flags, MemorySegment for out-parameters and host buffers).
 */
final class Downcall {
    private static final Linker LINKER = Linker.nativeLinker();

    private final Supplier<NativeLibrary> library;
    private final FunctionDescriptor descriptor;
    private final String[] names;
    private volatile MethodHandle handle;
    private volatile String resolvedName;

    /**
     * @param library supplies the library (read on first call, so owners may pass a field not yet assigned)
     * @param names the symbol, then older fallbacks (e.g. "cuEventElapsedTime_v2", "cuEventElapsedTime") */
    Downcall(Supplier<NativeLibrary> library, FunctionDescriptor descriptor, String... names) {
        this.library = library;
        this.descriptor = descriptor;
        this.names = names;
    }

    MethodHandle handle() {
        MethodHandle h = handle;
        if (h != null) return h;
        synchronized (this) {
            if (handle == null) {
                NativeLibrary lib = library.get();
                var symbol = lib.symbol(names);
                for (String n : names) {
                    if (lib.lookup().find(n).filter(symbol::equals).isPresent()) {
                        resolvedName = n;
                        break;
                    }
                }
                handle = LINKER.downcallHandle(symbol, descriptor);
            }
            return handle;
        }
    }

    /** The symbol name as linked (or the preferred one before linking), for error messages. */
    String name() {
        String r = resolvedName;
        return r != null ? r : names[0];
    }

    /** Rethrows what invokeExact threw: runtime exceptions and errors as they are, anything else wrapped. */
    static RuntimeException propagate(Throwable t) {
        if (t instanceof RuntimeException r) return r;
        if (t instanceof Error e) throw e;
        return new IllegalStateException("native call failed", t);
    }
}
