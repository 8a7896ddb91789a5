package dev.qlora4j.cli;

import dev.qlora4j.model.CheckpointQuantizer;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** qlora4j quantize: writes a bitsandbytes-layout 4-bit or 8-bit checkpoint that transformers loads as is. */
@Command(name = "quantize", mixinStandardHelpOptions = true,
        description = "Quantize a checkpoint to bitsandbytes 4-bit (NF4/FP4) or LLM.int8 and save it.")
public final class QuantizeCommand implements Callable<Integer> {
    @Option(names = "--model", paramLabel = "DIR", description = "Source folder (default: the embedded model).") Path model;
    @Option(names = "--output", paramLabel = "DIR", required = true) Path output;
    @Option(names = "--bits", paramLabel = "4|8", defaultValue = "4") int bits;
    @Option(names = "--quant-type", paramLabel = "nf4|fp4", defaultValue = "nf4") String quantType;
    @Option(names = "--double-quant") boolean doubleQuant;
    @Option(names = "--blocksize", defaultValue = "64") int blocksize;
    @Option(names = "--compute-dtype", paramLabel = "f32|bf16|f16", defaultValue = "bf16",
            description = "bnb_4bit_compute_dtype recorded in the config (default: ${DEFAULT-VALUE}).") String computeDType;

    @Override
    public Integer call() throws Exception {
        if (bits != 4 && bits != 8) throw new IllegalArgumentException("--bits must be 4 or 8, got " + bits);
        QuantizationConfig q = new QuantizationConfig(bits == 8, bits == 4, 6.0, null, false, false,
                DType.fromTorchName(computeDType), QuantType.fromBnbName(quantType), doubleQuant, DType.U8, blocksize);
        Path in = model != null ? model : DefaultModel.path();
        CheckpointQuantizer.Report r = CheckpointQuantizer.quantize(in, output, q);
        System.out.printf("wrote %s: %d linear layers, %,d parameters in %,d bytes (%.4f bits per parameter)%n",
                output, r.quantizedLayers(), r.quantizedParameters(), r.quantizedBytes(), r.bitsPerParameter());
        return 0;
    }
}
