package dev.qlora4j.cli;

import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.ModelSummary;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Path;
import java.util.concurrent.Callable;

/** qlora4j inspect: what a checkpoint holds and what it would need in memory at each precision. */
@Command(name = "inspect", mixinStandardHelpOptions = true,
        description = "Architecture, parameter count, dtypes and weight memory in bf16, int8, NF4 and NF4+double-quant.")
public final class InspectCommand implements Callable<Integer> {
    @Parameters(index = "0", arity = "0..1", paramLabel = "DIR", description = "Model folder (default: the embedded model).")
    Path dir;

    @Option(names = "--json", description = "Print one JSON object.") boolean json;

    @Option(names = "--device-map", paramLabel = "auto|sequential|balanced|JSON|@FILE",
            description = "Also print where each module would go (as generate/eval/train --device-map place it).")
    String deviceMap;

    @Option(names = "--max-memory", paramLabel = "JSON", description = "Weight budget per device, e.g. '{\"0\":\"20GiB\",\"cpu\":\"64GiB\"}'.")
    String maxMemory;

    @Option(names = "--offload-folder", paramLabel = "DIR", description = "Allows \"disk\" placement in the plan.")
    Path offloadFolder;

    @Option(names = "--load-in-4bit", description = "Plan with 4-bit (NF4) layer sizes.") boolean loadIn4bit;

    @Option(names = "--double-quant", description = "With --load-in-4bit: double-quantized statistics.") boolean doubleQuant;

    @Option(names = "--load-in-8bit", description = "Plan with LLM.int8 layer sizes.") boolean loadIn8bit;

    @Override
    public Integer call() throws java.io.IOException {
        Path d = dir != null ? dir : DefaultModel.path();
        ModelConfig config = ModelConfig.load(d);
        try (CheckpointReader reader = CheckpointReader.open(d)) {
            ModelSummary s = ModelSummary.of(config, reader);
            System.out.println(json ? Json.write(s.toMap()) : s.toText());
        }
        if (deviceMap != null) System.out.print(plan(config).table());
        return 0;
    }

    /**
     * The device map over the GPUs this machine has (each GPU's whole memory less the default headroom, unless
     * --max-memory says otherwise; no GPU: those --max-memory names), as the loading commands would make it.
     */
    dev.qlora4j.placement.PlacementPlan plan(ModelConfig config) {
        var options = new dev.qlora4j.placement.PlacementOptions(deviceMap, maxMemory, offloadFolder, -1);
        var max = dev.qlora4j.placement.MaxMemory.parse(maxMemory);
        long[] gpus;
        long headroom = 0;
        if (dev.qlora4j.cuda.CudaDriver.isAvailable()) {
            var d = dev.qlora4j.cuda.CudaDriver.get();
            gpus = new long[d.deviceCount()];
            for (int g = 0; g < gpus.length; g++) gpus[g] = d.deviceProperties(g).totalMemoryBytes();
            headroom = gpus.length == 0 ? 0 : dev.qlora4j.placement.Offloading.defaultHeadroom(gpus[0]);
        } else {
            int n = 0;
            for (var t : max.limits().keySet()) if (t instanceof dev.qlora4j.placement.DeviceTarget.Gpu g) n = Math.max(n, g.index() + 1);
            gpus = new long[n];
        }
        dev.qlora4j.quant.QuantizationConfig q = null;
        if (config.quantizationConfig() != null) q = dev.qlora4j.quant.QuantizationConfig.fromJson(config.quantizationConfig());
        else if (loadIn4bit || loadIn8bit) {
            q = new dev.qlora4j.quant.QuantizationConfig(loadIn8bit, loadIn4bit, 6.0, null, false, false, dev.qlora4j.tensor.DType.BF16,
                    dev.qlora4j.quant.QuantType.NF4, doubleQuant, dev.qlora4j.tensor.DType.U8, 64);
        }
        var sizes = dev.qlora4j.placement.ModuleSizes.of(config,
                config.torchDtype() != null ? config.torchDtype() : dev.qlora4j.tensor.DType.F32, q);
        return dev.qlora4j.placement.DeviceMapPlanner.plan(options.deviceMapText(), sizes,
                new dev.qlora4j.placement.DeviceMapPlanner.Resources(gpus, headroom, max, offloadFolder != null));
    }
}
