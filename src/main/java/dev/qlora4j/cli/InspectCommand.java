package dev.qlora4j.cli;

import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.ModelSummary;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** qlora4j inspect: what a checkpoint holds and what it would need in memory at each precision. */
@Command(name = "inspect", mixinStandardHelpOptions = true,
        description = "Architecture, parameter count, dtypes and weight memory in bf16, int8, NF4 and NF4+double-quant.")
public final class InspectCommand implements Callable<Integer> {
    @Parameters(index = "0", arity = "0..1", paramLabel = "DIR", description = "Model folder (default: the embedded model).")
    Path dir;

    @Option(names = "--json", description = "Print one JSON object.") boolean json;

    @Override
    public Integer call() throws java.io.IOException {
        Path d = dir != null ? dir : DefaultModel.path();
        ModelConfig config = ModelConfig.load(d);
        try (CheckpointReader reader = CheckpointReader.open(d)) {
            ModelSummary s = ModelSummary.of(config, reader);
            System.out.println(json ? Json.write(s.toMap()) : s.toText());
        }
        return 0;
    }
}
