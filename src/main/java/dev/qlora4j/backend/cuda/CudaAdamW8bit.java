package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.optim.AdamW8bitConfig;
import dev.qlora4j.optim.BnbAdamKernels;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * bitsandbytes' AdamW8bit (optim="adamw_8bit" / "adamw_bnb_8bit") over parameters on the GPU; with
 * {@link StateStorage#PAGED}, PagedAdamW8bit (optim="paged_adamw_8bit"): the state in pinned host memory that
 * the kernel reads and writes directly (see {@link OptimizerStateBuffer}). The CPU twin is
 * {@link dev.qlora4j.optim.AdamW8bit}; results are bit-identical to it (native/adamw8bit.cu).
 *
 * <p>State per parameter as bitsandbytes keeps it: 8-bit codes state1 / state2 [n] against the signed / unsigned
 * dynamic maps with one F32 absmax per 256 elements, or, under {@link AdamW8bitConfig#eightBitThreshold()}
 * elements, F32 state1 / state2. One launch per step updates every parameter (one CUDA block per 256-element
 * block, through a table of pointers and per-parameter scalars). The state dict has the host AdamW8bit's names
 * and layout, so checkpoints move between the two.
 */
public final class CudaAdamW8bit extends CudaOptimizerBase<CudaAdamW8bit.State> {
    /** sizeof(Adam8bitEntry) in native/adamw8bit.cu. */
    static final int ENTRY_BYTES = 104;

    private final AdamW8bitConfig config;
    private final LaunchTable table;
    private final Tensor codes;   // F32 [512] on the device: the signed map (state1), then the unsigned map (state2)

    static final class State extends CudaOptimizerBase.State {
        final boolean eightBit;
        final OptimizerStateBuffer s1, s2;               // U8 [n] codes, or F32 [n]
        final OptimizerStateBuffer absmax1, absmax2;     // F32 [ceil(n/256)], 8-bit only (else null)

        State(boolean eightBit, OptimizerStateBuffer s1, OptimizerStateBuffer s2, OptimizerStateBuffer absmax1,
              OptimizerStateBuffer absmax2, long step) {
            this.eightBit = eightBit;
            this.s1 = s1;
            this.s2 = s2;
            this.absmax1 = absmax1;
            this.absmax2 = absmax2;
            this.step = step;
        }

        @Override
        List<OptimizerStateBuffer> buffers() {
            return eightBit ? List.of(s1, s2, absmax1, absmax2) : List.of(s1, s2);
        }
    }

    public CudaAdamW8bit(CudaBackend backend, List<ParamGroup> groups, AdamW8bitConfig config) {
        super(backend, groups, config.lr(), config.storage());
        this.config = config;
        float[] both = new float[512];
        System.arraycopy(BnbAdamKernels.codeTable(true), 0, both, 0, 256);
        System.arraycopy(BnbAdamKernels.codeTable(false), 0, both, 256, 256);
        this.codes = ctx.upload(Tensor.of(both, 512));
        this.table = new LaunchTable(ctx, ENTRY_BYTES);
    }

    /** All parameters in one group with config.weightDecay(). */
    public static CudaAdamW8bit of(CudaBackend backend, List<? extends Param> params, AdamW8bitConfig config) {
        return new CudaAdamW8bit(backend, List.of(new ParamGroup(List.copyOf(params), config.weightDecay())), config);
    }

    @Override public String name() { return "AdamW8bit"; }

    public AdamW8bitConfig config() { return config; }

    /** True when the named parameter has 8-bit state (after its first step). */
    public boolean hasEightBitState(String param) {
        State s = stateFor(param);
        return s != null && s.eightBit;
    }

    @Override
    State newState(int n) {
        boolean eightBit = n >= config.eightBitThreshold();
        long elemBytes = eightBit ? 1 : 4;
        OptimizerStateBuffer s1 = null, s2 = null, a1 = null;
        try {
            s1 = OptimizerStateBuffer.zeros(ctx, elemBytes * n, storage);
            s2 = OptimizerStateBuffer.zeros(ctx, elemBytes * n, storage);
            if (!eightBit) return new State(false, s1, s2, null, null, 0);
            // zero codes with zero absmax dequantize to 0: a fresh state is all zeros, as in bitsandbytes
            long blocks = BnbAdamKernels.blocks(n);
            a1 = OptimizerStateBuffer.zeros(ctx, 4 * blocks, storage);
            return new State(true, s1, s2, a1, OptimizerStateBuffer.zeros(ctx, 4 * blocks, storage), 0);
        } catch (RuntimeException e) {
            for (OptimizerStateBuffer b : new OptimizerStateBuffer[] {s1, s2, a1}) if (b != null) b.close();
            throw e;
        }
    }

    @Override
    void launch(List<Work<State>> works) {
        MemorySegment t = table.begin(works.size());
        long blocks = 0;
        for (int i = 0; i < works.size(); i++) {
            Work<State> w = works.get(i);
            State s = w.state();
            BnbAdamKernels.Scalars k = BnbAdamKernels.Scalars.of(lr(), config.beta1(), config.beta2(), config.eps(),
                    w.weightDecay(), s.step);
            long o = (long) i * ENTRY_BYTES;
            t.set(ValueLayout.JAVA_LONG, o, CudaContext.ptr(w.value()));
            t.set(ValueLayout.JAVA_LONG, o + 8, CudaContext.ptr(w.grad()));
            t.set(ValueLayout.JAVA_LONG, o + 16, s.s1.pointer());
            t.set(ValueLayout.JAVA_LONG, o + 24, s.s2.pointer());
            t.set(ValueLayout.JAVA_LONG, o + 32, s.eightBit ? s.absmax1.pointer() : 0L);
            t.set(ValueLayout.JAVA_LONG, o + 40, s.eightBit ? s.absmax2.pointer() : 0L);
            t.set(ValueLayout.JAVA_LONG, o + 48, w.n());
            t.set(ValueLayout.JAVA_LONG, o + 56, blocks);
            t.set(ValueLayout.JAVA_FLOAT, o + 64, k.beta1());
            t.set(ValueLayout.JAVA_FLOAT, o + 68, k.beta2());
            t.set(ValueLayout.JAVA_FLOAT, o + 72, k.eps());
            t.set(ValueLayout.JAVA_FLOAT, o + 76, k.lr());
            t.set(ValueLayout.JAVA_FLOAT, o + 80, k.weightDecay());
            t.set(ValueLayout.JAVA_FLOAT, o + 84, k.correction2());
            t.set(ValueLayout.JAVA_FLOAT, o + 88, k.stepSize());
            t.set(ValueLayout.JAVA_FLOAT, o + 92, k.gnormScale());
            t.set(ValueLayout.JAVA_INT, o + 96, s.eightBit ? 1 : 0);
            t.set(ValueLayout.JAVA_INT, o + 100, 0);
            blocks += BnbAdamKernels.blocks(w.n());
        }
        if (blocks > Integer.MAX_VALUE) throw new IllegalStateException("too many parameters for one launch: " + blocks + " blocks");
        long dev = table.upload(works.size());
        ctx.launch(ctx.function("adamw8bit", "adamw8bit_blockwise"), Dim3.of((int) blocks),
                Dim3.of(BnbAdamKernels.BLOCKSIZE), 0, KernelArgs.of().ptr(dev).i32(works.size()).ptr(CudaContext.ptr(codes)));
    }

    @Override
    Map<String, Tensor> slots(State s, int[] shape) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        if (s.eightBit) {
            m.put("state1", bytesTensor(s.s1.byteArray(), shape));
            m.put("state2", bytesTensor(s.s2.byteArray(), shape));
            float[] a1 = s.absmax1.floats(), a2 = s.absmax2.floats();
            m.put("absmax1", floatsTensor(a1, a1.length));
            m.put("absmax2", floatsTensor(a2, a2.length));
        } else {
            m.put("state1", floatsTensor(s.s1.floats(), shape));
            m.put("state2", floatsTensor(s.s2.floats(), shape));
        }
        return m;
    }

    @Override
    State fromSlots(String param, int numel, Map<String, Tensor> slots, long step) {
        boolean eightBit = numel >= config.eightBitThreshold();
        Tensor first = slots.get("state1");
        if (first == null) slot(param, slots, "state1", numel, DType.U8);   // throws: names the missing slot
        DType stored = first.dtype();
        if (eightBit != (stored == DType.U8)) {
            throw new IllegalArgumentException("optimizer state of '" + param + "' is " + stored + " but this AdamW8bit keeps "
                    + (eightBit ? "8-bit" : "float32") + " state for " + numel + " elements (min_8bit_size "
                    + config.minEightBitSize() + "); resume with the min_8bit_size the checkpoint was trained with");
        }
        DType dt = eightBit ? DType.U8 : DType.F32;
        Tensor t1 = slot(param, slots, "state1", numel, dt), t2 = slot(param, slots, "state2", numel, dt);
        Tensor a1 = null, a2 = null;
        if (eightBit) {
            int blocks = BnbAdamKernels.blocks(numel);
            a1 = slot(param, slots, "absmax1", blocks, DType.F32);
            a2 = slot(param, slots, "absmax2", blocks, DType.F32);
        }
        OptimizerStateBuffer b1 = null, b2 = null, b3 = null;
        try {
            b1 = bufferFrom(t1);
            b2 = bufferFrom(t2);
            if (!eightBit) return new State(false, b1, b2, null, null, step);
            b3 = bufferFrom(a1);
            return new State(true, b1, b2, b3, bufferFrom(a2), step);
        } catch (RuntimeException e) {
            for (OptimizerStateBuffer b : new OptimizerStateBuffer[] {b1, b2, b3}) if (b != null) b.close();
            throw e;
        }
    }

    @Override
    public Map<String, String> hyperParameters() {
        return Map.of("lr", Double.toString(lr()), "betas", config.beta1() + "," + config.beta2(),
                "eps", Double.toString(config.eps()), "weight_decay", Double.toString(config.weightDecay()),
                "min_8bit_size", Integer.toString(config.minEightBitSize()),
                "block_size", Integer.toString(BnbAdamKernels.BLOCKSIZE), "storage", config.storage().name(),
                "device", backend.device().toString());
    }

    /** Frees the state, the code tables and the launch table. */
    @Override
    public void close() {
        super.close();
        table.close();
        codes.close();
    }
}
