package dev.qlora4j.infer;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cuda.DecodeGraph;
import dev.qlora4j.backend.cuda.GraphCapable;
import dev.qlora4j.backend.cuda.TokenPick;
import dev.qlora4j.backend.cuda.TokenPicker;
import dev.qlora4j.io.tokenizer.StreamDecoder;
import dev.qlora4j.model.RopeScaling;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.Tensor;

import java.util.Arrays;
import java.util.function.Function;

/**
 * Autoregressive generation for a batch of prompts, as transformers' generate() does it:
 * prompts left-padded to one length (pads masked out, positions counted from each prompt's first
 * real token), one prefill pass, then one decode pass per step against the KV cache. Rows that
 * finished keep receiving the pad token until all are done.
 *
 * <p>On a backend that can record decode steps ({@link GraphCapable}, the CUDA backend) the decode passes
 * run as one captured CUDA graph, replayed each step; the tokens are the same either way.
 */
public final class Generator {
    private final TransformerLM model;
    private final int[] eosIds;
    private final int padId;
    private final Function<int[], String> decoder;

    /**
     * @param decoder ids -> text with special tokens skipped: the rows' texts; streaming and stop strings decode a
     *                window of a row's last few tokens with it each step (io.tokenizer.StreamDecoder)
     */
    public Generator(TransformerLM model, int[] eosIds, int padId, Function<int[], String> decoder) {
        this.model = model;
        this.eosIds = eosIds.clone();
        this.padId = padId;
        this.decoder = decoder;
    }

    public GenerationResult generate(int[][] prompts, SamplingParams params, TokenListener listener) {
        int batch = prompts.length;
        if (batch == 0) throw new IllegalArgumentException("no prompts given");
        int promptLen = 0;
        for (int[] p : prompts) {
            if (p.length == 0) throw new IllegalArgumentException("empty prompt: encode at least one token (e.g. BOS)");
            promptLen = Math.max(promptLen, p.length);
        }
        int maxNew = params.maxNewTokens();
        Backend b = model.backend();
        int vocab = model.config().vocabSize();

        int[] padStart = new int[batch];
        int[] ids = new int[batch * promptLen];
        int[] positions = new int[batch * promptLen];
        int[][] context = new int[batch][];
        for (int r = 0; r < batch; r++) {
            int pad = promptLen - prompts[r].length;
            padStart[r] = pad;
            for (int t = 0; t < promptLen; t++) {
                ids[r * promptLen + t] = t < pad ? padId : prompts[r][t - pad];
                // transformers: position_ids = cumsum(mask) - 1, pads filled with 1 (they are masked anyway)
                positions[r * promptLen + t] = t < pad ? 1 : t - pad;
            }
            context[r] = Arrays.copyOf(prompts[r], prompts[r].length + maxNew);
        }
        int[][] out = new int[batch][maxNew];
        int[] produced = new int[batch];
        String[] reasons = new String[batch];
        String[] texts = new String[batch];
        int[] emittedChars = new int[batch];
        StreamDecoder[] streams = new StreamDecoder[batch];   // per row, when text is needed each step
        StringBuilder[] shown = new StringBuilder[batch];     // the streamed text so far
        Sampler[] samplers = new Sampler[batch];
        for (int r = 0; r < batch; r++) samplers[r] = new Sampler(params, eosIds, params.seed() + r);

        long t0 = System.nanoTime();
        long prefill = 0, decode = 0;
        int steps = 0;
        try (KvCache cache = model.newCache(batch, promptLen + Math.max(1, maxNew));
             Tensor pads = b.upload(Tensor.ofInts(padStart, batch));
             DecodeGraph graph = decodeGraph(b, cache, pads, batch);
             TokenPicker picker = graph == null ? tokenPicker(b, batch) : null) {
            float[][] logits = step(b, cache, ids, positions, 0, promptLen, pads, batch);
            int[] picked = null;  // the step's tokens when the device picked them (logits is null then)
            // Pipelined decoding (DecodeGraph#launchPick): once the device picks the tokens, the step that makes
            // iteration s + 1's tokens is queued at the top of iteration s, before s's picks are read back (its input
            // ids are those picks, left on the device), so the GPU does not wait for the host between steps. When
            // every row ends at s, that step was for nothing (its picks are never read). A sampled pick takes each
            // row's next uniform draw when its step is queued: the draw its Sampler would take for that token.
            boolean pipelined = false;
            // Each row's text is followed every step only for stop strings or a listener, and then incrementally
            // (StreamDecoder: a window of the last few tokens each step; decoding the whole output grows with it,
            // ~0.16 us a token with the HF tokenizer: 330 us a row at 2,048 tokens, a seventh of a 7B GPU step). The
            // rows' texts are decoded whole once, when they end.
            boolean textEachStep = !params.stopStrings().isEmpty() || listener != TokenListener.NONE;
            if (textEachStep) {
                for (int r = 0; r < batch; r++) {
                    streams[r] = StreamDecoder.over(decoder);
                    shown[r] = new StringBuilder();
                }
            }
            prefill = System.nanoTime() - t0;
            long t1 = System.nanoTime();
            for (int s = 0; s < maxNew; s++) {
                int[] next = new int[batch];
                int[] nextPos = new int[batch];
                for (int r = 0; r < batch; r++) nextPos[r] = prompts[r].length + s;
                if (pipelined) {
                    if (s + 1 < maxNew) graph.launchPick(null, nextPos, promptLen + s, pickAt(params, s + 1, samplers));
                    picked = graph.collectPicks();
                    steps++;
                }
                boolean anyLive = false;
                for (int r = 0; r < batch; r++) {
                    if (reasons[r] != null) {
                        next[r] = padId;
                        continue;
                    }
                    int tok = picked != null ? picked[r]
                            : samplers[r].next(logits[r], context[r], prompts[r].length + produced[r], produced[r]);
                    next[r] = tok;
                    context[r][prompts[r].length + produced[r]] = tok;
                    out[r][produced[r]++] = tok;
                    if (textEachStep) {
                        String delta = streams[r].push(tok);
                        int before = shown[r].length();
                        shown[r].append(delta);
                        reasons[r] = finishReason(tok, shown[r], before, params, produced[r], out[r], texts, r);
                        if (reasons[r] != null) {  // the last piece reaches the end of the whole text (or the cut)
                            if (texts[r] == null) texts[r] = decoder.apply(Arrays.copyOf(out[r], produced[r]));
                            delta = texts[r].length() > emittedChars[r] ? texts[r].substring(emittedChars[r]) : "";
                        }
                        emittedChars[r] += delta.length();
                        listener.onToken(r, tok, delta);
                    } else {
                        reasons[r] = finishReason(tok, null, 0, params, produced[r], out[r], texts, r);
                    }
                    if (reasons[r] == null) anyLive = true;
                }
                if (!anyLive) break;
                if (pipelined) continue;  // the next iteration's step is queued already
                if (picksOnDevice(graph)) {
                    if (params.repetitionPenalty() != 1.0) graph.markSeen(seenSoFar(context, prompts, produced));
                    graph.launchPick(next, nextPos, promptLen + s, pickAt(params, s + 1, samplers));
                    pipelined = true;
                    logits = null;
                } else if (picker != null && eosMaskFitsDevice()) {
                    // no graph: the step runs op by op, and its tokens are picked on the device all the same
                    try (Tensor stepLogits = stepLogits(b, cache, next, nextPos, promptLen + s, 1, pads, batch)) {
                        if (picked == null && params.repetitionPenalty() != 1.0) {  // the first device pick
                            picker.markSeen(seenSoFar(context, prompts, produced), stepLogits.dim(1));
                        }
                        picked = picker.pick(stepLogits, pickAt(params, s + 1, samplers));
                    }
                    logits = null;
                    steps++;
                } else {
                    picked = null;
                    logits = graph != null ? graph.step(next, nextPos, promptLen + s)
                            : step(b, cache, next, nextPos, promptLen + s, 1, pads, batch);
                    steps++;
                }
            }
            decode = System.nanoTime() - t1;
        }
        int[][] outputIds = new int[batch][];
        for (int r = 0; r < batch; r++) {
            outputIds[r] = Arrays.copyOf(out[r], produced[r]);
            if (texts[r] == null) texts[r] = decoder.apply(outputIds[r]);
            if (reasons[r] == null) reasons[r] = "length";
        }
        return new GenerationResult(outputIds, texts, reasons, prefill, decode, steps);
    }

    /**
     * Whether the next token of every row can be picked on the device ({@link DecodeGraph#launchPick}, all of
     * {@link Sampler#next}): a recorded graph that does it and no more EOS ids than the device masks.
     */
    private boolean picksOnDevice(DecodeGraph graph) {
        return graph != null && graph.picksOnDevice() && eosMaskFitsDevice();
    }

    /** Whether the device pick can mask every EOS id (it masks at most {@link DecodeGraph#MAX_EXCLUDED_IDS}). */
    private boolean eosMaskFitsDevice() { return eosIds.length <= DecodeGraph.MAX_EXCLUDED_IDS; }

    /** Each row's context so far (prompt without padding, then its generated tokens): the repetition penalty's ids. */
    private static int[][] seenSoFar(int[][] context, int[][] prompts, int[] produced) {
        int[][] seen = new int[context.length][];
        for (int r = 0; r < seen.length; r++) seen[r] = Arrays.copyOf(context[r], prompts[r].length + produced[r]);
        return seen;
    }

    /** A device token picker for steps without a graph, when the backend offers one. */
    private static TokenPicker tokenPicker(Backend b, int batch) {
        return b instanceof GraphCapable g ? g.newTokenPicker(batch) : null;
    }

    /** The device pick of iteration s's tokens: greedy, or sampled with each row's next draw. */
    private TokenPick pickAt(SamplingParams params, int s, Sampler[] samplers) {
        int[] excluded = excludedAt(params, s);
        float penalty = (float) params.repetitionPenalty();
        if (!params.doSample()) return TokenPick.greedy(excluded, penalty);
        double[] u = new double[samplers.length];
        for (int r = 0; r < u.length; r++) u[r] = samplers[r].drawUniform();
        return TokenPick.sampled(excluded, penalty, (float) params.temperature(), params.topK(), params.topP(), u);
    }

    /**
     * The ids Sampler#next masks before its argmax for the tokens of iteration s: every live row has produced s tokens
     * before them (one an iteration), so the EOS ids while s is below min_new_tokens, else none.
     */
    private int[] excludedAt(SamplingParams params, int s) {
        return s < params.minNewTokens() ? eosIds.clone() : new int[0];
    }

    /**
     * Returns why the row ends after this token, or null. shown: the row's streamed text, which grew from before chars
     * this step (null without stop strings); a stop string that appears in it cuts the row's text (the whole output
     * decoded at once) where the stop string starts.
     */
    private String finishReason(int tok, StringBuilder shown, int before, SamplingParams params, int produced,
                                int[] ids, String[] texts, int r) {
        for (String stop : params.stopStrings()) {
            int at = shown.indexOf(stop, Math.max(0, before - stop.length() + 1));  // only a new occurrence
            if (at >= 0) {
                String whole = decoder.apply(Arrays.copyOf(ids, produced));
                int cut = whole.indexOf(stop);
                texts[r] = cut >= 0 ? whole.substring(0, cut) : shown.substring(0, at);
                return "stop_string";
            }
        }
        for (int e : eosIds) if (tok == e) return "eos";
        if (produced >= params.maxNewTokens()) return "length";
        return null;
    }

    /**
     * A recorder of decode steps when the backend offers one (it records on its first step), else null: the
     * CPU runs every step directly. Not with "dynamic" RoPE scaling, whose frequency table changes with the
     * length (a recorded step would keep the old table).
     */
    private DecodeGraph decodeGraph(Backend b, KvCache cache, Tensor pads, int batch) {
        if (!(b instanceof GraphCapable g) || !g.decodeGraphsEnabled() || RopeScaling.dependsOnSeqLen(model.config())
                || model.cacheOffset(cache) > 0) { // graphs read the raw start slot: no prefix offset there
            return null;
        }
        return g.newDecodeGraph(batch, (ids, positions, start) -> {
            try (Tensor hidden = model.forward(ids, positions, cache, start, pads)) {
                return model.logits(hidden); // T = 1: every row is a last row, no gather needed
            }
        });
    }

    /** Runs T tokens per row through the model and returns the last position's logits [batch, vocab] (the backend's). */
    private Tensor stepLogits(Backend b, KvCache cache, int[] ids, int[] positions, int start, int t, Tensor pads,
                              int batch) {
        int[] lastRows = new int[batch];
        for (int r = 0; r < batch; r++) lastRows[r] = r * t + t - 1;
        try (Tensor idT = b.upload(Tensor.ofInts(ids, ids.length));
             Tensor posT = b.upload(Tensor.ofInts(positions, positions.length));
             Tensor hidden = model.forward(idT, posT, cache, start, pads);
             Tensor rows = b.upload(Tensor.ofInts(lastRows, batch));
             Tensor last = b.gatherRows(hidden, rows)) {
            return model.logits(last);
        }
    }

    /** Runs T tokens per row through the model and returns the last position's logits per row on the host. */
    private float[][] step(Backend b, KvCache cache, int[] ids, int[] positions, int start, int t, Tensor pads, int batch) {
        try (Tensor logits = stepLogits(b, cache, ids, positions, start, t, pads, batch)) {
            float[] flat = b.toHost(logits).toFloatArray();
            int vocab = logits.dim(1);
            float[][] perRow = new float[batch][];
            for (int r = 0; r < batch; r++) perRow[r] = Arrays.copyOfRange(flat, r * vocab, (r + 1) * vocab);
            return perRow;
        }
    }
}
