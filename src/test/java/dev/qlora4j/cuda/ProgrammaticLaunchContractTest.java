package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The launcher starts every kernel of an sm90a module as a programmatic dependent of the kernel before it
 * (CudaContext.launch, PtxModules.launchesAsDependent), which is only correct for kernels that keep native/pdl.cuh's
 * contract. Checked here on the committed PTX: every entry of every kernels-ptx/*.sm90a.ptx executes
 * griddepcontrol.wait, and writes no global memory before its first wait (in text order; the waits are
 * unconditional, near the top of each kernel).
 */
class ProgrammaticLaunchContractTest {
    private static final Path PTX = Path.of("kernels-ptx");
    private static final Pattern ENTRY = Pattern.compile("\\.entry\\s+(\\w+)");
    // a store / atomic / reduction with its qualifiers: global or generic (which may address global memory), not
    // shared, local or param
    private static final Pattern MEMORY_WRITE = Pattern.compile("(?m)^\\s*(?:@!?%p\\d+\\s+)?(st|atom|red)((?:\\.\\w+)+)");

    private static List<Path> hopperModules() throws IOException {
        try (Stream<Path> s = Files.list(PTX)) {
            // the PTX of the sm90a modules (their cubins are assembled from it)
            return s.filter(p -> PtxModules.isHopperResource(p.getFileName().toString())
                    && p.getFileName().toString().endsWith(".ptx")).sorted().toList();
        }
    }

    @Test
    void everyKernelOfAnSm90aModuleWaitsBeforeItWritesGlobalMemory() throws IOException {
        List<Path> modules = hopperModules();
        assertFalse(modules.isEmpty(), "no kernels-ptx/*.sm90a.ptx: native/Makefile's SM90A list is empty?");
        int entries = 0;
        List<String> broken = new ArrayList<>();
        for (Path module : modules) {
            String ptx = Files.readString(module);
            Matcher m = ENTRY.matcher(ptx);
            List<int[]> starts = new ArrayList<>();
            List<String> names = new ArrayList<>();
            while (m.find()) {
                starts.add(new int[] {m.start()});
                names.add(m.group(1));
            }
            for (int i = 0; i < starts.size(); i++) {
                String body = ptx.substring(starts.get(i)[0], i + 1 < starts.size() ? starts.get(i + 1)[0] : ptx.length());
                int wait = body.indexOf("griddepcontrol.wait");
                int write = firstGlobalOrGenericWrite(body);
                boolean writesFirst = write >= 0 && (wait < 0 || write < wait);
                if (wait < 0 || writesFirst) {
                    broken.add(module.getFileName() + ": " + names.get(i) + (wait < 0 ? " never waits" : " writes global memory before it waits"));
                }
                entries++;
            }
        }
        assertTrue(entries > 50, "only " + entries + " kernels found in " + modules);
        assertEquals(List.of(), broken, "kernels launched as programmatic dependents must call pdl_wait() (native/pdl.cuh) first");
    }

    private static int firstGlobalOrGenericWrite(String body) {
        Matcher w = MEMORY_WRITE.matcher(body);
        while (w.find()) {
            String q = w.group(2);
            if (!q.contains(".shared") && !q.contains(".local") && !q.contains(".param")) return w.start();
        }
        return -1;
    }

    @Test
    void aGenericOrGlobalStoreCountsAsAWriteAndASharedOneDoesNot() {
        assertEquals(-1, firstGlobalOrGenericWrite("\tst.shared.f32 [%r1], %f1;\n\tld.global.f32 %f2, [%rd1];\n"));
        assertTrue(firstGlobalOrGenericWrite("\tst.shared.f32 [%r1], %f1;\n\tst.global.v4.u32 [%rd2], {%r1,%r2,%r3,%r4};\n") > 0);
        assertTrue(firstGlobalOrGenericWrite("\t@%p3 st.u16 [%rd2], %rs1;\n") >= 0);
        assertTrue(firstGlobalOrGenericWrite("\tatom.global.add.u32 %r2, [%rd3], 1;\n") >= 0);
    }

    @Test
    void onlySm90aResourcesAreLaunchedAsDependents() {
        assertTrue(PtxModules.isHopperResource("kernels-ptx/nf4_gemv.sm90a.ptx"));
        assertFalse(PtxModules.isHopperResource("kernels-ptx/nf4_gemv.ptx"));
    }
}
