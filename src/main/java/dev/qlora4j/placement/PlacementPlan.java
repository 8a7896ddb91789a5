package dev.qlora4j.placement;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeSet;

/**
 * A resolved device map: every top-level module (model.embed_tokens, model.layers.N, model.norm, lm_head)
 * with its target and size, plus the budgets it was checked against.
 *
 * @param targets    module -> device, in model order
 * @param sizes      module -> bytes on a GPU (quantized sizes for 4/8-bit)
 * @param budgets    the weight budget of each device that has one (GPUs, and the host when max_memory names it)
 * @param slotBytes  GPU memory reserved for streaming offloaded layers (two layer slots), 0 when none is offloaded
 * @param strategy   how it was made: auto, sequential, balanced, explicit
 */
public record PlacementPlan(Map<String, DeviceTarget> targets, Map<String, Long> sizes, Map<DeviceTarget, Long> budgets,
                            long slotBytes, String strategy) {
    public PlacementPlan {
        targets = Collections.unmodifiableMap(new LinkedHashMap<>(targets));
        sizes = Collections.unmodifiableMap(new LinkedHashMap<>(sizes));
        budgets = Collections.unmodifiableMap(new LinkedHashMap<>(budgets));
    }

    public DeviceTarget target(String module) {
        DeviceTarget t = targets.get(module);
        if (t == null) throw new IllegalArgumentException("the placement plan has no module " + module);
        return t;
    }

    public DeviceTarget layerTarget(int layer) { return target(ModuleSizes.layer(layer)); }

    /** Decoder layers placed on cpu or disk, in order. */
    public List<Integer> offloadedLayers() {
        List<Integer> out = new ArrayList<>();
        for (int i = 0; targets.containsKey(ModuleSizes.layer(i)); i++) if (layerTarget(i).offloaded()) out.add(i);
        return out;
    }

    /** GPU indices used, ascending. */
    public List<Integer> gpus() {
        TreeSet<Integer> s = new TreeSet<>();
        for (DeviceTarget t : targets.values()) if (t instanceof DeviceTarget.Gpu g) s.add(g.index());
        return List.copyOf(s);
    }

    public boolean anyOn(DeviceTarget t) { return targets.containsValue(t); }

    /** Bytes of weights placed on a device. */
    public long bytesOn(DeviceTarget t) {
        long n = 0;
        for (var e : targets.entrySet()) if (e.getValue().equals(t)) n += sizes.get(e.getKey());
        return n;
    }

    /** The plan as a table (module, device, size) with consecutive layers on one device folded into one row, then totals. */
    public String table() {
        StringBuilder sb = new StringBuilder();
        sb.append(String.format(Locale.ROOT, "device map (%s)%n", strategy));
        sb.append(String.format(Locale.ROOT, "  %-34s %-6s %12s%n", "module", "device", "size"));
        List<String> names = new ArrayList<>(targets.keySet());
        for (int i = 0; i < names.size(); ) {
            String m = names.get(i);
            DeviceTarget t = targets.get(m);
            int j = i;
            long bytes = 0;
            while (j < names.size() && layerIndex(names.get(j)) >= 0 && layerIndex(m) >= 0 && targets.get(names.get(j)).equals(t)) {
                bytes += sizes.get(names.get(j));
                j++;
            }
            String label;
            if (j > i + 1) {
                label = "model.layers." + layerIndex(m) + "-" + layerIndex(names.get(j - 1));
            } else {
                j = i + 1;
                bytes = sizes.get(m);
                label = m;
            }
            sb.append(String.format(Locale.ROOT, "  %-34s %-6s %12s%n", label, t, MemorySize.format(bytes)));
            i = j;
        }
        sb.append("  totals:");
        for (DeviceTarget t : devicesInOrder()) {
            Long budget = budgets.get(t);
            sb.append(' ').append(t).append(' ').append(MemorySize.format(bytesOn(t)));
            if (budget != null) sb.append(" of ").append(MemorySize.format(budget));
            sb.append(';');
        }
        if (slotBytes > 0) sb.append(" streaming slots on the GPU ").append(MemorySize.format(slotBytes)).append(';');
        sb.setLength(sb.length() - 1);
        return sb.append(System.lineSeparator()).toString();
    }

    private List<DeviceTarget> devicesInOrder() {
        List<DeviceTarget> out = new ArrayList<>();
        for (int g : gpus()) out.add(DeviceTarget.gpu(g));
        if (anyOn(DeviceTarget.CPU)) out.add(DeviceTarget.CPU);
        if (anyOn(DeviceTarget.DISK)) out.add(DeviceTarget.DISK);
        return out;
    }

    static int layerIndex(String module) {
        String p = "model.layers.";
        if (!module.startsWith(p)) return -1;
        try {
            return Integer.parseInt(module.substring(p.length()));
        } catch (NumberFormatException e) {
            return -1;
        }
    }
}
