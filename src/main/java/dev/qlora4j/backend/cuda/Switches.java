package dev.qlora4j.backend.cuda;

import java.util.Locale;

/** The on/off system properties that turn the CUDA backend's optional paths off for A/B runs. */
final class Switches {
    private Switches() {}

    /** The property as a boolean: true / on / empty, false / off, or byDefault when unset; anything else is an error. */
    static boolean on(String property, boolean byDefault) {
        String v = System.getProperty(property, Boolean.toString(byDefault)).trim().toLowerCase(Locale.ROOT);
        return switch (v) {
            case "true", "on", "" -> true;
            case "false", "off" -> false;
            default -> throw new IllegalArgumentException("-D" + property + "=" + v + ": use true or false (default "
                    + byDefault + ")");
        };
    }
}
