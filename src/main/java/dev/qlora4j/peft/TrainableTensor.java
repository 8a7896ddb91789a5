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
 */
public final class TrainableTensor implements AutoCloseable {
    private Tensor value; // F32, any shape, on the device
    private Tensor grad;  // F32, same shape, or null

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

    public Tensor value() { return value; }

    /** The accumulated gradient, or null when no backward touched this tensor since the last {@link #zeroGrad()}. */
    public Tensor grad() { return grad; }

    public int[] shape() { return value.shape(); }

    public long numel() { return value.numel(); }

    /** The gradient to accumulate into, allocated zero-filled on first use. */
    Tensor gradForAccumulation(Backend backend) {
        if (grad == null) grad = backend.upload(Tensor.zeros(DType.F32, value.shape()));
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
        if (old != value) old.close();
    }

    /** An optimizer view under a peft parameter name. */
    public Param param(String name) {
        TrainableTensor self = this;
        return new Param() {
            @Override public String name() { return name; }
            @Override public Tensor value() { return self.value; }
            @Override public Tensor grad() { return self.grad; }
            @Override public String toString() { return name + " " + self.value; }
        };
    }

    @Override
    public void close() {
        zeroGrad();
        value.close();
    }
}
