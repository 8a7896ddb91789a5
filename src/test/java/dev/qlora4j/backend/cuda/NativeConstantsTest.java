package dev.qlora4j.backend.cuda;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The constants a launcher and its kernel must agree on, written once on each side (a Java constant beside the
 * #define, constexpr or static_assert'ed struct size in native/): read from the CUDA sources and compared, so a change
 * on one side without the other fails here rather than as wrong results on a GPU.
 */
class NativeConstantsTest {
    private static String source(String file) throws IOException {
        Path p = Path.of("native", file);
        assertTrue(Files.isRegularFile(p), "run from the repository root: " + p.toAbsolutePath() + " is missing");
        return Files.readString(p);
    }

    /** The integer of the first match of regex (one group) in native/file. */
    private static int value(String file, String regex) throws IOException {
        Matcher m = Pattern.compile(regex).matcher(source(file));
        assertTrue(m.find(), () -> "native/" + file + " has no match for " + regex);
        return Integer.parseInt(m.group(1));
    }

    private static int define(String file, String name) throws IOException {
        return value(file, "(?m)^#define " + name + " (\\d+)\\b");
    }

    private static int constexpr(String file, String name) throws IOException {
        return value(file, "constexpr int " + name + " = (\\d+);");
    }

    private static int structSize(String file, String struct) throws IOException {
        return value(file, "static_assert\\(sizeof\\(" + struct + "\\) == (\\d+)");
    }

    @Test
    void launchersAgreeWithTheirKernels() throws IOException {
        assertEquals(define("nf4.cu", "DQ_THREADS"), Quant4bitKernels.DQ_THREADS, "dequantize block size");
        assertEquals(define("nf4.cu", "DQ_PIECES"), Quant4bitKernels.DQ_PIECES, "dequantize pieces per lane");
        assertEquals(define("adamw.cu", "ADAMW_CHUNK"), CudaAdamW.CHUNK, "AdamW elements per block");
        assertEquals(structSize("adamw.cu", "AdamWEntry"), CudaAdamW.ENTRY_BYTES, "AdamW table entry");
        assertEquals(define("grad_clip.cu", "CLIP_CHUNK"), CudaGradClip.CHUNK, "clip elements per block");
        assertEquals(structSize("grad_clip.cu", "ClipEntry"), CudaGradClip.ENTRY_BYTES, "clip table entry");
        assertEquals(constexpr("attention_tc.cu", "BM"), TrainAttentionKernels.TC_TILE, "training attention query tile");
        assertEquals(constexpr("attention_tc.cu", "BN"), TrainAttentionKernels.TC_TILE, "training attention key tile");
    }
}
