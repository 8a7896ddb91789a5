package dev.qlora4j.backend.cpu;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.backend.KvCache;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/** Bad input fails with IllegalArgumentException whose message names what is wrong. */
class CpuBackendErrorsTest {
    private static CpuBackend cpu;

    @BeforeAll
    static void start() { cpu = new CpuBackend(2); }

    @AfterAll
    static void stop() { cpu.close(); }

    private static void assertMessage(Executable call, String... parts) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
        for (String p : parts) {
            assertTrue(e.getMessage().contains(p), "message '" + e.getMessage() + "' should contain '" + p + "'");
        }
    }

    private static Tensor f32(int... shape) { return Tensor.zeros(DType.F32, shape); }

    @Test
    void linearNamesBothShapes() {
        assertMessage(() -> cpu.linear(f32(3, 17), f32(5, 16), null), "[3, 17]", "[5, 16]");
        assertMessage(() -> cpu.linear(f32(3, 16), f32(5, 16), f32(4)), "[4]", "[5, 16]");
        assertMessage(() -> cpu.linear(f32(3, 16), Tensor.zeros(DType.I32, 5, 16), null), "I32");
        assertMessage(() -> cpu.linear(f32(16), f32(5, 16), null), "[16]");
    }

    @Test
    void embeddingNamesTheIdAndVocabSize() {
        Tensor table = f32(10, 4);
        assertMessage(() -> cpu.embedding(Tensor.ofInts(new int[] {3, 10}, 2), table), "10", "vocab size 10");
        assertMessage(() -> cpu.embedding(Tensor.ofInts(new int[] {-1}, 1), table), "-1", "vocab size 10");
        assertMessage(() -> cpu.embedding(f32(2), table), "I32");
    }

    @Test
    void elementwiseOpsNameBothShapes() {
        assertMessage(() -> cpu.add(f32(2, 3), f32(3, 2)), "[2, 3]", "[3, 2]");
        assertMessage(() -> cpu.addInPlace(f32(2, 3), f32(2, 4)), "[2, 3]", "[2, 4]");
        assertMessage(() -> cpu.siluMul(f32(2, 3), f32(2)), "[2, 3]", "[2]");
        assertMessage(() -> cpu.rmsNorm(f32(2, 8), f32(7), 1e-5f), "[2, 8]", "[7]");
    }

    @Test
    void ropeChecksItsDimensions() {
        Tensor pos = Tensor.ofInts(new int[] {0, 1}, 2);
        assertMessage(() -> cpu.ropeInPlace(f32(2, 30), pos, f32(8), 2, 16, 1f), "[2, 30]", "2*16");
        assertMessage(() -> cpu.ropeInPlace(f32(2, 32), pos, f32(7), 2, 16, 1f), "[7]", "[8]");
        assertMessage(() -> cpu.ropeInPlace(f32(3, 32), pos, f32(8), 2, 16, 1f), "[2]", "[3, 32]");
        assertMessage(() -> cpu.ropeInPlace(Tensor.zeros(DType.BF16, 2, 32), pos, f32(8), 2, 16, 1f), "F32");
    }

    @Test
    void attentionChecksCacheAndShapes() {
        try (KvCache cache = cpu.newKvCache(1, 1, 2, 4, 8)) {
            Tensor pad = Tensor.ofInts(new int[] {0}, 1);
            // 5 tokens do not fit a capacity of 4.
            assertMessage(() -> cpu.attention(f32(5, 32), f32(5, 16), f32(5, 16), cache, 0, 0, pad, 4, 2, 8, 1f, 0),
                    "capacity 4");
            assertMessage(() -> cpu.attention(f32(1, 32), f32(1, 16), f32(1, 16), cache, 0, 4, pad, 4, 2, 8, 1f, 0),
                    "[4, 5)");
            assertMessage(() -> cpu.attention(f32(1, 24), f32(1, 16), f32(1, 16), cache, 0, 0, pad, 3, 2, 8, 1f, 0),
                    "multiple");
            assertMessage(() -> cpu.attention(f32(1, 32), f32(1, 16), f32(1, 16), cache, 1, 0, pad, 4, 2, 8, 1f, 0),
                    "layer 1");
            assertMessage(() -> cpu.attention(f32(1, 32), f32(1, 16), f32(1, 16), cache, 0, 0,
                    Tensor.ofInts(new int[] {0, 0}, 2), 4, 2, 8, 1f, 0), "padStart", "batch is 1");
            assertMessage(() -> cpu.attention(f32(1, 32), f32(1, 8), f32(1, 8), cache, 0, 0, pad, 4, 2, 8, 1f, 0),
                    "[1, 8]");
        }
    }

    @Test
    void crossEntropyAndGatherNameTheBadIndex() {
        assertMessage(() -> cpu.crossEntropy(f32(2, 5), Tensor.ofInts(new int[] {1, 5}, 2)), "target 5", "5");
        assertMessage(() -> cpu.crossEntropy(f32(2, 5), Tensor.ofInts(new int[] {1}, 1)), "[2, 5]", "[1]");
        assertMessage(() -> cpu.gatherRows(f32(2, 5), Tensor.ofInts(new int[] {2}, 1)), "row 2", "[2, 5]");
    }

    @Test
    void threadCountMustBePositive() {
        assertMessage(() -> new CpuBackend(0), "at least 1");
    }
}
