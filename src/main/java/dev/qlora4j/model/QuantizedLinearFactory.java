package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.Tensor;

/**
 * Linear layers as transformers + bitsandbytes build them for a BitsAndBytesConfig: modules named
 * in llm_int8_skip_modules (lm_head by default) stay dense; a weight stored pre-quantized in the
 * checkpoint (bitsandbytes' 4-bit quant_state keys, or LLM.int8's SCB) is read as it is; any other
 * weight is quantized on load, one layer at a time, so host memory holds one 16-bit layer at most
 * beside the quantized model.
 */
public final class QuantizedLinearFactory implements LinearFactory {
    private final QuantizationConfig config;

    public QuantizedLinearFactory(QuantizationConfig config) {
        if (!config.loadIn4bit() && !config.loadIn8bit()) {
            throw new IllegalArgumentException("quantization config asks for neither load_in_4bit nor load_in_8bit");
        }
        this.config = config;
    }

    public QuantizationConfig config() { return config; }

    /** transformers skips a module when any skip name occurs in its dotted path. */
    public boolean skipped(String modulePath) {
        for (String s : config.effectiveSkipModules()) if (modulePath.contains(s)) return true;
        return false;
    }

    public static boolean isPreQuantized4bit(WeightSource w, String modulePath) {
        String k = modulePath + ".weight.quant_state.bitsandbytes__";
        return w.has(k + "nf4") || w.has(k + "fp4");
    }

    public static boolean isPreQuantized8bit(WeightSource w, String modulePath) {
        return w.has(modulePath + ".SCB");
    }

    @Override
    public Linear create(String path, WeightSource w, Backend b, boolean hasBias) {
        if (skipped(path)) return LinearFactory.DENSE.create(path, w, b, hasBias);
        Tensor bias = hasBias ? b.upload(w.get(path + ".bias")) : null;
        try {
            if (isPreQuantized4bit(w, path)) {
                QuantState4bit s = QuantState4bit.fromSafetensors(path, name -> w.has(name) ? w.get(name) : null);
                return new QuantizedLinear(b.prepare4bit(s, config.bnb4bitComputeDType()), bias);
            }
            if (isPreQuantized8bit(w, path)) {
                Int8Weight q = Int8Weight.fromSafetensors(path, name -> w.has(name) ? w.get(name) : null);
                return new QuantizedLinear(b.prepare8bit(q, (float) config.llmInt8Threshold()), bias);
            }
            // Views of a mapped checkpoint do not own their bytes (close is a no-op); a weight made for
            // this call (e.g. a synthetic one on the GPU) is freed as soon as it is quantized.
            try (Tensor dense = w.get(path + ".weight")) {
                if (config.loadIn4bit()) {
                    return new QuantizedLinear(b.quantize4bit(dense, config.bnb4bitQuantType(), config.blocksize(),
                            config.bnb4bitUseDoubleQuant(), config.bnb4bitComputeDType()), bias);
                }
                // LLM.int8 quantizes on the host (the outlier split is a host-side plan): a checkpoint's weight
                // already is there; a weight made on the GPU (synthetic models) comes down first.
                Tensor host = dense.device().isCpu() ? dense : b.toHost(dense);
                return new QuantizedLinear(b.prepare8bit(Int8Weight.quantize(host),
                        (float) config.llmInt8Threshold()), bias);
            }
        } catch (IllegalArgumentException e) {
            if (bias != null) bias.close();
            throw new IllegalArgumentException(w.describe() + ": cannot load quantized layer " + path + ": " + e.getMessage(), e);
        }
    }

    /**
     * Dense layers for the dequantized model (what the quantized model approximates), the weights
     * dequantized to weightDType (the checkpoint's dtype, as bitsandbytes dequantizes to the
     * state's dtype before the matmul).
     */
    public static LinearFactory dequantized(QuantizationConfig config, dev.qlora4j.tensor.DType weightDType) {
        QuantizedLinearFactory q = new QuantizedLinearFactory(config);
        return (path, w, b, hasBias) -> {
            Linear l = q.create(path, w, b, hasBias);
            if (!(l instanceof QuantizedLinear ql)) return l;
            Tensor dense = b.dequantize(ql.weight(), weightDType);
            return new DenseLinear(dense, ql.bias());
        };
    }
}
