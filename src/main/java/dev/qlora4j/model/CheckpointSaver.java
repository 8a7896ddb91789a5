package dev.qlora4j.model;

import dev.qlora4j.io.CheckpointWriter;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Writes a model as a plain 16/32-bit HF checkpoint (what save_pretrained writes after
 * merge_and_unload): HF tensor names, sharded at 5 GB, config.json without quantization_config.
 * Quantized layers are dequantized; everything is converted to {@code dtype}.
 */
public final class CheckpointSaver {
    private CheckpointSaver() {}

    public static void save(TransformerLM model, Path out, DType dtype, Path tokenizerSource) throws IOException {
        Backend b = model.backend();
        ModelConfig c = model.config();
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        tensors.put("model.embed_tokens.weight", host(b, model.embedTokens(), dtype));
        for (int i = 0; i < model.numLayers(); i++) {
            DecoderLayer l = model.layers().get(i);
            String p = "model.layers." + i + ".";
            tensors.put(p + "input_layernorm.weight", host(b, l.inputNorm, dtype));
            for (String proj : DecoderLayer.PROJECTIONS) putLinear(tensors, b, p + proj, l.projection(proj), dtype);
            tensors.put(p + "post_attention_layernorm.weight", host(b, l.postAttnNorm, dtype));
        }
        tensors.put("model.norm.weight", host(b, model.finalNorm(), dtype));
        boolean tied = c.tieWordEmbeddings() && model.lmHeadIsEmbedding();
        if (!tied) putLinear(tensors, b, "lm_head", model.linear("lm_head"), dtype);
        Files.createDirectories(out);
        CheckpointWriter.writeSharded(out, tensors, CheckpointQuantizer.MAX_SHARD_BYTES, Map.of("format", "pt"));
        ModelConfig saved = c.withQuantizationConfig(null).withTorchDtype(dtype);
        if (c.tieWordEmbeddings() && !tied) saved = saved.withTieWordEmbeddings(false);
        saved.save(out);
        for (String f : CheckpointQuantizer.SIDE_FILES) CheckpointQuantizer.copyAtomically(tokenizerSource.resolve(f), out.resolve(f));
    }

    private static void putLinear(Map<String, Tensor> tensors, Backend b, String path, Linear l, DType dtype) {
        switch (l) {
            case DenseLinear d -> {
                tensors.put(path + ".weight", host(b, d.weight(), dtype));
                if (d.bias() != null) tensors.put(path + ".bias", host(b, d.bias(), dtype));
            }
            case QuantizedLinear q -> {
                tensors.put(path + ".weight", host(b, b.dequantize(q.weight(), dtype), dtype));
                if (q.bias() != null) tensors.put(path + ".bias", host(b, q.bias(), dtype));
            }
            default -> throw new IllegalArgumentException(path + " is a " + l.getClass().getSimpleName()
                    + ": merge or unload adapters before saving a full checkpoint");
        }
    }

    private static Tensor host(Backend b, Tensor t, DType dtype) {
        Tensor h = b.toHost(t);
        return h.dtype() == dtype ? h : h.toDType(dtype);
    }
}
