package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A QLoRA-quantized (NF4, double quantization, BF16 compute) Llama whose linear weights all qualify for the tile layout
 * decodes the same on both layouts: the prefill's logits bit for bit (dequantize + cuBLAS) and the greedy tokens of a
 * graph-captured decode (the decode GEMVs: on tiles also the joint gate / up, persistent and grouped launches), under
 * the default GEMV variant.
 */
@Tag("gpu")
class Q4TileLayoutModelGpuTest {
    private static String config(int hidden, int intermediate, int heads, int kvHeads) {
        return """
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": %d,
             "intermediate_size": %d, "num_hidden_layers": 2, "num_attention_heads": %d, "num_key_value_heads": %d,
             "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false,
             "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
            """.formatted(hidden, intermediate, heads, kvHeads);
    }

    private record Run(float[] prefillLogits, int[][] tokens) {}

    private static Run run(String config, String layout) {
        long tiledBefore = CudaQuantOps.TILED_WEIGHTS.get();
        ModelConfig c = ModelConfig.parse(config);
        int[] ids = {1, 17, 300, 42, 5, 99, 511, 3, 8, 200, 64, 77, 9, 10, 11, 400, 12, 13, 14};
        int[] pos = new int[ids.length];
        for (int i = 0; i < pos.length; i++) pos[i] = i;
        try (var layoutProperty = TemporaryProperty.set(Q4Layout.PROPERTY, layout);
             CudaBackend b = CudaCoreTestSupport.backend(DType.BF16, true);
             TransformerLM m = TransformerLM.load(c, SyntheticWeights.onDevice(c, b, 5), b,
                     new QuantizedLinearFactory(QuantizationConfig.qlora()))) {
            long tiled = CudaQuantOps.TILED_WEIGHTS.get() - tiledBefore;
            // the linear weights (7 a layer) all tiled, or none
            if (layout.equals("tiles")) assertTrue(tiled >= 7L * c.numHiddenLayers(), tiled + " weights tiled");
            else assertEquals(0L, tiled, "weights tiled with layout rows");
            float[] logits;
            try (KvCache cache = m.newCache(1, ids.length);
                 Tensor i = b.upload(Tensor.ofInts(ids, ids.length)); Tensor p = b.upload(Tensor.ofInts(pos, pos.length));
                 Tensor pad = b.upload(Tensor.ofInts(new int[] {0}, 1));
                 Tensor h = m.forward(i, p, cache, 0, pad); Tensor l = m.logits(h)) {
                logits = CudaCoreTestSupport.values(b, l);
            }
            int[][] prompts = {{1, 5, 9, 200, 300, 17}, {1, 44, 45}};
            SamplingParams greedy = SamplingParams.greedy(20).withMinNewTokens(20);
            int[][] tokens = new Generator(m, new int[] {2}, 0, x -> "").generate(prompts, greedy, TokenListener.NONE).outputIds();
            return new Run(logits, tokens);
        }
    }

    /**
     * hidden 128: K below the persistent kernels' (one block per tile; q / k / v one launch each); hidden 2048 (GQA 16 /
     * 4 heads, intermediate 5632): q / k / v take the grouped persistent launch (192 tiles, one a block) and gate / up
     * the persistent joint one (704 pairs of 8 rows over two blocks per SM).
     */
    @ParameterizedTest(name = "hidden {0}, intermediate {1}")
    @CsvSource({"128, 256, 4, 2", "2048, 5632, 16, 4"})
    void tilesAndRowsGiveTheSameLogitsAndTokens(int hidden, int intermediate, int heads, int kvHeads) {
        String config = config(hidden, intermediate, heads, kvHeads);
        long groupsBefore = Nf4GemvKernels.GROUP_LAUNCHES.get();
        Run rows = run(config, "rows");
        assertEquals(groupsBefore, Nf4GemvKernels.GROUP_LAUNCHES.get(), "no grouped launch on the row layout");
        Run tiles = run(config, "tiles");
        if (hidden >= 2048) assertTrue(Nf4GemvKernels.GROUP_LAUNCHES.get() > groupsBefore, "the grouped q / k / v launch ran");
        assertEquals(rows.prefillLogits().length, tiles.prefillLogits().length);
        for (int e = 0; e < rows.prefillLogits().length; e++) {
            assertEquals(Float.floatToRawIntBits(rows.prefillLogits()[e]), Float.floatToRawIntBits(tiles.prefillLogits()[e]),
                    "prefill logit " + e);
        }
        assertTrue(rows.tokens()[0].length >= 20);
        for (int r = 0; r < rows.tokens().length; r++) assertArrayEquals(rows.tokens()[r], tiles.tokens()[r], "row " + r);
    }
}
