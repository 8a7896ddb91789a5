package dev.qlora4j.cli;

import dev.qlora4j.CausalLM;
import dev.qlora4j.infer.GenerationConfig;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.io.PrintStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;

/** qlora4j generate: text continuation, streamed to the terminal (or one JSON object with --json). */
@Command(name = "generate", mixinStandardHelpOptions = true, description = "Generate text from a prompt.")
public final class GenerateCommand implements Callable<Integer> {
    @Mixin ModelOptions modelOptions;
    @Mixin AdapterOptions adapterOptions;

    @Option(names = "--prompt", paramLabel = "TEXT", required = true,
            description = "Prompt text; repeat for a batch.")
    List<String> prompts;

    @Option(names = "--max-new-tokens", defaultValue = "64") int maxNewTokens;
    @Option(names = "--min-new-tokens", defaultValue = "0") int minNewTokens;
    @Option(names = "--greedy", description = "Greedy decoding (the default unless generation_config.json samples).")
    boolean greedy;
    @Option(names = "--temperature", description = "Sampling temperature (implies sampling).") Double temperature;
    @Option(names = "--top-k") Integer topK;
    @Option(names = "--top-p") Double topP;
    @Option(names = "--repetition-penalty") Double repetitionPenalty;
    @Option(names = "--seed", defaultValue = "0") long seed;
    @Option(names = "--stop", paramLabel = "TEXT", description = "Stop string; repeatable.") List<String> stops;
    @Option(names = "--json", description = "Print one JSON object with prompt_ids, output_ids and text.") boolean json;

    @Override
    public Integer call() {
        PrintStream out = System.out;
        try (CausalLM lm = modelOptions.load()) {
            adapterOptions.apply(lm);
            SamplingParams params = samplingParams(lm.generationConfig());
            int[][] ids = new int[prompts.size()][];
            for (int i = 0; i < ids.length; i++) ids[i] = lm.tokenizer().encode(prompts.get(i), true);
            boolean stream = !json && prompts.size() == 1;
            if (stream) out.print(prompts.get(0));
            TokenListener listener = stream ? (row, tok, text) -> { out.print(text); out.flush(); } : TokenListener.NONE;
            GenerationResult r = lm.generateIds(ids, params, listener);
            if (json) {
                out.println(Json.write(jsonResult(ids, r)));
            } else if (stream) {
                out.println();
                System.err.printf("[%d tokens, %s, prefill %.1f ms, decode %.1f tokens/s on %s]%n",
                        r.outputIds()[0].length, r.stopReasons()[0], r.prefillNanos() / 1e6,
                        r.decodeTokensPerSecond(), lm.backend().device());
            } else {
                for (int i = 0; i < prompts.size(); i++) out.println(prompts.get(i) + r.texts()[i]);
            }
        }
        return 0;
    }

    private Object jsonResult(int[][] ids, GenerationResult r) {
        List<Map<String, Object>> rows = new ArrayList<>();
        for (int i = 0; i < ids.length; i++) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("prompt", prompts.get(i));
            m.put("prompt_ids", ids[i]);
            m.put("output_ids", r.outputIds()[i]);
            m.put("text", r.texts()[i]);
            m.put("stop_reason", r.stopReasons()[i]);
            rows.add(m);
        }
        if (rows.size() == 1) return rows.get(0);
        return Map.of("results", rows);
    }

    /** Flags win over generation_config.json, which wins over transformers' defaults. */
    SamplingParams samplingParams(GenerationConfig g) {
        boolean sample = !greedy && (temperature != null || topK != null || topP != null || g.doSample());
        return new SamplingParams(maxNewTokens, minNewTokens, sample,
                temperature != null ? temperature : g.temperature(),
                topK != null ? topK : g.topK(),
                topP != null ? topP : g.topP(),
                repetitionPenalty != null ? repetitionPenalty : g.repetitionPenalty(),
                seed, stops);
    }
}
