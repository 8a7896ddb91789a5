package dev.qlora4j.io;

import java.nio.file.Path;

/**
 * A model file is corrupt, truncated or inconsistent with itself or its index (bad header,
 * offsets out of range, a shard that is missing, a tensor an index promises but a shard lacks).
 * The message names the file, says what is wrong and what to do about it.
 */
public class ModelFormatException extends RuntimeException {
    public ModelFormatException(String message) {
        super(message);
    }

    public ModelFormatException(String message, Throwable cause) {
        super(message, cause);
    }

    /** "FILE: PROBLEM" — the shape every message of this package takes. */
    static ModelFormatException of(Path file, String problem) {
        return new ModelFormatException(file + ": " + problem);
    }

    static ModelFormatException of(Path file, String problem, Throwable cause) {
        return new ModelFormatException(file + ": " + problem, cause);
    }
}
