package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.TemporaryProperty;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.Sampler;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;

/**
 * The greedy pick on the GPU (native/sampling.cu argmax_rows; DecodeGraph#launchPick): against infer.Sampler's argmax
 * on the same values with the excluded ids at -infinity, on fresh random logits with planted ties, NaNs (first and
 * elsewhere), all -infinity rows and a maximum at an excluded id, in F32, BF16 and F16, outputs poisoned; and a
 * graph-captured decode giving the same tokens with the pick on the device and on the host, greedy and sampled
 * (the sampling kernel itself: DeviceSampleGpuTest).
 */
@Tag("gpu")
class DeviceGreedyGpuTest {
    private static CudaContext ctx;

    @BeforeAll
    static void open() { ctx = QuantGpuSupport.context(); }

    @AfterAll
    static void close() { if (ctx != null) ctx.close(); }

    @Test
    void argmaxRowsIsTheSamplersArgmax() {
        Random rnd = new Random();
        for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16}) {
            for (int vocab : new int[] {1, 7, 1000, 32000, 32001}) {
                int rows = 7;
                float[] v = QuantGpuSupport.roundedTo(dt, QuantGpuSupport.gaussian(rnd, rows * vocab, 3.0));
                // row 1: a tie for the maximum (the first index must win); row 2: NaN first (-> 0); row 3: NaNs elsewhere
                // and a large value after them; row 4: all -infinity (-> 0); row 5: the maximum at an excluded id
                if (vocab > 3) {
                    v[vocab + vocab / 3] = 100f;
                    v[vocab + vocab - 1] = 100f;
                    v[2 * vocab] = Float.NaN;
                    v[3 * vocab + 1] = Float.NaN;
                    v[3 * vocab + vocab - 1] = 200f;
                    for (int j = 0; j < vocab; j++) v[4 * vocab + j] = Float.NEGATIVE_INFINITY;
                    v[5 * vocab + 2] = 300f;
                }
                int[] excluded = vocab > 3 ? new int[] {2, vocab + 5} : new int[0];   // the second is outside the vocab
                try (Tensor logits = QuantGpuSupport.upload(ctx, v, dt, rows, vocab);
                     Tensor token = QuantGpuSupport.poisoned(ctx, DType.I32, rows);
                     Tensor next = QuantGpuSupport.poisoned(ctx, DType.I32, rows)) {
                    SamplingKernels.argmaxRows(ctx, logits, null, 1f, excluded, token, next);
                    int[] got = ctx.download(token).toIntArray();
                    assertArrayEquals(got, ctx.download(next).toIntArray(), "the next step's ids are the picks");
                    for (int r = 0; r < rows; r++) {
                        float[] row = java.util.Arrays.copyOfRange(v, r * vocab, (r + 1) * vocab);
                        for (int e : excluded) if (e < vocab) row[e] = Float.NEGATIVE_INFINITY;
                        assertEquals(Sampler.argmax(row), got[r], dt + " vocab " + vocab + " row " + r);
                    }
                }
            }
        }
    }

    /**
     * Greedy, and sampling (temperature, top-k, top-p; each row's seeded draws), with and without a repetition penalty,
     * with the pick on and off the device; with graphs (DecodeGraph#launchPick) and without (CudaTokenPicker).
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.CsvSource({"false, 1.0, true", "true, 1.0, true", "false, 1.3, true",
            "true, 1.2, true", "false, 1.3, false", "true, 1.2, false"})
    void aDecodePicksTheSameTokensOnTheDevice(boolean sample, double penalty, boolean graphs) {
        ModelConfig c = ModelConfig.parse("""
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 128,
             "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false,
             "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
            """);
        int[][] prompts = {{1, 5, 9, 200, 300, 17}, {1, 44, 45}};
        int[][][] tokens = new int[2][][];
        for (int on = 0; on < 2; on++) {
            long before = CudaDecodeGraph.DEVICE_PICKS.get();
            try (var p = TemporaryProperty.set(CudaDecodeGraph.DEVICE_PICK_PROPERTY, Boolean.toString(on == 1));
                 CudaBackend b = CudaCoreTestSupport.backend(DType.BF16, graphs);
                 TransformerLM m = TransformerLM.load(c, SyntheticWeights.onDevice(c, b, 5), b,
                         new QuantizedLinearFactory(QuantizationConfig.qlora()))) {
                // min_new_tokens: the EOS id is masked on the device for the first 12 tokens, then not
                SamplingParams params = new SamplingParams(24, 12, sample, 0.8, 50, 0.9, penalty, 77, java.util.List.of());
                tokens[on] = new Generator(m, new int[] {2}, 0, x -> "").generate(prompts, params, TokenListener.NONE).outputIds();
            }
            long picked = CudaDecodeGraph.DEVICE_PICKS.get() - before;
            if (on == 1) assertTrue(picked >= 10, picked + " steps picked on the device");
            else assertEquals(0, picked, "the property turns the device pick off");
        }
        assertTrue(tokens[0][0].length >= 12);
        for (int r = 0; r < prompts.length; r++) assertArrayEquals(tokens[0][r], tokens[1][r], "row " + r);
    }
}
