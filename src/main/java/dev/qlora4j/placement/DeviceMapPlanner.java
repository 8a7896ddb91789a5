package dev.qlora4j.placement;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Turns a device_map setting into a {@link PlacementPlan}, as accelerate's infer_auto_device_map does:
 *
 * <ul>
 *   <li>"sequential": fill GPU 0, then GPU 1, ..., then the host ("cpu"), then "disk" (with an offload folder);</li>
 *   <li>"balanced" (and "auto", as in accelerate): the decoder layers split evenly over the GPUs, the rest
 *       spilling to cpu, then disk;</li>
 *   <li>an explicit map {"model.embed_tokens": 0, "model.layers.0": 0, ..., "lm_head": "cpu"}: keys are module
 *       prefixes ("model" or "" cover everything, "model.layers" all layers; the longest matching key wins),
 *       values a GPU index, "cpu" or "disk"; a plain device ("cpu", "0") puts everything there.</li>
 * </ul>
 *
 * The embedding, final norm and LM head stay on a GPU when there is one (they run every step; the first GPU
 * takes the embedding, the last the norm and head). Each GPU's budget is max_memory for it, or its free memory
 * less the headroom for activations and the KV cache; when layers are offloaded, the GPU that runs them also
 * keeps two layer-sized slots their weights are streamed through.
 */
public final class DeviceMapPlanner {
    private DeviceMapPlanner() {}

    /**
     * What the planner may use.
     *
     * @param gpuFree     free bytes of each GPU (index = GPU ordinal); empty on the CPU backend
     * @param headroom    bytes each GPU keeps for activations and the KV cache when its budget comes from gpuFree
     * @param maxMemory   explicit budgets (override gpuFree - headroom; "cpu" limits the host)
     * @param diskAllowed whether an offload folder was given
     */
    public record Resources(long[] gpuFree, long headroom, MaxMemory maxMemory, boolean diskAllowed) {
        public int gpuCount() { return gpuFree.length; }

        long gpuBudget(int g) {
            Long m = maxMemory.limit(DeviceTarget.gpu(g));
            if (m != null) return m;
            // As accelerate: once max_memory names GPUs, the GPUs it does not name are not used.
            boolean namesGpus = maxMemory.limits().keySet().stream().anyMatch(t -> t instanceof DeviceTarget.Gpu);
            return namesGpus ? 0 : Math.max(0, gpuFree[g] - headroom);
        }

        long cpuBudget() {
            Long m = maxMemory.limit(DeviceTarget.CPU);
            return m != null ? m : Long.MAX_VALUE;
        }
    }

    public static PlacementPlan plan(String deviceMap, Map<String, Long> sizes, Resources res) {
        for (DeviceTarget t : res.maxMemory().limits().keySet()) {
            if (t instanceof DeviceTarget.Gpu g && g.index() >= res.gpuCount()) {
                throw new IllegalArgumentException("--max-memory names GPU " + g.index() + " but " + gpuCountText(res)
                        + ": use GPU indices 0.." + (res.gpuCount() - 1) + " or \"cpu\"");
            }
        }
        String s = deviceMap == null ? "auto" : deviceMap.trim();
        String lower = s.toLowerCase(Locale.ROOT);
        if (res.gpuCount() == 0 && !s.startsWith("{")) {
            // The CPU backend: everything is on the host already; the plan degenerates.
            Map<String, DeviceTarget> all = new LinkedHashMap<>();
            for (String m : sizes.keySet()) all.put(m, DeviceTarget.CPU);
            return new PlacementPlan(all, sizes, budgets(res), 0, lower);
        }
        return switch (lower) {
            case "auto", "balanced" -> fill(sizes, res, true, lower);
            case "sequential" -> fill(sizes, res, false, lower);
            default -> {
                if (s.startsWith("{")) yield explicit(parseJson(s), sizes, res);
                Map<String, DeviceTarget> all = new LinkedHashMap<>();
                all.put("", DeviceTarget.parse(s, "--device-map (auto, sequential, balanced, a device, or a JSON map)"));
                yield explicit(all, sizes, res);
            }
        };
    }

    // ---- automatic strategies ----

    private static PlacementPlan fill(Map<String, Long> sizes, Resources res, boolean balanced, String strategy) {
        int gpus = res.gpuCount();
        long[] left = new long[gpus];
        for (int g = 0; g < gpus; g++) left[g] = res.gpuBudget(g);
        Map<String, DeviceTarget> out = new LinkedHashMap<>();
        // GPUs with a zero budget (max_memory 0, or one this run does not use) take nothing.
        int first = 0, last = gpus - 1;
        while (first < gpus - 1 && left[first] == 0) first++;
        while (last > first && left[last] == 0) last--;
        // Modules that run every step (embedding, final norm, LM head) are placed first.
        putFixed(out, left, ModuleSizes.EMBED, sizes, first, res);
        putFixed(out, left, ModuleSizes.NORM, sizes, last, res);
        putFixed(out, left, ModuleSizes.LM_HEAD, sizes, last, res);
        List<String> layers = new ArrayList<>();
        for (String m : sizes.keySet()) if (!out.containsKey(m)) layers.add(m);
        long layerTotal = 0, maxLayer = 0;
        for (String m : layers) {
            layerTotal += sizes.get(m);
            maxLayer = Math.max(maxLayer, sizes.get(m));
        }
        long gpuTotal = 0;
        for (long l : left) gpuTotal += l;
        long slots = 0;
        if (layerTotal > gpuTotal) {
            // Some layers go to the host: the last GPU (which runs them, after its own layers) keeps two slots.
            slots = 2 * maxLayer;
            if (left[last] < slots) {
                throw new IllegalArgumentException("GPU " + last + " has " + MemorySize.format(left[last]) + " left for layers after the "
                        + "embedding, norm and LM head, less than the " + MemorySize.format(slots) + " (two layers) that streaming offloaded layers "
                        + "needs: raise --max-memory for GPU " + last + ", or load the model in 4-bit (--load-in-4bit)");
            }
            left[last] -= slots;
        }
        long[] cap = left.clone();
        int used = 0;
        for (long l : left) if (l > 0) used++;
        if (balanced && used > 1) {
            long share = (Math.min(layerTotal, sum(left)) + used - 1) / used;
            for (int g = 0; g < last; g++) cap[g] = Math.min(left[g], Math.max(share, maxLayer));
        }
        long cpuLeft = res.cpuBudget();
        int g = 0;
        for (String m : layers) {
            long n = sizes.get(m);
            while (g < gpus && cap[g] < n) g++;
            if (g < gpus) {
                cap[g] -= n;
                out.put(m, DeviceTarget.gpu(g));
            } else if (cpuLeft >= n) {
                cpuLeft -= n;
                out.put(m, DeviceTarget.CPU);
            } else if (res.diskAllowed()) {
                out.put(m, DeviceTarget.DISK);
            } else {
                throw new IllegalArgumentException(m + " (" + MemorySize.format(n) + ") fits neither the GPUs nor the host's --max-memory \"cpu\" ("
                        + MemorySize.format(res.cpuBudget()) + "): pass --offload-folder DIR to put the remaining layers on disk, "
                        + "raise --max-memory, or load in 4-bit (--load-in-4bit)");
            }
        }
        Map<String, DeviceTarget> ordered = new LinkedHashMap<>();
        for (String m : sizes.keySet()) ordered.put(m, out.get(m));
        return new PlacementPlan(ordered, sizes, budgets(res), slots, strategy);
    }

    private static void putFixed(Map<String, DeviceTarget> out, long[] left, String module, Map<String, Long> sizes, int gpu,
                                 Resources res) {
        Long n = sizes.get(module);
        if (n == null) return;
        if (left[gpu] < n) {
            throw new IllegalArgumentException(module + " (" + MemorySize.format(n) + ") does not fit GPU " + gpu + " (budget "
                    + MemorySize.format(res.gpuBudget(gpu)) + ", " + MemorySize.format(left[gpu]) + " left): it runs every step and "
                    + "stays on a GPU; raise --max-memory for GPU " + gpu + " or free GPU memory");
        }
        left[gpu] -= n;
        out.put(module, DeviceTarget.gpu(gpu));
    }

    private static long sum(long[] a) {
        long s = 0;
        for (long x : a) s += x;
        return s;
    }

    // ---- explicit maps ----

    static Map<String, DeviceTarget> parseJson(String json) {
        JsonNode root;
        try {
            root = new ObjectMapper().readTree(json);
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalArgumentException("--device-map: not valid JSON (" + e.getOriginalMessage()
                    + "); write it like {\"model.embed_tokens\":0,\"model.layers.0\":0,\"lm_head\":\"cpu\"}");
        }
        Map<String, DeviceTarget> m = new LinkedHashMap<>();
        for (var it = root.fields(); it.hasNext(); ) {
            var e = it.next();
            m.put(e.getKey(), DeviceTarget.parse(e.getValue().asText(), "--device-map value of \"" + e.getKey() + "\""));
        }
        return m;
    }

    private static PlacementPlan explicit(Map<String, DeviceTarget> map, Map<String, Long> sizes, Resources res) {
        for (String key : map.keySet()) {
            boolean known = key.isEmpty() || sizes.keySet().stream().anyMatch(m -> m.equals(key) || m.startsWith(key + "."));
            if (!known) {
                String inside = sizes.keySet().stream().filter(m -> key.startsWith(m + ".")).findFirst().orElse(null);
                throw new IllegalArgumentException("--device-map names unknown module \"" + key + "\": " + (inside != null
                        ? "placement is per module (" + inside + " moves as a whole); use \"" + inside + "\""
                        : "the model's modules are model.embed_tokens, model.layers.0.." + (layerCount(sizes) - 1)
                        + ", model.norm and lm_head (prefixes like \"model.layers\" or \"model\" cover several)"));
            }
        }
        Map<String, DeviceTarget> out = new LinkedHashMap<>();
        for (String m : sizes.keySet()) {
            String best = null;
            for (String key : map.keySet()) {
                boolean covers = key.isEmpty() || m.equals(key) || m.startsWith(key + ".");
                if (covers && (best == null || key.length() > best.length())) best = key;
            }
            if (best == null) {
                throw new IllegalArgumentException("--device-map does not place " + m + ": add \"" + m + "\": <GPU index | \"cpu\" | \"disk\"> "
                        + "(or a prefix that covers it, like \"model\")");
            }
            DeviceTarget t = map.get(best);
            if (t instanceof DeviceTarget.Gpu g && g.index() >= res.gpuCount()) {
                throw new IllegalArgumentException("--device-map puts " + m + " on GPU " + g.index() + " but " + gpuCountText(res)
                        + (res.gpuCount() == 0 ? ": use \"cpu\"" : ": use GPU indices 0.." + (res.gpuCount() - 1) + ", \"cpu\" or \"disk\""));
            }
            if (t instanceof DeviceTarget.Disk && !res.diskAllowed()) {
                throw new IllegalArgumentException("--device-map puts " + m + " on \"disk\" but no --offload-folder was given: pass "
                        + "--offload-folder DIR (a folder with room for the offloaded weights)");
            }
            out.put(m, t);
        }
        long slots = 0;
        boolean offloadedLayers = false;
        long maxOffloaded = 0;
        for (var e : out.entrySet()) {
            if (e.getValue().offloaded() && PlacementPlan.layerIndex(e.getKey()) >= 0) {
                offloadedLayers = true;
                maxOffloaded = Math.max(maxOffloaded, sizes.get(e.getKey()));
            }
        }
        if (offloadedLayers && res.gpuCount() > 0) slots = 2 * maxOffloaded;
        PlacementPlan plan = new PlacementPlan(out, sizes, budgets(res), slots, "explicit");
        checkBudgets(plan, res);
        return plan;
    }

    private static void checkBudgets(PlacementPlan plan, Resources res) {
        List<Integer> gpus = plan.gpus();
        int streamingGpu = gpus.isEmpty() ? 0 : gpus.get(gpus.size() - 1);
        for (int g = 0; g < res.gpuCount(); g++) {
            DeviceTarget t = DeviceTarget.gpu(g);
            long need = plan.bytesOn(t) + (g == streamingGpu ? plan.slotBytes() : 0);
            long budget = res.gpuBudget(g);
            if (need > budget) {
                throw new IllegalArgumentException("--device-map puts " + MemorySize.format(need) + " of weights on GPU " + g
                        + (g == streamingGpu && plan.slotBytes() > 0 ? " (with " + MemorySize.format(plan.slotBytes()) + " of slots for streaming offloaded layers)" : "")
                        + " but its budget is " + MemorySize.format(budget)
                        + (res.maxMemory().limit(t) != null ? " (--max-memory)" : " (free memory less " + MemorySize.format(res.headroom()) + " headroom for activations)")
                        + ": move some layers to \"cpu\" (e.g. \"model.layers." + lastLayerOn(plan, t) + "\": \"cpu\"), raise --max-memory for GPU "
                        + g + ", or use --device-map auto");
            }
        }
        long cpu = plan.bytesOn(DeviceTarget.CPU);
        if (cpu > res.cpuBudget()) {
            throw new IllegalArgumentException("--device-map puts " + MemorySize.format(cpu) + " on \"cpu\" but --max-memory allows "
                    + MemorySize.format(res.cpuBudget()) + ": move layers to \"disk\" (with --offload-folder), or raise --max-memory \"cpu\"");
        }
    }

    private static int lastLayerOn(PlacementPlan plan, DeviceTarget t) {
        int last = 0;
        for (var e : plan.targets().entrySet()) {
            int i = PlacementPlan.layerIndex(e.getKey());
            if (i >= 0 && e.getValue().equals(t)) last = i;
        }
        return last;
    }

    private static int layerCount(Map<String, Long> sizes) {
        int n = 0;
        for (String m : sizes.keySet()) if (PlacementPlan.layerIndex(m) >= 0) n++;
        return n;
    }

    private static String gpuCountText(Resources res) {
        return res.gpuCount() == 0 ? "this run has no GPU (CPU backend)" : "this machine has " + res.gpuCount() + " GPU(s)";
    }

    private static Map<DeviceTarget, Long> budgets(Resources res) {
        Map<DeviceTarget, Long> b = new LinkedHashMap<>();
        for (int g = 0; g < res.gpuCount(); g++) b.put(DeviceTarget.gpu(g), res.gpuBudget(g));
        if (res.maxMemory().limit(DeviceTarget.CPU) != null) b.put(DeviceTarget.CPU, res.cpuBudget());
        return b;
    }
}
