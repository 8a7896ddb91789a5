package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * A trainable F32 tensor on the backend's device plus its gradient. The gradient is allocated
 * (zero-filled) by the first backward that touches it and dropped by {@link #zeroGrad()} (torch's
 * zero_grad(set_to_none=True)), so a parameter that got no gradient this step reports null.
 *
 * <p>{@link #param(String)} views it as an optimizer {@link Param} that always reads the current
 * tensors, so replacing the gradient between steps does not invalidate the optimizer's list.
 *
 * <p>Version: a counter of the changes the values may have had, for copies derived from them
 * ({@link #castCopy}: the BF16 LoRA weights of the CUDA path, re-cast only after a change). It is bumped by
 * every path that can write the values: {@link #setHostValues}, each {@link Param#value()} of the optimizer
 * view (optimizers update the values in place through it, and resuming a checkpoint writes through it; a
 * read-only use only costs one extra cast), and {@link #markModified()}, which code writing
 * {@link #value()} in place by other means must call. An optimizer that rewrites the BF16 copy with its update
 * (the CUDA AdamW: {@link Param#refreshableCopy()}) marks it current again, so the copy is not re-cast per step.
 */
public final class TrainableTensor implements AutoCloseable {
    private Tensor value; // F32, any shape, on the device
    private Tensor grad;  // F32, same shape, or null
    private long version;
    // castCopy's cache: value converted to castDType, made at castVersion from the tensor castSource
    private Tensor cast;
    private DType castDType;
    private long castVersion;
    private Tensor castSource;

    public TrainableTensor(Tensor value) {
        if (value.dtype() != DType.F32) {
            throw new IllegalArgumentException("trainable tensors are F32 (as peft keeps adapters in float32), got " + value);
        }
        this.value = value;
    }

    /** Uploads host float32 values of the given shape. */
    public static TrainableTensor of(Backend backend, float[] host, int... shape) {
        return new TrainableTensor(backend.upload(Tensor.of(host, shape)));
    }

    /** The values (F32). Writing them in place needs {@link #markModified()} (the optimizer view does it itself). */
    public Tensor value() { return value; }

    /** How many times the values may have changed (see the class comment). */
    public long version() { return version; }

    /** Records a change of the values made through {@link #value()} (derived copies are re-made on next use). */
    public void markModified() { version++; }

    /**
     * The values converted to dtype on backend, reused while the values have not changed since it was made (same
     * version, same value tensor) and re-made by {@link Backend#cast} otherwise. Owned by this tensor: the caller
     * must not close it, and must not keep it past the next change of the values. One dtype is cached at a time.
     */
    public Tensor castCopy(Backend backend, DType dtype) {
        if (cast != null && castDType == dtype && castVersion == version && castSource == value) return cast;
        Tensor fresh = backend.cast(value, dtype);
        dropCastCopy();
        cast = fresh;
        castDType = dtype;
        castVersion = version;
        castSource = value;
        return fresh;
    }

    private void dropCastCopy() {
        if (cast != null) {
            cast.close();
            cast = null;
            castSource = null;
        }
    }

    /** The accumulated gradient, or null when no backward touched this tensor since the last {@link #zeroGrad()}. */
    public Tensor grad() { return grad; }

    public int[] shape() { return value.shape(); }

    public long numel() { return value.numel(); }

    /** The gradient to accumulate into, allocated zero-filled on first use. */
    Tensor gradForAccumulation(Backend backend) {
        if (grad == null) grad = backend.zeros(DType.F32, value.shape());
        return grad;
    }

    public void zeroGrad() {
        if (grad != null) {
            grad.close();
            grad = null;
        }
    }

    /** A host copy of the values. */
    public float[] hostValues(Backend backend) {
        return backend.toHost(value).toFloatArray();
    }

    /** Replaces the values (same shape) with host data. */
    public void setHostValues(Backend backend, float[] host) {
        if (host.length != value.numel()) {
            throw new IllegalArgumentException(host.length + " values do not fit " + value);
        }
        Tensor old = value;
        value = backend.upload(Tensor.of(host.clone(), value.shape()));
        version++;
        if (old != value) old.close();
    }

    /**
     * An optimizer view under a peft parameter name. Its {@link Param#value()} counts as a change of the values
     * (the optimizer updates them in place through it).
     */
    public Param param(String name) {
        TrainableTensor self = this;
        return new Param() {
            @Override public String name() { return name; }
            @Override public Tensor value() {
                self.version++;
                return self.value;
            }
            @Override public Tensor grad() { return self.grad; }
            // the BF16 cast copy, when one of this value exists: the optimizer writes it with the update, and
            // copyRefreshed (called after value(), so at the version the update makes) marks it current
            @Override public Tensor refreshableCopy() {
                return self.cast != null && self.castDType == DType.BF16 && self.castSource == self.value ? self.cast : null;
            }
            @Override public void copyRefreshed() {
                if (self.cast != null && self.castSource == self.value) self.castVersion = self.version;
            }
            @Override public String toString() { return name + " " + self.value; }
        };
    }

    @Override
    public void close() {
        zeroGrad();
        dropCastCopy();
        value.close();
    }
}
