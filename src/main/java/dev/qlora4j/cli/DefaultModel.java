package dev.qlora4j.cli;

import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Finds the embedded default model: $QLORA4J_DEFAULT_MODEL, else models/default in the working
 * directory (the repository), else models/default beside the jar's folder (the Docker image).
 */
final class DefaultModel {
    private DefaultModel() {}

    static Path path() {
        String env = System.getenv("QLORA4J_DEFAULT_MODEL");
        if (env != null && !env.isBlank()) return Path.of(env);
        Path cwd = Path.of("models", "default");
        if (Files.isDirectory(cwd)) return cwd;
        try {
            Path jar = Path.of(DefaultModel.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            for (Path p = jar.getParent(); p != null; p = p.getParent()) {
                Path candidate = p.resolve("models").resolve("default");
                if (Files.isDirectory(candidate)) return candidate;
            }
        } catch (URISyntaxException | SecurityException | NullPointerException ignored) {
            // fall through to the error below
        }
        throw new IllegalArgumentException("no --model given and the embedded model (models/default) was not found: "
                + "run from the qlora4j folder, pass --model DIR, or set QLORA4J_DEFAULT_MODEL");
    }
}
