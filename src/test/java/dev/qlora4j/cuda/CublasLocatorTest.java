package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CublasLocatorTest {

    @Test
    void searchOrderIsLibraryPathThenCudaHomeThenStandardPlacesThenJavacppCache(@TempDir Path home) throws Exception {
        Path redist = home.resolve(".javacpp/cache/cuda-12.9-redist.jar/org/bytedeco/cuda/linux-x86_64");
        Files.createDirectories(redist);
        Files.writeString(redist.resolve("libcublas.so.12"), "not really a library");
        List<Path> dirs = CublasLocator.searchDirectories(Map.of("CUDA_HOME", "/opt/cuda-x"), "/a/lib:/b/lib", home);
        assertEquals(List.of(Path.of("/a/lib"), Path.of("/b/lib"), Path.of("/opt/cuda-x/lib64"),
                Path.of("/usr/local/cuda/lib64"), Path.of("/usr/local/cuda/targets/x86_64-linux/lib"), redist), dirs);
    }

    @Test
    void missingCublasListsEveryPlaceItLooked(@TempDir Path dir) throws Exception {
        assumeFalse(Cublas.isLibraryAvailable(), "cuBLAS is installed here; this checks the not-found message");
        Files.writeString(dir.resolve("libcublas.so.12"), "not an ELF file");
        CudaException e = assertThrows(CudaException.class, () -> CublasLocator.open(List.of(dir)));
        String msg = e.getMessage();
        assertEquals("CUBLAS_LIBRARY_NOT_FOUND", e.errorName());
        assertTrue(msg.contains("libcublas.so.13 (loader search)") && msg.contains("libcublas.so.12 (loader search)"), msg);
        assertTrue(msg.contains(dir.resolve("libcublas.so.13").toString()), msg);
        assertTrue(msg.contains(dir.resolve("libcublas.so.12").toString()), msg);
        assertTrue(msg.contains("mvn -Pcuda-libs") && msg.contains("--device cpu"), msg);
    }
}
