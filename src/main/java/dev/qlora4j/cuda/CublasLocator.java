package dev.qlora4j.cuda;

import java.io.IOException;
import java.lang.foreign.SymbolLookup;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * Finds and opens cuBLAS (libcublas.so.13, else .so.12) and cublasLt beside it.
 *
 * <p>Search order: the dynamic loader's own search by soname (LD_LIBRARY_PATH, ld.so.cache), then the
 * directories of java.library.path, $CUDA_HOME/lib64, /usr/local/cuda/lib64,
 * /usr/local/cuda/targets/x86_64-linux/lib, and every directory under ~/.javacpp/cache holding a
 * libcublas.so.N (where the bytedeco cuda redist jars of the cuda-libs profile extract to).
 * cublasLt is opened first from the same place: libcublas needs it, and the loader finds an
 * already loaded library by its soname even when its directory is not on any search path.
 */
final class CublasLocator {
    private CublasLocator() {}

    static final List<Integer> VERSIONS = List.of(13, 12);
    private static final Pattern CUBLAS_FILE = Pattern.compile("libcublas\\.so\\.\\d+");

    /** The opened pair; lt is opened first and kept so that it stays loaded. */
    record Opened(SymbolLookup cublas, SymbolLookup cublasLt, String where) {}

    static Opened open() {
        return open(searchDirectories(System.getenv(), System.getProperty("java.library.path", ""),
                Path.of(System.getProperty("user.home", "/"))));
    }

    static Opened open(List<Path> directories) {
        List<String> tried = new ArrayList<>();
        List<String> errors = new ArrayList<>();
        for (int v : VERSIONS) {
            String lt = "libcublasLt.so." + v;
            String blas = "libcublas.so." + v;
            tried.add(blas + " (loader search)");
            Optional<Opened> o = openPair(lt, blas, "loader search", errors);
            if (o.isPresent()) return o.get();
            for (Path dir : directories) {
                Path p = dir.resolve(blas);
                tried.add(p.toString());
                if (!Files.isRegularFile(p)) continue;
                o = openPair(dir.resolve(lt).toString(), p.toString(), dir.toString(), errors);
                if (o.isPresent()) return o.get();
            }
        }
        throw NativeLibrary.notFound("cuBLAS", "CUBLAS_LIBRARY_NOT_FOUND", tried, errors, null);
    }

    private static Optional<Opened> openPair(String lt, String blas, String where, List<String> errors) {
        List<String> ltErrors = new ArrayList<>();
        Optional<SymbolLookup> ltLookup = NativeLibrary.tryOpen(lt, ltErrors);
        if (ltLookup.isEmpty()) {
            if (blas.startsWith("/")) errors.addAll(ltErrors);   // a soname miss is expected; a file that fails is news
            return Optional.empty();
        }
        Optional<SymbolLookup> b = NativeLibrary.tryOpen(blas, errors);
        return b.map(l -> new Opened(l, ltLookup.get(), where + " (" + blas + ")"));
    }

    /** Directories to look in after the loader's search, in order, without duplicates. */
    static List<Path> searchDirectories(Map<String, String> env, String javaLibraryPath, Path home) {
        Set<Path> dirs = new LinkedHashSet<>();
        for (String p : javaLibraryPath.split(java.io.File.pathSeparator)) {
            if (!p.isBlank()) dirs.add(Path.of(p));
        }
        String cudaHome = env.get("CUDA_HOME");
        if (cudaHome != null && !cudaHome.isBlank()) dirs.add(Path.of(cudaHome, "lib64"));
        String cudaPath = env.get("CUDA_PATH");
        if (cudaPath != null && !cudaPath.isBlank()) dirs.add(Path.of(cudaPath, "lib64"));
        dirs.add(Path.of("/usr/local/cuda/lib64"));
        dirs.add(Path.of("/usr/local/cuda/targets/x86_64-linux/lib"));
        dirs.addAll(javacppCacheDirectories(home.resolve(".javacpp").resolve("cache")));
        return List.copyOf(dirs);
    }

    /** Directories under the JavaCPP cache that hold a libcublas.so.N (sorted, for a stable order). */
    static List<Path> javacppCacheDirectories(Path cache) {
        if (!Files.isDirectory(cache)) return List.of();
        try (Stream<Path> s = Files.find(cache, 12,
                (p, a) -> CUBLAS_FILE.matcher(p.getFileName().toString()).matches())) {
            return s.map(Path::getParent).distinct().sorted().toList();
        } catch (IOException | RuntimeException e) {
            return List.of();
        }
    }
}
