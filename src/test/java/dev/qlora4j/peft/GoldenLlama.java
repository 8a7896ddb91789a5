package dev.qlora4j.peft;

import dev.qlora4j.Golden;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.model.CheckpointWeights;
import dev.qlora4j.model.LinearFactory;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;

/** The tiny golden Llama (3 layers, hidden 64, tied embeddings) on the reference-ops test backend. */
final class GoldenLlama {
    private GoldenLlama() {}

    static Path dir() { return Golden.dir("llama-f32"); }

    /** Dense, or NF4 (double-quantized, float32 compute) quantized on load when qlora is true. The reader stays open (CPU weights are views of it). */
    static TransformerLM load(Backend b, boolean qlora) {
        try {
            ModelConfig c = ModelConfig.load(dir());
            CheckpointReader reader = CheckpointReader.open(dir());
            // NF4 with double quantization as QLoRA, but float32 compute so results compare with float32 references
            QuantizationConfig q = new QuantizationConfig(false, true, 6.0, null, false, false, DType.F32, QuantType.NF4, true,
                    DType.U8, QuantizationConfig.DEFAULT_BLOCKSIZE);
            LinearFactory f = qlora ? new QuantizedLinearFactory(q) : LinearFactory.DENSE;
            return TransformerLM.load(c, new CheckpointWeights(reader, dir().toString()), b, f);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static final int[] IDS = {1, 17, 42, 99, 7, 300, 5};

    /** Logits [T*vocab] of IDS. */
    static float[] logits(TransformerLM m) {
        Backend b = m.backend();
        int n = IDS.length;
        int[] pos = new int[n];
        for (int i = 0; i < n; i++) pos[i] = i;
        try (var cache = m.newCache(1, n)) {
            Tensor h = m.forward(Tensor.ofInts(IDS.clone(), n), Tensor.ofInts(pos, n), cache, 0, Tensor.ofInts(new int[] {0}, 1));
            return b.toHost(m.logits(h)).toFloatArray();
        }
    }
}
