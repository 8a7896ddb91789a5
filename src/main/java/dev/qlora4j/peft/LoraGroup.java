package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaLora;
import dev.qlora4j.backend.cuda.CudaJoinedInputGrad;
import dev.qlora4j.backend.cuda.CudaLoraFold;
import dev.qlora4j.backend.cuda.CudaLoraGroup;
import dev.qlora4j.backend.cuda.CudaLoraGroupBackward;
import dev.qlora4j.backend.cuda.CudaQuant4bit;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * LoRA layers that read the same x (a decoder layer's q/k/v, gate/up) on the CUDA BF16 path, run together so that
 * the skinny LoRA GEMMs read x, and write grad_x, once for the group instead of once per layer
 * ({@link CudaLoraGroup#groupForwardInto}, {@link CudaLoraGroupBackward}):
 * <pre>
 *   forward:   y_i = base_i(x);  H = x [A_0; A_1; ...]^T (one GEMM);  y_i += s_i H_i B_i^T     (H kept for backward)
 *              (4-bit bases: y_i = [x | H] [W_i | s_i B_i]^T, one GEMM per layer: CudaLoraFold)
 *   backward:  GH = [s_i gy_i B_i]_i;  dB_i += s_i gy_i^T H_i;  dA = GH^T x (one GEMM), on the side stream
 *              beside the bases' grad_x GEMMs (the first writes gx, the others accumulate onto it);
 *              then gx += GH [A_0; A_1; ...] (one GEMM, K = sum r)
 * </pre>
 * It applies when every layer is a {@link LoraLinear} whose {@link LoraLinear#groupAdapter} is set (one active plain
 * adapter, no dropout in effect) and -Dqlora4j.cuda.loraGroup is not false. Otherwise the backward still sums the
 * layers' grad_x in one buffer when every layer is on the BF16 path with an accumulating base (each layer's GEMMs
 * add onto it, no separate adds); else null, and the caller runs each layer on its own.
 *
 * <p>Where the 4-bit fold takes the layers, x may be the fold's [x | H] buffer itself ({@link #foldInputWidth}: a norm
 * wrote x into its first in columns), in every call of this class for those layers: the fold then copies nothing, and
 * the backward reads x from it with its row stride.
 *
 * <p>Numerics: every product is the per-layer one (BF16 operands, float32 accumulation, BF16 h / gh) in a different
 * summation order and with the grad_x terms summed by the GEMMs in float32 before one BF16 rounding, where the
 * per-layer route rounds each layer's grad_x and then each add: results agree with the per-layer route to the
 * BF16 rounding of the outputs (tests: a few 1e-3 of the largest magnitude).
 */
public final class LoraGroup {
    private LoraGroup() {}

    /** The layers as LoraLinear with their group adapters when the grouped products apply, else null. */
    private record Members(LoraLinear[] layers, LoraAdapter[] adapters) {}

    /** The members of a group of two or more (see the four-argument form). */
    private static Members members(Backend b, Tensor x, Linear[] layers) {
        return layers.length < 2 ? null : members(b, x, layers, 2);
    }

    /**
     * The members when at least minLayers layers take the grouped products, else null. x is [n, in] (in: the layers'
     * in_features), or the LoRA fold's [x | H] buffer [n, in + P] ({@link #foldInputWidth}) when the fold takes the
     * layers' bases with it: every grouped path then reads x's first in columns with its row stride.
     */
    private static Members members(Backend b, Tensor x, Linear[] layers, int minLayers) {
        if (layers.length < minLayers || !CudaLora.applies(b) || !CudaLoraGroup.groupingOn() || x.rank() != 2) return null;
        LoraLinear[] ls = new LoraLinear[layers.length];
        LoraAdapter[] as = new LoraAdapter[layers.length];
        int rank = 0;
        for (int i = 0; i < layers.length; i++) {
            if (!(layers[i] instanceof LoraLinear l) || l.inFeatures() != layers[0].inFeatures()) return null;
            LoraAdapter a = l.groupAdapter(b);
            if (a == null) return null;
            for (int j = 0; j < i; j++) if (ls[j] == l || as[j] == a) return null;   // the same layer twice: run alone
            ls[i] = l;
            as[i] = a;
            rank += a.rank();
        }
        int in = ls[0].inFeatures();
        if (x.dim(1) == in) return new Members(ls, as);
        boolean foldInput = x.dim(1) == CudaJoinedInputGrad.wideColumns(in, rank) && foldedBases(x, ls) != null;
        return foldInput ? new Members(ls, as) : null;
    }

    /**
     * -Dqlora4j.cuda.normIntoFold=false: {@link #foldInputWidth} returns 0, so the norm before a joined group writes
     * its own [n, in] output and the fold copies it into [x | H]; for A/B runs (the same bits either way).
     */
    public static final String NORM_INTO_FOLD_PROPERTY = "qlora4j.cuda.normIntoFold";

    /**
     * The width of the [x | H] buffer (in + the padded H width, CudaLoraFold) that the layers' fold reads when they
     * run as a joined group with an x shaped as xShape ([n, in], the activation dtype), or 0 when they do not (or the
     * property is off). A norm may then write x straight into the first in columns of such a buffer (zeros in the rest:
     * CudaBackend#rmsNormPadded), and that buffer goes to every grouped call of these layers in x's place: the
     * fold's forward uses it as [x | H] (no copy of x) and the backward reads x from it with its row stride.
     */
    public static int foldInputWidth(Backend b, Tensor xShape, Linear... layers) {
        if (!Boolean.parseBoolean(System.getProperty(NORM_INTO_FOLD_PROPERTY, "true"))) return 0;
        Joined j = joined(b, xShape, layers);
        if (j == null || xShape.dim(1) != j.members().layers()[0].inFeatures()) return 0;
        int rank = 0;
        for (LoraAdapter a : j.members().adapters()) rank += a.rank();
        return CudaJoinedInputGrad.wideColumns(xShape.dim(1), rank);
    }

    /** layers[i].forward(b, x) for every i, grouped; null when the group does not apply (nothing was run then). */
    public static Tensor[] forward(Backend b, Tensor x, Linear... layers) {
        Members m = members(b, x, layers);
        if (m == null) return null;
        CudaBackend cb = (CudaBackend) b;
        LoraLinear[] ls = m.layers();
        LoraAdapter[] as = m.adapters();
        Adapters ad = Adapters.of(ls, as);
        List<CudaQuant4bit> folded = foldedBases(x, ls);   // never null for an [x | H] buffer (members)
        Tensor[] out = null;
        try {
            Tensor aCat = ls[0].stackedA(cb, as);
            Tensor h;
            if (folded != null) {   // base and adapter products in one GEMM per layer
                CudaLoraFold.Result r = CudaLoraFold.forward(cb, x, folded, aCat, ad.bMasters(), ad.scalings(), ad.keeping() > 0);
                out = r.outputs();
                h = r.hidden();
            } else {
                out = baseOutputs(b, x, ls);
                Tensor[] bCopies = new Tensor[ls.length];
                for (int i = 0; i < ls.length; i++) bCopies[i] = as[i].b().castCopy(b, DType.BF16);
                h = CudaLoraGroup.groupForwardInto(cb, out, x, aCat, bCopies, ad.scalings(), ad.keeping() > 0);
            }
            keepHidden(x, ls, as, h, ad.keeping());
        } catch (RuntimeException e) {
            if (out != null) for (Tensor t : out) if (t != null) t.close();
            throw e;
        }
        return out;
    }

    /**
     * What the forward needs of the group's adapters: scalings, lora_B's F32 masters, and how many layers keep their
     * block of H for the backward.
     */
    private record Adapters(float[] scalings, Tensor[] bMasters, int keeping) {
        static Adapters of(LoraLinear[] ls, LoraAdapter[] as) {
            float[] scalings = new float[ls.length];
            Tensor[] bMasters = new Tensor[ls.length];
            int keeping = 0;
            for (int i = 0; i < ls.length; i++) {
                scalings[i] = (float) as[i].scaling();
                bMasters[i] = as[i].b().value();
                if (ls[i].keepsHidden(as[i])) keeping++;
            }
            return new Adapters(scalings, bMasters, keeping);
        }
    }

    /** The layers that keep their block of H for the backward keep it (a share of h); the others drop what they held. */
    private static void keepHidden(Tensor x, LoraLinear[] ls, LoraAdapter[] as, Tensor h, int keeping) {
        KeptHidden.Shared shared = h == null ? null : new KeptHidden.Shared(h, keeping);
        int column = 0;
        for (int i = 0; i < ls.length; i++) {
            if (shared != null && ls[i].keepsHidden(as[i])) ls[i].keep(as[i], ls[i].keptBlock(shared, column, as[i], x));
            else ls[i].dropKept(as[i]);
            column += as[i].rank();
        }
    }

    /**
     * -Dqlora4j.cuda.joinedGroups=false: {@link #forwardJoined} declines (a group's outputs separate, one GEMM per
     * layer), for A/B runs.
     */
    public static final String JOINED_PROPERTY = "qlora4j.cuda.joinedGroups";

    /**
     * layers[i].forward(b, x) for every i as ONE [n, sum out_i] tensor (layer i's columns after layer i-1's) when the
     * 4-bit fold applies to the group with its adapters (CudaLoraFold#forwardJoined: one GEMM for the group); null
     * when it does not (nothing was run then). {@link #backwardJoined} takes the gradient of that tensor.
     */
    public static Tensor forwardJoined(Backend b, Tensor x, Linear... layers) {
        Joined j = joined(b, x, layers);
        if (j == null) return null;
        CudaBackend cb = (CudaBackend) b;
        LoraLinear[] ls = j.members().layers();
        LoraAdapter[] as = j.members().adapters();
        Adapters ad = Adapters.of(ls, as);
        Tensor aCat = ls[0].stackedA(cb, as);
        CudaLoraFold.Result r = CudaLoraFold.forwardJoined(cb, x, j.bases(), aCat, ad.bMasters(), ad.scalings(), ad.keeping() > 0);
        try {
            keepHidden(x, ls, as, r.hidden(), ad.keeping());
        } catch (RuntimeException e) {
            r.outputs()[0].close();
            throw e;
        }
        return r.outputs()[0];
    }

    /** The quantized base layers' weights and biases (null entries for none), in layer order. */
    private record QuantizedBases(List<QuantizedWeight> weights, List<Tensor> biases) {
        /** Those of ls when every base is a QuantizedLinear, else null. */
        static QuantizedBases of(LoraLinear[] ls) {
            List<QuantizedWeight> weights = new ArrayList<>(ls.length);
            List<Tensor> biases = new ArrayList<>(ls.length);
            for (LoraLinear l : ls) {
                if (!(l.base() instanceof QuantizedLinear q)) return null;
                weights.add(q.weight());
                biases.add(q.bias());
            }
            return new QuantizedBases(weights, biases);
        }
    }

    /** The bases as 4-bit weights when CudaLoraFold takes them with this x (every base quantized, see CudaLoraFold#bases), else null. */
    private static List<CudaQuant4bit> foldedBases(Tensor x, LoraLinear[] ls) {
        QuantizedBases q = QuantizedBases.of(ls);
        return q == null ? null : CudaLoraFold.bases(x, q.weights(), q.biases());
    }

    /** The base layers' outputs: one Backend.linearQuantizedGroup call when every base is quantized (as LinearGroup). */
    private static Tensor[] baseOutputs(Backend b, Tensor x, LoraLinear[] ls) {
        QuantizedBases q = QuantizedBases.of(ls);
        if (q != null) return b.linearQuantizedGroup(x, q.weights(), q.biases());
        Tensor[] out = new Tensor[ls.length];
        try {
            for (int i = 0; i < ls.length; i++) out[i] = ls[i].base().forward(b, x);
        } catch (RuntimeException e) {
            for (Tensor t : out) if (t != null) t.close();
            throw e;
        }
        return out;
    }

    /**
     * The sum over i of layers[i].backward(b, x, gradOuts[i]) (grad_x [n, in]; the adapters' gradients accumulated),
     * grouped, or in one shared buffer (see the class comment); null when neither applies (nothing was run then).
     */
    public static Tensor backward(Backend b, Tensor x, Tensor[] gradOuts, Linear... layers) {
        checkGradients(gradOuts, layers);
        Members m = members(b, x, layers);
        if (m != null) return groupBackward((CudaBackend) b, x, gradOuts, m, true);
        return sharedBackward(b, x, gradOuts, layers);
    }

    /**
     * -Dqlora4j.cuda.aloneOnSide=false: {@link #backwardAlone} declines (a lone layer's LoRA products run on the main
     * stream around its base GEMM, LoraLinear's own backward), for A/B runs.
     */
    public static final String ALONE_PROPERTY = "qlora4j.cuda.aloneOnSide";

    /**
     * -Dqlora4j.cuda.aloneTermFirst=false: {@link #backwardAlone} adds its grad_x term after the base GEMM (a
     * separate pass over grad_x) instead of writing it first, beside the dequantize, for the GEMM to add onto; A/B.
     */
    public static final String TERM_FIRST_PROPERTY = "qlora4j.cuda.aloneTermFirst";

    private static boolean termFirstOn() {
        return Boolean.parseBoolean(System.getProperty(TERM_FIRST_PROPERTY, "true"));
    }

    /**
     * layer.backward(b, x, gradOut) for a layer that shares its x with no other (a decoder layer's o_proj, down_proj)
     * as a group of one: its gh and grad_x's adapter term gh A run on the side stream beside the base weight's
     * dequantize, the base GEMM adds onto that term, and dB and dA run beside the GEMM (with
     * -Dqlora4j.cuda.aloneTermFirst=false: gh, dB, dA beside the dequantize + GEMM, then grad_x += gh A). Why: on its
     * own the layer runs gh, dA and the grad_x term on the main stream before its base GEMM, and only dB beside them
     * (Llama-7B: 4.2 ms of o / down LoRA products a step, mostly serial).
     * Returns null when the group does not apply (nothing was run then).
     */
    public static Tensor backwardAlone(Backend b, Tensor x, Tensor gradOut, LoraLinear layer) {
        if (!Boolean.parseBoolean(System.getProperty(ALONE_PROPERTY, "true"))) return null;
        Members m = members(b, x, new Linear[] {layer}, 1);
        return m == null ? null : groupBackward((CudaBackend) b, x, new Tensor[] {gradOut}, m, true);
    }

    /**
     * The adapters' gradients of {@link #backward} without grad_x, grouped: the base layers' input-gradient GEMMs
     * (and their dequantize) and grad_x's LoRA term are skipped. Returns false when the group does not apply
     * (nothing was run then).
     */
    public static boolean backwardParametersOnly(Backend b, Tensor x, Tensor[] gradOuts, Linear... layers) {
        checkGradients(gradOuts, layers);
        Members m = members(b, x, layers);
        if (m == null) return false;
        groupBackward((CudaBackend) b, x, gradOuts, m, false);
        return true;
    }

    private static void checkGradients(Tensor[] gradOuts, Linear[] layers) {
        if (gradOuts.length != layers.length) {
            throw new IllegalArgumentException(layers.length + " layers need as many output gradients, got " + gradOuts.length);
        }
    }

    /**
     * The backward of {@link #forwardJoined}: gradJoined [n, sum out_i] is the gradient of its output (the caller
     * keeps it and closes it after). Returns grad_x [n, in] (the adapters' gradients accumulated): the LoRA products
     * read each layer's columns of gradJoined, the bases' input gradient is one GEMM over all of them
     * (CudaJoinedInputGrad).
     */
    public static Tensor backwardJoined(Backend b, Tensor x, Tensor gradJoined, Linear... layers) {
        return backwardJoined(b, x, gradJoined, false, layers);
    }

    /**
     * {@link #backwardJoined}; with wideOk the result may be WIDER than x: BF16 [n, ld >= in] whose first in columns
     * are grad_x (the adapters' GH beside them: CudaJoinedInputGrad#intoWide, one GEMM for both), for a caller whose
     * only use of grad_x is an op that reads a wider gradient (CudaBackend#rmsNormBackwardAdd).
     */
    public static Tensor backwardJoined(Backend b, Tensor x, Tensor gradJoined, boolean wideOk, Linear... layers) {
        Joined j = requireJoined(b, x, layers);
        return groupBackward((CudaBackend) b, x, null, gradJoined, j.bases(), j.members(), true,
                wideOk && CudaJoinedInputGrad.wideOn());
    }

    /** {@link #backwardJoined} without grad_x: only the adapters' gradients (as {@link #backwardParametersOnly}). */
    public static void backwardJoinedParametersOnly(Backend b, Tensor x, Tensor gradJoined, Linear... layers) {
        Joined j = requireJoined(b, x, layers);
        groupBackward((CudaBackend) b, x, null, gradJoined, j.bases(), j.members(), false, false);
    }

    private static Joined requireJoined(Backend b, Tensor x, Linear... layers) {
        Joined j = joined(b, x, layers);
        if (j == null) {
            throw new IllegalStateException("backwardJoined: these layers do not run as a joined group (check joinedApplies first)");
        }
        return j;
    }

    /**
     * Whether the layers run as a joined group with this x ({@link #forwardJoined} returns their output, and
     * {@link #backwardJoined} takes the gradient of one): the property is on, they form a LoRA group, and the 4-bit
     * fold takes their bases.
     */
    public static boolean joinedApplies(Backend b, Tensor x, Linear... layers) {
        return joined(b, x, layers) != null;
    }

    /** A joined group: its members and their 4-bit bases. */
    private record Joined(Members members, List<CudaQuant4bit> bases) {}

    /** The group when {@link #joinedApplies}, else null. */
    private static Joined joined(Backend b, Tensor x, Linear... layers) {
        if (!Boolean.parseBoolean(System.getProperty(JOINED_PROPERTY, "true"))) return null;
        Members m = members(b, x, layers);
        List<CudaQuant4bit> bases = m == null ? null : foldedBases(x, m.layers());
        return bases == null ? null : new Joined(m, bases);
    }

    /** inputGrad false: only the adapters' gradients (the bases' input-gradient GEMMs and grad_x's LoRA term skipped); returns null. */
    private static Tensor groupBackward(CudaBackend b, Tensor x, Tensor[] gradOuts, Members m, boolean inputGrad) {
        return groupBackward(b, x, gradOuts, null, null, m, inputGrad, false);
    }

    /**
     * The group's backward with the output gradients per layer (gradOuts) or joined (gradJoined, with the 4-bit
     * bases joinedBases; gradOuts null); wide: grad_x comes back as the first in columns of
     * CudaJoinedInputGrad#intoWide's wider buffer (joined only).
     */
    private static Tensor groupBackward(CudaBackend b, Tensor x, Tensor[] gradOuts, Tensor gradJoined,
                                        List<CudaQuant4bit> joinedBases, Members m, boolean inputGrad, boolean wide) {
        LoraLinear[] ls = m.layers();
        LoraAdapter[] as = m.adapters();
        int k = ls.length, in = ls[0].inFeatures();   // x may be the fold's wider [x | H] buffer (joined groups)
        KeptHidden[] taken = new KeptHidden[k];
        Tensor gx = null;
        try {
            Tensor[] bCopies = new Tensor[k], gradA = new Tensor[k], gradB = new Tensor[k];
            float[] scalings = new float[k];
            CudaLora.Hidden[] kept = new CudaLora.Hidden[k];
            for (int i = 0; i < k; i++) {
                bCopies[i] = as[i].b().castCopy(b, DType.BF16);
                scalings[i] = (float) as[i].scaling();
                if (as[i].trainable()) {
                    taken[i] = ls[i].takeKept(as[i], x);
                    kept[i] = taken[i] == null ? null : taken[i].hidden();
                    gradA[i] = as[i].a().gradForAccumulation(b);
                    gradB[i] = as[i].b().gradForAccumulation(b);
                }
            }
            Tensor aCat = ls[0].stackedA(b, as);
            if (k == 1 && gradOuts != null && inputGrad && ls[0].baseInputGradIntoApplies() && termFirstOn()) {
                // a group of one: gh and its grad_x term beside the base weight's dequantize, the base GEMM onto
                // them, dB and dA beside that GEMM
                gx = b.context().empty(DType.BF16, x.dim(0), in);
                try (CudaLoraGroupBackward lora = CudaLoraGroupBackward.beginTermFirst(b, x, gradOuts[0], aCat, bCopies[0],
                        scalings[0], kept[0], gradA[0], gradB[0], gx)) {
                    ls[0].baseInputGradInto(b, gx, true, gradOuts[0], lora::awaitLoraTerm);
                }
                return gx;
            }
            // the LoRA products that do not write grad_x first (on the side stream, beside what follows), then the
            // bases without an accumulating GEMM (their own backward, summed), the accumulating bases' GEMMs onto
            // them, and last grad_x += GH [A_0; A_1; ...]
            try (CudaLoraGroupBackward lora = gradJoined != null
                    ? CudaLoraGroupBackward.beginJoined(b, x, gradJoined, aCat, bCopies, scalings, kept, gradA, gradB, wide)
                    : CudaLoraGroupBackward.begin(b, x, gradOuts, aCat, bCopies, scalings, kept, gradA, gradB)) {
                if (!inputGrad) return null;   // close() joins the side stream's dB / dA
                if (gradJoined != null && wide) {   // [grad_x | GH] from one GEMM, then dA and grad_x's LoRA term
                    gx = b.context().empty(DType.BF16, x.dim(0), CudaJoinedInputGrad.wideColumns(in, aCat.dim(0)));
                    Tensor[] bMasters = new Tensor[k];
                    for (int i = 0; i < k; i++) bMasters[i] = as[i].b().value();
                    CudaJoinedInputGrad.intoWide(b, gx, gradJoined, joinedBases, bMasters, scalings);
                    lora.finishWide(gx);
                    return gx;
                }
                if (gradJoined != null) {
                    gx = b.context().empty(DType.BF16, x.dim(0), in);
                    CudaJoinedInputGrad.into(b, gx, false, gradJoined, joinedBases);
                    lora.finishInto(gx, true);
                    return gx;
                }
                for (int i = 0; i < k; i++) {
                    if (ls[i].baseInputGradIntoApplies()) continue;
                    Tensor g = ls[i].base().backward(b, x, gradOuts[i]);
                    if (gx == null) {
                        gx = g;
                    } else {
                        try (g) { b.addInPlace(gx, g); }
                    }
                }
                boolean written = gx != null;
                if (gx == null) gx = b.context().empty(DType.BF16, x.dim(0), in);
                for (int i = 0; i < k; i++) {
                    if (!ls[i].baseInputGradIntoApplies()) continue;
                    ls[i].baseInputGradInto(b, gx, written, gradOuts[i]);
                    written = true;
                }
                lora.finishInto(gx, written);
            }
            return gx;
        } catch (RuntimeException e) {
            if (gx != null) gx.close();
            throw e;
        } finally {
            for (KeptHidden t : taken) if (t != null) t.release();
        }
    }

    /**
     * Not groupable, but every layer a LoraLinear on the BF16 path with an accumulating base (e.g. with dropout):
     * each layer's GEMMs add onto one grad_x (the first writes it), no separate add per layer. Else null.
     */
    private static Tensor sharedBackward(Backend b, Tensor x, Tensor[] gradOuts, Linear[] layers) {
        if (layers.length < 2 || !CudaLora.applies(b) || !CudaLoraGroup.groupingOn() || x.rank() != 2) return null;
        for (Linear l : layers) {
            if (!(l instanceof LoraLinear ll) || ll.inFeatures() != x.dim(1) || !ll.backwardOnBf16Path(b)
                    || !ll.baseInputGradIntoApplies()) {
                return null;
            }
        }
        CudaBackend cb = (CudaBackend) b;
        Tensor gx = cb.context().empty(DType.BF16, x.dim(0), x.dim(1));
        try {
            for (int i = 0; i < layers.length; i++) ((LoraLinear) layers[i]).backwardBf16Into(cb, x, gradOuts[i], gx, i > 0, false);
        } catch (RuntimeException e) {
            gx.close();
            throw e;
        }
        return gx;
    }
}
