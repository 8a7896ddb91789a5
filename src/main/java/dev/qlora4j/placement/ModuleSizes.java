package dev.qlora4j.placement;

import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The bytes each top-level module of a Llama-family model takes on a GPU, in model order: model.embed_tokens,
 * model.layers.0 .. N-1, model.norm, lm_head (0 when tied to the embedding). Quantized linears count as the
 * CUDA backend stores them: 4-bit = packed codes (n/2) + absmax (F32 per block, or U8 per block plus the
 * nested F32 absmax per 256 blocks and the 256-entry nested code) + the 16-entry code table; LLM.int8 = int8
 * codes + one F32 scale per row. Modules named by llm_int8_skip_modules stay dense.
 */
public final class ModuleSizes {
    private ModuleSizes() {}

    public static final String EMBED = "model.embed_tokens";
    public static final String NORM = "model.norm";
    public static final String LM_HEAD = "lm_head";

    public static String layer(int i) { return "model.layers." + i; }

    /**
     * @param weightDType dtype of the dense weights as loaded (the checkpoint's torch_dtype)
     * @param quant       quantization, or null for dense
     */
    public static Map<String, Long> of(ModelConfig c, DType weightDType, QuantizationConfig quant) {
        long w = weightDType.byteSize();
        long hidden = c.hiddenSize(), inter = c.intermediateSize();
        long qOut = (long) c.numAttentionHeads() * c.headDim(), kvOut = (long) c.numKeyValueHeads() * c.headDim();
        Map<String, Long> out = new LinkedHashMap<>();
        out.put(EMBED, c.vocabSize() * hidden * w);
        for (int i = 0; i < c.numHiddenLayers(); i++) {
            String p = layer(i) + ".";
            long n = 2 * hidden * w; // input_layernorm, post_attention_layernorm
            n += linear(p + "self_attn.q_proj", qOut, hidden, c.qkvBias(), w, quant);
            n += 2 * linear(p + "self_attn.k_proj", kvOut, hidden, c.qkvBias(), w, quant);
            n += linear(p + "self_attn.o_proj", hidden, qOut, c.oBias(), w, quant);
            n += 2 * linear(p + "mlp.gate_proj", inter, hidden, c.mlpBias(), w, quant);
            n += linear(p + "mlp.down_proj", hidden, inter, c.mlpBias(), w, quant);
            out.put(layer(i), n);
        }
        out.put(NORM, hidden * w);
        out.put(LM_HEAD, c.tieWordEmbeddings() ? 0L : linear(LM_HEAD, c.vocabSize(), hidden, false, w, quant));
        return out;
    }

    /** Bytes of one linear [out, in] (+ bias) as loaded. */
    static long linear(String path, long out, long in, boolean bias, long weightBytes, QuantizationConfig q) {
        long b = bias ? out * weightBytes : 0;
        if (q == null || skipped(path, q)) return out * in * weightBytes + b;
        long n = out * in;
        if (q.loadIn4bit()) {
            long blocks = (n + q.blocksize() - 1) / q.blocksize();
            long stats = q.bnb4bitUseDoubleQuant()
                    ? blocks + 4 * ((blocks + Quant4bit.NESTED_BLOCKSIZE - 1) / Quant4bit.NESTED_BLOCKSIZE) + 256 * 4
                    : 4 * blocks;
            return (n + 1) / 2 + stats + 16 * 4 + b;
        }
        return n + 4 * out + b; // LLM.int8: CB int8 + SCB F32
    }

    private static boolean skipped(String path, QuantizationConfig q) {
        for (String s : q.effectiveSkipModules()) if (path.contains(s)) return true;
        return false;
    }
}
