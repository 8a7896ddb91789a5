package dev.qlora4j.model;

import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.io.CheckpointWriter;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Writes a checkpoint in bitsandbytes' saved layout (what transformers writes after
 * from_pretrained(..., quantization_config=BitsAndBytesConfig(...)).save_pretrained()): decoder
 * linear weights as packed 4-bit + quant_state tensors or int8 CB + SCB, everything else in its
 * original dtype, and config.json with quantization_config. transformers + bitsandbytes load it
 * as is; so does {@link dev.qlora4j.CausalLM}.
 */
public final class CheckpointQuantizer {
    /** Shard size transformers uses by default for save_pretrained. */
    static final long MAX_SHARD_BYTES = 5L * 1000 * 1000 * 1000;
    static final List<String> SIDE_FILES = List.of("tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "special_tokens_map.json", "chat_template.jinja", "tokenizer.model");

    private CheckpointQuantizer() {}

    /** Result figures for the command line. */
    public record Report(long quantizedParameters, long quantizedBytes, int quantizedLayers) {
        public double bitsPerParameter() { return quantizedParameters == 0 ? 0 : 8.0 * quantizedBytes / quantizedParameters; }
    }

    public static Report quantize(Path in, Path out, QuantizationConfig q) throws IOException {
        if (Files.exists(out) && Files.isSameFile(in, out)) {
            throw new IllegalArgumentException("--output must differ from --model: the source checkpoint is read while writing");
        }
        ModelConfig config = ModelConfig.load(in);
        if (config.quantizationConfig() != null) {
            throw new IllegalArgumentException(in + " is already quantized (config.json has quantization_config): "
                    + "quantize the original 16/32-bit checkpoint instead");
        }
        QuantizedLinearFactory rules = new QuantizedLinearFactory(q);
        long params = 0, bytes = 0;
        int layers = 0;
        try (CheckpointReader reader = CheckpointReader.open(in)) {
            // Quantized tensors are small (about a quarter of the 16-bit weights); the others are
            // zero-copy views of the mapped source, written straight from the mapping.
            Map<String, Tensor> tensors = new LinkedHashMap<>();
            for (String name : reader.names()) {
                Tensor t = reader.tensor(name);
                String module = name.endsWith(".weight") ? name.substring(0, name.length() - ".weight".length()) : null;
                if (module == null || !ModelSummary.isDecoderLinearWeight(name) || rules.skipped(module) || t.rank() != 2) {
                    tensors.put(name, t);
                    continue;
                }
                Map<String, Tensor> quantized = q.loadIn4bit()
                        ? Quant4bit.quantize(t, q.bnb4bitQuantType(), q.blocksize(), q.bnb4bitUseDoubleQuant()).toSafetensors(module)
                        : Int8Weight.quantize(t).toSafetensors(module);
                tensors.putAll(quantized);
                params += t.numel();
                for (Tensor v : quantized.values()) bytes += v.byteSize();
                layers++;
            }
            Files.createDirectories(out);
            CheckpointWriter.writeSharded(out, tensors, MAX_SHARD_BYTES, Map.of("format", "pt"));
        }
        config.withQuantizationConfig(q.toJsonNode()).save(out);
        for (String f : SIDE_FILES) copyAtomically(in.resolve(f), out.resolve(f));
        return new Report(params, bytes, layers);
    }

    static void copyAtomically(Path from, Path to) {
        if (!Files.exists(from)) return;
        try {
            Path tmp = Files.createTempFile(to.getParent(), to.getFileName().toString(), ".tmp");
            try {
                Files.copy(from, tmp, StandardCopyOption.REPLACE_EXISTING);
                Files.move(tmp, to, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } finally {
                Files.deleteIfExists(tmp);
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot copy " + from + " to " + to + ": " + e.getMessage(), e);
        }
    }
}
