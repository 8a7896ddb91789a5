package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The committed PTX matches the committed sources (by the MANIFEST's checksums; tools/check-ptx.sh
 * checks the PTX itself where nvcc is installed), and is packaged as classpath resources.
 */
class PtxManifestTest {
    private static final Path ROOT = Path.of("").toAbsolutePath();

    private static String sha256(byte[] bytes) throws NoSuchAlgorithmException {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
    }

    /** path -> sha256 for the MANIFEST's lines of one kind ("source", "ptx" or "cubin"). */
    private static Map<String, String> manifest(String kind) throws IOException {
        Map<String, String> m = new LinkedHashMap<>();
        for (String line : Files.readAllLines(ROOT.resolve("kernels-ptx/MANIFEST"))) {
            String[] f = line.split(" ");
            if (f.length == 3 && f[0].equals(kind)) m.put(f[2], f[1]);
        }
        return m;
    }

    private static List<Path> cuSources() throws IOException {
        try (Stream<Path> s = Files.list(ROOT.resolve("native"))) {
            return s.filter(p -> p.getFileName().toString().endsWith(".cu")).sorted().toList();
        }
    }

    @Test
    void sourcesMatchTheManifest() throws Exception {
        Map<String, String> sources = manifest("source");
        List<Path> cu = cuSources();
        assertFalse(cu.isEmpty(), "no native/*.cu found under " + ROOT);
        for (Path p : cu) {
            String key = "native/" + p.getFileName();
            assertTrue(sources.containsKey(key), key + " is not in kernels-ptx/MANIFEST: run make -C native and commit");
            assertEquals(sources.get(key), sha256(Files.readAllBytes(p)),
                    key + " changed since its PTX was built: run make -C native and commit kernels-ptx/");
        }
        List<String> shared = new java.util.ArrayList<>(List.of("native/Makefile"));
        try (Stream<Path> s = Files.list(ROOT.resolve("native"))) {
            s.filter(p -> p.getFileName().toString().endsWith(".cuh")).forEach(p -> shared.add("native/" + p.getFileName()));
        }
        for (String f : shared) {
            assertEquals(sources.get(f), sha256(Files.readAllBytes(ROOT.resolve(f))),
                    f + " changed since the PTX was built: run make -C native and commit kernels-ptx/");
        }
        assertEquals(cu.size() + shared.size(), sources.size(), "MANIFEST lists a source that no longer exists: " + sources.keySet());
    }

    @Test
    void everyPtxIsAResourceMatchingTheManifest() throws Exception {
        Map<String, String> ptx = manifest("ptx");
        for (Path p : cuSources()) {
            String name = p.getFileName().toString().replace(".cu", ".ptx");
            assertTrue(ptx.containsKey("kernels-ptx/" + name), "no PTX listed for " + p.getFileName());
        }
        for (var e : ptx.entrySet()) {
            byte[] bytes = PtxModules.readResource(e.getKey());
            assertEquals(e.getValue(), sha256(bytes), e.getKey() + " on the classpath differs from the MANIFEST");
        }
        String header = Files.readAllLines(ROOT.resolve("kernels-ptx/MANIFEST")).stream()
                .filter(l -> l.startsWith("nvcc ")).findFirst().orElse(null);
        assertNotNull(header, "MANIFEST names no nvcc");
        assertTrue(header.contains("release 13.0"), header);
    }

    @Test
    void castPtxExportsItsKernels() {
        String ptx = new String(PtxModules.readResource("kernels-ptx/cast.ptx"), StandardCharsets.UTF_8);
        for (String k : List.of("cast_f32_to_bf16", "cast_bf16_to_f32", "cast_f32_to_f16", "cast_f16_to_f32", "fill_f32")) {
            assertTrue(ptx.contains(".visible .entry " + k + "("), k + " missing from cast.ptx");
        }
        assertTrue(ptx.contains(".target sm_80"), "portable PTX targets compute_80");
        assertFalse(ptx.contains(ROOT.toString()), "PTX must not embed the checkout path");
    }

    /** Every PTX has its Hopper cubin (sm90a from the sm90a PTX, sm90 from a portable-only module's), as listed. */
    @Test
    void everyModuleHasItsHopperCubinMatchingTheManifest() throws Exception {
        Map<String, String> ptx = manifest("ptx"), cubin = manifest("cubin");
        for (String p : ptx.keySet()) {
            if (p.endsWith(".sm90a.ptx")) {
                assertTrue(cubin.containsKey(p.replace(".ptx", ".cubin")), "no cubin listed for " + p);
            } else if (!ptx.containsKey(p.replace(".ptx", ".sm90a.ptx"))) {
                assertTrue(cubin.containsKey(p.replace(".ptx", ".sm90.cubin")), "no cubin listed for " + p);
            }
        }
        for (var e : cubin.entrySet()) {
            assertEquals(e.getValue(), sha256(PtxModules.readResource(e.getKey())),
                    e.getKey() + " on the classpath differs from the MANIFEST");
        }
    }

    @Test
    void cubinsAreChosenOnlyOnComputeCapability90BesideThePtxTheyComeFrom() {
        Set<String> hopper = Set.of("kernels-ptx/x.ptx", "kernels-ptx/x.sm90a.ptx", "kernels-ptx/x.sm90a.cubin");
        Set<String> portable = Set.of("kernels-ptx/x.ptx", "kernels-ptx/x.sm90.cubin");
        Set<String> noCubin = Set.of("kernels-ptx/x.ptx", "kernels-ptx/x.sm90a.ptx", "kernels-ptx/x.sm90.cubin");
        assertEquals("kernels-ptx/x.sm90a.cubin", PtxModules.cubinFor("x", 9, 0, hopper::contains));
        assertEquals("kernels-ptx/x.sm90.cubin", PtxModules.cubinFor("x", 9, 0, portable::contains));
        assertNull(PtxModules.cubinFor("x", 9, 0, noCubin::contains), "the sm90a PTX wins over a portable cubin");
        assertNull(PtxModules.cubinFor("x", 8, 9, hopper::contains));
        assertNull(PtxModules.cubinFor("x", 10, 0, hopper::contains));
        assertTrue(PtxModules.isHopperResource("kernels-ptx/x.sm90a.cubin"));
        assertFalse(PtxModules.isHopperResource("kernels-ptx/x.sm90.cubin"));
        assertEquals("kernels-ptx/attention_tc.sm90a.cubin",
                PtxModules.cubinFor("attention_tc", 9, 0, PtxModules::resourceExists));
        assertEquals("kernels-ptx/adamw.sm90.cubin", PtxModules.cubinFor("adamw", 9, 0, PtxModules::resourceExists));
    }

    @Test
    void hopperVariantIsChosenOnlyOnComputeCapability90() {
        Set<String> both = Set.of("kernels-ptx/x.ptx", "kernels-ptx/x.sm90a.ptx");
        Set<String> portableOnly = Set.of("kernels-ptx/x.ptx");
        assertEquals("kernels-ptx/x.sm90a.ptx", PtxModules.resourceFor("x", 9, 0, both::contains));
        assertEquals("kernels-ptx/x.ptx", PtxModules.resourceFor("x", 9, 0, portableOnly::contains));
        assertEquals("kernels-ptx/x.ptx", PtxModules.resourceFor("x", 8, 9, both::contains));
        assertEquals("kernels-ptx/x.ptx", PtxModules.resourceFor("x", 10, 0, both::contains));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> PtxModules.resourceFor("nope", 9, 0, both::contains));
        assertTrue(e.getMessage().contains("native/nope.cu"), e.getMessage());
        assertEquals("kernels-ptx/adamw.ptx", PtxModules.resourceFor("adamw", 9, 0, PtxModules::resourceExists));
        assertEquals("kernels-ptx/cast.sm90a.ptx", PtxModules.resourceFor("cast", 9, 0, PtxModules::resourceExists));
    }
}
