package dev.qlora4j.nn;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * Forward of several linear layers that read the same x (a decoder layer's q/k/v, or gate/up). When every layer is a
 * {@link QuantizedBaseLinear} with a quantized base now, their quantized matmuls go through one
 * {@link Backend#linearQuantizedGroup} call (on the GPU at decode one kernel launch instead of one per layer when
 * -Dqlora4j.nf4.groupGemv=true: off by default, see CudaQuantOps.GROUP_PROPERTY), and
 * each layer finishes its own output from its base output ({@link QuantizedBaseLinear#forwardFromBase}); otherwise
 * each layer runs its own forward. Same results either way: the group's values equal the per-weight ones bit for bit.
 *
 * <p>LoRA layers go through peft.SharedInputLinears, which groups their LoRA products on the CUDA BF16 path
 * (peft.LoraGroup) and comes here for the rest.
 */
public final class LinearGroup {
    private LinearGroup() {}

    /** layers[i].forward(b, x) for every i, x [n, in] -> [n, out_i]; the caller owns the results. */
    /**
     * silu(gate(x)) * up(x) in one backend op ({@link Backend#linearQuantizedSwiGlu}) when both layers are plain
     * quantized linears without bias (no adapter adds to their outputs) and the backend has a joint kernel for them;
     * else null (nothing was run: the caller runs the layers and the product).
     */
    public static Tensor swiGlu(Backend b, Tensor x, Linear gate, Linear up) {
        if (!(gate instanceof QuantizedLinear g) || !(up instanceof QuantizedLinear u) || g.bias() != null || u.bias() != null) {
            return null;
        }
        return b.linearQuantizedSwiGlu(x, g.weight(), u.weight());
    }

    public static Tensor[] forward(Backend b, Tensor x, Linear... layers) {
        List<QuantizedWeight> weights = new ArrayList<>(layers.length);
        List<Tensor> biases = new ArrayList<>(layers.length);
        for (Linear l : layers) {
            QuantizedLinear base = l instanceof QuantizedBaseLinear g ? g.quantizedBase() : null;
            if (base == null) return each(b, x, layers);
            weights.add(base.weight());
            biases.add(base.bias());
        }
        Tensor[] baseOut = b.linearQuantizedGroup(x, weights, biases);
        Tensor[] out = new Tensor[layers.length];
        int i = 0;
        try {
            for (; i < layers.length; i++) {
                Tensor bo = baseOut[i];
                baseOut[i] = null;  // owned by forwardFromBase from here, also when it throws
                out[i] = ((QuantizedBaseLinear) layers[i]).forwardFromBase(b, x, bo);
            }
        } catch (RuntimeException e) {
            closeAll(out);
            closeAll(baseOut);
            throw e;
        }
        return out;
    }

    /**
     * The backward of layers that read the same x: sum over i of layers[i].backward(b, x, gradOuts[i]) (grad_x
     * [n, in], owned by the caller; parameter gradients accumulate as in each layer's backward): each layer's
     * backward added into the first one's grad_x in order.
     */
    public static Tensor backward(Backend b, Tensor x, Tensor[] gradOuts, Linear... layers) {
        if (gradOuts.length != layers.length || layers.length == 0) {
            throw new IllegalArgumentException(layers.length + " layers need as many output gradients, got " + gradOuts.length);
        }
        Tensor gx = layers[0].backward(b, x, gradOuts[0]);
        try {
            for (int i = 1; i < layers.length; i++) {
                try (Tensor g = layers[i].backward(b, x, gradOuts[i])) {
                    b.addInPlace(gx, g);
                }
            }
        } catch (RuntimeException e) {
            gx.close();
            throw e;
        }
        return gx;
    }

    private static Tensor[] each(Backend b, Tensor x, Linear... layers) {
        Tensor[] out = new Tensor[layers.length];
        try {
            for (int i = 0; i < layers.length; i++) out[i] = layers[i].forward(b, x);
        } catch (RuntimeException e) {
            closeAll(out);
            throw e;
        }
        return out;
    }

    private static void closeAll(Tensor[] ts) {
        for (Tensor t : ts) if (t != null) t.close();
    }
}
