package dev.qlora4j;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.cli.Main;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine.Command;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.jar.JarFile;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * What can be checked of the Docker image without a Docker engine: the build context holds every
 * COPY source (and .dockerignore does not drop one), the jar path is pom.xml's, the entry point
 * runs the JVM with the ./qlora4j launcher's flags, the default-model variable points where the
 * model is copied, and that entry point, run here with this JDK, lists the commands and finds the
 * default model through the variable.
 */
class DockerfileTest {
    private static final Path ROOT = Path.of("").toAbsolutePath();

    /** One instruction: keyword and the rest of its (continuation-joined) line. */
    record Instruction(String keyword, String args) {}

    /** A build stage: FROM image [AS name] and its instructions. */
    record Stage(String image, String name, List<Instruction> instructions) {
        List<Instruction> all(String keyword) {
            return instructions.stream().filter(i -> i.keyword().equals(keyword)).toList();
        }

        String workdir() {
            List<Instruction> w = all("WORKDIR");
            return w.isEmpty() ? "/" : w.getLast().args();
        }
    }

    /** COPY [--from=X] SRC... DEST. */
    record Copy(String from, List<String> sources, String dest) {
        static Copy parse(String args) {
            List<String> t = new ArrayList<>(Arrays.asList(args.trim().split("\\s+")));
            String from = null;
            while (!t.isEmpty() && t.getFirst().startsWith("--")) {
                String flag = t.removeFirst();
                if (flag.startsWith("--from=")) from = flag.substring("--from=".length());
            }
            return new Copy(from, List.copyOf(t.subList(0, t.size() - 1)), t.getLast());
        }
    }

    private static List<Stage> stages;
    private static Stage build, runtime;

    @BeforeAll
    static void parse() throws IOException {
        stages = parseDockerfile(Files.readString(ROOT.resolve("Dockerfile"), StandardCharsets.UTF_8));
        assertTrue(stages.size() >= 2, "multi-stage: a build stage and a runtime stage");
        runtime = stages.getLast();
        build = stages.stream().filter(s -> "build".equals(s.name())).findFirst().orElseThrow(
                () -> new AssertionError("no stage named build"));
    }

    static List<Stage> parseDockerfile(String text) {
        List<Stage> out = new ArrayList<>();
        StringBuilder logical = new StringBuilder();
        List<String> lines = new ArrayList<>();
        for (String raw : text.split("\n", -1)) {
            String line = raw.strip();
            if (line.startsWith("#") || (line.isEmpty() && logical.isEmpty())) continue;
            if (line.endsWith("\\")) {
                logical.append(line, 0, line.length() - 1).append(' ');
                continue;
            }
            logical.append(line);
            if (!logical.toString().isBlank()) lines.add(logical.toString().strip());
            logical.setLength(0);
        }
        for (String l : lines) {
            String[] kv = l.split("\\s+", 2);
            Instruction ins = new Instruction(kv[0].toUpperCase(java.util.Locale.ROOT), kv.length > 1 ? kv[1] : "");
            if (ins.keyword().equals("FROM")) {
                String[] f = ins.args().split("\\s+");
                out.add(new Stage(f[0], f.length >= 3 && f[1].equalsIgnoreCase("AS") ? f[2] : null, new ArrayList<>()));
            } else {
                if (out.isEmpty()) throw new AssertionError("instruction before FROM: " + l);
                out.getLast().instructions().add(ins);
            }
        }
        return out;
    }

    @Test
    void buildStagePackagesTheJarWithMavenOnTemurin25() {
        assertTrue(build.image().startsWith("maven:") && build.image().contains("eclipse-temurin-25"), build.image());
        assertTrue(build.all("RUN").stream().anyMatch(r -> r.args().contains("./mvnw -B")
                && r.args().contains("-DskipTests") && r.args().contains("package")), "RUN ./mvnw -B -DskipTests package");
    }

    @Test
    void runtimeIsCudaRuntimeWithTemurin25Jre() {
        assertTrue(runtime.image().startsWith("nvidia/cuda:") && runtime.image().contains("-runtime-"), runtime.image());
        List<Copy> copies = runtime.all("COPY").stream().map(i -> Copy.parse(i.args())).toList();
        assertTrue(copies.contains(new Copy("eclipse-temurin:25-jre", List.of("/opt/java/openjdk"), "/opt/java/openjdk")), copies.toString());
        String path = env(runtime).get("PATH");
        assertNotNull(path, "ENV PATH");
        assertTrue(path.startsWith("/opt/java/openjdk/bin:"), "java on PATH: " + path);
        assertEquals("/work", runtime.workdir());
        assertEquals(List.of("--help"), jsonArray(runtime.all("CMD").getLast().args()));
    }

    @Test
    void copySourcesExistAndAreNotDockerignored() throws IOException {
        List<String> ignore = Files.readAllLines(ROOT.resolve(".dockerignore"));
        int checked = 0;
        for (Stage s : stages) {
            for (Instruction i : s.all("COPY")) {
                Copy c = Copy.parse(i.args());
                if (c.from() != null) continue;
                for (String src : c.sources()) {
                    String rel = src.endsWith("/") ? src.substring(0, src.length() - 1) : src;
                    assertTrue(Files.exists(ROOT.resolve(rel)), "COPY source " + src + " is not in the repository");
                    assertFalse(ignored(rel, ignore), "COPY source " + src + " is excluded by .dockerignore");
                    checked++;
                }
            }
        }
        assertTrue(checked >= 5, "the build copies mvnw, pom.xml, .mvn, src, kernels-ptx; the runtime models/default");
        // what must stay out of the context (and what the runtime takes from the build stage instead)
        assertTrue(ignored("target/qlora4j.jar", ignore));
        assertTrue(ignored(".git/HEAD", ignore));
        assertTrue(ignored("models/some-7b/model.safetensors", ignore));
        assertFalse(ignored("models/default/model.safetensors", ignore));
    }

    @Test
    void jarIsPomsFinalNameAndTheEntryPointRunsIt() throws IOException {
        Matcher m = Pattern.compile("<finalName>([^<]+)</finalName>").matcher(Files.readString(ROOT.resolve("pom.xml")));
        assertTrue(m.find(), "pom.xml names the shaded jar with <finalName>");
        String jar = "target/" + m.group(1) + ".jar";
        Copy jarCopy = runtime.all("COPY").stream().map(i -> Copy.parse(i.args()))
                .filter(c -> "build".equals(c.from())).findFirst().orElseThrow(() -> new AssertionError("no COPY --from=build"));
        assertEquals(List.of(build.workdir() + "/" + jar), jarCopy.sources(), "the jar the build stage's package made");

        List<String> entry = jsonArray(runtime.all("ENTRYPOINT").getLast().args());
        assertEquals("java", entry.getFirst());
        int j = entry.indexOf("-jar");
        assertEquals(List.of(jarCopy.dest()), entry.subList(j + 1, entry.size()), "ENTRYPOINT runs the copied jar");
        assertEquals(launcherFlags(), entry.subList(1, j), "ENTRYPOINT's JVM flags are the ./qlora4j launcher's");
    }

    @Test
    void defaultModelVariablePointsAtTheCopiedModel() {
        Copy model = runtime.all("COPY").stream().map(i -> Copy.parse(i.args()))
                .filter(c -> c.from() == null && c.sources().equals(List.of("models/default/"))).findFirst()
                .orElseThrow(() -> new AssertionError("COPY models/default/ into the runtime image"));
        assertEquals(trimSlash(model.dest()), trimSlash(env(runtime).get("QLORA4J_DEFAULT_MODEL")));
    }

    /** The JVM flags of the launcher's exec line, without the user's ${QLORA4J_JAVA_OPTS}. */
    static List<String> launcherFlags() throws IOException {
        String script = Files.readString(ROOT.resolve("qlora4j")).replace("\\\n", " ");
        String exec = script.lines().filter(l -> l.strip().startsWith("exec \"$JAVA_HOME/bin/java\"")).findFirst()
                .orElseThrow(() -> new AssertionError("the launcher's exec \"$JAVA_HOME/bin/java\" line"));
        List<String> t = Arrays.asList(exec.strip().split("\\s+"));
        return t.subList(2, t.indexOf("-jar")).stream().filter(s -> !s.startsWith("${")).toList();
    }

    @Test
    void pomTestFlagsAreAmongTheEntryPointFlags() throws IOException {
        Matcher m = Pattern.compile("<qlora4j.jvm.flags>([^<]+)</qlora4j.jvm.flags>").matcher(Files.readString(ROOT.resolve("pom.xml")));
        assertTrue(m.find());
        List<String> flags = launcherFlags();
        String joined = String.join(" ", flags);
        assertTrue(joined.contains(m.group(1).strip()), flags + " vs pom " + m.group(1));
    }

    /**
     * The entry point with this JDK, the way the image runs it: the jar when a current one is built
     * (mvn package), else the same main class on the test class path; from a folder without
     * models/default, so the model is found through QLORA4J_DEFAULT_MODEL alone.
     */
    @Test
    void entryPointListsTheCommandsAndFindsTheModelThroughTheVariable(@TempDir Path work) throws Exception {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.addAll(launcherFlags());
        Path jar = ROOT.resolve("target/qlora4j.jar");
        if (currentJar(jar)) {
            checkJarContents(jar);
            cmd.addAll(List.of("-jar", jar.toString()));
        } else {
            System.err.println("DockerfileTest: no current target/qlora4j.jar (run ./mvnw package); running "
                    + Main.class.getName() + " from the test class path instead");
            String cp = System.getProperty("java.class.path");
            Assumptions.assumeTrue(cp != null && cp.contains("classes"), "no usable class path to run the CLI from");
            cmd.addAll(List.of("-cp", cp, Main.class.getName()));
        }

        Run help = run(cmd, work, "--help");
        assertEquals(0, help.code(), help.err());
        for (Class<?> sub : Main.class.getAnnotation(Command.class).subcommands()) {
            String name = sub.getAnnotation(Command.class).name();
            assertTrue(help.out().contains(name), "--help lists " + name + ":\n" + help.out());
        }

        Run inspect = run(cmd, work, "inspect", "--json");
        assertEquals(0, inspect.code(), inspect.err());
        var j = new ObjectMapper().readTree(inspect.out());
        assertEquals("LlamaForCausalLM", j.get("architecture").asText());
        assertEquals(11015040L, j.get("parameters").asLong(), "the embedded model (models/default/TRAINING.md)");
    }

    record Run(int code, String out, String err) {}

    private static Run run(List<String> base, Path work, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(base);
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).directory(work.toFile());
        pb.environment().put("QLORA4J_DEFAULT_MODEL", ROOT.resolve("models/default").toString());
        pb.environment().remove("JAVA_TOOL_OPTIONS");
        Path out = work.resolve("out.txt"), err = work.resolve("err.txt");
        pb.redirectOutput(out.toFile()).redirectError(err.toFile());
        Process p = pb.start();
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("the CLI did not finish in 60 s: " + cmd);
        }
        return new Run(p.exitValue(), Files.readString(out), Files.readString(err));
    }

    /** A jar at least as new as every compiled CLI class (a stale one may lack new commands). */
    private static boolean currentJar(Path jar) throws IOException {
        if (!Files.isRegularFile(jar)) return false;
        Path cli = ROOT.resolve("target/classes/dev/qlora4j/cli");
        if (!Files.isDirectory(cli)) return true;
        long built = Files.getLastModifiedTime(jar).toMillis();
        try (Stream<Path> s = Files.list(cli)) {
            return s.allMatch(p -> {
                try {
                    return Files.getLastModifiedTime(p).toMillis() <= built;
                } catch (IOException e) {
                    return false;
                }
            });
        }
    }

    /** The jar carries the PTX kernels (the image has no other copy) and names the CLI as its main class. */
    private static void checkJarContents(Path jar) throws IOException {
        try (JarFile jf = new JarFile(jar.toFile()); Stream<Path> ptx = Files.list(ROOT.resolve("kernels-ptx"))) {
            assertEquals(Main.class.getName(), jf.getManifest().getMainAttributes().getValue("Main-Class"));
            for (Path p : ptx.filter(p -> p.toString().endsWith(".ptx")).toList()) {
                assertNotNull(jf.getEntry("kernels-ptx/" + p.getFileName()), "jar lacks kernels-ptx/" + p.getFileName());
            }
        }
    }

    /** ENV KEY=VALUE ... of a stage, with $VAR / ${VAR} of earlier values left as written. */
    private static Map<String, String> env(Stage s) {
        Map<String, String> out = new java.util.LinkedHashMap<>();
        for (Instruction i : s.all("ENV")) {
            for (String kv : i.args().trim().split("\\s+")) {
                int eq = kv.indexOf('=');
                if (eq > 0) out.put(kv.substring(0, eq), kv.substring(eq + 1));
            }
        }
        return out;
    }

    private static List<String> jsonArray(String json) {
        try {
            return List.of(new ObjectMapper().readValue(json, String[].class));
        } catch (IOException e) {
            throw new AssertionError("not the JSON (exec) form: " + json, e);
        }
    }

    private static String trimSlash(String p) {
        return p.endsWith("/") ? p.substring(0, p.length() - 1) : p;
    }

    /**
     * .dockerignore matching as Docker does it for these patterns: the last matching line wins,
     * "!" re-includes, "*" stays within a path segment, "**" spans segments, and a pattern that
     * matches a folder excludes what is under it.
     */
    static boolean ignored(String path, List<String> patterns) {
        boolean ignored = false;
        for (String raw : patterns) {
            String line = raw.strip();
            if (line.isEmpty() || line.startsWith("#")) continue;
            boolean negate = line.startsWith("!");
            String pat = trimSlash(negate ? line.substring(1) : line);
            if (pat.startsWith("/")) pat = pat.substring(1);
            Pattern re = Pattern.compile(globToRegex(pat) + "(/.*)?");
            if (re.matcher(path).matches()) ignored = !negate;
        }
        return ignored;
    }

    private static String globToRegex(String glob) {
        StringBuilder re = new StringBuilder();
        for (int i = 0; i < glob.length(); i++) {
            char c = glob.charAt(i);
            if (c == '*' && i + 1 < glob.length() && glob.charAt(i + 1) == '*') {
                re.append(".*");
                i++;
                if (i + 1 < glob.length() && glob.charAt(i + 1) == '/') {
                    re.append("/?");
                    i++;
                }
            } else if (c == '*') {
                re.append("[^/]*");
            } else if (c == '?') {
                re.append("[^/]");
            } else {
                re.append(Pattern.quote(String.valueOf(c)));
            }
        }
        return re.toString();
    }
}
