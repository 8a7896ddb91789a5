package dev.qlora4j.optim;

/**
 * bitsandbytes.optim.AdamW8bit / PagedAdamW8bit hyperparameters. Defaults as bitsandbytes:
 * lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01, min_8bit_size 4096. (transformers'
 * optim="adamw_bnb_8bit" / "paged_adamw_8bit" pass TrainingArguments' lr and weight_decay
 * instead: 5e-5 and 0.0.)
 *
 * <p>A parameter keeps float32 state when it has fewer than max(minEightBitSize, 4096) elements,
 * as bitsandbytes does.
 */
public record AdamW8bitConfig(double lr, double beta1, double beta2, double eps, double weightDecay,
                              int minEightBitSize, StateStorage storage) {
    public AdamW8bitConfig {
        if (!(lr >= 0)) throw new IllegalArgumentException("Invalid learning rate: " + lr);
        if (!(eps >= 0)) throw new IllegalArgumentException("Invalid epsilon value: " + eps);
        if (!(beta1 >= 0 && beta1 < 1)) throw new IllegalArgumentException("Invalid beta parameter at index 0: " + beta1 + " (must be in [0, 1))");
        if (!(beta2 >= 0 && beta2 < 1)) throw new IllegalArgumentException("Invalid beta parameter at index 1: " + beta2 + " (must be in [0, 1))");
        if (!(weightDecay >= 0)) throw new IllegalArgumentException("Invalid weight_decay value: " + weightDecay);
        if (minEightBitSize < 0) throw new IllegalArgumentException("min_8bit_size must be >= 0, got " + minEightBitSize);
        if (storage == null) storage = StateStorage.DEVICE;
    }

    /** bitsandbytes.optim.AdamW8bit() defaults. */
    public static AdamW8bitConfig bnbDefaults() {
        return new AdamW8bitConfig(1e-3, 0.9, 0.999, 1e-8, 1e-2, 4096, StateStorage.DEVICE);
    }

    /** bitsandbytes.optim.PagedAdamW8bit() defaults: the same with paged state. */
    public static AdamW8bitConfig pagedBnbDefaults() {
        return bnbDefaults().withStorage(StateStorage.PAGED);
    }

    /** The smallest element count that gets 8-bit state. */
    public int eightBitThreshold() { return Math.max(minEightBitSize, 4096); }

    public AdamW8bitConfig withLr(double lr) { return new AdamW8bitConfig(lr, beta1, beta2, eps, weightDecay, minEightBitSize, storage); }

    public AdamW8bitConfig withWeightDecay(double wd) { return new AdamW8bitConfig(lr, beta1, beta2, eps, wd, minEightBitSize, storage); }

    public AdamW8bitConfig withStorage(StateStorage s) { return new AdamW8bitConfig(lr, beta1, beta2, eps, weightDecay, minEightBitSize, s); }
}
