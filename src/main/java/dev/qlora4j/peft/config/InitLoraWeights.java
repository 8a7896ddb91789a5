package dev.qlora4j.peft.config;

import java.util.List;
import java.util.regex.Pattern;

/**
 * peft's init_lora_weights: true (Kaiming-uniform A, zero B: the default), false (random B too,
 * the adapter is not a no-op) or the name of an initialization method.
 */
public sealed interface InitLoraWeights {
    /** Method names peft accepts besides true/false, plus "pissa_niter_N" for N >= 0. */
    List<String> METHODS = List.of("gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal");

    Pattern PISSA_NITER = Pattern.compile("pissa_niter_\\d+");

    record Flag(boolean value) implements InitLoraWeights {}

    record Method(String name) implements InitLoraWeights {
        public Method {
            if (name == null || !(METHODS.contains(name) || PISSA_NITER.matcher(name).matches())) {
                throw new IllegalArgumentException("unknown init_lora_weights '" + name + "'; use true, false, one of "
                        + METHODS + " or pissa_niter_<N>");
            }
        }
    }

    InitLoraWeights DEFAULT = new Flag(true);

    static InitLoraWeights of(boolean value) { return new Flag(value); }

    static InitLoraWeights of(String method) { return new Method(method); }

    default Object toJsonValue() {
        return switch (this) {
            case Flag f -> f.value();
            case Method m -> m.name();
        };
    }
}
