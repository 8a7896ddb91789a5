package dev.qlora4j.placement;

import dev.qlora4j.Golden;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import org.junit.jupiter.api.Test;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The planner on made-up module sizes (embedding 100 B, four layers of 50 B, norm 1 B, head 100 B), so every
 * placement can be worked out by hand; the sizes of real configs are checked against the formulas.
 */
class DeviceMapPlannerTest {
    static Map<String, Long> sizes() {
        Map<String, Long> s = new LinkedHashMap<>();
        s.put("model.embed_tokens", 100L);
        for (int i = 0; i < 4; i++) s.put("model.layers." + i, 50L);
        s.put("model.norm", 1L);
        s.put("lm_head", 100L);
        return s;
    }

    static DeviceMapPlanner.Resources gpus(String maxMemory, boolean disk, long... free) {
        return new DeviceMapPlanner.Resources(free, 0, MaxMemory.parse(maxMemory), disk);
    }

    static List<String> targets(PlacementPlan p) {
        return p.targets().values().stream().map(Object::toString).toList();
    }

    @Test
    void memorySizesParseAsAccelerateWritesThem() {
        assertEquals(20L << 30, MemorySize.parse("20GiB", "x"));
        assertEquals(500_000_000L, MemorySize.parse("500MB", "x"));
        assertEquals(1_500_000_000L, MemorySize.parse("1.5GB", "x"));
        assertEquals(4096L, MemorySize.parse("4096", "x"));
        assertEquals(3L << 20, MemorySize.parse(" 3 mib ", "x"));
        var e = assertThrows(IllegalArgumentException.class, () -> MemorySize.parse("20 gigs", "--max-memory \"0\""));
        assertTrue(e.getMessage().contains("--max-memory \"0\"") && e.getMessage().contains("20GiB"), e.getMessage());
        assertEquals("1.50 GiB", MemorySize.format(3L << 29));
    }

    @Test
    void maxMemoryJsonTakesSizesAndBytes() {
        MaxMemory m = MaxMemory.parse("{\"0\":\"20GiB\",\"cuda:1\":1000,\"cpu\":\"64GiB\"}");
        assertEquals(20L << 30, m.limit(DeviceTarget.gpu(0)));
        assertEquals(1000L, m.limit(DeviceTarget.gpu(1)));
        assertEquals(64L << 30, m.limit(DeviceTarget.CPU));
        var e = assertThrows(IllegalArgumentException.class, () -> MaxMemory.parse("{\"gpu\":\"1GiB\"}"));
        assertTrue(e.getMessage().contains("'gpu' is not a device"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> MaxMemory.parse("[1]"));
    }

    @Test
    void sequentialFillsTheGpuAndReservesTwoSlotsBeforeSpillingToCpu() {
        // 400 B: embedding + norm + head take 201, layers need 200 > 199, so two 50 B slots are kept: 99 B left = 1 layer.
        PlacementPlan p = DeviceMapPlanner.plan("sequential", sizes(), gpus("{\"0\":400}", false, 1 << 20));
        assertEquals(List.of("0", "0", "cpu", "cpu", "cpu", "0", "0"), targets(p));
        assertEquals(100, p.slotBytes());
        assertEquals(List.of(1, 2, 3), p.offloadedLayers());
        assertTrue(p.table().contains("model.layers.1-3"), p.table());
        // Everything fits: no slots.
        PlacementPlan all = DeviceMapPlanner.plan("sequential", sizes(), gpus(null, false, 1000));
        assertEquals(0, all.slotBytes());
        assertTrue(all.offloadedLayers().isEmpty());
    }

    @Test
    void cpuBudgetSpillsToDiskOnlyWithAnOffloadFolder() {
        String max = "{\"0\":400,\"cpu\":60}";
        PlacementPlan p = DeviceMapPlanner.plan("sequential", sizes(), gpus(max, true, 1 << 20));
        assertEquals(List.of("0", "0", "cpu", "disk", "disk", "0", "0"), targets(p));
        var e = assertThrows(IllegalArgumentException.class, () -> DeviceMapPlanner.plan("sequential", sizes(), gpus(max, false, 1 << 20)));
        assertTrue(e.getMessage().contains("--offload-folder"), e.getMessage());
    }

    @Test
    void balancedAndAutoSplitLayersEvenlyOverGpus() {
        PlacementPlan b = DeviceMapPlanner.plan("balanced", sizes(), gpus(null, false, 1000, 1000));
        assertEquals(List.of("0", "0", "0", "1", "1", "1", "1"), targets(b));
        assertEquals(targets(b), targets(DeviceMapPlanner.plan("auto", sizes(), gpus(null, false, 1000, 1000))));
        // Sequential puts every layer on GPU 0 while it has room.
        assertEquals(List.of("0", "0", "0", "0", "0", "1", "1"),
                targets(DeviceMapPlanner.plan("sequential", sizes(), gpus(null, false, 1000, 1000))));
        // A GPU with a zero budget takes nothing.
        assertEquals(List.of("1", "1", "1", "1", "1", "1", "1"),
                targets(DeviceMapPlanner.plan("auto", sizes(), gpus("{\"0\":0,\"1\":1000}", false, 1000, 1000))));
        // As accelerate: once max_memory names GPUs, only those are used (the rest of the model goes to the host).
        List<String> onlyGpu0 = targets(DeviceMapPlanner.plan("auto", sizes(), gpus("{\"0\":400}", false, 1000, 1000)));
        assertTrue(!onlyGpu0.contains("1") && onlyGpu0.contains("cpu"), onlyGpu0.toString());
    }

    @Test
    void headroomComesOffFreeMemory() {
        var r = new DeviceMapPlanner.Resources(new long[] {500}, 100, MaxMemory.NONE, false); // budget 400
        assertEquals(List.of("0", "0", "cpu", "cpu", "cpu", "0", "0"), targets(DeviceMapPlanner.plan("auto", sizes(), r)));
    }

    @Test
    void explicitMapsUseTheLongestPrefix() {
        PlacementPlan p = DeviceMapPlanner.plan("{\"model\":0,\"model.layers.3\":\"cpu\",\"lm_head\":0}", sizes(), gpus(null, false, 1000));
        assertEquals(List.of("0", "0", "0", "0", "cpu", "0", "0"), targets(p));
        assertEquals(100, p.slotBytes());
        assertEquals("explicit", p.strategy());
        PlacementPlan everything = DeviceMapPlanner.plan("cpu", sizes(), gpus(null, false, 1000));
        assertTrue(everything.targets().values().stream().allMatch(t -> t.equals(DeviceTarget.CPU)));
    }

    @Test
    void explicitMapErrorsSayWhatToDo() {
        var unknown = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"model\":0,\"model.layerz.1\":\"cpu\"}", sizes(), gpus(null, false, 1000)));
        assertTrue(unknown.getMessage().contains("unknown module \"model.layerz.1\"") && unknown.getMessage().contains("model.layers.0..3"),
                unknown.getMessage());
        var inside = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"model\":0,\"lm_head\":0,\"model.layers.1.mlp\":\"cpu\"}", sizes(), gpus(null, false, 1000)));
        assertTrue(inside.getMessage().contains("use \"model.layers.1\""), inside.getMessage());
        var missing = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"model\":0}", sizes(), gpus(null, false, 1000)));
        assertTrue(missing.getMessage().contains("does not place lm_head"), missing.getMessage());
        var over = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"\":0}", sizes(), gpus("{\"0\":300}", false, 1000)));
        assertTrue(over.getMessage().contains("budget is 300 B (--max-memory)") && over.getMessage().contains("\"model.layers.3\": \"cpu\""),
                over.getMessage());
        var disk = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"\":0,\"model.layers.2\":\"disk\"}", sizes(), gpus(null, false, 1000)));
        assertTrue(disk.getMessage().contains("--offload-folder"), disk.getMessage());
        var gpu = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"\":1}", sizes(), gpus(null, false, 1000)));
        assertTrue(gpu.getMessage().contains("1 GPU(s)"), gpu.getMessage());
        var cpuOnly = assertThrows(IllegalArgumentException.class,
                () -> DeviceMapPlanner.plan("{\"\":0}", sizes(), gpus(null, false)));
        assertTrue(cpuOnly.getMessage().contains("no GPU") && cpuOnly.getMessage().contains("\"cpu\""), cpuOnly.getMessage());
        var bad = assertThrows(IllegalArgumentException.class, () -> DeviceMapPlanner.plan("{\"\":\"tpu\"}", sizes(), gpus(null, false, 1)));
        assertTrue(bad.getMessage().contains("'tpu' is not a device"), bad.getMessage());
    }

    @Test
    void cpuBackendPlansDegenerateToCpu() {
        PlacementPlan p = DeviceMapPlanner.plan("auto", sizes(), gpus(null, false));
        assertTrue(p.targets().values().stream().allMatch(t -> t.equals(DeviceTarget.CPU)));
        assertEquals(0, p.slotBytes());
    }

    @Test
    void moduleSizesFollowTheStoredFormats() throws Exception {
        ModelConfig c = ModelConfig.load(Golden.dir("llama-f32"));
        int h = c.hiddenSize(), in = c.intermediateSize(), q = c.numAttentionHeads() * c.headDim(), kv = c.numKeyValueHeads() * c.headDim();
        long params = (long) q * h * 2 + 2L * kv * h + 3L * in * h; // q + o, k + v, gate + up + down
        Map<String, Long> dense = ModuleSizes.of(c, DType.BF16, null);
        assertEquals(2L * (params + 2L * h), dense.get("model.layers.0"));
        assertEquals(2L * c.vocabSize() * h, dense.get("model.embed_tokens"));
        // LLM.int8: one byte per weight + one F32 scale per output row; norms stay 16-bit.
        long rows = q + 2L * kv + h + 2L * in + h;
        assertEquals(params + 4 * rows + 2L * 2 * h, ModuleSizes.of(c, DType.BF16, QuantizationConfig.int8()).get("model.layers.0"));
        // NF4 (blocksize 64, no double quant): half a byte per weight + an F32 absmax per block + 16 code entries per linear.
        var nf4 = new QuantizationConfig(false, true, 6.0, null, false, false, DType.BF16, dev.qlora4j.quant.QuantType.NF4, false,
                DType.U8, 64);
        long expected = 2L * 2 * h;
        for (long[] l : new long[][] {{q, h}, {kv, h}, {kv, h}, {h, q}, {in, h}, {in, h}, {h, in}}) {
            long n = l[0] * l[1];
            expected += n / 2 + 4 * ((n + 63) / 64) + 64;
        }
        assertEquals(expected, ModuleSizes.of(c, DType.BF16, nf4).get("model.layers.0"));
    }
}
