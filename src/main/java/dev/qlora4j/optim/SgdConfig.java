package dev.qlora4j.optim;

/**
 * torch.optim.SGD hyperparameters. Weight decay is torch's coupled L2 term (grad += wd * p);
 * {@code weightDecay} is the default for groups built from a plain parameter list.
 */
public record SgdConfig(double lr, double momentum, double dampening, boolean nesterov, double weightDecay) {
    public SgdConfig {
        if (!(lr >= 0)) throw new IllegalArgumentException("Invalid learning rate: " + lr);
        if (!(momentum >= 0)) throw new IllegalArgumentException("Invalid momentum value: " + momentum);
        if (!(weightDecay >= 0)) throw new IllegalArgumentException("Invalid weight_decay value: " + weightDecay);
        if (nesterov && (momentum <= 0 || dampening != 0)) {
            throw new IllegalArgumentException("Nesterov momentum requires a momentum and zero dampening");
        }
    }

    /** SGD with momentum, dampening 0, nesterov off, no weight decay. */
    public static SgdConfig momentum(double lr, double momentum) {
        return new SgdConfig(lr, momentum, 0, false, 0);
    }

    public SgdConfig withWeightDecay(double wd) { return new SgdConfig(lr, momentum, dampening, nesterov, wd); }
}
