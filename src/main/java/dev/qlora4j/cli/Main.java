package dev.qlora4j.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** The qlora4j command line. Subcommands live in their own classes in this package. */
@Command(name = "qlora4j", mixinStandardHelpOptions = true, version = "qlora4j 0.1.0",
        description = "Load, quantize, fine-tune (QLoRA) and run Hugging Face causal LMs from Java.",
        subcommands = {GenerateCommand.class, EvalCommand.class, InspectCommand.class, QuantizeCommand.class, TrainCommand.class, MergeCommand.class, DemoCommand.class,
                CommandLine.HelpCommand.class})
public final class Main {
    public static void main(String[] args) {
        System.exit(run(args));
    }

    public static int run(String... args) {
        CommandLine cl = new CommandLine(new Main());
        // Bad input is reported as one clear line, not a stack trace (QLORA4J_DEBUG=1 shows it).
        cl.setExecutionExceptionHandler((ex, cmd, parsed) -> {
            if (System.getenv("QLORA4J_DEBUG") != null) ex.printStackTrace();
            cmd.getErr().println("error: " + (ex.getMessage() != null ? ex.getMessage() : ex.toString()));
            return 1;
        });
        return cl.execute(args);
    }
}
