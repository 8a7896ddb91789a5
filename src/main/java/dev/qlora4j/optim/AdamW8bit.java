package dev.qlora4j.optim;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * bitsandbytes' AdamW8bit (blockwise) on host tensors; with {@link StateStorage#PAGED} it is
 * PagedAdamW8bit (same math, see StateStorage).
 *
 * <p>State per parameter, named as bitsandbytes names it: state1 (first moment) and state2
 * (second moment), either uint8 codes [shape] against the signed / unsigned dynamic maps with one
 * float32 absmax per 256 elements (absmax1, absmax2 [ceil(n/256)]), or, for parameters under
 * {@link AdamW8bitConfig#eightBitThreshold()} elements, float32 [shape]; plus step. The update
 * math is {@link BnbAdamKernels}' (weight decay after the step, as bitsandbytes).
 */
public final class AdamW8bit extends HostOptimizer<AdamW8bit.State> {
    private final AdamW8bitConfig config;

    static final class State {
        long step;
        // 8-bit state (null for float32 state)
        final byte[] q1, q2;
        final float[] absmax1, absmax2;
        // float32 state (null for 8-bit state)
        final float[] s1, s2;

        State(long step, byte[] q1, byte[] q2, float[] absmax1, float[] absmax2, float[] s1, float[] s2) {
            this.step = step;
            this.q1 = q1;
            this.q2 = q2;
            this.absmax1 = absmax1;
            this.absmax2 = absmax2;
            this.s1 = s1;
            this.s2 = s2;
        }

        boolean eightBit() { return q1 != null; }
    }

    public AdamW8bit(List<ParamGroup> groups, AdamW8bitConfig config) {
        super(groups, config.lr());
        this.config = config;
    }

    /** All parameters in one group with config.weightDecay(). */
    public static AdamW8bit of(List<? extends Param> params, AdamW8bitConfig config) {
        return new AdamW8bit(List.of(new ParamGroup(List.copyOf(params), config.weightDecay())), config);
    }

    public AdamW8bitConfig config() { return config; }

    @Override public String name() { return "AdamW8bit"; }

    @Override
    State newState(int numel) {
        if (numel < config.eightBitThreshold()) {
            return new State(0, null, null, null, null, new float[numel], new float[numel]);
        }
        int blocks = BnbAdamKernels.blocks(numel);
        // zero codes with zero absmax dequantize to 0: a fresh state is all zeros, as in bitsandbytes
        return new State(0, new byte[numel], new byte[numel], new float[blocks], new float[blocks], null, null);
    }

    @Override
    void update(float[] value, float[] grad, double weightDecay, State s) {
        s.step++;
        BnbAdamKernels.Scalars k = BnbAdamKernels.Scalars.of(lr(), config.beta1(), config.beta2(), config.eps(), weightDecay, s.step);
        if (!s.eightBit()) {
            BnbAdamKernels.update32(value, grad, s.s1, s.s2, 0, value.length, k);
            return;
        }
        float[] m = new float[BnbAdamKernels.BLOCKSIZE];
        float[] v = new float[BnbAdamKernels.BLOCKSIZE];
        int blocks = s.absmax1.length;
        for (int b = 0; b < blocks; b++) {
            BnbAdamKernels.update8bitBlock(value, grad, s.q1, s.q2, s.absmax1, s.absmax2, b, value.length, k, m, v);
        }
    }

    /** True when the named parameter's state is 8-bit (after its first step). */
    public boolean hasEightBitState(String param) {
        State s = stateOf(param);
        return s != null && s.eightBit();
    }

    @Override
    Map<String, Tensor> slots(State s, int[] shape) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        if (s.eightBit()) {
            m.put("state1", bytesTensor(s.q1, shape));
            m.put("state2", bytesTensor(s.q2, shape));
            m.put("absmax1", floatsTensor(s.absmax1, s.absmax1.length));
            m.put("absmax2", floatsTensor(s.absmax2, s.absmax2.length));
        } else {
            m.put("state1", floatsTensor(s.s1, shape));
            m.put("state2", floatsTensor(s.s2, shape));
        }
        m.put("step", stepTensor(s.step));
        return m;
    }

    @Override
    State fromSlots(String param, int numel, Slots slots) {
        boolean eightBit = numel >= config.eightBitThreshold();
        DType stored = slots.dtype("state1");
        if (eightBit != (stored == DType.U8)) {
            throw new IllegalArgumentException("optimizer state of '" + param + "' is " + stored + " but this AdamW8bit keeps "
                    + (eightBit ? "8-bit" : "float32") + " state for " + numel + " elements (min_8bit_size "
                    + config.minEightBitSize() + "); resume with the min_8bit_size the checkpoint was trained with");
        }
        long step = slots.step();
        if (eightBit) {
            int blocks = BnbAdamKernels.blocks(numel);
            return new State(step, slots.bytes("state1", numel), slots.bytes("state2", numel),
                    slots.floats("absmax1", blocks), slots.floats("absmax2", blocks), null, null);
        }
        return new State(step, null, null, null, null, slots.floats("state1", numel), slots.floats("state2", numel));
    }

    @Override
    public Map<String, String> hyperParameters() {
        return Map.of("lr", Double.toString(lr()), "betas", config.beta1() + "," + config.beta2(),
                "eps", Double.toString(config.eps()), "weight_decay", Double.toString(config.weightDecay()),
                "min_8bit_size", Integer.toString(config.minEightBitSize()), "block_size", Integer.toString(BnbAdamKernels.BLOCKSIZE),
                "storage", config.storage().name());
    }
}
