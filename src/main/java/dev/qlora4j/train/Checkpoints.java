package dev.qlora4j.train;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * output_dir/checkpoint-&lt;step&gt;/ folders as transformers names them: written into a hidden
 * temp folder and renamed into place, so a crash never leaves a half-written checkpoint-N;
 * rotated by save_total_limit (oldest first); found again for resume_from_checkpoint.
 */
public final class Checkpoints {
    public static final String PREFIX = "checkpoint-";
    /** The file that marks a complete qlora4j checkpoint (written last, with the data position). */
    public static final String TRAINER_FILE = "qlora4j_trainer.json";
    private static final Pattern NAME = Pattern.compile("checkpoint-(\\d+)");

    private Checkpoints() {}

    public static Path dir(Path outputDir, long step) {
        return outputDir.resolve(PREFIX + step);
    }

    /** Writes a checkpoint: {@code writer} fills a temp folder, which is then renamed to checkpoint-step. */
    public static Path save(Path outputDir, long step, Consumer<Path> writer) {
        Path target = dir(outputDir, step);
        Path tmp = outputDir.resolve("." + PREFIX + step + "." + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".tmp");
        try {
            Files.createDirectories(tmp);
            writer.accept(tmp);
            Path old = null;
            if (Files.exists(target)) { // re-saving a step (e.g. a rerun into the same output_dir): swap, then drop the old one
                old = outputDir.resolve("." + PREFIX + step + "." + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".old");
                move(target, old);
            }
            move(tmp, target);
            if (old != null) deleteTree(old);
            return target;
        } catch (IOException e) {
            deleteQuietly(tmp);
            throw new UncheckedIOException("cannot write checkpoint " + target + " (" + e + "); check free disk space and permissions", e);
        } catch (RuntimeException e) {
            deleteQuietly(tmp);
            throw e;
        }
    }

    private static void move(Path from, Path to) throws IOException {
        try {
            Files.move(from, to, StandardCopyOption.ATOMIC_MOVE);
        } catch (AtomicMoveNotSupportedException e) {
            Files.move(from, to);
        }
    }

    /** checkpoint-N folders of outputDir that are complete, by step ascending. */
    public static List<Path> list(Path outputDir) {
        if (!Files.isDirectory(outputDir)) return List.of();
        try (Stream<Path> s = Files.list(outputDir)) {
            return s.filter(p -> NAME.matcher(p.getFileName().toString()).matches())
                    .filter(p -> Files.isRegularFile(p.resolve(TRAINER_FILE)))
                    .sorted(Comparator.comparingLong(Checkpoints::step))
                    .toList();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot list " + outputDir + ": " + e.getMessage(), e);
        }
    }

    /** The step in a checkpoint-N folder name. */
    public static long step(Path checkpoint) {
        Matcher m = NAME.matcher(checkpoint.getFileName().toString());
        if (!m.matches()) throw new IllegalArgumentException(checkpoint + " is not a checkpoint-<step> folder");
        return Long.parseLong(m.group(1));
    }

    /** Deletes the oldest checkpoints until at most {@code limit} are left; returns those deleted. */
    public static List<Path> rotate(Path outputDir, int limit) {
        List<Path> all = list(outputDir);
        List<Path> deleted = new ArrayList<>();
        for (int i = 0; i < all.size() - limit; i++) {
            deleteTree(all.get(i));
            deleted.add(all.get(i));
        }
        return deleted;
    }

    /**
     * resume_from_checkpoint to a folder: "latest" is the newest complete checkpoint-N in outputDir;
     * anything else is a folder path.
     */
    public static Path resolve(Path outputDir, String resume) {
        if (resume.equalsIgnoreCase("latest") || resume.equalsIgnoreCase("true")) {
            List<Path> all = list(outputDir);
            if (all.isEmpty()) {
                throw new IllegalArgumentException("resume_from_checkpoint \"latest\": no complete checkpoint-<step> folder in " + outputDir
                        + "; train without resuming, or pass the checkpoint folder");
            }
            return all.get(all.size() - 1);
        }
        Path p = Path.of(resume);
        if (!Files.isDirectory(p)) {
            throw new IllegalArgumentException("resume_from_checkpoint " + p + " is not a folder: pass a checkpoint-<step> folder or \"latest\"");
        }
        if (!Files.isRegularFile(p.resolve(TRAINER_FILE))) {
            throw new IllegalArgumentException("resume_from_checkpoint " + p + " has no " + TRAINER_FILE
                    + ": it is not a complete qlora4j checkpoint (interrupted while saving, or written by another tool)");
        }
        return p;
    }

    static void deleteTree(Path root) {
        if (!Files.exists(root)) return;
        try (Stream<Path> s = Files.walk(root)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).toList()) Files.delete(p);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot delete " + root + " (" + e + "); remove it by hand", e);
        }
    }

    private static void deleteQuietly(Path root) {
        try {
            deleteTree(root);
        } catch (UncheckedIOException ignored) {
            // a leftover hidden temp folder never counts as a checkpoint
        }
    }
}
