package dev.qlora4j.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.function.Supplier;

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
    private final Supplier<SymbolLookup> opener;
    private volatile SymbolLookup lookup;
    private volatile CudaException failure;

    /**
     * @param description what it is, for messages ("libcuda.so.1", "cuBLAS")
     * @param opener      opens it, or throws CudaException(LIBRARY_NOT_FOUND) saying where it looked
     */
    NativeLibrary(String description, Supplier<SymbolLookup> opener) {
        this.description = description;
        this.opener = opener;
    }

    /** A library found by the first of candidates that opens (see {@link #openFirst}). */
    NativeLibrary(String description, List<String> candidates, String hintDetail) {
        this(description, () -> openFirst(description, candidates, hintDetail));
    }

    String description() { return description; }

    /** The opened library; throws CudaException(LIBRARY_NOT_FOUND) saying where it looked. */
    SymbolLookup lookup() {
        SymbolLookup l = lookup;
        if (l != null) return l;
        synchronized (this) {
            if (lookup != null) return lookup;
            if (failure != null) throw failure;
            try {
                lookup = opener.get();
                return lookup;
            } catch (CudaException e) {
                failure = e;
                throw e;
            }
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

    /**
     * Opens the first candidate that loads, in the global arena.
     *
     * @param candidates sonames (searched by the dynamic loader: LD_LIBRARY_PATH, ld.so.cache) or
     *                   absolute paths (skipped when the file does not exist), tried in order
     * @param hintDetail said after the list of places searched when none opened (may be null)
     */
    static SymbolLookup openFirst(String description, List<String> candidates, String hintDetail) {
        List<String> errors = new ArrayList<>();
        for (String c : candidates) {
            Optional<SymbolLookup> l = tryOpen(c, errors);
            if (l.isPresent()) return l.get();
        }
        throw notFound(description, "LIBRARY_NOT_FOUND", candidates, errors, hintDetail);
    }

    /** Opens one soname or absolute path; on failure records why in errors and returns empty. */
    static Optional<SymbolLookup> tryOpen(String nameOrPath, List<String> errors) {
        try {
            if (nameOrPath.startsWith("/")) {
                if (!Files.isRegularFile(Path.of(nameOrPath))) return Optional.empty();
                return Optional.of(SymbolLookup.libraryLookup(Path.of(nameOrPath), Arena.global()));
            }
            return Optional.of(SymbolLookup.libraryLookup(nameOrPath, Arena.global()));
        } catch (IllegalArgumentException | IllegalCallerException e) {
            errors.add(nameOrPath + ": " + e.getMessage());
            return Optional.empty();
        }
    }

    /** @param errorName "LIBRARY_NOT_FOUND" (hint: no GPU) or a library-specific name with its own hint */
    static CudaException notFound(String description, String errorName, List<String> tried, List<String> errors,
                                  String hintDetail) {
        return new CudaException("loading " + description, CudaException.LIBRARY_NOT_FOUND, errorName,
                "could not open " + description + "; looked for " + String.join(", ", tried)
                + (errors.isEmpty() ? "" : "; errors: " + String.join("; ", errors))
                + (hintDetail == null ? "" : "; " + hintDetail));
    }
}
