package dev.qlora4j.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** The qlora4j command line. Subcommands live in their own classes in this package. */
@Command(name = "qlora4j", mixinStandardHelpOptions = true, version = "qlora4j 0.1.0",
        description = "Load, quantize, fine-tune (QLoRA) and run Hugging Face causal LMs from Java.",
        subcommands = {CommandLine.HelpCommand.class})
public final class Main {
    public static void main(String[] args) {
        System.exit(run(args));
    }

    public static int run(String... args) {
        return new CommandLine(new Main()).execute(args);
    }
}
