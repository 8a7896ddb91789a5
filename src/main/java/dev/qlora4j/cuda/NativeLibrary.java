package dev.qlora4j.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

/**
 * A shared library opened on first use, never before: constructing one touches nothing native, so
 * classes that hold one load on machines without a GPU.
 *
 * <p>Arena ownership: libraries are opened in {@link Arena#global()} (never unloaded), because the
 * method handles linked to their symbols live as long as the JVM. A failed open is remembered and
 * rethrown as the same {@link CudaException} (LIBRARY_NOT_FOUND) on every later use.
 */
final class NativeLibrary {
    private final String description;
    private final List<String> candidates;
    private final String hintDetail;
    private volatile SymbolLookup lookup;
    private volatile CudaException failure;

    /**
     * @param description what it is, for messages ("libcuda.so.1", "cuBLAS")
     * @param candidates  sonames (searched by the dynamic loader: LD_LIBRARY_PATH, ld.so.cache) or
     *                    absolute paths, tried in order; the first that opens wins
     * @param hintDetail  said after the list of places searched when none opened
     */
    NativeLibrary(String description, List<String> candidates, String hintDetail) {
        this.description = description;
        this.candidates = List.copyOf(candidates);
        this.hintDetail = hintDetail;
    }

    String description() { return description; }

    /** The opened library; throws CudaException(LIBRARY_NOT_FOUND) listing every candidate tried. */
    SymbolLookup lookup() {
        SymbolLookup l = lookup;
        if (l != null) return l;
        synchronized (this) {
            if (lookup != null) return lookup;
            if (failure != null) throw failure;
            List<String> errors = new ArrayList<>();
            for (String c : candidates) {
                try {
                    // Absolute paths must exist; bare sonames go to dlopen's own search.
                    if (c.startsWith("/") && !Files.isRegularFile(Path.of(c))) continue;
                    lookup = c.startsWith("/") ? SymbolLookup.libraryLookup(Path.of(c), Arena.global())
                            : SymbolLookup.libraryLookup(c, Arena.global());
                    return lookup;
                } catch (IllegalArgumentException | IllegalCallerException e) {
                    errors.add(c + " (" + e.getMessage() + ")");
                }
            }
            failure = new CudaException("loading " + description, CudaException.LIBRARY_NOT_FOUND,
                    "LIBRARY_NOT_FOUND", "could not open " + description + "; tried " + String.join(", ", candidates)
                    + (errors.isEmpty() ? "" : "; errors: " + String.join("; ", errors))
                    + (hintDetail == null ? "" : "; " + hintDetail));
            throw failure;
        }
    }

    /** Whether the library opens (never throws). */
    boolean isLoadable() {
        try {
            lookup();
            return true;
        } catch (CudaException e) {
            return false;
        }
    }

    /** The address of the first of names the library exports. */
    MemorySegment symbol(String... names) {
        SymbolLookup l = lookup();
        for (String n : names) {
            Optional<MemorySegment> s = l.find(n);
            if (s.isPresent()) return s.get();
        }
        throw new CudaException(String.join("|", names), CudaException.SYMBOL_NOT_FOUND, "SYMBOL_NOT_FOUND",
                description + " does not export " + String.join(" or ", names)
                + ": the library is older than this code needs (update the NVIDIA driver / CUDA libraries)");
    }
}
