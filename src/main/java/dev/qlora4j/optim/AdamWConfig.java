package dev.qlora4j.optim;

/**
 * AdamW hyperparameters (torch.optim.AdamW). {@code weightDecay} is the default for groups built
 * from a plain parameter list; {@link ParamGroups#split} groups carry their own.
 *
 * <p>Two sets of defaults exist and they differ: torch.optim.AdamW itself uses lr 1e-3 and
 * weight_decay 0.01 ({@link #torchDefaults()}), while transformers' TrainingArguments pass
 * learning_rate 5e-5 and weight_decay 0.0 ({@link #trainingArgumentsDefaults()}). Betas
 * (0.9, 0.999) and eps 1e-8 are the same in both.
 */
public record AdamWConfig(double lr, double beta1, double beta2, double eps, double weightDecay, StateStorage storage) {
    public AdamWConfig {
        if (!(lr >= 0)) throw new IllegalArgumentException("Invalid learning rate: " + lr);
        if (!(eps >= 0)) throw new IllegalArgumentException("Invalid epsilon value: " + eps);
        if (!(beta1 >= 0 && beta1 < 1)) throw new IllegalArgumentException("Invalid beta parameter at index 0: " + beta1 + " (must be in [0, 1))");
        if (!(beta2 >= 0 && beta2 < 1)) throw new IllegalArgumentException("Invalid beta parameter at index 1: " + beta2 + " (must be in [0, 1))");
        if (!(weightDecay >= 0)) throw new IllegalArgumentException("Invalid weight_decay value: " + weightDecay);
        if (storage == null) storage = StateStorage.DEVICE;
    }

    /** torch.optim.AdamW(): lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01. */
    public static AdamWConfig torchDefaults() {
        return new AdamWConfig(1e-3, 0.9, 0.999, 1e-8, 0.01, StateStorage.DEVICE);
    }

    /** transformers TrainingArguments (optim="adamw_torch"): lr 5e-5, betas (0.9, 0.999), eps 1e-8, weight_decay 0.0. */
    public static AdamWConfig trainingArgumentsDefaults() {
        return new AdamWConfig(5e-5, 0.9, 0.999, 1e-8, 0.0, StateStorage.DEVICE);
    }

    public AdamWConfig withLr(double lr) { return new AdamWConfig(lr, beta1, beta2, eps, weightDecay, storage); }

    public AdamWConfig withWeightDecay(double wd) { return new AdamWConfig(lr, beta1, beta2, eps, wd, storage); }

    public AdamWConfig withStorage(StateStorage s) { return new AdamWConfig(lr, beta1, beta2, eps, weightDecay, s); }
}
