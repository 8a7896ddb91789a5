package dev.qlora4j.backend.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import dev.qlora4j.Golden;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.Sampler;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.model.CheckpointWeights;
import dev.qlora4j.model.LinearFactory;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Device;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The Generator's decode-graph path, on the CPU: a backend that delegates every op to CpuBackend and offers
 * a "graph" that simply runs its body (what a CUDA graph replays) must give the golden greedy tokens, with
 * the step inputs the direct path would use (ids, positions, cache slot), one graph per generate() call; the steps
 * after the recorded one take the graph's pipelined greedy pick (DecodeGraph#launchPick: the next step queued on the
 * previous picks before they are read; here the host argmax with the EOS ids masked, as the CUDA kernel computes it),
 * min_new_tokens' EOS suppression included.
 */
class GeneratorGraphCoreTest {

    @ParameterizedTest
    @ValueSource(strings = {"llama-f32", "mistral-f32"})
    void graphStepsGiveTheGoldenTokensWithTheDirectStepsInputs(String name) throws Exception {
        JsonNode g = Golden.json(name);
        int n = g.get("max_new_tokens").asInt();
        List<JsonNode> prompts = new ArrayList<>();
        g.get("prompts").forEach(prompts::add);
        int[][] all = new int[prompts.size()][];
        for (int i = 0; i < all.length; i++) all[i] = Golden.ints(prompts.get(i).get("input_ids"));
        int promptLen = 0;
        for (int[] p : all) promptLen = Math.max(promptLen, p.length);
        try (CheckpointReader reader = CheckpointReader.open(Golden.dir(name));
             RunBodyBackend b = new RunBodyBackend(new CpuBackend(2))) {
            ModelConfig c = ModelConfig.load(Golden.dir(name));
            TransformerLM m = TransformerLM.load(c, new CheckpointWeights(reader, name), b, LinearFactory.DENSE);
            GenerationResult r = new Generator(m, c.eosTokenIds(), 0, x -> "")
                    .generate(all, SamplingParams.greedy(n).withMinNewTokens(n), TokenListener.NONE);
            JsonNode expected = g.get("batch").get("greedy_tokens");
            for (int i = 0; i < all.length; i++) assertArrayEquals(Golden.ints(expected.get(i)), r.outputIds()[i], "row " + i);
            assertEquals(1, b.graphs);
            assertEquals(n - 1, b.starts.size(), "one graph step per decode step");
            assertEquals(n - 2, b.greedySteps, "every step after the recorded one picks its greedy tokens on the device");
            for (int s = 0; s < n - 1; s++) {
                assertEquals(promptLen + s, b.starts.get(s), "cache slot of step " + s);
                for (int i = 0; i < all.length; i++) assertEquals(all[i].length + s, b.positions.get(s)[i], "position");
            }
        }
    }

    /**
     * Sampling with the pick on the "device": each row's draws are taken in the order its host Sampler would take them
     * (the pipelined launch draws a step's uniforms before the previous step's tokens are read), so a seed gives the
     * host path's tokens, rows that end early (EOS, min_new_tokens) included; with a repetition penalty, the rows' seen
     * tokens (markSeen, then each pick) are the host's contexts. Without graphs the steps' logits go to the backend's
     * TokenPicker, with the same result.
     */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.CsvSource({"0, 1.0, true", "3, 1.0, true", "0, 1.3, true", "3, 0.8, true",
            "0, 1.0, false", "3, 1.3, false"})
    void sampledDevicePicksGiveTheHostSamplersTokens(int minNew, double penalty, boolean graphsOn) throws Exception {
        String name = "llama-f32";
        JsonNode g = Golden.json(name);
        List<JsonNode> prompts = new ArrayList<>();
        g.get("prompts").forEach(prompts::add);
        int[][] all = new int[prompts.size()][];
        for (int i = 0; i < all.length; i++) all[i] = Golden.ints(prompts.get(i).get("input_ids"));
        SamplingParams p = new SamplingParams(12, minNew, true, 0.7, 40, 0.9, penalty, 1234, List.of());
        try (CheckpointReader reader = CheckpointReader.open(Golden.dir(name));
             CpuBackend cpu = new CpuBackend(2);
             RunBodyBackend b = new RunBodyBackend(new CpuBackend(2), graphsOn)) {
            ModelConfig c = ModelConfig.load(Golden.dir(name));
            // EOS: a token the model picks early in some row, so rows end at different steps
            int[] eos = {c.eosTokenIds()[0], 0};
            GenerationResult host = new Generator(TransformerLM.load(c, new CheckpointWeights(reader, name), cpu,
                    LinearFactory.DENSE), eos, 0, x -> "").generate(all, p, TokenListener.NONE);
            GenerationResult dev = new Generator(TransformerLM.load(c, new CheckpointWeights(reader, name), b,
                    LinearFactory.DENSE), eos, 0, x -> "").generate(all, p, TokenListener.NONE);
            assertTrue((graphsOn ? b.greedySteps : b.pickerSteps) > 0, "the device pick ran");
            for (int i = 0; i < all.length; i++) {
                assertArrayEquals(host.outputIds()[i], dev.outputIds()[i], "row " + i);
                assertEquals(host.stopReasons()[i], dev.stopReasons()[i], "row " + i);
            }
        }
    }

    /**
     * What the CUDA device pick computes (native/sampling.cu), on the host: the repetition penalty on each row's seen
     * tokens (markSeen, then every pick), the excluded ids at -infinity, then the argmax or Sampler#sample (the kernels'
     * twin) for the row's draw.
     */
    static final class HostPicks {
        final List<List<Integer>> seen = new ArrayList<>();

        int[] pick(float[][] rows, TokenPick pick) {
            int[] picked = new int[rows.length];
            for (int r = 0; r < rows.length; r++) {
                if (pick.penalized()) {
                    int[] ctx = seen.get(r).stream().mapToInt(Integer::intValue).toArray();
                    Sampler.applyRepetitionPenalty(rows[r], ctx, ctx.length, pick.repetitionPenalty());
                }
                for (int e : pick.excluded()) if (e >= 0 && e < rows[r].length) rows[r][e] = Float.NEGATIVE_INFINITY;
                picked[r] = pick.greedy() ? Sampler.argmax(rows[r])
                        : Sampler.sample(rows[r], new SamplingParams(1, 0, true, pick.temperature(), pick.topK(),
                                pick.topP(), 1.0, 0, List.of()), pick.uniforms()[r]);
            }
            if (!seen.isEmpty()) for (int r = 0; r < rows.length; r++) seen.get(r).add(picked[r]);
            return picked;
        }

        void markSeen(int[][] tokens) {
            seen.clear();
            for (int[] t : tokens) {
                List<Integer> l = new ArrayList<>();
                for (int x : t) l.add(x);
                seen.add(l);
            }
        }
    }

    /**
     * CpuBackend plus a DecodeGraph that runs its body on host copies of the step inputs, or (graphsOn false) no graphs
     * and a TokenPicker that picks from the step's logits as the device would.
     */
    static final class RunBodyBackend implements Backend, GraphCapable {
        final CpuBackend cpu;
        final boolean graphsOn;
        int graphs;
        int pickerSteps;   // steps picked by the TokenPicker (no graph)
        int greedySteps;   // decode steps whose tokens the "device" picked (launchPick)
        final List<Integer> starts = new ArrayList<>();
        final List<int[]> positions = new ArrayList<>();

        RunBodyBackend(CpuBackend cpu) { this(cpu, true); }

        RunBodyBackend(CpuBackend cpu, boolean graphsOn) {
            this.cpu = cpu;
            this.graphsOn = graphsOn;
        }

        @Override public boolean decodeGraphsEnabled() { return graphsOn; }

        @Override
        public TokenPicker newTokenPicker(int batch) {
            HostPicks picks = new HostPicks();
            return new TokenPicker() {
                @Override
                public int[] pick(Tensor logits, TokenPick pick) {
                    pickerSteps++;
                    float[] flat = logits.toFloatArray();
                    int vocab = logits.dim(1);
                    float[][] rows = new float[batch][];
                    for (int r = 0; r < batch; r++) rows[r] = java.util.Arrays.copyOfRange(flat, r * vocab, (r + 1) * vocab);
                    return picks.pick(rows, pick);
                }

                @Override public void markSeen(int[][] tokens, int vocab) { picks.markSeen(tokens); }

                @Override public void close() {}
            };
        }

        @Override
        public DecodeGraph newDecodeGraph(int batch, DecodeGraph.Body body) {
            graphs++;
            return new DecodeGraph() {
                boolean captured;

                @Override
                public float[][] step(int[] ids, int[] pos, int start) {
                    starts.add(start);
                    positions.add(pos.clone());
                    captured = true;
                    Tensor logits = body.run(Tensor.ofInts(ids.clone(), batch), Tensor.ofInts(pos.clone(), batch), start);
                    float[] flat = logits.toFloatArray();
                    int vocab = logits.dim(1);
                    float[][] rows = new float[batch][];
                    for (int r = 0; r < batch; r++) rows[r] = java.util.Arrays.copyOfRange(flat, r * vocab, (r + 1) * vocab);
                    return rows;
                }

                @Override public boolean isCaptured() { return captured; }

                @Override public boolean picksOnDevice() { return captured; }

                final java.util.ArrayDeque<int[]> queued = new java.util.ArrayDeque<>();
                int[] lastPicks;

                final HostPicks picks = new HostPicks();

                /** What the CUDA graph's device pick computes (HostPicks); null ids take the previous picks, as the
                 *  device leaves them. */
                @Override
                public void launchPick(int[] ids, int[] pos, int start, TokenPick pick) {
                    if (queued.size() == 2) throw new IllegalStateException("two steps queued uncollected");
                    greedySteps++;
                    int[] picked = picks.pick(step(ids != null ? ids : lastPicks, pos, start), pick);
                    lastPicks = picked;
                    queued.add(picked);
                }

                @Override
                public void markSeen(int[][] tokens) { picks.markSeen(tokens); }

                @Override
                public int[] collectPicks() { return queued.remove(); }

                @Override public void close() {}
            };
        }

        @Override public Device device() { return cpu.device(); }
        @Override public DType activationDType() { return cpu.activationDType(); }
        @Override public Tensor empty(DType d, int... s) { return cpu.empty(d, s); }
        @Override public Tensor upload(Tensor h) { return cpu.upload(h); }
        @Override public Tensor toHost(Tensor t) { return cpu.toHost(t); }
        @Override public Tensor cast(Tensor t, DType d) { return cpu.cast(t, d); }
        @Override public Tensor embedding(Tensor ids, Tensor table) { return cpu.embedding(ids, table); }
        @Override public Tensor rmsNorm(Tensor x, Tensor w, float eps) { return cpu.rmsNorm(x, w, eps); }
        @Override public Tensor linear(Tensor x, Tensor w, Tensor b) { return cpu.linear(x, w, b); }
        @Override public Tensor add(Tensor a, Tensor b) { return cpu.add(a, b); }
        @Override public Tensor addInPlace(Tensor a, Tensor b) { return cpu.addInPlace(a, b); }
        @Override public Tensor siluMul(Tensor g, Tensor u) { return cpu.siluMul(g, u); }
        @Override public void ropeInPlace(Tensor x, Tensor p, Tensor f, int h, int d, float s) { cpu.ropeInPlace(x, p, f, h, d, s); }
        @Override public KvCache newKvCache(int l, int b, int k, int c, int d) { return cpu.newKvCache(l, b, k, c, d); }

        @Override
        public Tensor attention(Tensor q, Tensor k, Tensor v, KvCache c, int layer, int start, Tensor pad, int h, int kvh,
                                int d, float scale, int window) {
            return cpu.attention(q, k, v, c, layer, start, pad, h, kvh, d, scale, window);
        }

        @Override public Tensor gatherRows(Tensor x, Tensor rows) { return cpu.gatherRows(x, rows); }
        @Override public Tensor crossEntropy(Tensor l, Tensor t) { return cpu.crossEntropy(l, t); }
        @Override public QuantizedWeight prepare4bit(QuantState4bit w, DType d) { return cpu.prepare4bit(w, d); }
        @Override public QuantizedWeight prepare8bit(Int8Weight w, float t) { return cpu.prepare8bit(w, t); }
        @Override public Tensor linearQuantized(Tensor x, QuantizedWeight w, Tensor b) { return cpu.linearQuantized(x, w, b); }
        @Override public Tensor dequantize(QuantizedWeight w, DType d) { return cpu.dequantize(w, d); }
        @Override public void close() { cpu.close(); }
    }
}
