package dev.qlora4j.cli;

import dev.qlora4j.CausalLM;
import dev.qlora4j.peft.PeftModel;
import picocli.CommandLine.Option;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** --adapter [NAME=]DIR (repeatable) and --merge, for commands that run a model with adapters. */
public final class AdapterOptions {
    @Option(names = "--adapter", paramLabel = "[NAME=]DIR",
            description = "A peft adapter folder (adapter_config.json + adapter_model.safetensors) to apply; repeatable, "
                    + "optionally named (all given adapters are active together).")
    List<String> adapters = new ArrayList<>();

    @Option(names = "--merge", description = "Merge the adapters into the base weights (merge_and_unload) before running.")
    boolean merge;

    /** Loads the adapters onto lm (as peft's PeftModel.from_pretrained / load_adapter), merged if asked; null when none. */
    PeftModel apply(CausalLM lm) {
        if (adapters.isEmpty()) {
            if (merge) throw new IllegalArgumentException("--merge needs at least one --adapter DIR");
            return null;
        }
        PeftModel peft = null;
        List<String> names = new ArrayList<>();
        for (int i = 0; i < adapters.size(); i++) {
            String spec = adapters.get(i);
            int eq = spec.indexOf('=');
            String name = eq > 0 ? spec.substring(0, eq) : (i == 0 ? PeftModel.DEFAULT_ADAPTER : "adapter" + i);
            Path dir = Path.of(eq > 0 ? spec.substring(eq + 1) : spec);
            String type = dev.qlora4j.peft.config.PeftConfigs.load(dir).peftType();
            if (!type.equals("LORA")) {
                // one non-LoRA adapter at a time: bottleneck hooks, or a prefix/prompt in the KV cache
                if (adapters.size() > 1 || merge) {
                    throw new IllegalArgumentException(dir + " is a " + type + " adapter: it runs alone and cannot be merged");
                }
                var model = lm.model();
                switch (type) {
                    case "BOTTLENECK" -> model.setHooks(dev.qlora4j.peft.BottleneckModel.load(dir, lm.backend(),
                            model.numLayers(), model.config().hiddenSize()));
                    case "PREFIX_TUNING" -> dev.qlora4j.peft.prefix.PrefixTuning.load(dir, model).attach();
                    case "PROMPT_TUNING" -> dev.qlora4j.peft.prefix.PromptTuning.load(dir, model).attach();
                    default -> throw new IllegalArgumentException(dir + ": adapter type " + type + " is not supported");
                }
                return null;
            }
            if (peft == null) peft = PeftModel.fromPretrained(lm, dir, name, false);
            else peft.loadAdapter(dir, name, false);
            names.add(name);
        }
        peft.setAdapters(names);
        if (merge) peft.mergeAndUnload();
        return peft;
    }
}
