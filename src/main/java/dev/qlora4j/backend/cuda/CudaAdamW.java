package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.AdamWKernel;
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
 * torch.optim.AdamW over parameters whose value and gradient live on the GPU: the same update as
 * {@link dev.qlora4j.optim.AdamW} (element for element, bit-identical to {@link AdamWKernel}: native/adamw.cu),
 * state (exp_avg, exp_avg_sq: F32; step on the host) created on a parameter's first step. One kernel launch per
 * step updates every parameter (adamw_f32_multi over a table of pointers and per-parameter scalars), and rewrites
 * the parameters' BF16 copies ({@link Param#refreshableCopy()}) in the same pass.
 *
 * <p>With {@link StateStorage#PAGED} (optim="paged_adamw_32bit") the state lives in pinned host memory that the
 * kernel reads and writes directly (see {@link OptimizerStateBuffer}): no GPU memory for state, the step then
 * bound by the host link. The state dict has the host AdamW's names and layout, so checkpoints move between
 * the two. Values and gradients must be F32 device tensors (LoRA parameters are).
 */
public final class CudaAdamW extends CudaOptimizerBase<CudaAdamW.State> {
    /** Elements per CUDA block of adamw_f32_multi (ADAMW_CHUNK in native/adamw.cu). */
    static final int CHUNK = 4096;
    /** sizeof(AdamWEntry) in native/adamw.cu. */
    static final int ENTRY_BYTES = 88;

    private final AdamWConfig config;
    private final LaunchTable table;

    static final class State extends CudaOptimizerBase.State {
        final OptimizerStateBuffer expAvg;    // F32 [n]
        final OptimizerStateBuffer expAvgSq;  // F32 [n]

        State(OptimizerStateBuffer expAvg, OptimizerStateBuffer expAvgSq, long step) {
            this.expAvg = expAvg;
            this.expAvgSq = expAvgSq;
            this.step = step;
        }

        @Override List<OptimizerStateBuffer> buffers() { return List.of(expAvg, expAvgSq); }
    }

    public CudaAdamW(CudaBackend backend, List<ParamGroup> groups, AdamWConfig config) {
        super(backend, groups, config.lr(), config.storage());
        this.config = config;
        this.table = new LaunchTable(ctx, ENTRY_BYTES);
    }

    /** All parameters in one group with config.weightDecay(). */
    public static CudaAdamW of(CudaBackend backend, List<? extends Param> params, AdamWConfig config) {
        return new CudaAdamW(backend, List.of(new ParamGroup(List.copyOf(params), config.weightDecay())), config);
    }

    @Override public String name() { return "AdamW"; }

    public AdamWConfig config() { return config; }

    @Override
    State newState(int n) {
        OptimizerStateBuffer m = OptimizerStateBuffer.zeros(ctx, 4L * n, storage);
        try {
            return new State(m, OptimizerStateBuffer.zeros(ctx, 4L * n, storage), 0);
        } catch (RuntimeException e) {
            m.close();
            throw e;
        }
    }

    @Override
    void launch(List<Work<State>> works) {
        MemorySegment t = table.begin(works.size());
        long chunks = 0;
        for (int i = 0; i < works.size(); i++) {
            Work<State> w = works.get(i);
            AdamWKernel.Scalars k = AdamWKernel.Scalars.of(lr(), config.beta1(), config.beta2(), config.eps(),
                    w.weightDecay(), w.state().step);
            long o = (long) i * ENTRY_BYTES;
            t.set(ValueLayout.JAVA_LONG, o, CudaContext.ptr(w.value()));
            t.set(ValueLayout.JAVA_LONG, o + 8, CudaContext.ptr(w.grad()));
            t.set(ValueLayout.JAVA_LONG, o + 16, w.state().expAvg.pointer());
            t.set(ValueLayout.JAVA_LONG, o + 24, w.state().expAvgSq.pointer());
            t.set(ValueLayout.JAVA_LONG, o + 32, w.n());
            t.set(ValueLayout.JAVA_LONG, o + 40, chunks);
            t.set(ValueLayout.JAVA_FLOAT, o + 48, k.decay());
            t.set(ValueLayout.JAVA_FLOAT, o + 52, k.lerpWeight());
            t.set(ValueLayout.JAVA_FLOAT, o + 56, k.beta2());
            t.set(ValueLayout.JAVA_FLOAT, o + 60, k.oneMinusBeta2());
            t.set(ValueLayout.JAVA_FLOAT, o + 64, k.negStepSize());
            t.set(ValueLayout.JAVA_FLOAT, o + 68, k.bias2Sqrt());
            t.set(ValueLayout.JAVA_FLOAT, o + 72, k.eps());
            t.set(ValueLayout.JAVA_INT, o + 76, 0);
            Tensor copy = bf16Copy(w);
            t.set(ValueLayout.JAVA_LONG, o + 80, copy == null ? 0L : CudaContext.ptr(copy));
            chunks += (w.n() + CHUNK - 1) / CHUNK;
        }
        if (chunks > Integer.MAX_VALUE) throw new IllegalStateException("too many parameters for one launch: " + chunks + " chunks");
        long dev = table.upload(works.size());
        ctx.launch(ctx.function("adamw", "adamw_f32_multi"), Dim3.of((int) chunks), Dim3.of(CudaContext.BLOCK_1D), 0,
                KernelArgs.of().ptr(dev).i32(works.size()));
        for (Work<State> w : works) if (bf16Copy(w) != null) w.param().copyRefreshed();
    }

    /** The parameter's BF16 copy that the kernel rewrites with the update (Param#refreshableCopy), when it fits. */
    private static Tensor bf16Copy(Work<State> w) {
        Tensor c = w.param().refreshableCopy();
        if (c == null || c.dtype() != DType.BF16 || c.numel() != w.n() || !(c.storage() instanceof CudaStorage)
                || !c.device().equals(w.value().device())) {
            return null;
        }
        return c;
    }

    @Override
    Map<String, Tensor> slots(State s, int[] shape) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("exp_avg", floatsTensor(s.expAvg.floats(), shape));
        m.put("exp_avg_sq", floatsTensor(s.expAvgSq.floats(), shape));
        return m;
    }

    @Override
    State fromSlots(String param, int numel, Map<String, Tensor> slots, long step) {
        Tensor m = slot(param, slots, "exp_avg", numel, DType.F32), v = slot(param, slots, "exp_avg_sq", numel, DType.F32);
        OptimizerStateBuffer mb = bufferFrom(m);
        try {
            return new State(mb, bufferFrom(v), step);
        } catch (RuntimeException e) {
            mb.close();
            throw e;
        }
    }

    @Override
    public Map<String, String> hyperParameters() {
        return Map.of("lr", Double.toString(lr()), "betas", config.beta1() + "," + config.beta2(),
                "eps", Double.toString(config.eps()), "weight_decay", Double.toString(config.weightDecay()),
                "storage", config.storage().name(), "device", backend.device().toString());
    }

    /** Frees the state and the launch table. */
    @Override
    public void close() {
        super.close();
        table.close();
    }
}
