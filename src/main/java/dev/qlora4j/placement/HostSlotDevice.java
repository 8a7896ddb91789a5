package dev.qlora4j.placement;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.function.UnaryOperator;

/**
 * The CPU backend's slots: two native host buffers; an upload is a plain copy (ordering is the program's).
 * Layers placed on "cpu" are already in host memory there, so only "disk" layers stream (from their mapped
 * file into a slot), keeping two layers of weights in memory. Quantized weights stay as loaded (the CPU
 * backend's are Java-side quantization states, not tensors of one buffer).
 */
public final class HostSlotDevice implements SlotDevice {
    private final Arena arena = Arena.ofShared(); // owns the slots and the host images, closed with the device
    private final MemorySegment[] slots = new MemorySegment[2];

    @Override
    public void allocateSlots(long bytes) {
        for (int s = 0; s < 2; s++) slots[s] = arena.allocate(Math.max(1, bytes), 64);
    }

    @Override
    public Tensor view(int slot, long offset, DType dtype, int[] shape) {
        long size = Tensor.numel(shape) * dtype.byteSize();
        return Tensor.view(slots[slot].asSlice(offset, size), dtype, shape);
    }

    @Override public List<Tensor> leaves(QuantizedWeight w) { return null; }

    @Override public QuantizedWeight rebuild(QuantizedWeight w, UnaryOperator<Tensor> f) { return w; }

    @Override
    public void download(Tensor t, MemorySegment dst) {
        MemorySegment.copy(t.segment(), 0, dst, 0, t.byteSize());
    }

    @Override public MemorySegment allocateHost(long bytes) { return arena.allocate(Math.max(1, bytes), 64); }

    @Override public void freeHost(MemorySegment m) {} // freed with the arena

    @Override
    public void upload(MemorySegment image, boolean pinned, int slot) {
        MemorySegment.copy(image, 0, slots[slot], 0, image.byteSize());
    }

    @Override public void awaitUpload(int slot) {}

    @Override public void released(int slot) {}

    @Override public boolean hostIsDevice() { return true; }

    @Override
    public void close() { arena.close(); }
}
