package dev.qlora4j.peft.config;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;

/** Reads and writes adapter_config.json, dispatching on peft_type. */
public final class PeftConfigs {
    public static final String CONFIG_NAME = "adapter_config.json";

    /** The peft_type values this engine reads. */
    public static final List<String> SUPPORTED_TYPES = List.of(LoraConfig.PEFT_TYPE, PrefixTuningConfig.PEFT_TYPE,
            PromptTuningConfig.PEFT_TYPE, BottleneckConfig.PEFT_TYPE);

    private PeftConfigs() {}

    /** Reads {@code adapterDir}/adapter_config.json (or the file itself when a file is given). */
    public static PeftConfig load(Path adapterDirOrFile) {
        boolean isFile = Files.isRegularFile(adapterDirOrFile)
                || (!Files.exists(adapterDirOrFile) && adapterDirOrFile.getFileName().toString().endsWith(".json"));
        Path file = isFile ? adapterDirOrFile : adapterDirOrFile.resolve(CONFIG_NAME);
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8);
        } catch (NoSuchFileException e) {
            throw new UncheckedIOException(file + ": no such file; an adapter directory holds adapter_config.json and "
                    + "adapter_model.safetensors (an adapter not named \"default\" is saved in a subfolder named after it)", e);
        } catch (IOException e) {
            throw new UncheckedIOException(file + ": cannot read (" + e + ")", e);
        }
        return parse(text, file.toString());
    }

    /** Parses adapter_config.json text. */
    public static PeftConfig parse(String json) {
        return parse(json, CONFIG_NAME);
    }

    static PeftConfig parse(String json, String source) {
        Map<String, Object> map = Fields.parseObject(json, source);
        Object type = map.get("peft_type");
        if (type == null) {
            throw new IllegalArgumentException(source + ": no \"peft_type\"; this is not a peft adapter config (supported types: "
                    + SUPPORTED_TYPES + ")");
        }
        Fields f = new Fields(map, source);
        try {
            return switch (String.valueOf(type)) {
                case LoraConfig.PEFT_TYPE -> LoraConfig.fromFields(f);
                case PrefixTuningConfig.PEFT_TYPE -> PrefixTuningConfig.fromFields(f);
                case PromptTuningConfig.PEFT_TYPE -> PromptTuningConfig.fromFields(f);
                case BottleneckConfig.PEFT_TYPE -> BottleneckConfig.fromFields(f);
                default -> throw new IllegalArgumentException(source + ": peft_type \"" + type + "\" is not supported; supported: "
                        + SUPPORTED_TYPES + " (convert the adapter or train one of these)");
            };
        } catch (IllegalArgumentException e) {
            if (e.getMessage() != null && e.getMessage().startsWith(source)) throw e;
            throw new IllegalArgumentException(source + ": " + e.getMessage(), e);
        }
    }

    /** Writes {@code adapterDir}/adapter_config.json atomically (temp file, fsync, rename). */
    public static Path save(Path adapterDir, PeftConfig config) {
        Path target = adapterDir.resolve(CONFIG_NAME).toAbsolutePath();
        Path temp = target.resolveSibling("." + CONFIG_NAME + "." + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".tmp");
        try {
            Files.createDirectories(adapterDir);
            try (FileChannel ch = FileChannel.open(temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                ByteBuffer bytes = ByteBuffer.wrap(config.toJson().getBytes(StandardCharsets.UTF_8));
                while (bytes.hasRemaining()) ch.write(bytes);
                ch.force(true);
            }
            try {
                Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(temp, target, StandardCopyOption.REPLACE_EXISTING);
            }
            return target;
        } catch (IOException e) {
            try {
                Files.deleteIfExists(temp);
            } catch (IOException ignored) {
                // the temp file is hidden and never read; the target is unchanged either way
            }
            throw new UncheckedIOException(target + ": cannot write (" + e + "); check that " + adapterDir + " is writable", e);
        }
    }
}
