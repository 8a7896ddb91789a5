package dev.qlora4j.optim;

import dev.qlora4j.tensor.Tensor;

import java.util.List;
import java.util.Map;

/**
 * The optimizer contract shared by the host optimizers of this package and the CUDA ones:
 * parameter groups, a learning rate the schedule sets before each step, one update per
 * {@link #step()}, and state that round-trips through a checkpoint.
 *
 * <p>State names are "state.&lt;param name&gt;.&lt;slot&gt;" (slots as torch/bitsandbytes name
 * them: exp_avg, exp_avg_sq, step; state1, state2, absmax1, absmax2; momentum_buffer).
 */
public interface Optimizer {
    /** "AdamW", "AdamW8bit" or "SGD"; written to checkpoints and checked on load. */
    String name();

    List<ParamGroup> groups();

    double lr();

    /** Sets the learning rate for the next steps (LrSchedule.lr(base, step) before each step). */
    void setLr(double lr);

    /** Updates every parameter that has a gradient; parameters whose grad() is null are skipped, as torch does. */
    void step();

    /** Host copies of the state, keyed "state.&lt;param&gt;.&lt;slot&gt;"; parameters never stepped have none. */
    Map<String, Tensor> stateDict();

    /**
     * Replaces the state with {@code state} (as written by {@link #stateDict()}). Every entry must
     * name a parameter of this optimizer with the expected slots and sizes; parameters absent from
     * the map start fresh.
     */
    void loadStateDict(Map<String, Tensor> state);

    /** Hyperparameters as strings, stored as checkpoint metadata (informational). */
    Map<String, String> hyperParameters();
}
