package dev.qlora4j.cli;

import dev.qlora4j.LoadOptions;
import picocli.CommandLine.Option;

import java.nio.file.Path;

/** Options every model-loading command shares (mixed into generate, eval, train ...). */
public final class ModelOptions {
    @Option(names = "--model", paramLabel = "DIR",
            description = "Hugging Face model folder (config.json, *.safetensors, tokenizer.json). Default: the embedded model.")
    Path model;

    @Option(names = "--device", paramLabel = "cpu|cuda|auto", defaultValue = "auto",
            description = "Where to run (default: ${DEFAULT-VALUE}: the GPU when one is usable).")
    String device;

    Path modelDir() {
        return model != null ? model : DefaultModel.path();
    }

    LoadOptions loadOptions() {
        return new LoadOptions(device);
    }
}
