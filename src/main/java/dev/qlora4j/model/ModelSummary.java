package dev.qlora4j.model;

import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * What `inspect` reports: parameter counts and the weight memory at each precision. Quantized
 * variants quantize the decoder layers' linear weights (bitsandbytes' default leaves the
 * embedding, norms and lm_head in 16-bit); their cost per parameter:
 * int8 = 8 bits + one fp32 scale per output row; NF4 = 4 bits + fp32 absmax per 64-block;
 * NF4 with double quantization = 4 bits + 8-bit absmax per 64-block + fp32 per 256 absmax.
 */
public record ModelSummary(ModelConfig config, long parameters, long linearParameters, long linearRows,
                           Map<String, Long> paramsByDType, long checkpointBytes,
                           long storedQuantizedParameters, long storedQuantizedBytes) {

    /** Bits per parameter of the checkpoint's already-quantized layers (0 when none are quantized). */
    public double storedQuantizedBitsPerParameter() {
        return storedQuantizedParameters == 0 ? 0 : 8.0 * storedQuantizedBytes / storedQuantizedParameters;
    }

    public static final int BLOCKSIZE = 64;
    public static final int NESTED_BLOCKSIZE = 256;

    public static ModelSummary of(ModelConfig config, CheckpointReader reader) {
        QuantizedModules quantized = QuantizedModules.find(reader);
        long params = 0, linear = 0, rows = 0, bytes = 0;
        Map<String, Long> byType = new TreeMap<>();
        for (String name : reader.names()) {
            var info = reader.info(name);
            long n = Tensor.numel(info.shape());
            bytes += n * info.dtype().byteSize();
            if (quantized.owner(name) != null) continue; // counted below, by the shape the layer stands for
            params += n;
            byType.merge(info.dtype().name(), n, Long::sum);
            if (isDecoderLinearWeight(name) && info.shape().length == 2) {
                linear += n;
                rows += info.shape()[0];
            }
        }
        for (var e : quantized.shapes().entrySet()) {
            long n = (long) e.getValue()[0] * e.getValue()[1];
            params += n;
            linear += n;
            rows += e.getValue()[0];
            byType.merge(quantized.kind(e.getKey()), n, Long::sum);
        }
        return new ModelSummary(config, params, linear, rows, byType, bytes, quantized.parameters(), quantized.bytes(reader));
    }

    /** Linear weights inside decoder layers: what load_in_4bit / load_in_8bit quantize. */
    static boolean isDecoderLinearWeight(String name) {
        return name.startsWith("model.layers.") && name.endsWith("_proj.weight");
    }

    public long bf16Bytes() { return parameters * 2; }

    public long int8Bytes() {
        return (parameters - linearParameters) * 2 + linearParameters + linearRows * 4;
    }

    public long nf4Bytes() {
        return (parameters - linearParameters) * 2 + linearParameters / 2 + ceilDiv(linearParameters, BLOCKSIZE) * 4;
    }

    public long nf4DoubleQuantBytes() {
        long blocks = ceilDiv(linearParameters, BLOCKSIZE);
        return (parameters - linearParameters) * 2 + linearParameters / 2 + blocks + ceilDiv(blocks, NESTED_BLOCKSIZE) * 4;
    }

    /** Bits per quantized parameter of NF4 with double quantization (about 4.127 at blocksize 64). */
    public static double nf4DoubleQuantBitsPerParameter() {
        return 4 + 8.0 / BLOCKSIZE + 32.0 / (BLOCKSIZE * NESTED_BLOCKSIZE);
    }

    private static long ceilDiv(long a, long b) { return (a + b - 1) / b; }

    public Map<String, Object> toMap() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("architecture", config.architecture());
        m.put("hidden_size", config.hiddenSize());
        m.put("num_hidden_layers", config.numHiddenLayers());
        m.put("num_attention_heads", config.numAttentionHeads());
        m.put("num_key_value_heads", config.numKeyValueHeads());
        m.put("vocab_size", config.vocabSize());
        m.put("parameters", parameters);
        m.put("quantizable_linear_parameters", linearParameters);
        m.put("parameters_by_dtype", paramsByDType);
        m.put("checkpoint_bytes", checkpointBytes);
        if (storedQuantizedParameters > 0) {
            m.put("quantized_parameters", storedQuantizedParameters);
            m.put("quantized_bytes", storedQuantizedBytes);
            m.put("quantized_bits_per_parameter", storedQuantizedBitsPerParameter());
        }
        Map<String, Long> mem = new LinkedHashMap<>();
        mem.put("bf16", bf16Bytes());
        mem.put("int8", int8Bytes());
        mem.put("nf4", nf4Bytes());
        mem.put("nf4_double_quant", nf4DoubleQuantBytes());
        m.put("weight_memory_bytes", mem);
        return m;
    }

    public String toText() {
        StringBuilder sb = new StringBuilder();
        sb.append(String.format("architecture    %s (%d layers, hidden %d, heads %d, kv heads %d, vocab %d)%n",
                config.architecture(), config.numHiddenLayers(), config.hiddenSize(), config.numAttentionHeads(),
                config.numKeyValueHeads(), config.vocabSize()));
        sb.append(String.format("parameters      %,d (%,d in quantizable linear layers)%n", parameters, linearParameters));
        sb.append("dtypes          ");
        paramsByDType.forEach((k, v) -> sb.append(String.format("%s: %,d  ", k, v)));
        sb.append(String.format("%ncheckpoint      %s%n", human(checkpointBytes)));
        if (storedQuantizedParameters > 0) {
            sb.append(String.format("quantized       %,d parameters stored in %s: %.4f bits per parameter%n",
                    storedQuantizedParameters, human(storedQuantizedBytes), storedQuantizedBitsPerParameter()));
        }
        sb.append("weight memory   bf16 ").append(human(bf16Bytes()))
                .append(" | int8 ").append(human(int8Bytes()))
                .append(" | nf4 ").append(human(nf4Bytes()))
                .append(" | nf4+double-quant ").append(human(nf4DoubleQuantBytes()));
        return sb.toString();
    }

    static String human(long bytes) {
        if (bytes < 1024) return bytes + " B";
        String[] units = {"KiB", "MiB", "GiB", "TiB"};
        double v = bytes;
        int u = -1;
        while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
        return String.format("%.2f %s", v, units[u]);
    }

}
