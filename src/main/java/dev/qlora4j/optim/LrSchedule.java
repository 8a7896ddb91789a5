package dev.qlora4j.optim;

import java.util.Arrays;
import java.util.Locale;

/**
 * Learning-rate multipliers of transformers' get_scheduler (LambdaLR lambdas). The learning rate
 * for an optimizer step is {@code baseLr * factor(step)}, where step counts the scheduler steps
 * already taken: 0 for the first optimizer step (so warmup starts at 0), as LambdaLR's last_epoch.
 *
 * <ul>
 *   <li>constant: 1</li>
 *   <li>constant_with_warmup: step/max(1, warmup) during warmup, then 1</li>
 *   <li>linear: warmup, then max(0, (total - step) / max(1, total - warmup))</li>
 *   <li>cosine: warmup, then max(0, 0.5*(1 + cos(pi * numCycles * 2 * progress))),
 *       progress = (step - warmup) / max(1, total - warmup); numCycles 0.5 by default</li>
 * </ul>
 */
public record LrSchedule(Kind kind, int warmupSteps, int totalSteps, double numCycles) {
    public enum Kind {
        CONSTANT("constant"), CONSTANT_WITH_WARMUP("constant_with_warmup"), LINEAR("linear"), COSINE("cosine");

        private final String hfName;

        Kind(String hfName) { this.hfName = hfName; }

        /** transformers' SchedulerType value. */
        public String hfName() { return hfName; }
    }

    public LrSchedule {
        if (kind == null) throw new IllegalArgumentException("schedule kind is required");
        if (warmupSteps < 0) throw new IllegalArgumentException("warmup steps must be >= 0, got " + warmupSteps);
        if (totalSteps < 0) throw new IllegalArgumentException("total training steps must be >= 0, got " + totalSteps);
    }

    public static LrSchedule constant() { return new LrSchedule(Kind.CONSTANT, 0, 0, 0.5); }

    public static LrSchedule constantWithWarmup(int warmupSteps) { return new LrSchedule(Kind.CONSTANT_WITH_WARMUP, warmupSteps, 0, 0.5); }

    public static LrSchedule linear(int warmupSteps, int totalSteps) { return new LrSchedule(Kind.LINEAR, warmupSteps, totalSteps, 0.5); }

    public static LrSchedule cosine(int warmupSteps, int totalSteps) { return cosine(warmupSteps, totalSteps, 0.5); }

    public static LrSchedule cosine(int warmupSteps, int totalSteps, double numCycles) {
        return new LrSchedule(Kind.COSINE, warmupSteps, totalSteps, numCycles);
    }

    /**
     * get_scheduler(name, num_warmup_steps, num_training_steps) for the supported names; null
     * warmup/total mean "not given" and are required where transformers requires them.
     */
    public static LrSchedule of(String name, Integer warmupSteps, Integer totalSteps) {
        Kind kind = Arrays.stream(Kind.values()).filter(k -> k.hfName.equals(name.toLowerCase(Locale.ROOT))).findFirst()
                .orElseThrow(() -> new IllegalArgumentException("unsupported lr_scheduler_type '" + name + "'; supported: "
                        + Arrays.stream(Kind.values()).map(Kind::hfName).toList()));
        if (kind == Kind.CONSTANT) return constant();
        if (warmupSteps == null) throw new IllegalArgumentException(name + " requires `num_warmup_steps`, please provide that argument.");
        if (kind == Kind.CONSTANT_WITH_WARMUP) return constantWithWarmup(warmupSteps);
        if (totalSteps == null) throw new IllegalArgumentException(name + " requires `num_training_steps`, please provide that argument.");
        return kind == Kind.LINEAR ? linear(warmupSteps, totalSteps) : cosine(warmupSteps, totalSteps);
    }

    /**
     * TrainingArguments.get_warmup_steps: warmup_steps when it is > 0, otherwise
     * ceil(total * warmup_ratio).
     */
    public static int warmupSteps(int warmupSteps, double warmupRatio, int totalSteps) {
        if (warmupSteps > 0) return warmupSteps;
        if (!(warmupRatio >= 0 && warmupRatio <= 1)) throw new IllegalArgumentException("warmup_ratio must lie in range [0,1], got " + warmupRatio);
        return (int) Math.ceil(totalSteps * warmupRatio);
    }

    /** The multiplier of the base learning rate after {@code step} scheduler steps. */
    public double factor(long step) {
        if (kind == Kind.CONSTANT) return 1.0;
        if (step < warmupSteps) return (double) step / Math.max(1, warmupSteps);
        return switch (kind) {
            case CONSTANT, CONSTANT_WITH_WARMUP -> 1.0;
            case LINEAR -> Math.max(0.0, (double) (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
            case COSINE -> {
                double progress = (double) (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
                yield Math.max(0.0, 0.5 * (1.0 + Math.cos(Math.PI * numCycles * 2.0 * progress)));
            }
        };
    }

    /** {@code baseLr * factor(step)}. */
    public double lr(double baseLr, long step) {
        return baseLr * factor(step);
    }
}
