package dev.qlora4j.peft.prefix;

import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.peft.PeftKeys;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

/** The one tensor a prompt-learning adapter file holds: {@code prompt_embeddings} [num_virtual_tokens, width]. */
final class PromptEmbeddings {
    static final String KEY = "prompt_embeddings";

    private PromptEmbeddings() {}

    /** Reads adapter_model.safetensors of an adapter folder as float32, checking the shape. */
    static float[] read(Path adapterDir, int rows, int cols, String shapeHint) {
        Path file = adapterDir.resolve(PeftKeys.WEIGHTS_FILE);
        if (!Files.isRegularFile(file)) {
            throw new IllegalArgumentException(file + ": no such file; a peft prompt-learning adapter folder holds adapter_config.json and "
                    + PeftKeys.WEIGHTS_FILE + " (convert an adapter_model.bin with safetensors first)");
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            if (!f.has(KEY)) {
                throw new IllegalArgumentException(file + ": tensor \"" + KEY + "\" is missing (found " + f.names()
                        + "); this is not a prefix/prompt tuning adapter");
            }
            Tensor t = f.tensor(KEY);
            if (!Arrays.equals(t.shape(), new int[] {rows, cols})) {
                throw new IllegalArgumentException(file + ": tensor " + KEY + " has shape " + Arrays.toString(t.shape()) + " but this model expects ["
                        + rows + ", " + cols + "] (" + shapeHint + ")");
            }
            return t.toFloatArray();
        }
    }
}
