package dev.qlora4j.placement;

import dev.qlora4j.model.DecoderLayer;
import dev.qlora4j.model.LayerResidency;
import dev.qlora4j.model.WeightRemap;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

/**
 * Weight offload for decoder layers placed on "cpu" or "disk": at load, each such layer's frozen weights (norms,
 * dense or quantized projections, biases) are packed into one host image (pinned memory, or a file in the offload
 * folder that is then memory-mapped) and the layer is rebuilt over views of one of two device slots (offloaded
 * layer number j uses slot j % 2). Around each use, {@link #enter} makes sure the layer's image is in its slot and
 * starts uploading the next offloaded layer of the pass into the other slot (double buffering: layer i+1's weights
 * upload while layer i computes); {@link #exit} marks the slot's readers. Consecutive offloaded layers always
 * alternate slots, forward and backward; a slot that still holds the layer (the last layer of a forward is the
 * first of the backward) is not uploaded again.
 */
public final class WeightStreamer implements LayerResidency {
    /** Alignment of each tensor inside an image and a slot (cuBLAS and vector loads like 256-byte alignment). */
    static final long ALIGN = 256;

    private final SlotDevice device;
    private final PlacementPlan plan;
    private final Path offloadFolder;          // null: no disk placement
    private final long slotBytesHint;          // planned size of the largest offloaded layer
    private final Map<Integer, Entry> entries = new java.util.TreeMap<>();
    private final int[] holder = {-1, -1};     // layer whose image each slot holds (-1: none)
    private final Arena mapped = Arena.ofShared(); // owns the memory-mapped disk images
    private final List<Path> files = new ArrayList<>();
    private long slotBytes = -1;
    private int offloadedCount;

    /** One offloaded layer: its host image and its slot. */
    private record Entry(MemorySegment image, boolean pinned, int slot, boolean disk) {}

    public WeightStreamer(SlotDevice device, PlacementPlan plan, Path offloadFolder) {
        this.device = device;
        this.plan = plan;
        this.offloadFolder = offloadFolder;
        long hint = 0;
        for (int i : plan.offloadedLayers()) hint = Math.max(hint, plan.sizes().get(ModuleSizes.layer(i)));
        this.slotBytesHint = hint;
    }

    @Override
    public void placeLayer(int index, DecoderLayer layer) {
        DeviceTarget t = plan.layerTarget(index);
        if (!t.offloaded()) return;
        boolean disk = t instanceof DeviceTarget.Disk;
        if (!disk && device.hostIsDevice()) return; // the CPU backend: "cpu" is where the weights already are
        if (disk && offloadFolder == null) {
            throw new IllegalArgumentException("model.layers." + index + " is placed on \"disk\" but no offload folder was given: pass --offload-folder DIR");
        }
        int slot = offloadedCount++ % 2;
        // Pass 1: the leaves (tensors to stream) in a fixed order, and their offsets in the image.
        List<Tensor> leaves = new ArrayList<>();
        layer.remapWeights(new WeightRemap() {
            @Override public Tensor tensor(Tensor x) { leaves.add(x); return x; }

            @Override public Linear linear(Linear l) { leaves.addAll(leavesOf(l, index)); return l; }
        });
        Map<Tensor, Long> offsets = new IdentityHashMap<>();
        long size = 0;
        for (Tensor x : leaves) {
            offsets.put(x, size);
            size = roundUp(size + x.byteSize(), ALIGN);
        }
        if (slotBytes < 0) {
            slotBytes = Math.max(size, roundUp(slotBytesHint + 64L * ALIGN, ALIGN));
            device.allocateSlots(slotBytes);
        } else if (size > slotBytes) {
            throw new IllegalStateException("model.layers." + index + " needs " + size + " bytes of streaming slot but the slots were sized "
                    + slotBytes + " bytes from the earlier offloaded layers; place the larger layers on a GPU");
        }
        // The image: every leaf's bytes at its offset.
        MemorySegment host = device.allocateHost(size);
        for (Tensor x : leaves) device.download(x, host.asSlice(offsets.get(x), x.byteSize()));
        MemorySegment image = host;
        if (disk) {
            image = writeAndMap(index, host, size);
            device.freeHost(host);
        }
        // Pass 2: rebuild over slot views; the originals are closed afterwards (their device memory is freed).
        List<AutoCloseable> old = new ArrayList<>();
        layer.remapWeights(new WeightRemap() {
            @Override public Tensor tensor(Tensor x) {
                old.add(x);
                return view(x);
            }

            @Override public Linear linear(Linear l) {
                Linear r = switch (l) {
                    case DenseLinear d -> new DenseLinear(view(d.weight()), d.bias() == null ? null : view(d.bias()));
                    case QuantizedLinear q when device.leaves(q.weight()) != null ->
                            new QuantizedLinear(device.rebuild(q.weight(), this::view), q.bias() == null ? null : view(q.bias()));
                    default -> l;
                };
                if (r != l) old.add(l);
                return r;
            }

            private Tensor view(Tensor x) { return device.view(slot, offsets.get(x), x.dtype(), x.shape()); }
        });
        for (AutoCloseable c : old) {
            try {
                c.close();
            } catch (Exception e) {
                throw new IllegalStateException("closing the GPU copy of model.layers." + index + " failed: " + e.getMessage(), e);
            }
        }
        entries.put(index, new Entry(image, !disk, slot, disk));
    }

    /** The tensors of a projection that stream; none for one that stays as loaded. */
    private List<Tensor> leavesOf(Linear l, int index) {
        List<Tensor> out = new ArrayList<>();
        switch (l) {
            case DenseLinear d -> {
                out.add(d.weight());
                if (d.bias() != null) out.add(d.bias());
            }
            case QuantizedLinear q -> {
                List<Tensor> w = device.leaves(q.weight());
                if (w != null) {
                    out.addAll(w);
                    if (q.bias() != null) out.add(q.bias());
                }
            }
            default -> throw new IllegalStateException("model.layers." + index + ": cannot offload a " + l.getClass().getSimpleName()
                    + " projection; offloading happens at load, before adapters wrap the projections");
        }
        return out;
    }

    private MemorySegment writeAndMap(int index, MemorySegment host, long size) {
        try {
            Files.createDirectories(offloadFolder);
            Path file = offloadFolder.resolve(ModuleSizes.layer(index) + ".bin");
            Path tmp = Files.createTempFile(offloadFolder, ModuleSizes.layer(index) + ".", ".tmp");
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
                var buf = host.asSlice(0, size).asByteBuffer();
                while (buf.hasRemaining()) ch.write(buf);
                ch.force(false);
            }
            Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            files.add(file);
            try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
                return ch.map(FileChannel.MapMode.READ_ONLY, 0, Math.max(1, size), mapped).asSlice(0, size);
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write offloaded weights of model.layers." + index + " to " + offloadFolder + ": "
                    + e.getMessage() + "; pass an --offload-folder on a writable file system with room for the layers", e);
        }
    }

    private static long roundUp(long n, long m) { return (n + m - 1) / m * m; }

    // ---- streaming ----

    @Override
    public void enter(int layer, boolean ascending) {
        Entry e = entries.get(layer);
        if (e == null) return;
        ensure(layer, e);
        device.awaitUpload(e.slot());
        int next = nextOffloaded(layer, ascending);
        if (next >= 0) {
            Entry n = entries.get(next);
            if (n.slot() != e.slot()) ensure(next, n);
        }
    }

    private void ensure(int layer, Entry e) {
        if (holder[e.slot()] == layer) return;
        device.upload(e.image(), e.pinned(), e.slot());
        holder[e.slot()] = layer;
    }

    private int nextOffloaded(int layer, boolean ascending) {
        Integer k = ascending ? ((java.util.TreeMap<Integer, Entry>) entries).higherKey(layer)
                : ((java.util.TreeMap<Integer, Entry>) entries).lowerKey(layer);
        return k == null ? -1 : k;
    }

    @Override
    public void exit(int layer) {
        Entry e = entries.get(layer);
        if (e != null) device.released(e.slot());
    }

    @Override public boolean streams() { return !entries.isEmpty(); }

    /** Layers streamed, ascending. */
    public List<Integer> streamedLayers() { return List.copyOf(entries.keySet()); }

    /** Bytes of one slot (0 before the first offloaded layer). */
    public long slotBytes() { return Math.max(0, slotBytes); }

    @Override
    public void close() {
        try {
            device.close(); // waits for queued uploads before the images go
        } finally {
            for (Entry e : entries.values()) if (e.pinned()) device.freeHost(e.image());
            entries.clear();
            mapped.close();
            for (Path f : files) {
                try {
                    Files.deleteIfExists(f);
                } catch (IOException ignored) {
                    // the folder is the user's; a file left behind is harmless
                }
            }
        }
    }

    @Override
    public String toString() {
        return "WeightStreamer" + Arrays.toString(entries.keySet().toArray()) + " slots " + slotBytes() + " B";
    }
}
