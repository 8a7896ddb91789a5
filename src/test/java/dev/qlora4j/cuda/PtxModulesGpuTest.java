package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

@Tag("gpu")
class PtxModulesGpuTest {

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void modulesAndFunctionsAreLoadedOncePerContext(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        PtxModules m = PtxModules.forCurrentContext(d);
        assertSame(m, PtxModules.forCurrentContext(d));
        long f = m.function("cast", "cast_f32_to_bf16");
        assertTrue(f != 0);
        assertEquals(f, m.function("cast", "cast_f32_to_bf16"));
        assertEquals(m.module("cast"), m.module("cast"));
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void unknownKernelSaysWhatToCheck(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        CudaException e = assertThrows(CudaException.class,
                () -> PtxModules.forCurrentContext(d).function("cast", "cast_f64_to_f8"));
        assertEquals(500, e.code());
        assertTrue(e.getMessage().contains("cast_f64_to_f8") && e.getMessage().contains("extern \"C\""), e.getMessage());
    }

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void brokenPtxFailsWithTheJitLog(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        String ptx = ".version 8.0\n.target sm_80\n.address_size 64\n"
                + ".visible .entry broken(.param .u64 p)\n{\n  this_is_not_an_instruction %r1;\n  ret;\n}\n";
        CudaException e = assertThrows(CudaException.class, () -> d.moduleLoadData(ptx.getBytes(StandardCharsets.US_ASCII)));
        assertTrue(e.getMessage().contains("cuModuleLoadDataEx"), e.getMessage());
        assertTrue(e.getMessage().contains("JIT log:"), "the driver's JIT error log is in the message: " + e.getMessage());
    }
}
