package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.LinearGroup;
import dev.qlora4j.tensor.Tensor;

/**
 * Linear layers that read the same x (a decoder layer's q/k/v, or gate/up), forward and backward: their LoRA
 * products as one group ({@link LoraGroup}: x read once, grad_x written once) when that applies, else
 * {@link LinearGroup} (one grouped quantized GEMV at decode when allowed, else each layer on its own). It lives here,
 * not in nn, so that nn does not depend on peft.
 */
public final class SharedInputLinears {
    private SharedInputLinears() {}

    /**
     * rmsNorm(x) by weight as the input of these layers: where they run as a joined LoRA group on the CUDA backend
     * ({@link LoraGroup#foldInputWidth}), written straight into the first columns of their fold's [x | H] buffer,
     * which then stands for the norm's output in every grouped call of these layers (forward and backward: they read
     * it with its row stride); else b.rmsNorm. For a caller whose only readers of the result are those calls.
     */
    public static Tensor normedInput(Backend b, Tensor x, Tensor weight, float eps, Linear... layers) {
        int width = LoraGroup.foldInputWidth(b, x, layers);
        return width > 0 ? ((CudaBackend) b).rmsNormPadded(x, weight, eps, width) : b.rmsNorm(x, weight, eps);
    }

    /** b.addInPlaceRmsNorm(resid, y, weight, eps) with the norm written as {@link #normedInput} writes it. */
    public static Tensor addNormedInput(Backend b, Tensor resid, Tensor y, Tensor weight, float eps, Linear... layers) {
        int width = LoraGroup.foldInputWidth(b, resid, layers);
        return width > 0 ? ((CudaBackend) b).addInPlaceRmsNormPadded(resid, y, weight, eps, width)
                : b.addInPlaceRmsNorm(resid, y, weight, eps);
    }

    /** layers[i].forward(b, x) for every i, x [n, in] -> [n, out_i]; the caller owns the results. */
    public static Tensor[] forward(Backend b, Tensor x, Linear... layers) {
        Tensor[] grouped = LoraGroup.forward(b, x, layers);
        return grouped != null ? grouped : LinearGroup.forward(b, x, layers);
    }

    /**
     * The layers' outputs as ONE tensor [n, sum out_i] (layer i's columns after layer i-1's) when the backend runs
     * the group as one GEMM (4-bit bases with their LoRA adapters folded in, CUDA: LoraGroup#forwardJoined); null
     * when it does not (nothing was run then: use {@link #forward}). The backward of a joined output is
     * {@link #backwardJoined}.
     */
    public static Tensor forwardJoined(Backend b, Tensor x, Linear... layers) {
        return LoraGroup.forwardJoined(b, x, layers);
    }

    /** The backward of {@link #forwardJoined}: grad_x [n, in] (owned by the caller) for gradJoined [n, sum out_i]. */
    public static Tensor backwardJoined(Backend b, Tensor x, Tensor gradJoined, Linear... layers) {
        return LoraGroup.backwardJoined(b, x, gradJoined, layers);
    }

    /**
     * {@link #backwardJoined}; with wideOk grad_x may come back as the first in columns of a wider [n, ld] tensor (for
     * a caller that only passes it to an op reading a wider gradient: CudaBackend#rmsNormBackwardAdd).
     */
    public static Tensor backwardJoined(Backend b, Tensor x, Tensor gradJoined, boolean wideOk, Linear... layers) {
        return LoraGroup.backwardJoined(b, x, gradJoined, wideOk, layers);
    }

    /** {@link #backwardJoined} without grad_x: the adapters' gradients only (see {@link #backwardParametersOnly}). */
    public static void backwardJoinedParametersOnly(Backend b, Tensor x, Tensor gradJoined, Linear... layers) {
        LoraGroup.backwardJoinedParametersOnly(b, x, gradJoined, layers);
    }

    /** Whether the layers run as a joined group with this x: {@link #forwardJoined} and {@link #backwardJoined} apply. */
    public static boolean joinedApplies(Backend b, Tensor x, Linear... layers) {
        return LoraGroup.joinedApplies(b, x, layers);
    }

    /** The sum over i of layers[i].backward(b, x, gradOuts[i]): grad_x [n, in], owned by the caller. */
    public static Tensor backward(Backend b, Tensor x, Tensor[] gradOuts, Linear... layers) {
        if (gradOuts.length != layers.length || layers.length == 0) {
            throw new IllegalArgumentException(layers.length + " layers need as many output gradients, got " + gradOuts.length);
        }
        Tensor grouped = LoraGroup.backward(b, x, gradOuts, layers);
        return grouped != null ? grouped : LinearGroup.backward(b, x, gradOuts, layers);
    }

    /**
     * The parameter gradients of {@link #backward} without grad_x, for a caller that does not need it (the first
     * decoder layer under a frozen embedding): the grouped LoRA path then skips the base layers' input-gradient
     * GEMMs (and their dequantize) and the adapters' grad_x term; other layers compute grad_x and drop it.
     */
    public static void backwardParametersOnly(Backend b, Tensor x, Tensor[] gradOuts, Linear... layers) {
        if (LoraGroup.backwardParametersOnly(b, x, gradOuts, layers)) return;
        backward(b, x, gradOuts, layers).close();
    }
}
