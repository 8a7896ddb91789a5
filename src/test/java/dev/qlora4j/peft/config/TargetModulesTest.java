package dev.qlora4j.peft.config;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TargetModulesTest {
    static final List<String> PROJ = List.of("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj");

    /** The linear layers of a 4-layer Llama, in named_modules() order. */
    static List<String> llama(int layers) {
        List<String> out = new ArrayList<>();
        for (int l = 0; l < layers; l++) for (String p : PROJ) out.add("model.layers." + l + "." + p);
        out.add("lm_head");
        return out;
    }

    static List<String> paths(int[] layers, String... suffixes) {
        List<String> out = new ArrayList<>();
        for (int l : layers) for (String s : suffixes) out.add("model.layers." + l + "." + s);
        return out;
    }

    @Test
    void namesMatchBySuffix() {
        var sel = TargetModules.select(LoraConfig.of(8, 16, "q_proj", "v_proj"), llama(4));
        assertEquals(paths(new int[] {0, 1, 2, 3}, "self_attn.q_proj", "self_attn.v_proj"), sel.targeted());
        assertEquals(List.of(), sel.excluded());
        assertEquals(29 - 8, sel.unmatched().size());
        // a dotted suffix of more than one component works too; a partial component does not
        assertEquals(paths(new int[] {0, 1, 2, 3}, "mlp.up_proj"),
                TargetModules.select(LoraConfig.of(8, 16, "mlp.up_proj", "p_proj"), llama(4)).targeted());
    }

    @Test
    void regexMustMatchTheWholePath() {
        LoraConfig c = LoraConfig.builder().targetModules(ModuleSelector.regex(".*\\.(q|v)_proj")).build();
        assertEquals(paths(new int[] {0, 1, 2, 3}, "self_attn.q_proj", "self_attn.v_proj"), TargetModules.select(c, llama(4)).targeted());
        LoraConfig layer2 = LoraConfig.builder().targetModules(ModuleSelector.regex("model\\.layers\\.2\\.mlp\\..*")).build();
        assertEquals(paths(new int[] {2}, "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), TargetModules.select(layer2, llama(4)).targeted());
        // re.fullmatch: "q_proj" alone matches no full path
        LoraConfig partial = LoraConfig.builder().targetModules(ModuleSelector.regex("q_proj")).build();
        assertThrows(IllegalArgumentException.class, () -> TargetModules.select(partial, llama(4)));
    }

    @Test
    void allLinearTakesEveryLinearButTheOutputHead() {
        LoraConfig c = LoraConfig.builder().targetModules(ModuleSelector.allLinear()).build();
        var sel = TargetModules.select(c, llama(4));
        assertEquals(28, sel.targeted().size());
        assertEquals(List.of("lm_head"), sel.unmatched());
        var custom = TargetModules.select(c, List.of("a.fc1", "a.fc2", "head"), "head");
        assertEquals(List.of("a.fc1", "a.fc2"), custom.targeted());
    }

    @Test
    void excludeModulesComeFirst() {
        LoraConfig byName = LoraConfig.builder().targetModules(ModuleSelector.allLinear()).excludeModules(ModuleSelector.names("down_proj")).build();
        var sel = TargetModules.select(byName, llama(4));
        assertEquals(24, sel.targeted().size());
        assertEquals(paths(new int[] {0, 1, 2, 3}, "mlp.down_proj"), sel.excluded());

        LoraConfig byRegex = LoraConfig.builder().targetModules("q_proj", "v_proj")
                .excludeModules(ModuleSelector.regex("model\\.layers\\.0\\..*")).build();
        sel = TargetModules.select(byRegex, llama(4));
        assertEquals(paths(new int[] {1, 2, 3}, "self_attn.q_proj", "self_attn.v_proj"), sel.targeted());
        assertEquals(paths(new int[] {0}, PROJ.toArray(String[]::new)), sel.excluded());
    }

    @Test
    void modulesToSaveAreNeverAdapted() {
        LoraConfig c = LoraConfig.builder().targetModules("q_proj", "lm_head").modulesToSave(List.of("lm_head")).build();
        var sel = TargetModules.select(c, llama(2));
        assertEquals(List.of("lm_head"), sel.excluded());
        assertEquals(paths(new int[] {0, 1}, "self_attn.q_proj"), sel.targeted());
    }

    @Test
    void layersToTransformWithAndWithoutPattern() {
        for (List<String> pattern : java.util.Arrays.asList(null, List.of("layers"), List.of("h", "layers"))) {
            LoraConfig c = LoraConfig.builder().targetModules("q_proj", "v_proj").layersToTransform(List.of(1, 3)).layersPattern(pattern).build();
            assertEquals(paths(new int[] {1, 3}, "self_attn.q_proj", "self_attn.v_proj"), TargetModules.select(c, llama(4)).targeted(),
                    "pattern " + pattern);
        }
        // peft quirk mirrored: a target equal to the full path is taken without the layer check
        LoraConfig exact = LoraConfig.builder().targetModules("model.layers.2.mlp.down_proj", "q_proj").layersToTransform(List.of(0)).build();
        assertEquals(List.of("model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"), TargetModules.select(exact, llama(4)).targeted());
    }

    @Test
    void layerIndexExtraction() {
        assertEquals(12, TargetModules.layerIndex("model.layers.12.self_attn.q_proj", null));
        assertEquals(3, TargetModules.layerIndex("transformer.h.3.attn.c_attn", List.of("h")));
        assertEquals(7, TargetModules.layerIndex("model.layers.1.mlp.experts.7.w1", null), "greedy: the last NAME.NUMBER.");
        assertEquals(1, TargetModules.layerIndex("model.layers.1.mlp.experts.7.w1", List.of("layers")));
        assertNull(TargetModules.layerIndex("lm_head", null));
        assertNull(TargetModules.layerIndex("layers.0.q_proj", List.of("layers")), "peft needs a dot before the pattern");
    }

    @Test
    void notFoundErrorSaysWhatExists() {
        var e = assertThrows(IllegalArgumentException.class, () -> TargetModules.select(LoraConfig.of(8, 16, "query", "value"), llama(4)));
        String m = e.getMessage();
        assertTrue(m.startsWith("Target modules {'query', 'value'} not found in the base model. Please check the target modules and try again."), m);
        assertTrue(m.contains("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"), m);
        assertTrue(m.contains("model.layers.0.self_attn.q_proj"), m);
        assertTrue(m.contains("\"all-linear\""), m);

        LoraConfig layers = LoraConfig.builder().targetModules("q_proj").layersToTransform(List.of(9)).layersPattern(List.of("layers")).build();
        m = assertThrows(IllegalArgumentException.class, () -> TargetModules.select(layers, llama(4))).getMessage();
        assertTrue(m.contains("Note: You specified 'layers_to_transform': [9]. You also specified 'layers_pattern': ['layers']."), m);
        assertTrue(m.contains("layer indices found with this layers_pattern are 0..3"), m);

        LoraConfig allOut = LoraConfig.builder().targetModules(ModuleSelector.allLinear()).excludeModules(ModuleSelector.regex(".*")).build();
        m = assertThrows(IllegalArgumentException.class, () -> TargetModules.select(allOut, List.of("model.layers.0.mlp.up_proj"))).getMessage();
        assertTrue(m.startsWith("All modules were excluded."), m);

        LoraConfig mixed = LoraConfig.builder().targetModules("q_proj").excludeModules(ModuleSelector.names("q_proj")).build();
        m = assertThrows(IllegalArgumentException.class, () -> TargetModules.select(mixed, llama(1))).getMessage();
        assertTrue(m.startsWith("No modules were targeted for adaptation."), m);
    }

    @Test
    void missingTargetsUseTheModelTypeDefault() {
        LoraConfig c = TargetModules.resolve(LoraConfig.builder().build(), "llama");
        assertEquals(ModuleSelector.names("q_proj", "v_proj"), c.targetModules());
        assertEquals(8, TargetModules.select(c, llama(4)).targeted().size());
        var e = assertThrows(IllegalArgumentException.class, () -> TargetModules.resolve(LoraConfig.builder().build(), "mamba"));
        assertTrue(e.getMessage().startsWith("Please specify `target_modules` in `peft_config`"), e.getMessage());
        assertThrows(IllegalStateException.class, () -> TargetModules.check(LoraConfig.builder().build(), "lm_head"));
    }
}
