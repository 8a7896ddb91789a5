package dev.qlora4j.cli;

import dev.qlora4j.LoadOptions;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
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

    @Option(names = "--load-in-4bit", description = "Quantize linear layers to 4 bits on load (bitsandbytes Linear4bit).")
    boolean loadIn4bit;

    @Option(names = "--quant-type", paramLabel = "nf4|fp4", defaultValue = "nf4",
            description = "4-bit data type (default: ${DEFAULT-VALUE}, what QLoRA uses).")
    String quantType;

    @Option(names = "--double-quant", description = "Quantize the 4-bit absmax statistics too (about 0.37 bits per weight saved).")
    boolean doubleQuant;

    @Option(names = "--compute-dtype", paramLabel = "f32|bf16|f16", defaultValue = "f32",
            description = "Precision of the 4-bit matmul (bnb_4bit_compute_dtype; default: ${DEFAULT-VALUE}).")
    String computeDType;

    @Option(names = "--blocksize", paramLabel = "N", defaultValue = "64", description = "4-bit blocksize, 32..4096 (default: ${DEFAULT-VALUE}).")
    int blocksize;

    @Option(names = "--load-in-8bit", description = "Quantize linear layers to LLM.int8 on load (bitsandbytes Linear8bitLt).")
    boolean loadIn8bit;

    @Option(names = "--int8-threshold", paramLabel = "T", defaultValue = "6.0",
            description = "LLM.int8 outlier threshold; 0 = pure int8 (default: ${DEFAULT-VALUE}).")
    double int8Threshold;

    @Option(names = "--device-map", paramLabel = "auto|sequential|balanced|JSON|@FILE",
            description = "Place modules like transformers' device_map: auto/balanced/sequential, or a JSON map of module prefix -> "
                    + "GPU index | \"cpu\" | \"disk\" (e.g. '{\"model.embed_tokens\":0,\"model.layers\":0,\"model.layers.30\":\"cpu\"}'). "
                    + "Layers on cpu/disk are streamed to the GPU before each use. Default: everything on --device.")
    String deviceMap;

    @Option(names = "--max-memory", paramLabel = "JSON",
            description = "Weight budget per device for --device-map, e.g. '{\"0\":\"20GiB\",\"cpu\":\"64GiB\"}' (sizes in B, KB/MB/GB, KiB/MiB/GiB).")
    String maxMemory;

    @Option(names = "--offload-folder", paramLabel = "DIR", description = "Where layers placed on \"disk\" are written (memory-mapped from there).")
    Path offloadFolder;

    dev.qlora4j.placement.PlacementOptions placement() {
        return new dev.qlora4j.placement.PlacementOptions(deviceMap, maxMemory, offloadFolder, -1);
    }

    /** Loads the model as the flags say, printing the device map's plan (to stderr) when one was asked for. */
    dev.qlora4j.CausalLM load() {
        dev.qlora4j.CausalLM lm = dev.qlora4j.CausalLM.fromPretrained(modelDir(), loadOptions(), placement());
        if (lm.placementPlan() != null) System.err.print(lm.placementPlan().table());
        if (!lm.model().devices().isSingle()) System.err.println("running over several devices: " + lm.model().devices().describe());
        return lm;
    }

    Path modelDir() {
        return model != null ? model : DefaultModel.path();
    }

    LoadOptions loadOptions() {
        return new LoadOptions(device, quantization());
    }

    /** The BitsAndBytesConfig the flags describe, or null when no quantization is asked for. */
    QuantizationConfig quantization() {
        if (loadIn4bit && loadIn8bit) throw new IllegalArgumentException("--load-in-4bit and --load-in-8bit exclude each other: pick one");
        if (!loadIn4bit && !loadIn8bit) return null;
        QuantType type = QuantType.fromBnbName(quantType);
        return new QuantizationConfig(loadIn8bit, loadIn4bit, int8Threshold, null, false, false,
                DType.fromTorchName(computeDType), type, doubleQuant, DType.U8, blocksize);
    }
}
