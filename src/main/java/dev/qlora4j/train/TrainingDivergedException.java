package dev.qlora4j.train;

/** The loss or the gradient norm became NaN or infinite; training stopped before the optimizer step. */
public final class TrainingDivergedException extends IllegalStateException {
    private final long step;

    public TrainingDivergedException(String message, long step) {
        super(message);
        this.step = step;
    }

    /** The optimizer step (1-based) that would have been taken. */
    public long step() { return step; }
}
