package dev.qlora4j.placement;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.function.UnaryOperator;

/**
 * What {@link WeightStreamer} needs from a backend to stream offloaded layers: two device slots, tensors
 * viewing them, host images of the layers, and ordered uploads. The CUDA one ({@code CudaSlotDevice}) uploads
 * on a copy stream ordered against the compute stream by events; the CPU one ({@link HostSlotDevice}) copies
 * at once.
 */
public interface SlotDevice extends AutoCloseable {
    /** Allocates the two slots, bytes each (once, before the first view). */
    void allocateSlots(long bytes);

    /** A non-owning tensor of dtype and shape viewing slot bytes [offset, offset + size). */
    Tensor view(int slot, long offset, DType dtype, int[] shape);

    /** The device tensors a quantized weight consists of, in a fixed order, or null when this backend cannot stream it. */
    List<Tensor> leaves(QuantizedWeight w);

    /** The same weight over replacement tensors (f applied to each of {@link #leaves}, in that order). */
    QuantizedWeight rebuild(QuantizedWeight w, UnaryOperator<Tensor> f);

    /** Copies a device tensor's bytes into dst (synchronously). */
    void download(Tensor t, MemorySegment dst);

    /** Host memory for a layer's image (pinned on CUDA); freed with {@link #freeHost}. */
    MemorySegment allocateHost(long bytes);

    void freeHost(MemorySegment m);

    /**
     * Queues copying image (pinned, or a mapped file when !pinned) into slot, after the work already queued that
     * reads the slot (the last {@link #released} of it).
     */
    void upload(MemorySegment image, boolean pinned, int slot);

    /** Makes the compute work queued from now on wait for slot's last upload. */
    void awaitUpload(int slot);

    /** Marks the compute work queued so far as the slot's last reader. */
    void released(int slot);

    /** Whether the weights of layers placed on "cpu" are already host memory here (the CPU backend): nothing to stream. */
    boolean hostIsDevice();

    @Override
    void close();
}
