package dev.qlora4j.optim;

import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Optimizer state in a safetensors file (e.g. checkpoint-N/optimizer.safetensors): the tensors of
 * {@link Optimizer#stateDict()} plus metadata {"format": "qlora4j-optimizer", "optimizer": name,
 * and the hyperparameters}. Written atomically.
 */
public final class OptimizerState {
    public static final String FORMAT = "qlora4j-optimizer";

    private OptimizerState() {}

    public static void save(Path file, Optimizer optimizer) {
        Map<String, String> meta = new LinkedHashMap<>();
        meta.put("format", FORMAT);
        meta.put("optimizer", optimizer.name());
        optimizer.hyperParameters().forEach(meta::putIfAbsent);
        SafetensorsWriter.write(file, optimizer.stateDict(), meta);
    }

    /** Loads {@code file} into {@code optimizer}; the optimizer kind must match the one that wrote it. */
    public static void load(Path file, Optimizer optimizer) {
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            Map<String, String> meta = f.metadata();
            if (!FORMAT.equals(meta.get("format"))) {
                throw new IllegalArgumentException(file + ": not an optimizer state file (metadata format is "
                        + meta.get("format") + ", expected " + FORMAT + ")");
            }
            String saved = meta.get("optimizer");
            if (!optimizer.name().equals(saved)) {
                throw new IllegalArgumentException(file + ": written by optimizer " + saved + " but resuming with "
                        + optimizer.name() + "; resume with the same optim setting or start the optimizer fresh");
            }
            Map<String, Tensor> tensors = new LinkedHashMap<>();
            for (String name : f.names()) tensors.put(name, f.tensor(name));
            try {
                optimizer.loadStateDict(tensors); // copies out of the mapping before it is closed
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException(file + ": " + e.getMessage(), e);
            }
        }
    }
}
