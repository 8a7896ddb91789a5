package dev.qlora4j.cli;

import dev.qlora4j.CausalLM;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.model.CheckpointSaver;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.DType;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/**
 * qlora4j merge: the base model with its adapters merged (peft's merge_and_unload) written as a
 * full 16/32-bit checkpoint. A 4-bit/8-bit base is dequantized first (merging into packed
 * weights is not possible), as peft does.
 */
@Command(name = "merge", mixinStandardHelpOptions = true, description = "Merge adapters into the base and save a full checkpoint.")
public final class MergeCommand implements Callable<Integer> {
    @Option(names = "--model", paramLabel = "DIR", description = "Base model folder (default: the embedded model).") Path model;
    @Mixin AdapterOptions adapterOptions;
    @Option(names = "--output", paramLabel = "DIR", required = true) Path output;
    @Option(names = "--dtype", paramLabel = "bf16|f16|f32",
            description = "dtype of the written weights (default: the base checkpoint's).") String dtype;

    @Override
    public Integer call() throws Exception {
        if (adapterOptions.adapters.isEmpty()) throw new IllegalArgumentException("merge needs --adapter DIR");
        adapterOptions.merge = true;
        Path base = model != null ? model : DefaultModel.path();
        // Merging runs once over the weights: the CPU is enough and needs no GPU memory.
        try (CausalLM lm = CausalLM.fromPretrained(base, LoadOptions.cpu())) {
            adapterOptions.apply(lm);
            TransformerLM merged = lm.model();
            DType out = dtype != null ? DType.fromTorchName(dtype)
                    : lm.config().torchDtype() != null ? lm.config().torchDtype() : DType.F32;
            CheckpointSaver.save(merged, output, out, base);
            System.out.printf("wrote merged checkpoint %s (%s)%n", output, out.torchName());
        }
        return 0;
    }
}
