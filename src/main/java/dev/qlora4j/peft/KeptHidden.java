package dev.qlora4j.peft;

import dev.qlora4j.backend.cuda.CudaLora;
import dev.qlora4j.tensor.Tensor;

/**
 * The h = drop(x) A^T of one adapter's forward on the CUDA BF16 path (BF16 [n, r], 64 KiB at n = 2048, r = 16),
 * kept so that the backward of the same x need not read x again to recompute it (the forward, or the checkpoint
 * recompute that runs right before a layer's backward, has just computed it).
 *
 * <p>It is used only for the exact inputs it was computed from; anything else recomputes. The key:
 * <ul>
 *   <li>x: the same tensor object (identity). Tensors are not rewritten in place between a layer's forward and
 *       its backward (Linear#backward's contract: x is the input the forward saw); a checkpoint recompute or an
 *       activation restored from offload is a new object, so it never matches an older h;</li>
 *   <li>the layer's step seed and the dropout probability in effect (the mask of drop(x));</li>
 *   <li>lora_A: the same TrainableTensor, its value tensor and its version (bumped by every write path: the
 *       optimizer's Param#value, setHostValues, markModified), so an h from before an optimizer step or a
 *       reload never matches.</li>
 * </ul>
 * The buffer may be shared: a group's forward (q/k/v, gate/up) computes one H [n, sum r] and each layer keeps its
 * column block; the buffer is closed when its last holder releases it.
 */
final class KeptHidden {
    /** A buffer with a count of the KeptHidden that still hold it. */
    static final class Shared {
        private final Tensor buffer;
        private int holders;

        /** buffer with the given number of holders (each must release once); closed at once when there are none. */
        Shared(Tensor buffer, int holders) {
            this.buffer = buffer;
            this.holders = holders;
            if (holders <= 0) buffer.close();
        }

        private void release() {
            if (holders <= 0) throw new IllegalStateException("kept LoRA h released more often than it was held");
            if (--holders == 0) buffer.close();
        }
    }

    private final Shared shared;
    private final int column, width;
    private final Tensor x;
    private final long stepSeed;
    private final float dropoutP;
    private final TrainableTensor a;
    private final Tensor aValue;
    private final long aVersion;
    private boolean released;

    KeptHidden(Shared shared, int column, int width, Tensor x, long stepSeed, float dropoutP, TrainableTensor a) {
        this.shared = shared;
        this.column = column;
        this.width = width;
        this.x = x;
        this.stepSeed = stepSeed;
        this.dropoutP = dropoutP;
        this.a = a;
        this.aValue = a.value();
        this.aVersion = a.version();
    }

    /** An h in a buffer of its own (one holder). */
    static KeptHidden own(Tensor h, Tensor x, long stepSeed, float dropoutP, TrainableTensor a) {
        return new KeptHidden(new Shared(h, 1), 0, h.dim(1), x, stepSeed, dropoutP, a);
    }

    /** Whether this is the h of drop(x) A^T for these inputs now (see the class comment). */
    boolean matches(Tensor x, long stepSeed, float dropoutP, TrainableTensor a) {
        return !released && this.x == x && this.stepSeed == stepSeed && Float.compare(this.dropoutP, dropoutP) == 0
                && this.a == a && a.value() == aValue && a.version() == aVersion;
    }

    /** The kept columns, for CudaLora's backward. */
    CudaLora.Hidden hidden() {
        if (released) throw new IllegalStateException("kept LoRA h used after release");
        return new CudaLora.Hidden(shared.buffer, column, width);
    }

    /** Gives up this holder's share of the buffer (idempotent). */
    void release() {
        if (released) return;
        released = true;
        shared.release();
    }
}
